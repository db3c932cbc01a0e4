"""Step 5: the run report: loss curves per stage (PNG), a Markdown report linking the data
pipeline's report and the evaluation's, and summary.json with every number the console summary
prints."""

from __future__ import annotations

import json
from pathlib import Path


def loss_curves(training: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [s for s, r in training.items() if r["metrics"]]
    fig, axes = plt.subplots(1, len(stages), figsize=(4 * len(stages), 3.2), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        m = training[stage]["metrics"]
        ax.plot([r["step"] for r in m], [r["loss"] for r in m], marker=".")
        ax.set_title(f"{stage}: {m[0]['loss']:.3f} -> {m[-1]['loss']:.3f}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("answer loss (nats/token)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def stage_rows(training: dict) -> list[dict]:
    rows = []
    for stage, r in training.items():
        m = r["metrics"]
        if not m:
            continue
        tail = m[len(m) // 2:] or m  # throughput after start-up effects
        rows.append(dict(stage=stage, steps=m[-1]["step"], loss_first=round(m[0]["loss"], 4),
                         loss_last=round(m[-1]["loss"], 4),
                         samples_per_s=round(sum(x["samples_per_s"] for x in tail) / len(tail), 2),
                         tokens_per_s=round(sum(x["tokens_per_s"] for x in tail) / len(tail), 1),
                         wall_s=r["wall_s"], run_dir=r["run_dir"]))
    return rows


def write(out: Path, summary: dict, training: dict) -> Path:
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    path = report / "report.md"
    summary["report"] = str(path)
    png = loss_curves(training, report / "loss_curves.png")
    (report / "summary.json").write_text(json.dumps(summary, indent=2))
    d = summary["data"]
    lines = [f"# Main job: {summary['method']} ({summary['size']})", "",
             f"Finished {summary['finished']} in {summary['wall_s']:.0f} s.", "",
             "## Data", "",
             f"{d['input']} URLs in, {d['kept']} samples kept in {d['manifest']}; "
             f"data report: {d['report']}", "", "| dropped because | count |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in d["dropped_by_reason"].items()]
    lines += ["", "## Training", "", f"![loss curves]({png.name})", "",
              "| stage | steps | loss first | loss last | samples/s | tokens/s | wall s | run dir |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['steps']} | {r['loss_first']} | {r['loss_last']} | {r['samples_per_s']} "
              f"| {r['tokens_per_s']} | {r['wall_s']} | {r['run_dir']} |" for r in summary["stages"]]
    e, h = summary["evaluation"], summary["held_out"]
    g = e["greedy"]
    lines += ["", "## Held-out test questions", "",
              f"Hugging Face folder: {summary['export']}; the evaluation: {e['results']}.", "",
              f"{e['questions']} easy-VQA test questions on {e['images']} images the pipeline never served, "
              "greedy answers:", "",
              "| | accuracy |", "|---|---|",
              f"| the right images | {g['matched']:.3f} |",
              f"| shuffled images (each question shown another test image) | {g['shuffled']:.3f} |",
              f"| question-only prior (the majority train answer per question) | {e['prior']:.3f} |", "",
              f"Binomial standard error near the prior: {e['stderr']:.3f}. What the image adds: "
              f"{g['matched'] - e['prior']:+.3f} over the prior, {g['matched'] - g['shuffled']:+.3f} over "
              "shuffled images.", "",
              f"Held-out image {h['image']}: {h['question']!r} -> {h['answer']!r} (truth {h['truth']!r}).", ""]
    if "merged_equal" in h:
        lines += [f"`merge_vision` ({h['merged_class']}, the image merged into the weights) gives "
                  f"{'the same' if h['merged_equal'] else 'DIFFERENT'} greedy tokens; its logits along "
                  f"the answer differ from the full model's by at most {h['merged_max_logit_diff']:.1e}.", ""]
    path.write_text("\n".join(lines))
    return path
