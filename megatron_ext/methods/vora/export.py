"""VoRA's part of a Hugging Face export: merged, as the paper deploys it (LoRA folded into the base
weights, aux heads dropped), so the folder holds a plain Qwen2 and the vision embedding."""

from __future__ import annotations

from megatron_ext.hf.image_placeholder import image_placeholder
from megatron_ext.methods.spec import HFExport
from megatron_ext.methods.vora.model import VoRAModel


def vora_lm(model) -> VoRAModel:
    """The VoRAModel of a bare one or of the training wrapper (VoRAVisionModel)."""
    return model if isinstance(model, VoRAModel) else model.lm


def merge(model) -> None:
    """Fold the LoRA into the base weights and drop the aux heads, in place."""
    vora_lm(model).merge_and_unload()


def vora_export(model, tokenizer) -> HFExport:
    lm = vora_lm(model)
    lm.merge_and_unload()
    v = lm.vora
    token = image_placeholder(tokenizer)  # the one training used
    return HFExport(
        lm=lm,
        state={f"vision_embedding.{k}": t.detach().clone() for k, t in lm.vision_embedding.state_dict().items()},
        injection={"embedding": v.embedding(), "bidirectional": v.bidirectional,
                   "image_token_id": tokenizer.convert_tokens_to_ids(token)},
        processor={"image_token": token, "patch_size": v.patch_size})
