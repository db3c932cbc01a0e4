"""Per-micro-batch conditioning handed from a model's generator to its injected linear layers."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Optional


class ConditioningContext:
    """Holds {(layer_number, projection): value} for one micro-batch while the decoder runs.

    ROSE stores each projection's T; LoRA-style methods store their per-sample weights. The model
    sets it around the decoder forward; layers read only their own entry. Autograd keeps what the
    backward needs, so pipeline schedules may interleave forwards and backwards freely.
    """

    def __init__(self) -> None:
        self._values: Optional[dict] = None

    @contextmanager
    def use(self, values: dict):
        self._values = values
        try:
            yield
        finally:
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
