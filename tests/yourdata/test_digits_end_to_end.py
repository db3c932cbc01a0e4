"""Your own captioned images end to end, as docs/YOUR_DATA.md runs them: scikit-learn's digits
(8 x 8, in the scikit-learn wheel) as local PNGs with file:// URLs and captions from their labels
-> the data pipeline (configs/data/local_captions.yaml, a held-out quarter) -> ROSE S1 on the main
preset (configs/train/main/rose-caption-s1.yaml, validation during training, steps from epochs)
-> the export -> the evaluation on the held-out shards. The model must see: label accuracy by
ranking the ten captions above chance and above shuffled images by three standard errors, both
computed by the evaluation from the number of held-out images.

Behind `-m slow` (bash scripts/test.sh -m slow): it took 274 s of a suite run on 2 cores (430 s
loaded), where the default suite must stay under 15 minutes (issue 25), and it cannot shrink: its
60 held-out images pass the bound over shuffled images by about one image (0.30 against
0.067 + 3 x 0.071 on 2026-12-07); fewer steps or images would make that luck. The default suite asserts the same behaviour in faster tests: a real model
that sees, above computed baselines by three standard errors, on held-out real images, and an
export that records its training prompt, readable by all (tests/mainjob); file:// URLs and the
held-out split through the pipeline (tests/pipeline/test_pipeline_validation_split.py);
validation with right and shuffled images and steps from epochs (tests/train/test_validation_epochs.py);
label accuracy by caption ranking with its controls, through the CLI on an export
(tests/eval/test_evaluate_any_data.py). Its cost: the SmolLM2 and EfficientNet conversions
(shared with the main-job tests, or the folders in $PARAMVISION_SMOLLM2 / $PARAMVISION_EFFICIENTNET),
a local Ray, about 40 steps of a 135M model, 60 held-out images x 10 captions x 2."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = "a photo of the digit {}"


def _run(cmd, log: Path, timeout=2400):
    env = dict(os.environ, PYTHONPATH=str(ROOT), WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, *map(str, cmd)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    log.write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"{cmd[:2]} failed; see {log}:\n" + (proc.stdout + proc.stderr)[-3000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def digits(tmp_path_factory, smollm2_dir, efficientnet_dir):
    from pipeline.digits_data import write

    root = tmp_path_factory.mktemp("digits")
    write(root / "images", root / "urls.csv", n=300)
    _run(["pipeline/run.py", "--config", "configs/data/local_captions.yaml", "--set", f"input={root / 'urls.csv'}",
          "--set", f"output_dir={root / 'pipeline'}", "--set", "shard.validation=0.25"], root / "pipeline.log")
    shards = root / "pipeline" / "40_shards"
    train_log = _run(["-m", "megatron_ext.train", "--config", "configs/train/main/rose-caption-s1.yaml",
                      f"model.llm_weights={smollm2_dir}", f"model.vision_weights={efficientnet_dir}",
                      f"data.tokenizer={smollm2_dir}", f"data.manifest={shards / 'manifest.json'}",
                      "data.image_size=64", "data.seq_length=24", "train.epochs=3", "validation.every=20",
                      f"log.run_dir={root / 'rose'}",
                      "log.wandb=false"], root / "train.log")
    _run(["-m", "megatron_ext.export", "--checkpoint", root / "rose", "--out", root / "hf"], root / "export.log")
    _run(["-m", "megatron_ext.evaluate", f"digits={root / 'hf'}", "--data", shards / "validation_manifest.json",
          "--label-template", TEMPLATE, "--parts", "labels,captions", "--max-images", "60", "--out", root / "eval"],
         root / "eval.log")
    return root, train_log


def test_the_pipeline_holds_out_a_quarter_from_local_files(digits):
    import pandas as pd

    root, _ = digits
    d = pd.read_parquet(root / "pipeline" / "decisions.parquet")
    assert d.url.str.startswith("file://").all()
    kept = d[d.decision == "kept"]
    assert len(kept) > 270 and (kept.split == "validation").sum() == round(0.25 * len(kept))


def test_training_validates_and_says_its_passes(digits):
    root, log = digits
    assert "train.epochs=3 -> " in log and "passes over" in log
    records = [json.loads(line) for line in (root / "rose" / "metrics.jsonl").read_text().splitlines()]
    validated = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in validated][:2] == [20, 40] and validated[-1]["step"] == records[-1]["step"]
    assert validated[-1]["val_image_gap"] > 0  # the held-out captions are likelier with their own images


def test_the_export_records_its_prompt_and_is_readable(digits):
    root, _ = digits
    training = json.loads((root / "hf" / "config.json").read_text())["paramvision_training"]
    assert training == {"task": "caption", "prompt": "Describe the image.", "image_size": 64}
    for f in (root / "hf").iterdir():
        if f.is_file():
            assert stat.S_IMODE(f.stat().st_mode) & 0o644 == 0o644, f


def test_the_evaluation_finds_the_model_sees_the_digits(digits):
    root, _ = digits
    m = json.loads((root / "eval" / "results.json").read_text())["models"]["digits"]
    labels = m["labels"]
    assert labels["images"] == 60 and len(labels["labels"]) == 10 and labels["chance"] == 0.1
    assert labels["prompt"] == "Describe the image."  # read from the export
    assert labels["matched"] - labels["chance"] > 3 * labels["stderr_chance"], labels
    assert labels["matched"] - labels["shuffled"] > 3 * labels["stderr_vs_shuffled"], labels
    assert m["captions"]["shuffled"] > m["captions"]["matched"]
