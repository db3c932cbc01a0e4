"""Validation during training and steps from epochs, through the train CLI on tiny LLaVA (a tiny
SigLIP frozen, images from shards): every validation.every steps metrics.jsonl holds the loss on
the held-out shards with the right and with shuffled images; train.epochs sets the steps from the
data's size and the log says the passes; a config that asks for validation without held-out shards,
or for both steps and epochs, stops with one line that says what to change."""

import json
import os
import subprocess
import sys

import pytest
import torch

from train_helpers import ROOT

CONFIG = ROOT / "configs" / "train" / "llava" / "s1-tiny.yaml"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from transformers import SiglipImageProcessorPil, SiglipVisionModel

    from llava_helpers import siglip_config
    from test_data import make_shards

    root = tmp_path_factory.mktemp("validation")
    torch.manual_seed(0)
    SiglipVisionModel(siglip_config()).save_pretrained(root / "siglip")
    SiglipImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(root / "siglip")
    for split in ("train", "val"):
        (root / split).mkdir()
    make_shards(root / "train", n_shards=2, per_shard=8, corrupt=())  # 16 training samples
    make_shards(root / "val", n_shards=1, per_shard=6, corrupt=())
    plain = json.loads((root / "train" / "manifest.json").read_text())
    (root / "train" / "plain.json").write_text(json.dumps(plain))  # no held-out shards
    plain["validation_manifest"] = "../val/manifest.json"  # as pipeline/shard.py names its own
    (root / "train" / "manifest.json").write_text(json.dumps(plain))
    return root


def _args(root, run, *overrides):
    return ["--config", str(CONFIG), f"log.run_dir={root / run}", "log.wandb=false",
            f"model.vision_weights={root / 'siglip'}", "checkpoint.every=100",
            f"data.manifest={root / 'train' / 'manifest.json'}", "optim.warmup_steps=1", *overrides]


def _train(root, run, *overrides):
    cmd = [sys.executable, "-m", "megatron_ext.train", *_args(root, run, *overrides)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_validation_loss_with_right_and_shuffled_images_every_n_steps_and_steps_from_epochs(data):
    proc = _train(data, "run", "train.steps=null", "train.epochs=1.5", "validation.every=2",
                  "validation.batches=2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # 1.5 passes over 16 samples at a global batch of 4: 6 steps
    assert "train.epochs=1.5 -> 6 steps x global batch 4 = 1.50 passes over 16 training samples" in proc.stdout
    records = [json.loads(line) for line in (data / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    validated = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in validated] == [2, 4, 6]
    for r in validated:
        assert r["val_image_gap"] == pytest.approx(r["val_loss_shuffled"] - r["val_loss"])
        # the projector's image tokens enter the sequence: another image changes the loss
        assert r["val_loss"] != r["val_loss_shuffled"]
    assert f"validation step 6: loss {validated[-1]['val_loss']:.4f} with the right images" in proc.stdout
    saved = (data / "run" / "config.yaml").read_text()
    assert "steps: 6" in saved and "epochs: 1.5" in saved  # the export and a resume read the steps


def test_validation_without_held_out_shards_says_what_to_change(data, capsys):
    """The CLI's main() in this process (the test above runs it as `python -m`): the check comes
    before any process group, so a Python start with Megatron's imports would buy nothing."""
    from megatron_ext.train import main

    code = main(_args(data, "none", "train.steps=4", "validation.every=2",
                      f"data.manifest={data / 'train' / 'plain.json'}"))
    out = capsys.readouterr()
    assert code == 2, out.out[-2000:] + out.err[-2000:]
    assert "has no validation shards: set shard.validation" in out.out + out.err


@pytest.mark.parametrize("overrides", [["train.epochs=2"], ["train.steps=null"]])
def test_steps_and_epochs_exactly_one(overrides):
    from megatron_ext.training.config import ConfigError, load_config, validate

    with pytest.raises(ConfigError, match="set exactly one of them"):
        validate(load_config(str(CONFIG), overrides), 1)
