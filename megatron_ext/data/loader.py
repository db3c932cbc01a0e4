"""Micro-batches for one data-parallel rank from an indexable dataset and a RankSampler.

A dataset item that is None (a corrupt sample: undecodable image, bad text) is skipped and
counted; the rank takes its next sample instead, so a bad sample never stops training.
"""

from __future__ import annotations

import json
import logging

import torch

from megatron_ext.data.dali import DaliLoader
from megatron_ext.data.sampler import RankSampler
from megatron_ext.data.shards import ShardDataset
from megatron_ext.data.synthetic import SyntheticFeaturePairs
from megatron_ext.data.text import build_tokenizer
from megatron_ext.hf.vision_tower import MEAN, STD, tower_pixel_stats
from megatron_ext.methods import MethodSpec

log = logging.getLogger(__name__)


class MicroBatchLoader:
    def __init__(self, dataset, sampler: RankSampler, micro_batch_size: int, max_skips: int = 1000):
        self.dataset, self.sampler, self.mbs = dataset, sampler, micro_batch_size
        self.corrupt = 0
        self.max_skips = max_skips

    def _next_sample(self) -> dict:
        for _ in range(self.max_skips):
            index = self.sampler.next_index()
            sample = self.dataset[index]
            if sample is not None:
                return sample
            self.corrupt += 1
        raise RuntimeError(f"{self.max_skips} corrupt samples in a row: the data is broken, not a sample")

    def next_microbatch(self) -> dict:
        samples = [self._next_sample() for _ in range(self.mbs)]
        batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
        seq = batch["input_ids"].shape[1]
        batch["position_ids"] = torch.arange(seq).expand(self.mbs, seq)
        return batch

    def state_dict(self) -> dict:
        return dict(sampler=self.sampler.state_dict(), corrupt=self.corrupt)

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.corrupt = int(state["corrupt"])


def image_tokens(cfg, preset: dict, spec: MethodSpec) -> int:
    """Tokens each image takes in the sequence (the method's spec: VoRA's patches of
    data.image_size; 0 for methods whose image enters the weights). spec: the run's method, as
    the Trainer resolved it (as for every `spec` argument here)."""
    return spec.image_tokens(cfg, preset)


def pixel_stats(cfg, spec: MethodSpec) -> tuple[tuple, tuple]:
    """(mean, std) the loaders normalise with: the method's own where its spec has them (VoRA's
    pixels feed its own patch embedding, whose teacher re-normalises: 0.5), else the vision
    tower's (its directory's preprocessor_config.json), so that a CLIP tower sees CLIP's
    statistics in training as in the export; mean = std = 0.5 without one."""
    if spec.pixel_stats is not None:
        return spec.pixel_stats(cfg)
    if not cfg.model.vision_weights:
        return MEAN, STD
    return tower_pixel_stats(cfg.model.vision_weights)


def shard_dataset(cfg, preset: dict, manifest: str, spec: MethodSpec) -> ShardDataset:
    """The pipeline's shards at `manifest` as training reads them (tokenizer, prompt, task, image
    size and statistics of cfg): the training data, or its held-out validation shards."""
    d = cfg.data
    return ShardDataset(manifest, build_tokenizer(d.tokenizer), d.prompt, d.seq_length, d.image_size,
                        image_tokens(cfg, preset, spec), *pixel_stats(cfg, spec), task=d.task)


def samples_per_epoch(loader, cfg) -> int:
    """Training items in one pass over the data: samples (caption) or question-answer pairs (qa)."""
    if isinstance(loader, MicroBatchLoader):
        return len(loader.dataset)
    return int(json.loads(open(cfg.data.manifest).read())["num_samples"])  # DALI reads every sample


def build_loader(cfg, preset: dict, dp_rank: int, dp_size: int, spec: MethodSpec):
    d = cfg.data
    if d.kind == "synthetic":
        dataset = SyntheticFeaturePairs(d.pairs, d.seq_length, d.visual_tokens,
                                        preset["vision"]["hidden_size"], preset["llm"]["vocab_size"],
                                        seed=d.seed)
    elif d.kind == "webdataset":
        dataset = shard_dataset(cfg, preset, d.manifest, spec)
    elif d.kind == "dali":
        if d.task != "caption":
            raise ValueError(f"data.task={d.task} reads each sample's question-answer pairs, which the "
                             f"DALI loader does not: use data.kind=webdataset")
        device = torch.cuda.current_device() if torch.cuda.is_available() else None
        return DaliLoader(d.manifest, build_tokenizer(d.tokenizer), d.prompt, d.seq_length,
                          d.image_size, cfg.train.micro_batch_size, dp_rank, dp_size, d.seed, device,
                          image_tokens(cfg, preset, spec), *pixel_stats(cfg, spec))
    else:
        raise ValueError(f"data.kind={d.kind}: use synthetic, webdataset or dali")
    return MicroBatchLoader(dataset, RankSampler(len(dataset), dp_rank, dp_size, d.seed),
                            cfg.train.micro_batch_size)
