"""Layer specs: Megatron's own GPT layer specs with the projections of equipped layers swapped for
RotatedLinear (ModuleSpec substitution, no fork of Megatron's model code).

Backends: "local" (Megatron-Core layers; CPU and GPU) and "te" (Transformer Engine; GPU, FP8).
With TE, the norm that TE fuses into linear_qkv / linear_fc1 is split out into TENorm, because
the rotation must act on the normalised activations, between the norm and the GEMM.
"""

from __future__ import annotations

import copy
import logging

import torch
from megatron.core.models.gpt.gpt_layer_specs import (get_gpt_layer_local_spec,
                                                      get_gpt_layer_with_transformer_engine_spec)
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (TransformerBlockSubmodules,
                                                         get_num_layers_to_build)
from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

from megatron_ext.config import FUSED_LINEAR, RoseConfig
from megatron_ext.rotated_linear import RotatedLinear

log = logging.getLogger(__name__)


def resolve_backend(backend: str = "auto") -> str:
    """'auto' picks Transformer Engine when it imports and a GPU is present, else local layers."""
    if backend == "auto":
        if torch.cuda.is_available():
            try:
                import transformer_engine  # noqa: F401
                backend = "te"
            except ImportError:
                backend = "local"
        else:
            backend = "local"
    if backend not in ("local", "te"):
        raise ValueError(f"backend={backend!r}: choose 'auto', 'local' or 'te'")
    return backend


def _base_layer_spec(backend: str, qk_layernorm: bool = False) -> ModuleSpec:
    if backend == "te":
        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=qk_layernorm)
    return get_gpt_layer_local_spec(normalization="RMSNorm", qk_layernorm=qk_layernorm)


def _linear_classes(backend: str):
    if backend == "te":
        from megatron.core.extensions.transformer_engine import (TEColumnParallelLinear,
                                                                 TERowParallelLinear)
        return TEColumnParallelLinear, TERowParallelLinear
    return ColumnParallelLinear, RowParallelLinear


def rose_layer_spec(layer_number: int, rose: RoseConfig, config, backend: str) -> ModuleSpec:
    """Megatron's layer spec for `backend`, with the equipped projections of this layer rotated."""
    spec = copy.deepcopy(_base_layer_spec(backend, config.qk_layernorm))
    column, row = _linear_classes(backend)
    block_sizes = rose.block_sizes(config)
    attn, mlp = spec.submodules.self_attention.submodules, spec.submodules.mlp.submodules
    targets = {"linear_qkv": (attn, column, "column"), "linear_proj": (attn, row, "row"),
               "linear_fc1": (mlp, column, "column"), "linear_fc2": (mlp, row, "row")}
    for linear, (owner, base, parallel) in targets.items():
        rotated = tuple(p for p in rose.projections if FUSED_LINEAR[p] == linear)
        if not rotated:
            continue
        setattr(owner, linear, ModuleSpec(module=RotatedLinear, params=dict(
            base=base, parallel=parallel, layer_number=layer_number, rotated=rotated,
            block_sizes={p: block_sizes[p] for p in rotated})))
    if backend == "te":
        from megatron.core.extensions.transformer_engine import TENorm
        if any(FUSED_LINEAR[p] == "linear_qkv" for p in rose.projections):
            spec.submodules.input_layernorm = TENorm
        if any(FUSED_LINEAR[p] == "linear_fc1" for p in rose.projections):
            spec.submodules.pre_mlp_layernorm = TENorm
    return spec


def rose_block_spec(config, rose: RoseConfig, backend: str = "auto", pp_rank=None,
                    vp_stage=None) -> TransformerBlockSubmodules:
    """Per-layer specs for the decoder layers this pipeline stage builds."""
    backend = resolve_backend(backend)
    rose.validate(config)
    equipped = set(rose.equipped_layers(config.num_layers))
    offset = get_transformer_layer_offset(config, vp_stage=vp_stage, pp_rank=pp_rank)
    count = get_num_layers_to_build(config, vp_stage=vp_stage, pp_rank=pp_rank)
    plain = _base_layer_spec(backend, config.qk_layernorm)
    specs = [rose_layer_spec(n, rose, config, backend) if n in equipped else plain
             for n in range(offset + 1, offset + count + 1)]
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
