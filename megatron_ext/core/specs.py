"""Layer specs: Megatron's own GPT layer specs with submodules of chosen layers swapped
(ModuleSpec substitution, no fork of Megatron's model code). Method-specific swaps (ROSE's
RotatedLinear, LoRA-style layers) are functions `equip(layer_number, spec) -> spec`.

Backends: "local" (Megatron-Core layers; CPU and GPU) and "te" (Transformer Engine; GPU, FP8).
"""

from __future__ import annotations

import copy
import logging
from typing import Callable, Optional

import torch
from megatron.core.models.gpt.gpt_layer_specs import (get_gpt_layer_local_spec,
                                                      get_gpt_layer_with_transformer_engine_spec)
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (TransformerBlockSubmodules,
                                                         get_num_layers_to_build)
from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

from megatron_ext.core.projections import LINEARS

log = logging.getLogger(__name__)
_logged = set()


def resolve_backend(backend: str = "auto") -> str:
    """'auto' picks Transformer Engine when its PyTorch extension imports and a GPU is present, else
    local layers. The top package alone imports without the compiled extension (a failed
    transformer-engine-torch build), which then fails at the first layer."""
    choice = backend
    why = ""
    if backend == "auto":
        choice = "local"
        if torch.cuda.is_available():
            try:
                import transformer_engine.pytorch  # noqa: F401
                choice = "te"
            except (ImportError, OSError, RuntimeError) as e:  # missing or mismatched extension
                why = f"; transformer_engine.pytorch does not import: {e}"
    if choice not in ("local", "te"):
        raise ValueError(f"backend={backend!r}: choose 'auto', 'local' or 'te'")
    if (backend, choice) not in _logged:
        _logged.add((backend, choice))
        log.info("linear layers: %s (requested %s)%s", "Transformer Engine" if choice == "te"
                 else "Megatron-Core local", backend, why)
    return choice


def base_layer_spec(backend: str, qk_layernorm: bool = False) -> ModuleSpec:
    """A fresh copy of Megatron's GPT layer spec for the backend (safe to modify)."""
    if backend == "te":
        spec = get_gpt_layer_with_transformer_engine_spec(qk_layernorm=qk_layernorm)
    else:
        spec = get_gpt_layer_local_spec(normalization="RMSNorm", qk_layernorm=qk_layernorm)
    return copy.deepcopy(spec)


def linear_classes(backend: str) -> dict:
    """The backend's parallel linear classes by mode ('column', 'row')."""
    if backend == "te":
        from megatron.core.extensions.transformer_engine import (TEColumnParallelLinear,
                                                                 TERowParallelLinear)
        return {"column": TEColumnParallelLinear, "row": TERowParallelLinear}
    return {"column": ColumnParallelLinear, "row": RowParallelLinear}


def linear_owner(spec: ModuleSpec, linear: str):
    """The submodules object of `spec` that holds `linear` (self-attention or MLP)."""
    owner = LINEARS[linear][0]
    sub = spec.submodules.self_attention if owner == "attention" else spec.submodules.mlp
    return sub.submodules


def unfuse_te_norms(spec: ModuleSpec, linears) -> None:
    """TE fuses the pre-attention/pre-MLP norm into linear_qkv/linear_fc1. A method that must act
    between the norm and the GEMM replaces those linears, so the norm becomes a TENorm of its own."""
    from megatron.core.extensions.transformer_engine import TENorm

    if "linear_qkv" in linears:
        spec.submodules.input_layernorm = TENorm
    if "linear_fc1" in linears:
        spec.submodules.pre_mlp_layernorm = TENorm


def swap_linears(spec: ModuleSpec, backend: str,
                 replacement: Callable[[str, str, type], Optional[ModuleSpec]]) -> ModuleSpec:
    """The one way methods swap a layer's projection linears: `replacement(attribute, parallel,
    base_class)` returns the ModuleSpec for linear_qkv/linear_proj/linear_fc1/linear_fc2 (or None to
    keep it), with `base_class` the backend's column/row-parallel linear. Under TE the norm fused
    into a replaced linear becomes a TENorm of its own (unfuse_te_norms)."""
    classes = linear_classes(backend)
    swapped = []
    for attribute, (_, parallel) in LINEARS.items():
        new = replacement(attribute, parallel, classes[parallel])
        if new is not None:
            setattr(linear_owner(spec, attribute), attribute, new)
            swapped.append(attribute)
    if backend == "te":
        unfuse_te_norms(spec, swapped)
    return spec


def decoder_block_spec(config, backend: str,
                       equip: Optional[Callable[[int, ModuleSpec], ModuleSpec]] = None,
                       equipped: Optional[set] = None, pp_rank=None,
                       vp_stage=None) -> TransformerBlockSubmodules:
    """Per-layer specs for the decoder layers this pipeline stage builds; layers in `equipped`
    (1-based global numbers) get `equip(layer_number, base_layer_spec(backend))`."""
    equipped = equipped or set()
    plain = base_layer_spec(backend, config.qk_layernorm)
    specs = [equip(n, base_layer_spec(backend, config.qk_layernorm)) if n in equipped else plain
             for n in stage_layers(config, pp_rank=pp_rank, vp_stage=vp_stage)]
    if backend == "te":
        from megatron.core.extensions.transformer_engine import TENorm as final_norm
    else:
        from megatron.core.transformer.torch_norm import WrappedTorchNorm as final_norm
    return TransformerBlockSubmodules(layer_specs=specs, layer_norm=final_norm)


def stage_layers(config, pp_rank=None, vp_stage=None) -> range:
    """Global 1-based layer numbers held by this pipeline stage."""
    offset = get_transformer_layer_offset(config, vp_stage=vp_stage, pp_rank=pp_rank)
    return range(offset + 1, offset + get_num_layers_to_build(config, vp_stage=vp_stage,
                                                               pp_rank=pp_rank) + 1)
