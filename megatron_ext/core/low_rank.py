"""Low-rank branches on Megatron's parallel linears, PEFT-style: y = x W + scale * (x A) B.

`lora_linear(base, kind)` subclasses the backend's own ColumnParallelLinear/RowParallelLinear (or
TE's): the fused base weight, its GEMM, FP8 and TP communication stay the backend's, and the
state-dict keys of the base are those of a plain GPTModel (a Megatron checkpoint loads as is; the
adapters are the only new keys). A fused linear (q|k|v, gate|up) gets one adapter per part (no
silent sharing of A between q, k and v), computed as one GEMM for x A and one per part for B, and
added in Megatron's fused output layout (fused_layout.py).

Tensor parallelism, with W the base weight on this rank:
- column-parallel (W: out/tp x in): A replicated, B column-sharded like W. x A is computed in full
  on every rank; its gradient is partial per rank (each sees only its output columns) and is
  all-reduced (copy_to_tensor_model_parallel_region), so A and x get complete gradients.
- row-parallel (W: out x in/tp): A row-sharded like W's input, B replicated. Each rank computes
  x_shard A_shard, a partial sum of x A, all-reduced before B (reduce_from_tensor_model_parallel_region).
Both give exactly the TP=1 result; the collectives move (tokens x rank) values, not (tokens x h).

A method supplies the branch's A by subclassing LowRankMixin (`lora_A`, and `_init_adapter` for
parameters of its own): VoRA's static LoRA (methods/vora/lora.py) and VLoRA's perceptual weights,
A = W_v generated per image and read from the model's ConditioningContext (methods/vlora/layers.py).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from megatron.core import parallel_state
from megatron.core.tensor_parallel import (copy_to_tensor_model_parallel_region,
                                           reduce_from_tensor_model_parallel_region)
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from megatron.core.utils import make_tp_sharded_tensor_for_checkpoint

from megatron_ext.core.context import ConditionedLayer, ConditioningContext
from megatron_ext.core.fused_layout import fuse, fused_parts, interleave_groups


def tp_mark(param: nn.Parameter, dim: Optional[int]) -> nn.Parameter:
    """Megatron's partition attributes (read by checkpointing, grad-norm and the tests' shard_for_rank)."""
    if dim is None:
        param.tensor_model_parallel = False
    else:
        set_tensor_model_parallel_attributes(param, True, dim, 1)
    return param


class LowRankMixin(ConditionedLayer):
    """The shared branch of LoRA and VLoRA layers. Set up by `_init_low_rank` after the base linear.
    `kind` prefixes the built classes' names (LORAColumnParallelLinear, ...)."""

    kind = "LOWRANK"

    def _init_adapter(self) -> None:
        """Parameters of a subclass's own (static A); called after `_init_low_rank`."""

    def _init_low_rank(self, parallel: str, layer_number: int, rank: int, alpha: Optional[float],
                       tp_comm_buffer_name: str, tp_group, adapted: Optional[Sequence[str]]) -> None:
        self.parallel = parallel
        self.layer_number = layer_number
        self.rank = rank
        self.scale = (alpha if alpha is not None else rank) / rank
        self.tp_group = tp_group if tp_group is not None else parallel_state.get_tensor_model_parallel_group()
        tp = self.tp_group.size()
        parts = fused_parts(tp_comm_buffer_name, self.config)
        self.part_names = [p for p, _ in parts]
        # parts of a fused linear without an adapter (e.g. VLoRA on q only) add zeros there
        self.adapted = [p for p in self.part_names if adapted is None or p in adapted]
        out_full = self.weight.shape[0] * (tp if parallel == "column" else 1)
        self.out_sizes = {p: (size if size is not None else out_full) // (tp if parallel == "column" else 1)
                          for p, size in parts}  # this rank's output columns of each part
        self.in_features = self.weight.shape[1]     # this rank's input size
        self.groups = interleave_groups(tp_comm_buffer_name, self.config, tp)
        self.merged = False
        self.context: Optional[ConditioningContext] = None
        dtype = self.config.params_dtype
        # B starts at zero (PEFT, VLoRA's W_s, VoRA): the model is the base LLM at step 0
        self.lora_B = nn.ParameterDict({
            p: tp_mark(nn.Parameter(torch.zeros(n, rank, dtype=dtype, device=self.weight.device)),
                        0 if parallel == "column" else None)
            for p, n in self.out_sizes.items() if p in self.adapted})

    # -- the branch ---------------------------------------------------------------------------
    def lora_A(self) -> torch.Tensor:
        """(in_local, parts * rank), or per sample (batch, in_local, parts * rank)."""
        raise NotImplementedError

    def low_rank_delta(self, x: torch.Tensor) -> torch.Tensor:
        A = self.lora_A().to(x.dtype)
        xa = x @ A if A.dim() == 2 else torch.einsum("sbi,bir->sbr", x, A)  # x: (s, b, in_local)
        if self.tp_group.size() > 1:
            # contiguous: Megatron's _reduce all-reduces `input.contiguous()` and returns `input`,
            # so a strided einsum output would silently stay unreduced
            xa = xa.contiguous()
            xa = copy_to_tensor_model_parallel_region(xa, group=self.tp_group) if self.parallel == "column" \
                else reduce_from_tensor_model_parallel_region(xa, group=self.tp_group)
        xa = dict(zip(self.adapted, xa.split(self.rank, dim=-1)))
        outs = [xa[p] @ self.lora_B[p].to(x.dtype).t() if p in xa
                else x.new_zeros(*x.shape[:-1], self.out_sizes[p]) for p in self.part_names]
        return fuse(outs, self.groups) * self.scale

    def delta_weight(self, A: Optional[torch.Tensor] = None) -> torch.Tensor:
        """scale * (A B)^T in the base weight's local (out, in) layout; A as `lora_A` without batch."""
        A = self.lora_A() if A is None else A
        A = dict(zip(self.adapted, A.split(self.rank, dim=-1)))
        deltas = [A[p] @ self.lora_B[p].t() if p in A else self.weight.new_zeros(self.in_features, n)
                  for p, n in self.out_sizes.items()]
        return fuse(deltas, self.groups).t() * self.scale  # (in, out) per part -> fused (out, in)

    def forward(self, x, *args, **kwargs):
        out, bias = super().forward(x, *args, **kwargs)
        if not self.merged:
            out = out + self.low_rank_delta(x)
        return out, bias

    # -- merge ---------------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self, A: Optional[torch.Tensor] = None) -> None:
        if self.merged:
            raise RuntimeError(f"layer {self.layer_number}: adapter already merged; unmerge first")
        self._merged_delta = self.delta_weight(A).to(self.weight.dtype)
        self.weight.add_(self._merged_delta)
        self.merged = True
        self._weight_changed()

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            raise RuntimeError(f"layer {self.layer_number}: adapter is not merged")
        self.weight.sub_(self._merged_delta)  # the delta that was added (round trip to float rounding)
        del self._merged_delta
        self.merged = False
        self._weight_changed()

    def _weight_changed(self) -> None:
        """TE casts the weight to FP8 on a micro-batch flagged first and reuses that copy until
        the next one: after an in-place change, the next forward must recast it."""
        if hasattr(self, "is_first_microbatch"):
            self.is_first_microbatch = True

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata=None):
        """The base's distributed-checkpoint entries, with TP-sharded adapters marked as such (the
        base treats every extra tensor as replicated)."""
        sd = super().sharded_state_dict(prefix, sharded_offsets, metadata)
        dp = (metadata or {}).get("dp_cp_group") or parallel_state.get_data_parallel_group(
            with_context_parallel=True)
        for name, p in self.named_parameters():
            if name.startswith("lora_") and getattr(p, "tensor_model_parallel", False):
                sd[f"{prefix}{name}"] = make_tp_sharded_tensor_for_checkpoint(
                    p, f"{prefix}{name}", p.partition_dim, prepend_offsets=sharded_offsets,
                    tp_group=self.tp_group, dp_cp_group=dp)
        return sd

    def adapter_parameters(self):
        return [p for n, p in self.named_parameters() if n.startswith("lora_")]


_CLASSES: dict = {}


def lora_linear(base: type, mixin: type) -> type:
    """The backend linear class `base` with the low-rank branch `mixin` (a LowRankMixin subclass).

    Built by Megatron from a ModuleSpec with the usual linear arguments plus `parallel`
    ('column' | 'row'), `layer_number`, `rank`, `alpha` and optionally `adapted` (the parts of a
    fused linear that get an adapter; default all).
    """
    key = (base, mixin)
    if key not in _CLASSES:
        def __init__(self, input_size, output_size, *, parallel: str, layer_number: int, rank: int,
                     alpha: Optional[float] = None, adapted: Optional[Sequence[str]] = None, **kwargs):
            if kwargs.get("gather_output"):
                raise ValueError(f"{type(self).__name__} keeps Megatron's sharded output (gather_output=False)")
            base.__init__(self, input_size, output_size, **kwargs)
            self._init_low_rank(parallel, layer_number, rank, alpha, kwargs.get("tp_comm_buffer_name"),
                                kwargs.get("tp_group"), adapted)
            self._init_adapter()
            if self.config.sequence_parallel:
                raise NotImplementedError("low-rank branches do not support sequence_parallel yet: the "
                                          "branch would need the base's sequence gather/scatter")

        cls = type(f"{mixin.kind}{base.__name__}", (mixin, base),
                   {"__init__": __init__, "_base_class": base, "__module__": __name__})
        _CLASSES[key] = cls
    return _CLASSES[key]


def low_rank_layers(module: nn.Module, mixin: type = LowRankMixin) -> list:
    """The low-rank layers of `module` (of one mixin, by default all)."""
    return [m for m in module.modules() if isinstance(m, mixin)]
