"""GPT models with parameter-space vision injection.

InjectedGPTModel is what every method shares: a Megatron GPTModel built from a decoder block spec
in which some layers' submodules are swapped, a generator that turns visual features into
per-micro-batch conditioning, and a ConditioningContext through which the swapped layers read it.
ROSEModel: visual features -> VRMG -> rotations T -> GPTModel on text tokens only.
"""

from __future__ import annotations

import logging

import torch
from megatron.core import parallel_state
from megatron.core.enums import ModelType
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec

from megatron_ext.config import RoseConfig
from megatron_ext.context import ConditionedLayer, ConditioningContext
from megatron_ext.fused_layout import LINEAR_OF
from megatron_ext.rotated_linear import RotatedLinear
from megatron_ext.specs import (decoder_block_spec, linear_classes, linear_owner, resolve_backend,
                                stage_layers, unfuse_te_norms, LINEARS)
from megatron_ext.vrmg import VRMG

log = logging.getLogger(__name__)


class InjectedGPTModel(MegatronModule):
    """GPTModel + a conditioning generator for the equipped layers held by this pipeline stage.

    Under pipeline parallelism every stage holds the generator of its own equipped layers and
    receives the visual features with each micro-batch (DESIGN.md rule 7); text activations flow
    between stages as usual through set_input_tensor. Subclasses provide `equip` (the layer-spec
    swap) and `make_generator`.
    """

    def __init__(self, config, equipped_layers: list[int], vocab_size: int,
                 max_sequence_length: int, backend: str = "auto", pre_process: bool | None = None,
                 post_process: bool | None = None, rotary_base: float = 1000000.0,
                 share_embeddings_and_output_weights: bool = False, **rope_kwargs):
        super().__init__(config)
        self.model_type = ModelType.encoder_or_decoder  # read by Megatron's pipeline schedules
        self.pre_process = parallel_state.is_pipeline_first_stage() if pre_process is None else pre_process
        self.post_process = parallel_state.is_pipeline_last_stage() if post_process is None else post_process
        self.backend = resolve_backend(backend)
        here = set(stage_layers(config))
        self.equipped = [l for l in sorted(equipped_layers) if l in here]
        spec = decoder_block_spec(config, self.backend, self.equip, set(self.equipped))
        self.language_model = GPTModel(
            config, spec, vocab_size, max_sequence_length, pre_process=self.pre_process,
            post_process=self.post_process, position_embedding_type="rope", rotary_base=rotary_base,
            share_embeddings_and_output_weights=share_embeddings_and_output_weights,
            **rope_kwargs)  # RoPE scaling (llm_config.megatron_rope_kwargs)
        self.generator = self.make_generator() if self.equipped else None
        self.conditioning = ConditioningContext()
        for module in self.language_model.modules():
            if isinstance(module, ConditionedLayer):
                module.context = self.conditioning

    def equip(self, layer_number: int, spec: ModuleSpec) -> ModuleSpec:
        raise NotImplementedError

    def make_generator(self) -> torch.nn.Module:
        raise NotImplementedError

    def set_input_tensor(self, input_tensor) -> None:
        self.language_model.set_input_tensor(input_tensor)

    def conditioning_for(self, visual_features: torch.Tensor) -> dict:
        """{(layer, projection): conditioning} for every equipped projection of this stage."""
        return self.generator(visual_features) if self.generator is not None else {}

    def forward(self, input_ids, position_ids, attention_mask, visual_features, labels=None, **kwargs):
        with self.conditioning.use(self.conditioning_for(visual_features)):
            return self.language_model(input_ids, position_ids, attention_mask, labels=labels, **kwargs)


def train_only(model: torch.nn.Module, params) -> None:
    """requires_grad on exactly `params` (a method's pre-training set), off everywhere else."""
    keep = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)


class ROSEModel(InjectedGPTModel):
    """A GPTModel whose equipped projections are rotated per image (ROSE)."""

    def __init__(self, config, rose: RoseConfig, vocab_size: int, max_sequence_length: int, **kwargs):
        rose.validate(config)
        self.rose = rose
        super().__init__(config, rose.equipped_layers(config.num_layers), vocab_size,
                         max_sequence_length, **kwargs)

    @property
    def vrmg(self) -> VRMG | None:
        return self.generator

    def make_generator(self) -> VRMG:
        return VRMG(self.rose, self.config, self.equipped)

    def rotations_for(self, visual_features: torch.Tensor) -> dict:
        """T for every equipped projection of this stage: {(layer, projection): (batch, blocks, t)}."""
        return self.conditioning_for(visual_features)

    def equip(self, layer_number: int, spec: ModuleSpec) -> ModuleSpec:
        """Swap the projection linears holding rotated projections for RotatedLinear."""
        classes = linear_classes(self.backend)
        block_sizes = self.rose.block_sizes(self.config)
        swapped = []
        for linear, (_, parallel) in LINEARS.items():
            rotated = tuple(p for p in self.rose.projections if f"linear_{LINEAR_OF[p]}" == linear)
            if not rotated:
                continue
            setattr(linear_owner(spec, linear), linear, ModuleSpec(module=RotatedLinear, params=dict(
                base=classes[parallel], parallel=parallel, layer_number=layer_number,
                rotated=rotated, block_sizes={p: block_sizes[p] for p in rotated})))
            swapped.append(linear)
        if self.backend == "te":
            unfuse_te_norms(spec, swapped)
        return spec


def build_rose(preset: dict, backend: str = "auto", dtype: torch.dtype = torch.float32,
               config_overrides: dict | None = None, **rose_overrides) -> ROSEModel:
    """A ROSEModel for this process's tensor/pipeline-parallel rank from a preset (presets.py)."""
    from megatron_ext.llm_config import gpt_model_kwargs, preset_transformer_config
    from megatron_ext.presets import rose_config

    config = preset_transformer_config(preset, dtype, config_overrides)
    return ROSEModel(config, rose_config(preset, **rose_overrides), backend=backend,
                     **gpt_model_kwargs(preset["llm"]))
