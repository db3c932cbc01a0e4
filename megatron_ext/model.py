"""ROSEModel: visual features -> VRMG -> rotation context -> Megatron GPTModel on text tokens only."""

from __future__ import annotations

import logging

import torch
from megatron.core import parallel_state
from megatron.core.enums import ModelType
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.module import MegatronModule

from megatron_ext.config import RoseConfig
from megatron_ext.rotated_linear import RotatedLinear, RotationContext
from megatron_ext.specs import resolve_backend, rose_block_spec, stage_layers
from megatron_ext.vrmg import VRMG

log = logging.getLogger(__name__)


class ROSEModel(MegatronModule):
    """A GPTModel whose equipped projections are rotated per image.

    Under pipeline parallelism every stage holds the VRMG of its own equipped layers and receives
    the visual features with each micro-batch (DESIGN.md rule 7); text activations flow between
    stages as usual through set_input_tensor.
    """

    def __init__(self, config, rose: RoseConfig, vocab_size: int, max_sequence_length: int,
                 backend: str = "auto", pre_process: bool | None = None,
                 post_process: bool | None = None, rotary_base: float = 1000000.0,
                 share_embeddings_and_output_weights: bool = False):
        super().__init__(config)
        if pre_process is None:
            pre_process = parallel_state.is_pipeline_first_stage()
        if post_process is None:
            post_process = parallel_state.is_pipeline_last_stage()
        self.model_type = ModelType.encoder_or_decoder  # read by Megatron's pipeline schedules
        self.backend = resolve_backend(backend)
        self.rose = rose
        self.language_model = GPTModel(
            config, rose_block_spec(config, rose, self.backend), vocab_size, max_sequence_length,
            pre_process=pre_process, post_process=post_process, position_embedding_type="rope",
            rotary_base=rotary_base,
            share_embeddings_and_output_weights=share_embeddings_and_output_weights)
        here = set(stage_layers(config))
        self.equipped = [l for l in rose.equipped_layers(config.num_layers) if l in here]
        self.vrmg = VRMG(rose, config, self.equipped) if self.equipped else None
        self.rotations = RotationContext()
        for module in self.language_model.modules():
            if isinstance(module, RotatedLinear):
                module.context = self.rotations
        self.pre_process, self.post_process = pre_process, post_process

    def set_input_tensor(self, input_tensor) -> None:
        self.language_model.set_input_tensor(input_tensor)

    def rotations_for(self, visual_features: torch.Tensor) -> dict:
        """T for every equipped projection of this stage: {(layer, projection): (batch, blocks, t)}."""
        return self.vrmg(visual_features) if self.vrmg is not None else {}

    def forward(self, input_ids, position_ids, attention_mask, visual_features, labels=None, **kwargs):
        with self.rotations.use(self.rotations_for(visual_features)):
            return self.language_model(input_ids, position_ids, attention_mask, labels=labels, **kwargs)


def build_rose(preset: dict, backend: str = "auto", dtype: torch.dtype = torch.float32,
               config_overrides: dict | None = None, **rose_overrides) -> ROSEModel:
    """A ROSEModel for this process's tensor/pipeline-parallel rank from a preset (presets.py)."""
    from megatron_ext.llm_config import qwen2_transformer_config
    from megatron_ext.presets import rose_config

    llm = preset["llm"]
    config = qwen2_transformer_config(
        llm, parallel_state.get_tensor_model_parallel_world_size(),
        parallel_state.get_pipeline_model_parallel_world_size(), dtype, **(config_overrides or {}))
    return ROSEModel(config, rose_config(preset, **rose_overrides), llm["vocab_size"],
                     llm["max_position_embeddings"], backend=backend,
                     rotary_base=llm.get("rope_theta", 1000000.0))
