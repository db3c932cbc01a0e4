"""Validation during training: every validation.every steps, the loss on the pipeline's held-out
shards (shard.validation) with each sample's own image and with the images shuffled among them.
An image-blind model scores the same on both; the gap (shuffled - matched) is the first sign that
the model uses its image, long before an export is evaluated.

The same fixed micro-batches every time (the first samples of the held-out set, split across the
data-parallel ranks), so the curve shows the model change, not the sample."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from megatron_ext.data.loader import shard_dataset
from megatron_ext.training.config import ConfigError
from megatron_ext.training.step import eval_loss

log = logging.getLogger(__name__)


def validation_manifest(cfg) -> str:
    """validation.manifest, else the one the training manifest names; a clear error without one."""
    if cfg.validation.manifest:
        if not Path(cfg.validation.manifest).is_file():
            raise ConfigError(f"validation.manifest={cfg.validation.manifest}: no such file")
        return cfg.validation.manifest
    train = json.loads(Path(cfg.data.manifest).read_text())
    name = train.get("validation_manifest")
    if not name:
        raise ConfigError(f"validation.every={cfg.validation.every} but data.manifest={cfg.data.manifest} "
                          f"has no validation shards: set shard.validation (e.g. 0.05) in the pipeline "
                          f"config and rerun its shard stage, or set validation.every=0")
    return str(Path(cfg.data.manifest).parent / name)


def _derangement(keys: list) -> list:
    """Position i -> another position whose image differs (a rotation past the equal ones)."""
    n, out = len(keys), []
    for i, key in enumerate(keys):
        j = next((j % n for j in range(i + 1, i + n) if keys[j % n] != key), None)
        if j is None:
            raise ConfigError("validation: the held-out shards hold one image only; shuffling needs two "
                              "(raise shard.validation)")
        out.append(j)
    return out


def _stack(samples: list) -> dict:
    batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
    seq = batch["input_ids"].shape[1]
    batch["position_ids"] = torch.arange(seq).expand(len(samples), seq)
    return batch


class Validator:
    def __init__(self, cfg, preset: dict, dp_rank: int, dp_size: int, spec):
        self.every = cfg.validation.every
        manifest = validation_manifest(cfg)
        dataset = shard_dataset(cfg, preset, manifest, spec)
        mbs = cfg.train.micro_batch_size
        wanted = cfg.validation.batches * mbs * dp_size
        # the first `wanted` readable items, repeated if the held-out set is smaller
        mine = [i % len(dataset) for i in range(wanted)][dp_rank::dp_size]
        samples = [dataset[i] for i in mine]
        keep = [k for k, s in enumerate(samples) if s is not None]
        if not keep:
            raise ConfigError(f"validation: no readable sample in {manifest}")
        samples = [samples[k] for k in keep]
        keys = [dataset.image_key(mine[k]) for k in keep]
        other = _derangement(keys)
        shuffled = [dict(s, pixel_values=samples[j]["pixel_values"]) for s, j in zip(samples, other)]
        cut = lambda xs: [_stack(xs[i:i + mbs]) for i in range(0, len(xs) - mbs + 1, mbs)]  # noqa: E731
        self.matched, self.shuffled = cut(samples), cut(shuffled)
        if not self.matched:
            raise ConfigError(f"validation: fewer readable samples in {manifest} than one micro-batch "
                              f"({mbs}); raise shard.validation")
        if dp_rank == 0 and torch.distributed.get_rank() == 0:
            log.info("validation: every %d steps, %d micro-batches of %d per rank from %s", self.every,
                     len(self.matched), mbs, manifest)

    def due(self, step: int, last: int) -> bool:
        return self.every > 0 and (step % self.every == 0 or step == last)

    def run(self, model) -> dict:
        """-> val_loss (own images), val_loss_shuffled and val_image_gap (shuffled - own)."""
        was_training = model.training
        model.eval()
        try:
            matched, shuffled = eval_loss(model, self.matched), eval_loss(model, self.shuffled)
        finally:
            model.train(was_training)
        return dict(val_loss=matched, val_loss_shuffled=shuffled, val_image_gap=shuffled - matched)
