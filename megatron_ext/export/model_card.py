"""The model card (README.md) of an export: what was trained (method, base LLM, vision tower, the
stages with their steps, from the run directories' resolved configs and metrics), on what data
(the pipeline's manifest), how it scored (a `python -m megatron_ext.evaluate` results.json, when
given) and how to prompt it, with the Hugging Face metadata (license, pipeline tag) in its YAML
header. export/folder.py writes it into every export; after an evaluation, rewrite it with
the scores:

    python -m megatron_ext.export.model_card EXPORT --run RUN_DIR --evaluation results.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from pvcommon.argparser import ArgumentParser
from pvcommon.errors import UsageError, run_cli

CARD = "README.md"
# where a base model's card declares nothing, Hugging Face's convention for "see the terms of the
# models it is built from"
UNKNOWN_LICENSE = "other"


@dataclass(frozen=True)
class Stage:
    run_dir: Path
    config: dict          # the run's resolved config.yaml
    steps_done: int       # the last step metrics.jsonl recorded (0 without metrics)
    last_loss: Optional[float]


def run_config_dir(path: Path) -> Optional[Path]:
    """The run directory holding config.yaml for a run dir, its checkpoints/ dir or a step dir."""
    return next((p for p in (path, path.parent, path.parent.parent) if (p / "config.yaml").is_file()), None)


def _stage(run_dir: Path) -> Stage:
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    metrics = run_dir / "metrics.jsonl"
    records = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()] if metrics.is_file() else []
    steps = [r for r in records if "step" in r and "loss" in r]  # step records, not evaluations
    last = steps[-1] if steps else {}
    return Stage(run_dir, config, int(last.get("step", 0)), last.get("loss"))


def stage_chain(run_dir: Path) -> list[Stage]:
    """The run and the runs it started from (train.init_from), first stage first."""
    chain, seen, path = [], set(), run_config_dir(Path(run_dir))
    while path is not None and path.resolve() not in seen:
        seen.add(path.resolve())
        chain.append(_stage(path))
        init_from = chain[-1].config.get("train", {}).get("init_from")
        path = run_config_dir(Path(init_from)) if init_from else None
    return chain[::-1]


def base_license(llm_dir: Optional[str]) -> str:
    """The license the base LLM's own card declares (its README.md YAML header), else 'other'."""
    card = Path(llm_dir) / CARD if llm_dir else None
    if card is None or not card.is_file():
        return UNKNOWN_LICENSE
    text = card.read_text()
    if not text.startswith("---"):
        return UNKNOWN_LICENSE
    header = yaml.safe_load(text.split("---", 2)[1]) or {}
    return str(header.get("license") or UNKNOWN_LICENSE)


def _evaluation(results: Path, name: str) -> tuple[str, dict]:
    models = json.loads(Path(results).read_text())["models"]
    if len(models) == 1:
        return next(iter(models.items()))
    if name not in models:
        raise UsageError(f"--evaluation {results} holds the models {sorted(models)}, none named "
                         f"{name!r}: evaluate the export alone, or name it {name}=PATH")
    return name, models[name]


def _fmt(value, digits=3) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _scores(results: Optional[Path], name: str) -> str:
    if results is None:
        return ("No evaluation was given when this card was written. Score the export with "
                "`python -m megatron_ext.evaluate EXPORT --out DIR`, then rewrite this card with "
                "`python -m megatron_ext.export.model_card EXPORT --run RUN_DIR --evaluation DIR/results.json`.\n")
    model, r = _evaluation(results, name)
    vqa, captions, text = r.get("vqa") or {}, r.get("captions") or {}, r.get("text") or {}
    rows = [("easy-VQA greedy accuracy, matched images", (vqa.get("greedy") or {}).get("matched")),
            ("easy-VQA greedy accuracy, shuffled images", (vqa.get("greedy") or {}).get("shuffled")),
            ("easy-VQA question-only prior", vqa.get("prior")),
            ("caption loss, matched images (nats/token)", captions.get("matched")),
            ("caption loss, shuffled images (nats/token)", captions.get("shuffled")),
            ("held-out text perplexity", text.get("perplexity"))]
    lines = [f"From `{results}` (model `{model}`; docs/EVALUATION.md says what each number means).\n",
             "| metric | value |", "|---|---|"]
    lines += [f"| {label} | {_fmt(value)} |" for label, value in rows if value is not None]
    return "\n".join(lines) + "\n"


def _data(stages: list[Stage]) -> str:
    lines = []
    for s in stages:
        data = s.config.get("data", {})
        where = f"stage {s.config.get('train', {}).get('stage', '?')}: {data.get('kind', '?')} data, task `{data.get('task', '?')}`"
        manifest = Path(data["manifest"]) if data.get("manifest") else None
        if manifest is not None and manifest.is_file():
            m = json.loads(manifest.read_text())
            sources = ", ".join(f"{k}: {v}" for k, v in (m.get("caption_sources") or {}).items())
            where += (f", `{manifest}`: {m.get('num_samples', '?')} samples in {m.get('num_shards', '?')} "
                      f"{m.get('format', '')} shards, recaptioned: {m.get('recaptioned', '?')}"
                      + (f", caption sources {{{sources}}}" if sources else ""))
        elif manifest is not None:
            where += f", `{manifest}` (the manifest is not readable here)"
        lines.append(f"- {where}")
    return "\n".join(lines) + "\n" if lines else "The training runs are not known to this card.\n"


def _stages_table(stages: list[Stage]) -> str:
    if not stages:
        return "The training runs are not known to this card (exported from a model in memory).\n"
    lines = ["| stage | steps done / configured | global batch | peak lr | trained groups | last-step loss | run |",
             "|---|---|---|---|---|---|---|"]
    for s in stages:
        t, o = s.config.get("train", {}), s.config.get("optim", {})
        groups = ", ".join(t.get("trainable") or []) or "the method's default for the stage"
        lines.append(f"| {t.get('stage', '?')} | {s.steps_done} / {t.get('steps', '?')} | "
                     f"{t.get('global_batch_size', '?')} | {o.get('lr', '?')} | {groups} | "
                     f"{_fmt(s.last_loss, 4)} | `{s.run_dir}` |")
    return "\n".join(lines) + "\n"


def _snippet(out: Path) -> str:
    return f'''```python
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

path = "{out}"
processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True).eval()
messages = [{{"role": "user", "content": [{{"type": "image", "image": Image.open("image.jpg").convert("RGB")}},
                                         {{"type": "text", "text": "What is in the image?"}}]}}]
inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                       return_dict=True, return_tensors="pt")
generated = model.generate(**inputs, max_new_tokens=32, do_sample=False)
print(processor.decode(generated[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```
'''


def render(out: Path, method: str, stages: list[Stage], evaluation: Optional[Path] = None,
           license: Optional[str] = None) -> str:
    config = json.loads((out / "config.json").read_text())
    text, vision = config.get("text_config") or {}, config.get("vision_config") or {}
    model_cfg = stages[-1].config.get("model", {}) if stages else {}
    license = license or base_license(model_cfg.get("llm_weights"))
    header = {"license": license, "library_name": "transformers", "pipeline_tag": "image-text-to-text",
              "tags": ["paramvision", method, "vision-language"]}
    if license == UNKNOWN_LICENSE:
        header["license_name"] = "the-base-models-licenses"  # HF's field beside license: other
    llm = (f"{text.get('model_type', '?')}: {text.get('num_hidden_layers', '?')} layers, hidden size "
           f"{text.get('hidden_size', '?')}, vocabulary {text.get('vocab_size', '?')}")
    tower = (f"{vision.get('model_type', '?')}, hidden size {vision.get('hidden_size', '?')}"
             if vision else "none (the method embeds the image's patches itself)")
    weights = lambda key: f" (weights from `{model_cfg[key]}`)" if model_cfg.get(key) else ""  # noqa: E731
    return "".join([
        "---\n", yaml.safe_dump(header, sort_keys=False), "---\n\n",
        f"# {out.name}\n\n",
        f"A vision-language model trained with the paramvision framework: method `{method}` "
        "(docs/ARCHITECTURE.md of the framework describes it).\n\n",
        "## What was trained\n\n",
        f"- method: `{method}`\n- base LLM: {llm}{weights('llm_weights')}\n",
        f"- vision tower: {tower}{weights('vision_weights')}\n",
        f"- preset: `{model_cfg.get('preset', '?')}`\n\n" if model_cfg else "\n",
        _stages_table(stages), "\n## Data\n\n", _data(stages),
        "\n## Evaluation\n\n", _scores(evaluation, out.name),
        "\n## How to prompt it\n\n",
        "Only torch and transformers are needed: the modeling code ships in this folder "
        "(`trust_remote_code=True`). The chat template renders the prompt format training used.\n\n",
        _snippet(out), "\n`pipeline(\"image-text-to-text\", model=path, trust_remote_code=True)` "
        "answers the same messages.\n",
        "\n## License\n\n", f"`{license}`" + (": the terms of the base LLM and the vision tower this "
                                                "model is built from" if license == UNKNOWN_LICENSE else "") + ".\n",
    ])


def write_model_card(out: str | Path, method: str, run_dir: Optional[str | Path] = None,
                     evaluation: Optional[str | Path] = None, license: Optional[str] = None) -> Path:
    """Write out/README.md for the export in `out`; run_dir: the last stage's run directory."""
    out = Path(out).resolve()
    stages = stage_chain(Path(run_dir)) if run_dir is not None else []
    card = out / CARD
    card.write_text(render(out, method, stages, Path(evaluation) if evaluation else None, license))
    return card


def main(argv=None) -> None:
    ap = ArgumentParser(description="Write (or rewrite) an export's model card, README.md.")
    ap.add_argument("export", help="the export folder (config.json)")
    ap.add_argument("--run", help="the run directory of the exported checkpoint (its config.yaml); "
                                  "the stages it started from are followed through train.init_from")
    ap.add_argument("--evaluation", help="results.json of python -m megatron_ext.evaluate")
    ap.add_argument("--license", help="the license field (default: the base LLM card's, else 'other')")
    args = ap.parse_args(argv)

    def rewrite():
        config = Path(args.export) / "config.json"
        if not config.is_file():
            raise UsageError(f"{args.export}: no config.json; pass an export folder")
        for flag, value in (("--run", args.run), ("--evaluation", args.evaluation)):
            if value is not None and not Path(value).exists():
                raise UsageError(f"{flag} {value}: no such file or directory")
        if args.run is not None and run_config_dir(Path(args.run)) is None:
            raise UsageError(f"--run {args.run}: no config.yaml there (a run directory holds the resolved config)")
        c = json.loads(config.read_text())
        return write_model_card(args.export, c.get("method") or c.get("model_type", "?"), args.run,
                                args.evaluation, args.license)

    print(f"wrote {run_cli(rewrite)}")


if __name__ == "__main__":
    main()
