"""Which samples each data-parallel rank reads, in what order, and where it stands.

Each epoch is a seeded permutation of the dataset; DP rank r reads positions r, r + dp, ... of
it, so ranks read disjoint samples. The position (epoch, cursor) is all the state there is: a
resumed run continues exactly where the saved one stood.
"""

from __future__ import annotations

import torch


class RankSampler:
    def __init__(self, num_samples: int, dp_rank: int, dp_size: int, seed: int, shuffle: bool = True):
        if num_samples < dp_size:
            raise ValueError(f"{num_samples} samples cannot feed {dp_size} data-parallel ranks")
        self.n, self.rank, self.dp, self.seed, self.shuffle = num_samples, dp_rank, dp_size, seed, shuffle
        self.per_rank = num_samples // dp_size  # the tail that does not divide is left out per epoch
        self.epoch, self.cursor = 0, 0
        self._order = None

    def _epoch_order(self) -> torch.Tensor:
        if self._order is None:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed + self.epoch)
                order = torch.randperm(self.n, generator=g)
            else:
                order = torch.arange(self.n)
            self._order = order[self.rank: self.per_rank * self.dp: self.dp]
        return self._order

    def next_index(self) -> int:
        if self.cursor == self.per_rank:
            self.epoch, self.cursor, self._order = self.epoch + 1, 0, None
        index = int(self._epoch_order()[self.cursor])
        self.cursor += 1
        return index

    def state_dict(self) -> dict:
        return dict(epoch=self.epoch, cursor=self.cursor)

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor, self._order = int(state["epoch"]), int(state["cursor"]), None
