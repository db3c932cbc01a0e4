import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))          # the project's packages
sys.path.insert(0, str(ROOT / "tests"))  # test helpers (distributed.py), also for spawned workers
os.environ.setdefault("WANDB_MODE", "offline")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (Transformer Engine / FP8); runs on the GPU machine")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # (keywords also hold directory names)
            item.add_marker(skip)


@pytest.fixture(scope="session")
def megatron_single_process():
    """torch.distributed with world size 1 and Megatron's model-parallel state (TP=PP=1)."""
    from megatron_ext.parallel import init_parallel
    init_parallel(1, 1)
    yield
