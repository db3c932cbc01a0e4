"""LLaVA (Liu et al., LLaVA-1.5) on the project's Megatron GPTModel: the input-space baseline.

The vision tower's features pass a 2-layer GELU MLP (LLaVA-1.5's mlp2x_gelu) and replace the text
embedding at the image positions (the data layer's `image_mask`: each sample's image tokens
precede its caption, and carry no loss); the decoder is the plain base LLM, nothing injected.

Under pipeline parallelism the splice happens in the embedding, so only the first stage needs the
image: tower and projector live there, and later stages receive ordinary activations through
Megatron's schedule (no feature exchange, unlike the parameter-space methods). Under tensor
parallelism the projector is replicated: its input and the gradient reaching the decoder input
are identical on every TP rank (the first column-parallel linear all-reduces it), so replicas stay
equal without communication, as the vision tower's do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from megatron_ext.core.llm_config import gpt_model_kwargs, preset_transformer_config
from megatron_ext.core.vlm import VisionLanguageModel
from megatron_ext.methods.llava.config import LlavaConfig, llava_config
from megatron_ext.methods.none.model import BaseLLM


def _device():
    return torch.cuda.current_device() if torch.cuda.is_available() else torch.device("cpu")


class LlavaProjector(nn.Module):
    """visual features (..., visual_dim) -> (..., hidden): Linear, GELU, Linear (names as in
    transformers' LlavaMultiModalProjector, so the export copies the tensors unchanged)."""

    def __init__(self, visual_dim: int, hidden_size: int, bias: bool = True, dtype=torch.float32):
        super().__init__()
        self.linear_1 = nn.Linear(visual_dim, hidden_size, bias=bias, dtype=dtype, device=_device())
        self.linear_2 = nn.Linear(hidden_size, hidden_size, bias=bias, dtype=dtype, device=_device())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features.to(self.linear_1.weight.dtype)
        return self.linear_2(F.gelu(self.linear_1(x)))  # exact GELU, transformers' "gelu"


def splice(embeddings: torch.Tensor, tokens: torch.Tensor, image_mask: torch.Tensor) -> torch.Tensor:
    """embeddings (seq, batch, hidden) with sample b's image positions (image_mask (batch, seq),
    in order) replaced by tokens[b] (batch, n, hidden)."""
    counts = image_mask.sum(dim=1)
    if not bool((counts == tokens.shape[1]).all()):
        raise ValueError(f"each image gives {tokens.shape[1]} visual tokens but image_mask marks "
                         f"{counts.tolist()} positions per sample: data.image_size must give the tower's "
                         f"patch grid (megatron_ext/methods/llava/data.py image_tokens)")
    b, s = torch.nonzero(image_mask, as_tuple=True)  # row-major: sample b's positions in order
    return embeddings.transpose(0, 1).index_put((b, s), tokens.flatten(0, 1).to(embeddings.dtype)).transpose(0, 1)


class LlavaLM(BaseLLM):
    """The base LLM plus, on the first pipeline stage, the projector and the splice."""

    method = "llava"  # its MethodSpec in the registry

    def __init__(self, config, llava: LlavaConfig, vocab_size: int, max_sequence_length: int, **kwargs):
        llava.validate(config)
        self.llava = llava
        super().__init__(config, vocab_size, max_sequence_length, **kwargs)
        self.projector = LlavaProjector(llava.visual_dim, config.hidden_size, llava.projector_bias,
                                        config.params_dtype) if self.pre_process else None

    def forward(self, input_ids, position_ids, attention_mask=None, visual_features=None, labels=None,
                image_mask=None, **kwargs):
        """visual_features: (batch, n, visual_dim), sample b's image; image_mask (batch, seq) marks
        its n positions. Later pipeline stages ignore both (the splice is in the embedding)."""
        decoder_input = None
        if self.pre_process and visual_features is not None:
            if image_mask is None:
                raise ValueError("LLaVA puts the visual tokens in the sequence: pass image_mask (the data "
                                 "loader's, built with image tokens before the text)")
            emb = self.language_model.embedding(input_ids=input_ids, position_ids=position_ids)
            decoder_input = splice(emb, self.projector(visual_features), image_mask)
        return self.language_model(input_ids, position_ids, attention_mask, decoder_input=decoder_input,
                                   labels=labels, **kwargs)


class LlavaVisionModel(VisionLanguageModel):
    """LlavaLM with its vision tower on the first stage (VisionLanguageModel's encode and stage
    logic; no stage but the first reads the features). Names its own parameter groups."""

    def __init__(self, lm: LlavaLM, vision, train_vision: bool):
        super().__init__(lm, vision, [], train_vision)

    def forward(self, input_ids, position_ids, attention_mask, pixel_values=None, image_mask=None,
                labels=None, **kwargs):
        if image_mask is None:
            raise ValueError("LLaVA batches mark their image tokens (image_mask): build them with the "
                             "data loader's image_tokens (megatron_ext/data/loader.py)")
        return super().forward(input_ids, position_ids, attention_mask, pixel_values=pixel_values,
                               labels=labels, image_mask=image_mask, **kwargs)

    def parameter_groups(self) -> dict:
        """projector | vision (the tower's blocks up to the feature layer) | unused (the rest of
        the tower) | llm; every parameter in exactly one."""
        groups = {"projector": [], "vision": [], "unused": [], "llm": []}
        for name, p in self.named_parameters():
            if name.startswith("lm.projector."):
                groups["projector"].append(p)
            elif name.startswith("vision.model."):
                unused = name.removeprefix("vision.model.") in self.vision.unused
                groups["unused" if unused else "vision"].append(p)
            else:
                groups["llm"].append(p)
        return groups


def build_llava(preset: dict, backend: str = "auto", dtype: torch.dtype = torch.float32,
                config_overrides: dict | None = None, **llava_overrides) -> LlavaLM:
    """A LlavaLM for this process's TP/PP rank from a preset (its `llava:` section)."""
    config = preset_transformer_config(preset, dtype, config_overrides)
    return LlavaLM(config, llava_config(preset, **llava_overrides), backend=backend,
                   **gpt_model_kwargs(preset["llm"]))
