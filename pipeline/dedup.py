"""Exact and near-duplicate detection over 64-bit perceptual hashes, first occurrence wins.

Near duplicates use multi-index hashing: with a Hamming radius d, split the hash into d+1 bands;
two hashes within distance d agree exactly on at least one band (pigeonhole), so only band-mates
are compared. Linear in the number of images instead of quadratic."""
from __future__ import annotations

from typing import Dict, List, Optional


class Deduper:
    def __init__(self, max_distance: Optional[int], exact: bool = True):
        self.max_distance, self.exact = max_distance, exact
        self.seen_exact: set = set()
        self.bands = (max_distance + 1) if max_distance is not None else 0
        self.tables: List[Dict[int, list]] = [dict() for _ in range(self.bands)]

    def _band_keys(self, h: int):
        width = -(-64 // self.bands)
        return [(h >> (i * width)) & ((1 << width) - 1) for i in range(self.bands)]

    def check(self, digest: str, phash: Optional[int]) -> Optional[str]:
        """Returns a drop reason, or None and remembers this image as kept."""
        if self.exact and digest in self.seen_exact:
            return "duplicate_exact"
        if self.bands and phash is not None:
            keys = self._band_keys(phash)
            for table, k in zip(self.tables, keys):
                for other in table.get(k, ()):
                    if bin(phash ^ other).count("1") <= self.max_distance:
                        return "duplicate_near"
            for table, k in zip(self.tables, keys):
                table.setdefault(k, []).append(phash)
        self.seen_exact.add(digest)
        return None
