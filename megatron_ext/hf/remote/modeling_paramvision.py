"""An exported ROSE model: vision encoder -> VRMG -> per-image rotations of a Qwen2 LLM's projections.

`model.generate(input_ids, pixel_values=...)` captions/answers about an image; the rotations are
computed once per image (at the first step) and reused for every generated token.
`model.merge_vision(pixel_values)` returns a plain Qwen2ForCausalLM with that image's rotations
merged into its weights (W^T R^T), the paper's inference mode.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel, Qwen2ForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_paramvision import ParamVisionConfig
from .rotation import block_cayley, block_diag_matrix, rotate_transposed
from .vrmg import VRMG

_HF_NAMES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
             "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
             "down": "mlp.down_proj"}


def input_dims(text_config) -> dict:
    heads = text_config.num_attention_heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    h = text_config.hidden_size
    return {"q": h, "k": h, "v": h, "o": heads * head_dim, "gate": h, "up": h,
            "down": text_config.intermediate_size}


class RotatedProjection(nn.Linear):
    """nn.Linear whose input is rotated per sample by the current image's R^T (same names and
    weights as the Qwen2 projection it replaces)."""

    def __init__(self, linear: nn.Linear, key, block_size: int, rotations: dict):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None,
                         device=linear.weight.device, dtype=linear.weight.dtype)
        self.weight, self.bias = linear.weight, linear.bias
        self.key, self.block_size, self.rotations = key, block_size, rotations

    def forward(self, x):
        T = self.rotations.get(self.key)
        if T is not None:  # x is (batch, seq, d); T is (batch, blocks, t): one LU per image
            x = rotate_transposed(x.transpose(0, 1), T, self.block_size).transpose(0, 1)
        return super().forward(x)


class ParamVisionForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = ParamVisionConfig
    base_model_prefix = ""
    _no_split_modules = ["Qwen2DecoderLayer"]

    def __init__(self, config: ParamVisionConfig):
        super().__init__(config)
        inj = config.injection
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.language_model = Qwen2ForCausalLM(config.text_config)
        dims = {p: input_dims(config.text_config)[p] for p in inj["projections"]}
        sizes = {p: d // inj["blocks"] for p, d in dims.items()}
        rose = SimpleNamespace(projections=tuple(inj["projections"]), blocks=inj["blocks"],
                               visual_dim=config.vision_config.hidden_size,
                               generator_width=inj["generator_width"],
                               generator_heads=inj["generator_heads"], block_sizes=lambda _: sizes)
        self.layers = list(inj["layers"])
        self.vrmg = VRMG(rose, None, self.layers)
        self._rotations: dict = {}
        decoder = self.language_model.model.layers
        for layer in self.layers:
            for p in inj["projections"]:
                owner_name, attr = _HF_NAMES[p].split(".")
                owner = getattr(decoder[layer - 1], owner_name)
                setattr(owner, attr, RotatedProjection(getattr(owner, attr), (layer, p), sizes[p],
                                                       self._rotations))
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def visual_features(self, pixel_values, **vision_inputs):
        out = self.vision_tower(pixel_values=pixel_values, output_hidden_states=True, **vision_inputs)
        feats = out.hidden_states[self.config.feature_layer]
        return feats[:, 1:] if self.config.vision_config.model_type.startswith("clip") else feats

    def set_image(self, pixel_values, **vision_inputs) -> dict:
        """Compute and hold the rotations of these images for the following forward calls."""
        self._rotations.clear()
        self._rotations.update(self.vrmg(self.visual_features(pixel_values, **vision_inputs)))
        return dict(self._rotations)

    def forward(self, input_ids=None, attention_mask=None, pixel_values=None, labels=None,
                past_key_values=None, cache_position=None, **kwargs):
        first_step = cache_position is None or int(cache_position[0]) == 0
        if pixel_values is not None and first_step:
            self.set_image(pixel_values)
        elif pixel_values is None and first_step:
            self._rotations.clear()  # text only: the plain LLM
        out = self.language_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                                  past_key_values=past_key_values, cache_position=cache_position,
                                  **kwargs)
        return CausalLMOutputWithPast(loss=out.loss, logits=out.logits,
                                      past_key_values=out.past_key_values)

    def prepare_inputs_for_generation(self, *args, pixel_values=None, **kwargs):
        inputs = self.language_model.prepare_inputs_for_generation(*args, **kwargs)
        inputs["pixel_values"] = pixel_values
        return inputs

    @torch.no_grad()
    def merge_vision(self, pixel_values, **vision_inputs) -> Qwen2ForCausalLM:
        """A plain Qwen2ForCausalLM whose projections carry one image's rotation: W^T R^T."""
        if pixel_values.shape[0] != 1:
            raise ValueError("merge_vision takes one image (pixel_values of batch size 1)")
        T = self.vrmg(self.visual_features(pixel_values, **vision_inputs))
        merged = Qwen2ForCausalLM(self.config.text_config).to(self.device, self.dtype)
        merged.load_state_dict(self.language_model.state_dict())
        for (layer, p), t in T.items():
            owner_name, attr = _HF_NAMES[p].split(".")
            linear = getattr(getattr(merged.model.layers[layer - 1], owner_name), attr)
            R = block_diag_matrix(block_cayley(t[0], linear.in_features // t.shape[-2]))
            linear.weight.copy_((linear.weight.float() @ R.T).to(linear.weight.dtype))
        return merged
