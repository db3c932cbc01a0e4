"""The seven projections of a decoder layer as one typed table: which Megatron linear holds each
(Megatron fuses q/k/v into linear_qkv and gate/up into linear_fc1), which side is tensor-parallel
(column: the output is sharded; row: the input), and the input/output sizes.

Every method, the layouts, the HF converters and the FLOPs model read this table instead of
keeping their own copies (docs/ARCHITECTURE.md, "Shared pieces").
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable


@dataclass(frozen=True)
class Projection:
    name: str                       # q, k, v, o, gate, up, down
    linear: str                     # the Megatron linear that holds it: qkv, proj, fc1, fc2
    owner: str                      # the layer submodule of that linear: "attention" | "mlp"
    parallel: str                   # "column" (output sharded) | "row" (input sharded)
    in_size: Callable[[object], int]   # (TransformerConfig) -> input size d of W in R^{d x n}
    out_size: Callable[[object], int]  # (TransformerConfig) -> output size n

    @property
    def attribute(self) -> str:
        """The linear's attribute name in a layer spec's submodules (linear_qkv, ...)."""
        return f"linear_{self.linear}"


def _attn(c) -> int:
    return c.num_attention_heads * c.kv_channels


def _kv(c) -> int:
    return c.num_query_groups * c.kv_channels


_TABLE = (
    Projection("q", "qkv", "attention", "column", lambda c: c.hidden_size, _attn),
    Projection("k", "qkv", "attention", "column", lambda c: c.hidden_size, _kv),
    Projection("v", "qkv", "attention", "column", lambda c: c.hidden_size, _kv),
    Projection("o", "proj", "attention", "row", _attn, lambda c: c.hidden_size),
    Projection("gate", "fc1", "mlp", "column", lambda c: c.hidden_size, lambda c: c.ffn_hidden_size),
    Projection("up", "fc1", "mlp", "column", lambda c: c.hidden_size, lambda c: c.ffn_hidden_size),
    Projection("down", "fc2", "mlp", "row", lambda c: c.ffn_hidden_size, lambda c: c.hidden_size),
)
PROJECTION = {p.name: p for p in _TABLE}
PROJECTIONS = tuple(PROJECTION)                      # q, k, v, o, gate, up, down
# Megatron linear -> the projections fused in it, in fused order
PROJECTIONS_OF = {}
for _p in _TABLE:
    PROJECTIONS_OF.setdefault(_p.linear, ())
    PROJECTIONS_OF[_p.linear] += (_p.name,)
LINEAR_OF = {p.name: p.linear for p in _TABLE}       # projection -> its Megatron linear
# layer-spec attribute -> (owner submodule, parallel mode), one entry per Megatron linear
LINEARS = {p.attribute: (p.owner, p.parallel) for p in _TABLE}


def linears_holding(projections) -> list[str]:
    """The Megatron linear attributes (linear_qkv, ...) that hold any of `projections`, in table order."""
    wanted = {LINEAR_OF[p] for p in projections}
    return [a for a in LINEARS if a.removeprefix("linear_") in wanted]


def input_sizes(config, projections=PROJECTIONS) -> dict[str, int]:
    """Input size of each projection W in R^{d x n} (the dimension ROSE rotates, VLoRA's W_v rows)."""
    return {p: PROJECTION[p].in_size(config) for p in projections}


def shape_config(hidden: int, heads: int, kv_heads: int, head_dim: int, ffn: int):
    """A stand-in with the TransformerConfig fields the size functions read (FLOPs on paper shapes)."""
    return SimpleNamespace(hidden_size=hidden, num_attention_heads=heads, num_query_groups=kv_heads,
                           kv_channels=head_dim, ffn_hidden_size=ffn)
