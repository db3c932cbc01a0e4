"""Which decoder layers a method equips: listed, or every `every`-th one."""

from __future__ import annotations

from typing import Optional, Sequence


def chosen_layers(layers: Optional[Sequence[int]], every: int, num_layers: int) -> list[int]:
    """1-based layer numbers: `layers` as given (sorted, once each), else every `every`-th layer
    (every=4 on a 28-layer model: 4, 8, ..., 28)."""
    if layers is not None:
        return sorted(set(int(l) for l in layers))
    return [l for l in range(1, num_layers + 1) if l % every == 0]
