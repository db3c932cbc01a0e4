"""The main job end to end on its smallest setting, as `bash scripts/main.sh --size smallest` runs
it (python -m mainjob.run): the artefacts on disk, not just the exit status."""

import json
import os
import re
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from mainjob.settings import METHODS

ROOT = Path(__file__).resolve().parents[2]


def _main_job(out: Path, method: str):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "mainjob.run", "--method", method, "--size", "smallest",
                           "--out", str(out), "--quiet"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    run = out / method
    return run, json.loads((run / "report" / "summary.json").read_text()), proc.stdout


@pytest.fixture(scope="module")
def main_job(tmp_path_factory, smollm2_dir, efficientnet_dir):
    """The ROSE job, on the suite's converted SmolLM2 and EfficientNet (the same convert() the job
    runs, which skips a complete folder): one conversion per session, not two."""
    out = tmp_path_factory.mktemp("main")
    (out / "assets").mkdir()
    (out / "assets" / "smollm2-135m-instruct").symlink_to(smollm2_dir)
    (out / "assets" / "efficientnet-lite0").symlink_to(efficientnet_dir)
    return _main_job(out, "rose")


def test_every_url_is_accounted_for_and_the_shards_hold_the_kept_samples(main_job):
    import pandas as pd

    from mainjob.data import corpus
    from mainjob.settings import SIZES

    run, summary, _ = main_job
    _, rows, qa = corpus(SIZES["smallest"])
    assert len(qa) == SIZES["smallest"].easyvqa_images
    d = summary["data"]
    assert d["input"] == len(rows) and d["kept"] + d["dropped"] == len(rows)
    decisions = pd.read_parquet(run.parent / "data" / "pipeline" / "decisions.parquet")
    assert len(decisions) == len(rows) and decisions.uid.is_unique
    # every hostile case was dropped (and said why); the good images mostly survive
    assert d["dropped"] >= sum(1 for r in rows if r[2])
    assert d["kept"] >= 0.8 * (SIZES["smallest"].good_images + SIZES["smallest"].easyvqa_images)
    # the tiny random captioner's gibberish fails the caption checks: every sample trains on its alt-text
    kept = decisions[decisions.decision == "kept"]
    assert (kept.caption_source == "alt_text").all()
    manifest = json.loads(Path(d["manifest"]).read_text())
    in_tars = 0
    for shard in manifest["shards"]:
        with tarfile.open(Path(d["manifest"]).parent / shard["tar"]) as tf:
            names = tf.getnames()
        jpgs = sum(n.endswith(".jpg") for n in names)
        assert jpgs == shard["samples"] == sum(n.endswith(".txt") for n in names)
        in_tars += jpgs
    assert in_tars == manifest["num_samples"] == d["kept"]
    assert (run.parent / "data" / "pipeline" / "report" / "index.html").is_file()


def test_each_stage_trained_data_parallel_and_the_loss_fell(main_job):
    """torchrun -m megatron_ext.train per stage: the run directory (resolved config, checkpoint
    pointer, metrics.jsonl, offline wandb run), warmup then cosine, and the loss."""
    run, summary, _ = main_job
    stages = {r["stage"]: r for r in summary["stages"]}
    assert list(stages) == ["s1", "s2", "s3"]
    for name, r in stages.items():
        run_dir = run / "train" / name
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert cfg["parallel"]["tensor"] == 1 and cfg["train"]["stage"] == name
        assert cfg["model"]["llm_weights"] == str(run.parent / "assets" / "smollm2-135m-instruct")
        assert cfg["train"]["steps"] == r["steps"]
        lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in lines] == list(range(1, r["steps"] + 1))
        for m in lines:
            for key in ("loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s", "corrupt_samples",
                        "peak_mem_gib", "consumed_samples"):
                assert m[key] is not None, key
            assert "mfu" in m  # null on CPU: no peak FLOP/s to compare with
            assert m["samples_per_s"] > 0 and m["corrupt_samples"] == 0
            assert m["tokens_per_s"] == pytest.approx(cfg["data"]["seq_length"] * m["samples_per_s"])
        assert lines[0]["lr"] < lines[1]["lr"]                                # warmup
        assert lines[-1]["lr"] == pytest.approx(cfg["optim"]["min_lr"])       # cosine down to min_lr
        assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{r['steps']:06d}"
        assert list((run_dir / "wandb").glob("offline-run-*")), "no offline wandb run"
        log = (run / "logs" / f"train-{name}.log").read_text()
        assert "TP=1 PP=1 DP=2" in log and "distributed optimizer" in log
    assert yaml.safe_load((run / "train" / "s2" / "config.yaml").read_text())["train"]["init_from"].endswith("s1")
    assert stages["s1"]["loss_last"] < stages["s1"]["loss_first"]       # VRMG alone moves the loss
    # S3 starts from S2's trained model: its loss starts where S1 left it, far below S1's start (a
    # single step's loss at ~0.2 is too noisy to fall visibly in 6 steps; the held-out accuracy
    # test asserts what the training achieved)
    assert stages["s3"]["loss_first"] < stages["s1"]["loss_first"] - 1.0
    assert stages["s3"]["loss_last"] < stages["s1"]["loss_first"] - 1.0


def test_held_out_accuracy_beats_the_question_prior_and_shuffled_images(main_job):
    """The point of the job: the trained model uses its image. Scored on easy-VQA TEST questions
    (images the pipeline never served); the prior is recomputed here from the train split."""
    from collections import Counter

    from megatron_ext.data import easyvqa
    from mainjob.settings import SIZES

    _, summary, stdout = main_job
    e = summary["evaluation"]
    questions = [(q, a) for s in easyvqa.load_split("test") for q, a in s.pairs][:SIZES["smallest"].test_questions]
    votes = {}
    for s in easyvqa.load_split("train"):
        for q, a in s.pairs:
            votes.setdefault(q, Counter())[a] += 1
    prior = sum(votes[q].most_common(1)[0][0] == a for q, a in questions) / len(questions)
    assert e["questions"] == len(questions) and e["prior"] == pytest.approx(prior)
    noise = 3 * e["stderr"]  # three binomial standard errors: not luck
    assert e["greedy"]["matched"] > e["prior"] + noise, e
    assert e["greedy"]["matched"] > e["greedy"]["shuffled"] + noise, e
    assert f"accuracy {e['greedy']['matched']:.3f}" in stdout


def test_the_export_answers_a_held_out_question_and_merged_weights_agree(main_job):
    import torch
    from PIL import Image
    from transformers import AutoModelForCausalLM, AutoProcessor

    run, summary, stdout = main_job
    h = summary["held_out"]
    assert h["tokens"] and h["answer"]
    # the export records how its last stage trained (the evaluation prompts with it), readable by all
    data = yaml.safe_load((run / "train" / "s3" / "config.yaml").read_text())["data"]
    training = json.loads((Path(summary["export"]) / "config.json").read_text())["paramvision_training"]
    assert training == {"task": "qa", "prompt": data["prompt"], "image_size": data["image_size"]}
    for f in Path(summary["export"]).iterdir():
        if f.is_file():
            assert stat.S_IMODE(f.stat().st_mode) & 0o644 == 0o644, f
    # merge_vision: a plain Llama (SmolLM2's architecture) with the image in its weights; same
    # logits along the answer, same greedy tokens
    assert h["merged_class"] == "LlamaForCausalLM" and h["merged_max_logit_diff"] < 1e-3
    assert h["merged_equal"]
    model = AutoModelForCausalLM.from_pretrained(summary["export"], trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(summary["export"], trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": h["question"]}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(images=Image.open(h["image"]).convert("RGB"), text=text, return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=len(h["tokens"]), min_new_tokens=1, do_sample=False)
    assert ids[0, inputs["input_ids"].shape[1]:].tolist() == h["tokens"]  # the job's answer, reproduced
    assert repr(h["answer"]) in stdout


def test_report_has_loss_curves_and_the_summary(main_job):
    from PIL import Image

    run, summary, stdout = main_job
    png = Image.open(run / "report" / "loss_curves.png")
    assert png.format == "PNG" and png.size[0] > 3 * png.size[1] / 2   # three panels side by side
    text = Path(summary["report"]).read_text()
    for r in summary["stages"]:
        assert f"| {r['stage']} | {r['steps']} | {r['loss_first']} | {r['loss_last']} |" in text
    assert summary["data"]["report"] in text and str(summary["export"]) in stdout


def _normalise(cmd: str, out: Path) -> str:
    """A command as the README spells it: repository-relative, the output root as runs/main, the
    size-dependent numbers as N."""
    cmd = cmd.replace(str(out), "runs/main").replace(str(ROOT) + "/", "")
    cmd = re.sub(r"\S*/bin/(python|torchrun)\b", r".venv/bin/\1", cmd)
    cmd = re.sub(r"--rdzv-endpoint=127\.0\.0\.1:\d+ --rdzv-id=\S+", "--rdzv-endpoint=127.0.0.1:PORT --rdzv-id=ID", cmd)
    cmd = re.sub(r"--limit \d+", "--limit N", cmd)
    return re.sub(r"(train\.steps|samples_per_shard)=\d+", r"\1=N", cmd)


def test_the_readme_shows_the_commands_the_main_job_ran(main_job):
    run, _, _ = main_job
    ran = [(run.parent / "data" / "pipeline.log").read_text().splitlines()[0]]
    ran += [p.read_text().splitlines()[0] for p in sorted((run / "logs").glob("*.log"))]
    ran = {_normalise(line.removeprefix("$ "), run.parent) for line in ran}
    readme = (ROOT / "README.md").read_text()
    shown = {_normalise(line, run.parent) for line in readme.splitlines()
             if re.match(r"\.venv/bin/(python (pipeline/run\.py|-m megatron_ext\.(export|evaluate))|torchrun --nnodes=1 "
                         r"--rdzv-backend=c10d)", line)}
    assert shown == ran


@pytest.mark.slow  # minutes each; their training and export paths have their own tests in the suite
@pytest.mark.parametrize("method", ["llava", "vlora", "vora"])
def test_the_method_switch_trains_exports_and_answers_on_the_same_data(main_job, method):
    """--method: the same data, the method's own stages, an export that answers, scored on the same
    questions against the same prior. Accuracy is asserted for ROSE only: at --size smallest
    the others have not all left the prior yet (2026-12-02, 60 S1 steps and 200 questions: LLaVA
    0.765, VLoRA 0.645, VoRA 0.700 against 0.660); bench.fourway compares the four at the default size."""
    rose_run, rose, _ = main_job
    run, summary, stdout = _main_job(rose_run.parent, method)
    assert summary["data"] == rose["data"] and "data pipeline already complete" in stdout
    stages = summary["stages"]
    assert [r["stage"] for r in stages] == list(METHODS[method])
    for r in stages:
        lines = (run / "train" / r["stage"] / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == r["steps"]
    assert stages[-1]["loss_last"] < stages[0]["loss_first"]
    h = summary["held_out"]
    assert h["method"] == method and h["tokens"]
    e = summary["evaluation"]
    assert (e["questions"], e["prior"]) == (rose["evaluation"]["questions"], rose["evaluation"]["prior"])
    assert 0 < e["greedy"]["matched"] <= 1 and 0 < e["greedy"]["shuffled"] <= 1
    if method == "vlora":
        assert h["merged_equal"] and h["merged_max_logit_diff"] < 1e-3
