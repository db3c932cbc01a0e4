"""VLoRA's part of a Hugging Face export: the generator's weights and the settings it is rebuilt
from (each W_s stays beside its projection: megatron_ext/hf/decoder.py)."""

from __future__ import annotations

from megatron_ext.methods.spec import HFExport


def vlora_export(model, tokenizer) -> HFExport:
    """model: a VisionLanguageModel around a VLoRAModel (the tower is exported beside)."""
    lm, v = model.lm, model.lm.vlora
    return HFExport(
        lm=lm, tower=model.vision,
        state={f"generator.{k}": t.detach().clone() for k, t in lm.generator.state_dict().items()},
        injection={"layers": lm.all_equipped, "weight_types": list(v.weight_types), "rank": v.rank,
                   "scale": (v.alpha if v.alpha is not None else v.rank) / v.rank,
                   "generator_width": v.generator_width, "generator_depth": v.generator_depth,
                   "generator_heads": v.generator_heads, "generator_mlp_ratio": v.generator_mlp_ratio,
                   "positional_tokens": v.positional_tokens})
