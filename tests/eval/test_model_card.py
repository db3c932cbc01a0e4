"""The model card an export carries (megatron_ext/export/model_card.py): what was trained (every stage of
the init_from chain, from the run directories), on what data (the manifest), how it scored (a
results.json), the license in the YAML header, and a prompting snippet that runs as written."""

import contextlib
import io
import json
import re
import shutil

import numpy as np
import pytest
import yaml
from PIL import Image

from megatron_ext.export.model_card import main, write_model_card
from megatron_ext.training.config import load_config


def _run(root, stage, steps_done, steps, overrides):
    run = root / stage
    run.mkdir(parents=True)
    cfg = load_config(None, [f"train.stage={stage}", f"train.steps={steps}", "model.method=rose", *overrides])
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    with open(run / "metrics.jsonl", "w") as f:
        for step in range(1, steps_done + 1):
            f.write(json.dumps({"step": step, "loss": 4.0 - step / 4, "lr": 1e-3}) + "\n")
    return run


@pytest.fixture
def two_stages(tmp_path):
    llm = tmp_path / "base-llm"
    llm.mkdir()
    (llm / "README.md").write_text("---\nlicense: apache-2.0\n---\n# the base LLM\n")
    manifest = tmp_path / "shards" / "manifest.json"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps({"format": "webdataset", "num_samples": 1234, "num_shards": 3,
                                    "recaptioned": True, "caption_sources": {"alt": 34, "vlm": 1200}}))
    common = [f"model.llm_weights={llm}", f"data.manifest={manifest}", "data.kind=webdataset"]
    s1 = _run(tmp_path / "runs", "s1", 3, 3, common + ["train.trainable=[generator]"])
    s2 = _run(tmp_path / "runs", "s2", 2, 4, common + [f"train.init_from={s1}/checkpoints"])
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"models": {"rose-s2": {
        "vqa": {"greedy": {"matched": 0.8125, "shuffled": 0.5}, "prior": 0.45},
        "captions": {"matched": 2.5, "shuffled": 2.75}, "text": {"perplexity": 17.25}}}}))
    return s2, results


@pytest.fixture
def export_copy(blind_export, tmp_path):
    out = tmp_path / "export"
    shutil.copytree(blind_export, out)
    return out


def _header(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---", 2)[1])


def test_card_says_what_was_trained_on_what_and_how_it_scored(export_copy, two_stages):
    s2, results = two_stages
    card = write_model_card(export_copy, "rose", s2, results).read_text()
    header = _header(card)
    assert header["license"] == "apache-2.0"  # the base LLM's card's
    assert header["pipeline_tag"] == "image-text-to-text" and "rose" in header["tags"]
    assert "method: `rose`" in card and "qwen2: 4 layers" in card  # the tiny preset's Qwen2
    # both stages, first stage first, with steps done / configured and the last loss
    s1_row = re.search(r"^\| s1 \| 3 / 3 \| .* \| generator \| 3\.2500 \|", card, re.M)
    s2_row = re.search(r"^\| s2 \| 2 / 4 \| .* \| the method's default for the stage \| 3\.5000 \|", card, re.M)
    assert s1_row and s2_row and s1_row.start() < s2_row.start()
    assert "1234 samples in 3 webdataset shards, recaptioned: True" in card
    assert "caption sources {alt: 34, vlm: 1200}" in card
    assert "| easy-VQA greedy accuracy, matched images | 0.812 |" in card
    assert "| held-out text perplexity | 17.250 |" in card


def test_card_without_runs_or_evaluation_says_so(export_copy):
    card = write_model_card(export_copy, "rose").read_text()
    header = _header(card)
    assert header["license"] == "other" and header["license_name"]  # HF's field for "see the terms"
    assert "not known to this card" in card and "No evaluation was given" in card


def test_the_prompting_snippet_runs_as_written(export_copy, tmp_path, monkeypatch):
    card = write_model_card(export_copy, "rose").read_text()
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save("image.jpg")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(snippet, "README.md", "exec"), {})
    assert printed.getvalue().endswith("\n")  # the decoded answer


def test_cli_rewrites_the_card_and_refuses_bad_paths(export_copy, two_stages, capsys):
    s2, results = two_stages
    main([str(export_copy), "--run", str(s2), "--evaluation", str(results), "--license", "mit"])
    card = (export_copy / "README.md").read_text()
    assert _header(card)["license"] == "mit" and "0.812" in card
    with pytest.raises(SystemExit) as e:
        main([str(export_copy), "--evaluation", str(results.parent / "missing.json")])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().endswith("missing.json: no such file or directory")
    with pytest.raises(SystemExit) as e:
        main([str(results.parent)])
    assert e.value.code == 2 and "no config.json" in capsys.readouterr().err


def test_the_main_job_writes_its_exports_card_with_the_held_out_scores(export_copy, two_stages, tmp_path, monkeypatch):
    """mainjob/run.py after its evaluation: the export's card carries the stage chain and the scores
    (every step of the job but the card is replaced by what it would have returned)."""
    from mainjob import assets, data, inference, report, run

    s2, results = two_stages
    evaluation = tmp_path / "report" / "evaluation"
    evaluation.mkdir(parents=True)
    shutil.copy(results, evaluation / "results.json")
    for name in ("llm", "vision_tower", "captioner"):
        monkeypatch.setattr(assets, name, lambda root: root)
    monkeypatch.setattr(data, "build", lambda *a, **k: dict(input=1, kept=1, dropped=0, dropped_by_reason={},
                                                            manifest=str(tmp_path / "shards" / "manifest.json")))
    monkeypatch.setattr(run.training, "train", lambda out, method, stages, *a, **k: {stages[-1]: dict(run_dir=str(s2))})
    monkeypatch.setattr(inference, "export", lambda *a, **k: (export_copy, 0.0))
    monkeypatch.setattr(inference, "evaluate", lambda *a, **k: dict(results=str(evaluation / "results.md")))
    monkeypatch.setattr(inference, "held_out_question", lambda: ("image.png", "what?", "red"))
    monkeypatch.setattr(inference, "answer", lambda *a, **k: {})
    monkeypatch.setattr(report, "stage_rows", lambda trained: [])
    monkeypatch.setattr(report, "write", lambda *a, **k: None)
    run.main_job("vlora", "smallest", tmp_path / "main", echo=False)
    card = (export_copy / "README.md").read_text()
    assert "method: `vlora`" in card and "| s2 | 2 / 4 |" in card
    assert "| easy-VQA greedy accuracy, matched images | 0.812 |" in card
