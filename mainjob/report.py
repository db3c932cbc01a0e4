"""Step 5: the run report: loss curves per stage (PNG), a Markdown report linking the data
pipeline's report, and summary.json with every number the console summary prints."""

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
    axes[0][0].set_ylabel("caption loss (nats/token)")
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
    d, c = summary["data"], summary["caption"]
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
    lines += ["", "## Export and a held-out image", "",
              f"Hugging Face folder: {summary['export']}", "",
              f"Held-out image {summary['held_out_image']}, prompt {c['prompt']!r}:", "",
              f"    {c['caption']}", ""]
    if "merged_equal" in c:
        lines += [f"`merge_vision` ({c['merged_class']}, the image merged into the weights) gives "
                  f"{'the same' if c['merged_equal'] else 'DIFFERENT'} greedy tokens; its logits along "
                  f"the caption differ from the full model's by at most {c['merged_max_logit_diff']:.1e}.", ""]
    lines += ["The captioner and the encoder are tiny random models and the LLM starts from random "
              "weights, so captions are not meaningful: the run shows every stage working on real "
              "components, and the loss falling.", ""]
    path.write_text("\n".join(lines))
    return path
