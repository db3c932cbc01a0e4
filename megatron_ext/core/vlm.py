"""VisionLanguageModel: a vision tower on the first pipeline stage feeding a parameter-injected LLM
(ROSE; VLoRA/VoRA through the same InjectedGPTModel interface) on every stage.

The tower runs once per micro-batch on the first stage; stages holding equipped layers receive
the features (core/feature_exchange.py), and when the tower trains (ROSE S2/S3) their gradients come
back. Across TP ranks the tower is replicated: its inputs and the gradients reaching it are
identical on every rank (the generator's are, see rotated_linear.py), so it stays consistent
without extra communication.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state

from megatron_ext.core import feature_exchange
from megatron_ext.core.specs import stage_layers
from megatron_ext.core.wrapper import LLMWrapper


class VisionLanguageModel(LLMWrapper):
    """vision: a VisionTower (megatron_ext/hf/vision_tower.py) on the first stage, None elsewhere."""

    def __init__(self, lm, vision: torch.nn.Module | None, equipped_layers: list[int], train_vision: bool):
        super().__init__(lm)
        pp = parallel_state.get_pipeline_model_parallel_world_size()
        if (self.stage == 0) != (vision is not None):
            raise ValueError("the vision tower belongs on the first pipeline stage, and only there")
        self.vision = vision
        self.train_vision = train_vision
        if vision is not None:
            vision.set_trainable(train_vision)
        equipped = set(equipped_layers)
        self.consumers = [r for r in range(1, pp)
                          if equipped & set(stage_layers(lm.config, pp_rank=r))]
        if self.consumers:
            # collective: every rank builds the model, while inside the schedule only stage pairs talk
            feature_exchange.feature_group()

    def encode(self, pixel_values: torch.Tensor, **vision_inputs) -> torch.Tensor:
        with torch.set_grad_enabled(self.train_vision and torch.is_grad_enabled()):
            return self.vision(pixel_values, **vision_inputs)

    def forward(self, input_ids, position_ids, attention_mask, pixel_values=None, labels=None,
                vision_inputs: dict | None = None, **kwargs):
        if self.vision is not None:
            feats = self.encode(pixel_values, **(vision_inputs or {}))
            if self.consumers:
                feature_exchange.send_features(feats, self.consumers, hint=input_ids.shape)
            out = self.lm(input_ids, position_ids, attention_mask, feats, labels=labels, **kwargs)
            if self.consumers and self.train_vision and torch.is_grad_enabled():
                out = feature_exchange.collect_feature_grads(out, feats, self.consumers)
            return out
        feats = None
        if self.stage in self.consumers:
            feats = feature_exchange.recv_features(
                self.config.params_dtype, torch.cuda.current_device() if torch.cuda.is_available()
                else torch.device("cpu"), with_grad=self.train_vision and torch.is_grad_enabled(),
                hint=input_ids.shape)
        return self.lm(input_ids, position_ids, attention_mask, feats, labels=labels, **kwargs)
