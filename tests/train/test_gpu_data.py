"""Data on the device, checked on the CPU: a step's micro-batches are read one at a time as the
schedule reaches them (not all decoded before the step), and DALI decodes images only on the
pipeline stage that uses them while every stage reads the same samples."""

from __future__ import annotations

import pytest
import torch

from megatron_ext.data.text import ByteTokenizer
from megatron_ext.training.step import MicroBatches
from test_data import _caption_ids, make_shards


class _CountingLoader:
    def __init__(self):
        self.reads = 0

    def next_microbatch(self):
        self.reads += 1
        return {"input_ids": torch.full((2, 5), self.reads)}


def test_micro_batches_are_read_when_the_schedule_reaches_them():
    loader = _CountingLoader()
    batches = MicroBatches(loader, 3)
    assert len(batches) == 3 and loader.reads == 0
    assert batches[0]["input_ids"].shape == (2, 5) and batches[0]["input_ids"][0, 0] == 1
    assert loader.reads == 1  # the first, read ahead for its shape, once
    it = iter(batches)
    assert next(it)["input_ids"][0, 0] == 1 and loader.reads == 1
    assert next(it)["input_ids"][0, 0] == 2 and loader.reads == 2  # read on demand, not up front
    assert next(it)["input_ids"][0, 0] == 3
    with pytest.raises(StopIteration):
        next(it)
    with pytest.raises(IndexError, match="read in order"):
        batches[1]


def test_dali_decodes_only_where_pixels_are_used_and_reads_the_same_samples(tmp_path):
    pytest.importorskip("nvidia.dali")
    from megatron_ext.data.dali import DaliLoader

    manifest = make_shards(tmp_path, n_shards=2, per_shard=6, corrupt=())

    def loader(decode):
        return DaliLoader(str(manifest), ByteTokenizer(), "", 24, 16, micro_batch_size=2, dp_rank=0,
                          dp_size=1, seed=5, device_id=None, decode=decode)

    first, later = loader(None), loader(False)  # None: no pipeline here, so the first stage
    assert first.decode is True
    for _ in range(3):
        a, b = first.next_microbatch(), later.next_microbatch()
        assert a["pixel_values"].shape == (2, 3, 16, 16) and "pixel_values" not in b
        assert _caption_ids(a) == _caption_ids(b) and torch.equal(a["input_ids"], b["input_ids"])
        assert torch.equal(a["labels"], b["labels"])
    state = later.state_dict()  # a text-only stage checkpoints and resumes its reader too
    expected = [_caption_ids(later.next_microbatch()) for _ in range(2)]
    again = loader(False)
    again.load_state_dict(state)
    assert [_caption_ids(again.next_microbatch()) for _ in range(2)] == expected
