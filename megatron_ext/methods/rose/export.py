"""ROSE's part of a Hugging Face export: the VRMG's weights and the settings it is rebuilt from."""

from __future__ import annotations

from megatron_ext.methods.spec import HFExport


def rose_export(model, tokenizer) -> HFExport:
    """model: a VisionLanguageModel around a ROSEModel (the tower is exported beside)."""
    lm, rose = model.lm, model.lm.rose
    return HFExport(
        lm=lm, tower=model.vision,
        state={f"vrmg.{k}": v.detach().clone() for k, v in lm.generator.state_dict().items()},
        injection={"layers": rose.equipped_layers(lm.config.num_layers),
                   "projections": list(rose.projections), "blocks": rose.blocks,
                   "generator_width": rose.generator_width, "generator_heads": rose.generator_heads})
