"""An exported parameter-space vision model: vision encoder -> generator -> per-image changes of a
Qwen2 or Llama LLM's projections (text_config says which), with nothing added to the token sequence.

  ROSE:  the VRMG gives per-image rotations; a projection computes W^T (R^T x).
  VLoRA: the perceptual weights generator gives W_v; a projection computes x W + (x W_v) W_s.
  VoRA:  (merged) the image's patches enter the sequence through a small embedding, in place of
         its placeholder tokens, attending bidirectionally among themselves; no encoder, no LoRA.

`model.generate(input_ids, pixel_values=...)` answers about an image; the image's conditioning is
computed once (at the first step) and reused for every generated token (ROSE: the rotations R^T
themselves are built then, so a decoding step only applies them, one small GEMM per projection).
`model.merge_vision(pixel_values)` returns a plain Qwen2/LlamaForCausalLM with one image merged into its
weights (ROSE: W^T R^T; VLoRA: W + W_v W_s), the papers' inference mode.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn
from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoModel, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_paramvision import ParamVisionConfig
from .rotation import apply_rotation, rotations_of
from .vlora_generator import PerceptualWeightsGenerator
from .vora_embedding import VisionEmbedding
from .vrmg import VRMG

_HF_NAMES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
             "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
             "down": "mlp.down_proj"}


_VLORA_PARTS = {"mlp": ("gate", "up")}  # VLoRA weight type -> the projections sharing its W_v


def input_dims(text_config) -> dict:
    heads = text_config.num_attention_heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    h = text_config.hidden_size
    return {"q": h, "k": h, "v": h, "o": heads * head_dim, "gate": h, "up": h, "mlp": h,
            "down": text_config.intermediate_size}


def causal_lm_class(text_config):
    """The plain transformers LLM of the exported architecture (Qwen2ForCausalLM, LlamaForCausalLM)."""
    return MODEL_FOR_CAUSAL_LM_MAPPING[type(text_config)]


def _no_init_weights():
    """transformers' context that skips weight initialisation (v5: transformers.initialization)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


class RotatedProjection(nn.Linear):
    """nn.Linear whose input is rotated per sample by the current image's R^T (same names and
    weights as the Qwen2/Llama projection it replaces)."""

    def __init__(self, linear: nn.Linear, key, rotations: dict):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None,
                         device=linear.weight.device, dtype=linear.weight.dtype)
        self.weight, self.bias = linear.weight, linear.bias
        self.key, self.rotations = key, rotations

    def forward(self, x):
        Rt = self.rotations.get(self.key)
        if Rt is not None:  # x is (batch, seq, d); Rt is (batch, blocks, b, b), built at prefill
            x = apply_rotation(x.transpose(0, 1), Rt).transpose(0, 1)
        return super().forward(x)


class PerceptualLoRAProjection(nn.Linear):
    """nn.Linear plus VLoRA's per-image branch scale * (x W_v) W_s; W_s is `lora_B` (out x rank)."""

    def __init__(self, linear: nn.Linear, key, rank: int, scale: float, conditioning: dict):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None,
                         device=linear.weight.device, dtype=linear.weight.dtype)
        self.weight, self.bias = linear.weight, linear.bias
        self.lora_B = nn.Parameter(torch.zeros(linear.out_features, rank, dtype=linear.weight.dtype))
        self.key, self.scale, self.conditioning = key, scale, conditioning

    def forward(self, x):
        out = super().forward(x)
        W_v = self.conditioning.get(self.key)  # (batch, in, rank)
        if W_v is not None:
            out = out + self.scale * torch.einsum("bsi,bir->bsr", x, W_v.to(x.dtype)) @ self.lora_B.T
        return out

    def delta(self, W_v: torch.Tensor) -> torch.Tensor:
        """scale * (W_v W_s)^T in the weight's (out, in) layout, for one image's W_v (in, rank)."""
        return self.scale * self.lora_B @ W_v.T


def _vision_tower(vision_config):
    if vision_config.model_type == "efficientnet_lite":  # shipped beside this file (efficientnet.py)
        from .efficientnet import EfficientNetLite
        return EfficientNetLite(vision_config)
    return AutoModel.from_config(vision_config)


def _is_prefill(past_key_values, cache_position) -> bool:
    """True on the first forward of a generation (or outside generation): the image is read then."""
    if cache_position is not None:
        return int(cache_position[0]) == 0
    return past_key_values is None or past_key_values.get_seq_length() == 0


def _projection(layer_module, projection: str):
    owner_name, attr = _HF_NAMES[projection].split(".")
    return getattr(layer_module, owner_name), attr


class ParamVisionForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = ParamVisionConfig
    base_model_prefix = ""
    _no_split_modules = ["Qwen2DecoderLayer", "LlamaDecoderLayer"]

    def __init__(self, config: ParamVisionConfig):
        super().__init__(config)
        inj = config.injection
        self.language_model = causal_lm_class(config.text_config)(config.text_config)
        if config.method == "vora":
            self.vision_embedding = VisionEmbedding(**inj["embedding"],
                                                    hidden_size=config.text_config.hidden_size,
                                                    eps=config.text_config.rms_norm_eps)
            self.layers = []
            self.post_init()
            return
        self.vision_tower = _vision_tower(config.vision_config)
        if config.method == "llava":  # the image's projected features in its placeholder positions
            hidden, bias = config.text_config.hidden_size, inj["projector_bias"]
            self.projector = nn.ModuleDict({
                "linear_1": nn.Linear(config.vision_config.hidden_size, hidden, bias=bias),
                "linear_2": nn.Linear(hidden, hidden, bias=bias)})
            self.layers = []
            self.post_init()
            return
        self.layers = list(inj["layers"])
        self._conditioning: dict = {}
        decoder = self.language_model.model.layers
        dims = input_dims(config.text_config)
        if config.method == "rose":
            sizes = {p: dims[p] // inj["blocks"] for p in inj["projections"]}
            self.vrmg = VRMG(self.layers, tuple(inj["projections"]), inj["blocks"], sizes,
                             config.vision_config.hidden_size, inj["generator_width"],
                             inj["generator_heads"])
            for layer in self.layers:
                for p in inj["projections"]:
                    owner, attr = _projection(decoder[layer - 1], p)
                    setattr(owner, attr, RotatedProjection(getattr(owner, attr), (layer, p),
                                                           self._conditioning))
        elif config.method == "vlora":
            types = tuple(inj["weight_types"])
            self.generator = PerceptualWeightsGenerator(
                types, {t: dims[t] for t in types}, inj["rank"], config.vision_config.hidden_size,
                inj["generator_width"], inj["generator_depth"], inj["generator_heads"],
                inj["generator_mlp_ratio"], self.layers, self.layers, inj.get("positional_tokens", 0))
            for layer in self.layers:
                for t in types:
                    for p in _VLORA_PARTS.get(t, (t,)):
                        owner, attr = _projection(decoder[layer - 1], p)
                        setattr(owner, attr, PerceptualLoRAProjection(
                            getattr(owner, attr), (layer, t), inj["rank"], inj["scale"], self._conditioning))
        else:
            raise ValueError(f"method {config.method!r} has no modeling code in this export")
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def visual_features(self, pixel_values, **vision_inputs):
        out = self.vision_tower(pixel_values=pixel_values, output_hidden_states=True, **vision_inputs)
        feats = out.hidden_states[self.config.feature_layer]
        return feats[:, 1:] if self.config.vision_config.model_type.startswith("clip") else feats

    def conditioning(self, pixel_values, **vision_inputs) -> dict:
        """{(layer, projection or weight type): R^T blocks (ROSE: (batch, blocks, b, b), fp32) or
        W_v (VLoRA)} for these images.

        An image repeated in the batch (several questions about one image, batched together) is
        encoded and turned into its conditioning once, then indexed: the same values, a fraction of
        the vision work (the encoder, the generator and the rotations' factorisations)."""
        if not vision_inputs and pixel_values.shape[0] > 1:
            unique, index = torch.unique(pixel_values.flatten(1), dim=0, return_inverse=True)
            if unique.shape[0] < pixel_values.shape[0]:
                once = self._conditioning_of(unique.reshape(-1, *pixel_values.shape[1:]))
                return {k: v.index_select(0, index) for k, v in once.items()}
        return self._conditioning_of(pixel_values, **vision_inputs)

    def _conditioning_of(self, pixel_values, **vision_inputs) -> dict:
        features = self.visual_features(pixel_values, **vision_inputs)
        if self.config.method == "rose":  # every rotation of every layer built at once, per image
            return rotations_of(self.vrmg(features))
        return self.generator(features)

    def set_image(self, pixel_values, **vision_inputs) -> dict:
        """Compute and hold these images' conditioning for the following forward calls."""
        conditioning = self.conditioning(pixel_values, **vision_inputs)
        if self.config.method == "rose":  # applied at every step in the model's dtype: cast once here
            conditioning = {k: v.to(self.dtype) for k, v in conditioning.items()}
        self._conditioning.clear()
        self._conditioning.update(conditioning)
        return dict(self._conditioning)

    def _llava_inputs(self, input_ids, pixel_values):
        """Embeddings with the projector's tokens in the image placeholders (causal attention)."""
        embeds = self.language_model.get_input_embeddings()(input_ids)
        is_image = input_ids == self.config.injection["image_token_id"]
        feats = self.visual_features(pixel_values)
        p = self.projector
        tokens = p["linear_2"](nn.functional.gelu(p["linear_1"](feats.to(p["linear_1"].weight.dtype))))
        tokens = tokens.reshape(-1, tokens.shape[-1]).to(embeds.dtype)
        if tokens.shape[0] != int(is_image.sum()):
            raise ValueError(f"the images give {tokens.shape[0]} tokens but the text has "
                             f"{int(is_image.sum())} image placeholders")
        return embeds.masked_scatter(is_image[..., None], tokens)

    def _vora_inputs(self, input_ids, pixel_values, attention_mask):
        """Embeddings with each sample's image tokens in its placeholder positions, and the 4D mask:
        causal, plus bidirectional among the tokens of the image."""
        embeds = self.language_model.get_input_embeddings()(input_ids)
        is_image = input_ids == self.config.injection["image_token_id"]
        tokens = torch.cat([self.vision_embedding(img) for img in pixel_values]).to(embeds.dtype)
        if tokens.shape[0] != int(is_image.sum()):
            raise ValueError(f"the images give {tokens.shape[0]} tokens but the text has "
                             f"{int(is_image.sum())} image placeholders")
        embeds = embeds.masked_scatter(is_image[..., None], tokens)
        s = input_ids.shape[1]
        allowed = torch.ones(s, s, dtype=torch.bool, device=input_ids.device).tril()[None]
        if self.config.injection.get("bidirectional", True):
            allowed = allowed | (is_image[:, :, None] & is_image[:, None, :])
        if attention_mask is not None:  # padding
            allowed = allowed & attention_mask[:, None, :].bool()
        mask = torch.zeros(allowed.shape, dtype=embeds.dtype, device=embeds.device)
        mask = mask.masked_fill(~allowed, torch.finfo(embeds.dtype).min)[:, None]
        return embeds, mask

    def forward(self, input_ids=None, attention_mask=None, pixel_values=None, labels=None,
                past_key_values=None, cache_position=None, logits_to_keep=0, **kwargs):
        # named, not left in kwargs: generate() passes logits_to_keep=1 only to a forward that
        # names it, and without it the prefill ran the LM head (49k x 576 for SmolLM2) on every
        # prompt position
        kwargs["logits_to_keep"] = logits_to_keep
        first_step = _is_prefill(past_key_values, cache_position)
        if self.config.method == "llava":
            if pixel_values is not None and first_step:
                kwargs["inputs_embeds"] = self._llava_inputs(input_ids, pixel_values)
                input_ids = None
            out = self.language_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                                      past_key_values=past_key_values, cache_position=cache_position, **kwargs)
            return CausalLMOutputWithPast(loss=out.loss, logits=out.logits, past_key_values=out.past_key_values)
        if self.config.method == "vora":
            if pixel_values is not None and first_step:
                embeds, mask = self._vora_inputs(input_ids, pixel_values, attention_mask)
                out = self.language_model(inputs_embeds=embeds, attention_mask=mask, labels=labels,
                                          past_key_values=past_key_values,
                                          cache_position=cache_position, **kwargs)
            else:
                out = self.language_model(input_ids=input_ids, attention_mask=attention_mask,
                                          labels=labels, past_key_values=past_key_values,
                                          cache_position=cache_position, **kwargs)
            return CausalLMOutputWithPast(loss=out.loss, logits=out.logits,
                                          past_key_values=out.past_key_values)
        if pixel_values is not None and first_step:
            self.set_image(pixel_values)
        elif pixel_values is None and first_step:
            self._conditioning.clear()  # text only: the plain LLM
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
    def merge_vision(self, pixel_values, **vision_inputs) -> PreTrainedModel:
        """A plain Qwen2ForCausalLM or LlamaForCausalLM (the exported LLM's class) whose projections
        carry one image (batch of 1) in their weights."""
        if self.config.method in ("vora", "llava"):
            raise ValueError(f"a {self.config.method} model has its image in the sequence, not in the "
                             "weights: nothing to merge")
        if pixel_values.shape[0] != 1:
            raise ValueError("merge_vision takes one image (pixel_values of batch size 1)")
        cond = self.conditioning(pixel_values, **vision_inputs)
        with _no_init_weights():  # every tensor is overwritten below: skip the random init
            merged = causal_lm_class(self.config.text_config)(self.config.text_config).to(self.device, self.dtype)
        state = {k: v for k, v in self.language_model.state_dict().items() if not k.endswith("lora_B")}
        merged.load_state_dict(state)
        merged.generation_config = copy.deepcopy(self.generation_config)  # its eos/pad ids, its defaults
        ours = self.language_model.model.layers
        for layer in self.layers:
            for p in _HF_NAMES:
                owner, attr = _projection(ours[layer - 1], p)
                module = getattr(owner, attr)
                target = getattr(_projection(merged.model.layers[layer - 1], p)[0], attr)
                if isinstance(module, RotatedProjection):  # W^T R^T, block by block, in fp32
                    Rt = cond[module.key][0]                                   # (blocks, b, b)
                    w = target.weight.float().unflatten(-1, Rt.shape[:2])     # (out, blocks, b)
                    merged_w = torch.einsum("okj,kji->oki", w, Rt).flatten(-2)
                    target.weight.copy_(merged_w.to(target.weight.dtype))
                elif isinstance(module, PerceptualLoRAProjection):  # W + W_v W_s
                    target.weight.add_(module.delta(cond[module.key][0]).to(target.weight.dtype))
        return merged
