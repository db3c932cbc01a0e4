"""ROSEModel: visual features -> VRMG -> rotations T -> GPTModel on text tokens only."""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.transformer.spec_utils import ModuleSpec

from megatron_ext.core.injected import InjectedGPTModel
from megatron_ext.core.llm_config import gpt_model_kwargs, preset_transformer_config
from megatron_ext.core.projections import PROJECTION, PROJECTIONS_OF
from megatron_ext.core.specs import swap_linears
from megatron_ext.methods.rose.config import RoseConfig, rose_config
from megatron_ext.methods.rose.local_blocks import local_blocks, sum_over_ranks
from megatron_ext.methods.rose.rotated_linear import RotatedLinear
from megatron_ext.methods.rose.rotation import rotations_of
from megatron_ext.methods.rose.vrmg import VRMG


class ROSEModel(InjectedGPTModel):
    """A GPTModel whose equipped projections are rotated per image (ROSE).

    Per micro-batch the VRMG emits T for every equipped projection of this stage, the rotations
    R^T are built from them at once (`rotations_of`: fp32, batched by block size, no host sync),
    and each RotatedLinear only applies its own (docs/ARCHITECTURE.md, rules 1, 2 and 6).
    """

    method = "rose"  # its MethodSpec in the registry

    def __init__(self, config, rose: RoseConfig, vocab_size: int, max_sequence_length: int, **kwargs):
        rose.validate(config)
        self.rose = rose
        super().__init__(config, rose.equipped_layers(config.num_layers), vocab_size,
                         max_sequence_length, **kwargs)
        self._select = None  # the VRMG's `select`: under TP, this rank's blocks of o and down
        if self.generator is not None and config.tensor_model_parallel_size > 1:
            group = parallel_state.get_tensor_model_parallel_group()
            rows = [p for p in rose.projections if PROJECTION[p].parallel == "row"]
            self._select = {p: local_blocks(group) for p in rows}
            sum_over_ranks([q for gen in self.generator.generators.values() for p in rows
                            for q in gen.to_T[p].parameters()], group)

    @property
    def vrmg(self) -> VRMG | None:
        return self.generator

    def make_generator(self) -> VRMG:
        r = self.rose
        return VRMG(self.equipped, r.projections, r.blocks, r.block_sizes(self.config), r.visual_dim,
                    r.generator_width, r.generator_heads, r.t_scale)

    def conditioning_for(self, visual_features: torch.Tensor, tokens: int | None = None) -> dict:
        """{(layer, projection): R^T blocks of (batch, blocks, b, b)} for every equipped projection of
        this stage (row-parallel ones: this TP rank's blocks), the VRMG run once for all of them.
        tokens: the sequence each rotation rotates, where known: blocks wider than it are kept to
        solve with (rotations_of)."""
        if self.generator is None:
            return {}
        T = self.generator(visual_features, select=self._select)
        self._last_T = {k: t.detach() for k, t in T.items()}  # step_metrics reads it
        return rotations_of(T, tokens)

    def forward(self, input_ids, position_ids, attention_mask, visual_features, labels=None, **kwargs):
        tokens = next((t.shape[-1] for t in (position_ids, input_ids) if t is not None), None)
        return self.run_decoder(self.conditioning_for(visual_features, tokens), input_ids, position_ids,
                                attention_mask, labels=labels, **kwargs)

    def rotations_for(self, visual_features: torch.Tensor) -> dict:
        """The rotations the layers apply: conditioning_for."""
        return self.conditioning_for(visual_features)

    def step_metrics(self) -> dict:
        """The size of the last micro-batch's skew-symmetric P per (sample, block): Frobenius norm
        (sqrt(2) |T|), the largest and the mean over this stage's rotations. |R - I| grows with it
        (for a block with eigen-angle theta of P, |R - I| = 2 theta / sqrt(1 + theta^2))."""
        T = getattr(self, "_last_T", None)
        if not T:
            return {}
        norms = torch.cat([(2 ** 0.5) * t.float().norm(dim=-1).flatten() for t in T.values()])
        return {"rose_skew_norm_max": float(norms.max()), "rose_skew_norm_mean": float(norms.mean())}

    def equip(self, layer_number: int, spec: ModuleSpec) -> ModuleSpec:
        """Swap the projection linears holding rotated projections for RotatedLinear."""
        def rotated_linear(attribute, parallel, base):
            held = PROJECTIONS_OF[attribute.removeprefix("linear_")]
            rotated = tuple(p for p in self.rose.projections if p in held)
            if not rotated:
                return None
            return ModuleSpec(module=RotatedLinear, params=dict(
                base=base, parallel=parallel, layer_number=layer_number, rotated=rotated))

        return swap_linears(spec, self.backend, rotated_linear)


def build_rose(preset: dict, backend: str = "auto", dtype: torch.dtype = torch.float32,
               config_overrides: dict | None = None, **rose_overrides) -> ROSEModel:
    """A ROSEModel for this process's tensor/pipeline-parallel rank from a preset (configs/model)."""
    config = preset_transformer_config(preset, dtype, config_overrides)
    return ROSEModel(config, rose_config(preset, **rose_overrides), backend=backend,
                     **gpt_model_kwargs(preset["llm"]))
