"""Synthetic image-text pairs as visual *features* (no pixels): tests, the demo, benchmarks.

`pairs` fixed feature tensors, each with its own caption; a frozen LLM cannot tell which caption
goes with which features, so the loss can only fall when the injected conditioning carries them.
Sample i is a pure function of (seed, i): resumption is exact by construction.
"""

from __future__ import annotations

import torch


class SyntheticFeaturePairs:
    def __init__(self, pairs: int, seq_length: int, visual_tokens: int, visual_dim: int, vocab: int,
                 seed: int = 0, pad_id: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.features = torch.randn(pairs, visual_tokens, visual_dim, generator=g)
        # tokens 1..vocab-1 so that no caption contains the pad id
        self.captions = torch.randint(1, vocab, (pairs, seq_length + 1), generator=g)
        self.seq_length = seq_length

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        cap = self.captions[i]
        return dict(input_ids=cap[:-1], labels=cap[1:], loss_mask=torch.ones(self.seq_length),
                    visual_features=self.features[i])
