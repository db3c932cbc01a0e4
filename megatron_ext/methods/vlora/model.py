"""VLoRA (Ma et al., "Visual Perception by Large Language Model's Weights", section 3).

A perceptual weights generator turns an image's visual features into low-rank weights
Delta W = W_v W_s for each equipped (block, weight type); the LLM applies them as a LoRA branch per
sample, y = x W + (x W_v) W_s, never forming an h x h matrix in training.

Generator (paper 3.3): per weight type, k learnable perceptual queries (one per equipped block)
pass N decoder blocks (self-attention, cross-attention to the visual features, FFN) of width h_p;
a shared linear h_p -> in*r turns each query into W_v (in x r). W_s (r x out, zero-initialised, one
per block and type: the paper's "k independent linear layers") is the lora_B of the equipped linear,
so it is sharded with the base weight under TP. The five types' generators have identical shapes
and run as one batched computation (docs/ARCHITECTURE.md, rule 6).

What "mlp" means here: the paper writes the FFN as phi(x W_1) W_2 and generates Delta W in R^{h x h}
from W_v in R^{h x r}. We give "mlp" perceptual weights on W_1, which in Megatron is the fused
linear_fc1 = [gate | up] of the gated FFN: W_v (h x r, input h as in Eq. 4) is shared by gate and
up, W_s = [W_s_gate | W_s_up] is r x 2 ffn. It merges into W_1 exactly (Eq. 3), which is the
inference mode the paper claims. Not chosen: the authors' public code adds an h x h branch parallel
to the whole FFN (out += x W_v W_s), which cannot be merged into any existing weight; and a W_2
(down) branch would need W_v of ffn x r, a shared linear h_p -> ffn*r (ffn/h = 2.7x the paper's
size at Vicuna-7B), against the paper's h x r. (The paper's FLOP count, 24 k r h^2 in appendix A,
counts perceptual weights on both FFN matrices, which its h x h notation cannot express; "down"
gives that variant.)
The fine-grained types gate, up and down are available for ablations ("mlp" = gate + up, sharing W_v).

Pipeline parallelism: the generator's self-attention mixes the queries of all equipped blocks, so
every stage holds a replica of the whole generator and runs it once per micro-batch on the visual
features it receives (docs/ARCHITECTURE.md, rule 7); each stage's replica only gets the gradient of its own blocks, and
`finalize_generator_grads` sums them over the pipeline group (as Megatron does for tied embeddings).
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.transformer.spec_utils import ModuleSpec

from megatron_ext.core.injected import InjectedGPTModel, train_only
from megatron_ext.core.llm_config import gpt_model_kwargs, preset_transformer_config
from megatron_ext.core.low_rank import low_rank_layers, lora_linear
from megatron_ext.core.projections import linears_holding
from megatron_ext.core.specs import swap_linears
from megatron_ext.methods.vlora.config import VLoRAConfig, vlora_config
from megatron_ext.methods.vlora.layers import VLoRAMixin
from megatron_ext.methods.vlora.vlora_generator import PerceptualWeightsGenerator


class VLoRAModel(InjectedGPTModel):
    """A GPTModel whose equipped linears carry a per-image perceptual LoRA branch (VLoRA)."""

    method = "vlora"  # its MethodSpec in the registry

    def __init__(self, config, vlora: VLoRAConfig, vocab_size: int, max_sequence_length: int, **kwargs):
        vlora.validate(config)
        self.vlora = vlora
        super().__init__(config, vlora.equipped_layers(config.num_layers), vocab_size,
                         max_sequence_length, **kwargs)
        if self.generator is None:  # a stage without equipped blocks still holds the replica that
            self.generator = self.make_generator()  # finalize_generator_grads reduces over

    def make_generator(self) -> PerceptualWeightsGenerator:
        v = self.vlora
        return PerceptualWeightsGenerator(v.weight_types, v.input_dims(self.config), v.rank, v.visual_dim,
                                          v.generator_width, v.generator_depth, v.generator_heads,
                                          v.generator_mlp_ratio, self.all_equipped, self.equipped)

    def equip(self, layer_number: int, spec):
        parts = self.vlora.parts()
        held = set(linears_holding(parts))

        def perceptual_linear(attribute, parallel, base):
            if attribute not in held:
                return None
            return ModuleSpec(module=lora_linear(base, VLoRAMixin), params=dict(
                parallel=parallel, layer_number=layer_number, rank=self.vlora.rank,
                alpha=self.vlora.alpha, adapted=tuple(parts)))

        return swap_linears(spec, self.backend, perceptual_linear)

    def conditioning_for(self, visual_features: torch.Tensor) -> dict:
        """{(layer, part): W_v} for every VLoRA part of this stage (gate and up share mlp's W_v)."""
        if not self.equipped:
            return {}
        W_v = self.generator(visual_features)
        return {(l, p): W_v[(l, t)] for l in self.equipped for p, t in self.vlora.parts().items()}

    # -- inference: merge one image's perceptual weights (paper Eq. 3) ---------------------------
    @torch.no_grad()
    def merge_image(self, visual_features: torch.Tensor) -> None:
        """W <- W + W_v(image) W_s in every equipped linear, for one image (batch of 1)."""
        if visual_features.shape[0] != 1:
            raise ValueError("merge_image takes the features of one image: shape (1, tokens, dim)")
        conditioning = self.conditioning_for(visual_features)
        for layer in low_rank_layers(self.language_model, VLoRAMixin):
            A = torch.cat([conditioning[(layer.layer_number, p)][0] for p in layer.adapted], dim=-1)
            layer.merge(layer.local_rows(A))

    @torch.no_grad()
    def unmerge_image(self) -> None:
        for layer in low_rank_layers(self.language_model, VLoRAMixin):
            layer.unmerge()

    def forward(self, input_ids, position_ids, attention_mask, visual_features=None, labels=None, **kwargs):
        if any(l.merged for l in low_rank_layers(self.language_model, VLoRAMixin)):
            # merged weights already hold the image: run the plain decoder
            return self.language_model(input_ids, position_ids, attention_mask, labels=labels, **kwargs)
        return super().forward(input_ids, position_ids, attention_mask, visual_features, labels, **kwargs)

    # -- pipeline parallelism ----------------------------------------------------------------
    def finalize_generator_grads(self) -> None:
        """Sum the generator replicas' gradients over the pipeline group (call after the backward
        of all micro-batches, before the optimizer step; a no-op without pipeline parallelism)."""
        if parallel_state.get_pipeline_model_parallel_world_size() == 1:
            return
        group = parallel_state.get_pipeline_model_parallel_group()
        for p in self.generator.parameters():
            # under Megatron's DDP wrapper gradients accumulate in main_grad, not grad
            grad = getattr(p, "main_grad", None)
            if grad is None:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                grad = p.grad
            torch.distributed.all_reduce(grad, group=group)

    def pipeline_replicated_parameters(self) -> list:
        return list(self.generator.parameters())

    def generator_parameters(self):
        return list(self.generator.parameters()) + [
            p for l in low_rank_layers(self.language_model, VLoRAMixin) for p in l.lora_B.values()]


def build_vlora(preset: dict, backend: str = "auto", dtype: torch.dtype = torch.float32,
                config_overrides: dict | None = None, freeze_llm: bool = True,
                **vlora_overrides) -> VLoRAModel:
    """A VLoRAModel for this process's TP/PP rank from a preset (configs/model). freeze_llm: the
    paper's pre-training (only the generator and W_s train); False for its fine-tuning stage."""
    llm = preset["llm"]
    config = preset_transformer_config(preset, dtype, config_overrides)
    model = VLoRAModel(config, vlora_config(preset, **vlora_overrides), backend=backend, **gpt_model_kwargs(llm))
    if freeze_llm:
        train_only(model, model.generator_parameters())
    return model
