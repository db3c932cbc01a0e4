"""Per-micro-batch conditioning handed from a model's generator to its injected linear layers."""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Any, Optional

import torch
from torch.utils import _pytree as pytree


class ConditioningContext:
    """Holds {(layer_number, projection): value} for one micro-batch while the decoder runs.

    ROSE stores each projection's T; LoRA-style methods store their per-sample weights. The model
    sets it around the decoder forward; layers read only their own entry. Autograd keeps what the
    backward needs, so pipeline schedules may interleave forwards and backwards freely.

    Full activation recompute reruns a layer's forward inside the backward, long after the model's
    forward returned. There the values travel with the layer's inputs instead (`carry`): the ones
    that need a gradient are packed into one tensor passed as the decoder's `context` argument
    (Megatron hands it to every layer and through its checkpointed function, which returns its
    gradient), and each conditioned layer reads them back from it in a forward pre-hook (`bind`).
    """

    def __init__(self) -> None:
        self._values: Optional[dict] = None
        self._bound = 0
        self._carried: dict = {}  # a carrier's storage address -> how to read the values back

    @contextmanager
    def use(self, values: dict, carry: bool = False):
        """Yields the decoder block's extra keyword arguments ({} unless carry)."""
        if carry:
            yield {"context": self._pack(values)}
            return
        self._values = values
        try:
            yield {}
        finally:
            self._values = None

    def _pack(self, values: dict) -> torch.Tensor:
        leaves, spec = pytree.tree_flatten(values)
        grads = [i for i, x in enumerate(leaves) if torch.is_tensor(x) and x.requires_grad]
        tensors = [x for x in leaves if torch.is_tensor(x)]
        dtype = torch.float32
        for i in grads:
            dtype = torch.promote_types(dtype, leaves[i].dtype)
        device = tensors[0].device if tensors else torch.device("cpu")
        layout, offset = [], 0
        for i in grads:
            layout.append((i, offset, leaves[i].numel(), leaves[i].shape, leaves[i].dtype))
            offset += leaves[i].numel()
        # one spare element: never empty (a unique address), and always requiring a gradient, so the
        # checkpointed function's output does even where the decoder's input does not (a frozen
        # embedding on the first stage), and the layers' weights get theirs
        carrier = torch.cat([leaves[i].reshape(-1).to(dtype) for i in grads]
                            + [torch.zeros(1, dtype=dtype, device=device)])
        if not carrier.requires_grad:
            carrier.requires_grad_(True)
        rest = [None if i in set(grads) else x for i, x in enumerate(leaves)]
        key = carrier.untyped_storage().data_ptr()
        self._carried[key] = (spec, rest, layout)
        weakref.finalize(carrier, self._carried.pop, key, None)  # lives as long as the backward needs it
        return carrier

    def _unpack(self, carrier: torch.Tensor, entry) -> dict:
        spec, rest, layout = entry
        leaves = list(rest)
        for i, offset, n, shape, dtype in layout:
            leaves[i] = carrier.narrow(0, offset, n).view(shape).to(dtype)
        return pytree.tree_unflatten(leaves, spec)

    def bind(self, module, args, kwargs) -> None:
        """Forward pre-hook of a conditioned decoder layer: its values from a carried `context`."""
        carrier = kwargs.get("context")
        if not torch.is_tensor(carrier):
            return
        entry = self._carried.get(carrier.untyped_storage().data_ptr())
        if entry is not None:
            self._values = self._unpack(carrier, entry)
            self._bound += 1

    def unbind(self, module, args, output) -> None:
        if self._bound:
            self._bound -= 1
            if not self._bound:
                self._values = None

    def get(self, layer_number: int, projection: str) -> Any:
        if self._values is None:
            raise RuntimeError(
                f"layer {layer_number} projection '{projection}' needs per-image conditioning but none "
                "is set: run the decoder through the model's forward (or inside ConditioningContext.use)")
        return self._values[(layer_number, projection)]

    def get_optional(self, layer_number: int, projection: str, default: Any = None) -> Any:
        """The entry if this micro-batch has one (e.g. a distillation target), else `default`."""
        if self._values is None:
            return default
        return self._values.get((layer_number, projection), default)


class ConditionedLayer:
    """Mixin for layers that read a ConditioningContext; the model binds `context` after building."""

    context: Optional[ConditioningContext] = None
