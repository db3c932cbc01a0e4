"""Every way of bringing vision into the LLM, behind one registry (docs/ARCHITECTURE.md).

    model = build_model("tiny-vlora", method="vlora")      # or "rose", "vora", "none"
    spec = get_method("vlora")                              # its stages, inputs, FLOPs, export, ...

Without `method`, a preset with exactly one method section (rose:, vlora:, ...) selects it. A new
method is a package here defining SPEC, plus its registration line below.
"""

from __future__ import annotations

import torch

from megatron_ext.methods import none, rose, vlora, vora
from megatron_ext.methods.registry import get_method, method_names, register_method
from megatron_ext.methods.spec import HFExport, MethodSpec
from megatron_ext.core.presets import resolve_preset

register_method(rose.SPEC)
register_method(vlora.SPEC)
register_method(vora.SPEC)
register_method(none.SPEC)


def preset_method(preset: dict) -> str:
    """The only registered method with a section in the preset."""
    present = [m for m in method_names() if m in preset]
    if len(present) != 1:
        raise ValueError(f"the preset has method sections {present}; pass method= one of {method_names()}")
    return present[0]


def build_model(preset, method: str | None = None, backend: str = "auto",
                dtype: torch.dtype = torch.float32, config_overrides: dict | None = None,
                **method_overrides):
    """The model of `method` for this process's TP/PP rank. Method settings come from the
    preset's section of that name (the papers' defaults where absent) plus `method_overrides`."""
    preset = resolve_preset(preset)
    spec = get_method(method if method is not None else preset_method(preset))
    return spec.build(preset, backend, dtype, config_overrides, **method_overrides)


__all__ = ["HFExport", "MethodSpec", "build_model", "get_method", "method_names", "preset_method",
           "register_method", "resolve_preset"]
