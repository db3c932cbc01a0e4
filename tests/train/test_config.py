"""Config loading and validation fail early with messages that name the key and the fix."""

import pytest

from megatron_ext.training.config import ConfigError, load_config, num_microbatches, validate
from megatron_ext.methods import method_names
from megatron_ext.training.model import default_trainable
from train_helpers import TINY_S1


def test_overrides_are_typed_and_dotted():
    cfg = load_config(str(TINY_S1), ["optim.lr=2e-3", "train.steps=7", "train.trainable=[generator, llm]",
                                     "parallel.tensor=2"])
    assert cfg.optim.lr == 0.002 and cfg.train.steps == 7 and cfg.parallel.tensor == 2
    assert cfg.train.trainable == ["generator", "llm"]


@pytest.mark.parametrize("overrides,world,message", [
    (["train.stepz=3"], 1, "unknown key(s) ['stepz']"),
    (["train.steps=abc"], 1, "train.steps: expected int, got 'abc'"),
    (["steps=3"], 1, "name the section"),
    (["parallel.tensor=2", "parallel.pipeline=2"], 2, "not divisible by parallel.tensor x parallel.pipeline"),
    (["train.global_batch_size=6", "train.micro_batch_size=4"], 2,
     "global_batch_size (6) must be divisible by train.micro_batch_size (4) x data-parallel size (2)"),
    (["optim.warmup_steps=50"], 1, "warmup_steps (50) must be below train.steps"),
    (["data.kind=webdataset"], 1, "needs data.manifest"),
    (["optim.min_lr=1.0"], 1, "min_lr"),
])
def test_invalid_configs_say_what_to_change(overrides, world, message):
    with pytest.raises(ConfigError) as e:
        validate(load_config(str(TINY_S1), overrides), world)
    assert message in str(e.value)


def test_micro_batches_per_step():
    cfg = load_config(str(TINY_S1), ["train.global_batch_size=16", "train.micro_batch_size=2"])
    assert validate(cfg, 4) == 4 and num_microbatches(cfg, 4) == 2


def test_each_method_names_its_stages():
    assert default_trainable("rose", "s1") == ["generator"]
    assert default_trainable("rose", "s3") == ["generator", "vision", "llm"]
    assert default_trainable("vlora", "s2") == ["generator", "llm"]
    assert default_trainable("vora", "s1") == ["lora", "embedding", "aux"]
    with pytest.raises(ValueError, match="no default trainable set for method='vlora' stage='s3'"):
        default_trainable("vlora", "s3")
    assert set(method_names()) >= {"rose", "vlora", "vora"}
