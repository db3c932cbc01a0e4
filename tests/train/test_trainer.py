"""The Trainer takes the method's spec once per run (megatron_ext/training/trainer.py): the
registry is read once, and the spec object reaches the preflight, the model, the loader, the
validation and the MFU estimate."""

import pytest

from distributed import run_distributed
from train_helpers import TINY_S1

pytestmark = pytest.mark.multiproc


class _CountingRegistry(dict):
    def __init__(self, entries):
        super().__init__(entries)
        self.lookups = []

    def __getitem__(self, name):
        self.lookups.append(name)
        return super().__getitem__(name)


def _train_counting_lookups(rank, root):
    from megatron_ext.methods import registry
    from megatron_ext.train import run
    from megatron_ext.training.config import load_config

    counting = _CountingRegistry(registry._REGISTRY)
    registry._REGISTRY = counting
    out = run(load_config(str(TINY_S1), [f"log.run_dir={root}", "log.wandb=false", "train.steps=2",
                                         "optim.warmup_steps=1", "parallel.pipeline=2"]))
    return dict(lookups=counting.lookups, step=out["step"])


def test_a_run_looks_its_method_up_once(tmp_path):
    """PP=2 on two ranks: the pipeline split, the preflight, the model builder and the MFU estimate
    all need the method, yet each rank asks the registry once."""
    for r in run_distributed(_train_counting_lookups, world_size=2, root=tmp_path):
        assert r["step"] == 2
        assert r["lookups"] == ["rose"]
