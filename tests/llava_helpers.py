"""Tiny LLaVA models (tiny-llava preset + a tiny SigLIP tower) and inputs shared by single- and
multi-process tests."""

import re

import torch

from megatron_ext.core.presets import load_preset

LLAVA = load_preset("tiny-llava")
VOCAB = LLAVA["llm"]["vocab_size"]
IMAGE, PATCH = 16, 4
IMAGE_TOKENS = (IMAGE // PATCH) ** 2


def siglip_config():
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(hidden_size=LLAVA["vision"]["hidden_size"], intermediate_size=96,
                              num_hidden_layers=3, num_attention_heads=4, image_size=IMAGE, patch_size=PATCH)


def tiny_tower(seed=3):
    from megatron_ext.hf.vision_tower import VisionTower

    torch.manual_seed(seed)
    return VisionTower.from_config(siglip_config(), feature_layer=LLAVA["llava"]["feature_layer"])


def tiny_llava(with_tower=True, train_vision=False, **kwargs):
    """A LlavaVisionModel (tower on the first pipeline stage only) or, without it, a LlavaLM."""
    from megatron.core import parallel_state

    from megatron_ext.methods.llava.model import LlavaVisionModel, build_llava

    torch.manual_seed(0)
    lm = build_llava(LLAVA, backend="local", **kwargs)
    if not with_tower:
        return lm
    tower = tiny_tower() if parallel_state.is_pipeline_first_stage() else None
    return LlavaVisionModel(lm, tower, train_vision)


def llava_inputs(batch=2, text=8, seed=0, image_id=0):
    """IMAGE_TOKENS placeholders, then `text` tokens, per sample; labels are the next tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (batch, IMAGE_TOKENS + text), generator=g)
    ids[:, :IMAGE_TOKENS] = image_id
    seq = ids.shape[1]
    return dict(input_ids=ids, position_ids=torch.arange(seq).expand(batch, seq),
                pixel_values=torch.randn(batch, 3, IMAGE, IMAGE, generator=g),
                image_mask=(torch.arange(seq) < IMAGE_TOKENS).expand(batch, seq).clone(),
                labels=torch.roll(ids, -1, dims=1))


def forward(model, b, labels=True):
    return model(b["input_ids"], b["position_ids"], None, pixel_values=b["pixel_values"],
                 image_mask=b["image_mask"], labels=b["labels"] if labels else None)


def pp1_names(tensors: dict, model) -> dict:
    """This pipeline stage's {name: tensor} under the PP=1 model's names (layers renumbered)."""
    from megatron_ext.core.specs import stage_layers

    offset = list(stage_layers(model.config))[0] - 1
    renumber = lambda m: f".decoder.layers.{int(m.group(1)) + offset}."
    return {re.sub(r"\.decoder\.layers\.(\d+)\.", renumber, n): t for n, t in tensors.items()}
