"""results.json (every number), results.md (tables) and results.png (the accuracies and caption
losses per model) in the --out folder."""

from __future__ import annotations

import json
from pathlib import Path


def _f(x, digits=3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def markdown(results: dict) -> str:
    models = results["models"]
    names = list(models)
    head = "| | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"

    def row(label, get, digits=3):
        cells = []
        for name in names:
            try:
                cells.append(_f(get(models[name]), digits))
            except (KeyError, TypeError):
                cells.append("-")
        return f"| {label} | " + " | ".join(cells) + " |\n"

    v = lambda m: m["vqa"]  # noqa: E731
    lines = [f"# Evaluation\n\n{results['command']}\n\nData: {results.get('data', 'easyvqa')}. "
             f"Question prior: {results.get('prior_source') or '-'}.\n\n"]
    first = next(iter(models.values()))
    if first.get("vqa"):
        q = first["vqa"]
        lines.append(f"## easy-VQA test ({q['questions']} questions on {q['images']} images)\n\n"
                     f"Ranking score: {q['ranking_score']}. Binomial standard error near the prior: "
                     f"{q['stderr']:.3f}.\n\n" + head)
        for kind in ("greedy", "ranking"):
            for view in ("matched", "shuffled"):
                lines.append(row(f"{kind} accuracy, {view} images", lambda m: v(m)[kind][view]))
        lines.append(row("question-only prior", lambda m: v(m)["prior"]))
        for key in ("greedy_vs_shuffled", "greedy_vs_prior", "ranking_vs_shuffled", "ranking_vs_prior"):
            lines.append(row(f"image adds: {key.replace('_', ' ')}", lambda m: v(m)["image_adds"][key]))
        for kind in q.get("per_kind", {}):
            k = lambda m: v(m)["per_kind"][kind]  # noqa: E731
            n = q["per_kind"][kind]["questions"]
            for dec in [d for d in ("greedy", "ranking") if d in q]:
                for view in ("matched", "shuffled"):
                    lines.append(row(f"{kind} ({n} questions): {dec} accuracy, {view} images",
                                     lambda m: k(m)[dec][view]))
                lines.append(row(f"{kind} ({n} questions): {dec} image adds vs shuffled",
                                 lambda m: k(m)["image_adds"][f"{dec}_vs_shuffled"]))
            lines.append(row(f"{kind} ({n} questions): question-only prior", lambda m: k(m)["prior"]))
        if q.get("yes_no_balanced"):
            for dec in [d for d in ("greedy", "ranking") if d in q]:
                lines.append(row(f"yes/no balanced accuracy, {dec} matched",
                                 lambda m: v(m)["yes_no_balanced"][dec]["matched"]))
                lines.append(row(f"yes/no balanced accuracy, {dec} shuffled",
                                 lambda m: v(m)["yes_no_balanced"][dec]["shuffled"]))
        lines.append("\n")
    if first.get("labels"):
        lab = first["labels"]
        lines.append(f"## Labels by caption ranking ({lab['images']} images, {len(lab['labels'])} labels, "
                     f"\"{lab['template']}\")\n\n" + head)
        for key, label in (("matched", "accuracy, right images"), ("shuffled", "accuracy, shuffled images"),
                           ("chance", "chance (1 / labels)"), ("majority_label", "majority label's share"),
                           ("stderr_chance", "standard error at chance"),
                           ("stderr_vs_shuffled", "standard error of right - shuffled")):
            lines.append(row(label, lambda m: m["labels"][key]))
        lines.append("\n")
    ran = set(results.get("parts") or ("captions", "text", "cost"))  # older results: every part
    if ran & {"captions", "text"}:
        lines.append("## Caption loss and text perplexity\n\n" + head)
        if "captions" in ran:
            lines.append(row("caption loss, matched images (nats/token)", lambda m: m["captions"]["matched"]))
            lines.append(row("caption loss, shuffled images (nats/token)", lambda m: m["captions"]["shuffled"]))
            lines.append(row("shuffled - matched", lambda m: m["captions"]["shuffled_minus_matched"]))
        if "text" in ran:
            lines.append(row("held-out text perplexity", lambda m: m["text"]["perplexity"], 2))
            lines.append(f"\nHeld-out text: {results.get('text_source') or '-'}.\n")
        lines.append("\n")
    if "cost" in ran:
        lines.append("## Cost per sample\n\n" + head)
        lines.append(row("tokens of one sample", lambda m: m["cost"]["tokens"], 0))
        lines.append(row("visual tokens per image", lambda m: m["cost"]["visual_tokens"], 0))
        lines.append(row("LLM GFLOPs (flops.py)", lambda m: m["cost"]["llm_gflops"], 4))
        lines.append(row("counted GFLOPs (torch, GEMM + conv)", lambda m: m["cost"]["counted_gflops"], 4))
    if "cost" in ran or "vqa" in ran:
        if "cost" not in ran:
            lines.append("## Latency\n\n" + head)
        lines.append(row("time to first token, median (s)", lambda m: m["latency"]["ttft_s"], 4))
        lines.append(row("per generated token, median (s)", lambda m: m["latency"]["per_token_s"], 4))
        lines.append(f"\nLatency per generate call of a batch of {results['batch_size']} on "
                     f"{results['device']}.\n")
    return "".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = results["models"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    bars = [("greedy", "matched"), ("greedy", "shuffled"), ("ranking", "matched"), ("ranking", "shuffled")]
    width = 0.8 / max(len(models), 1)
    for k, (name, m) in enumerate(models.items()):
        if m.get("vqa"):
            # a kind left out (--vqa greedy) plots as no bar
            values = [m["vqa"].get(kind, {}).get(view, float("nan")) for kind, view in bars] + [m["vqa"]["prior"]]
            ax1.bar([i + k * width for i in range(len(values))], values, width, label=name)
        if m.get("captions"):
            ax2.bar([i + k * width for i in range(2)],
                    [m["captions"]["matched"], m["captions"]["shuffled"]], width, label=name)
    ax1.set_xticks([i + 0.4 - width / 2 for i in range(5)],
                   ["greedy\nmatched", "greedy\nshuffled", "ranking\nmatched", "ranking\nshuffled", "prior"])
    ax1.set_ylim(0, 1)
    ax1.set_ylabel("easy-VQA test accuracy")
    ax2.set_xticks([i + 0.4 - width / 2 for i in range(2)], ["matched images", "shuffled images"])
    ax2.set_ylabel("caption loss (nats/token)")
    for ax in (ax1, ax2):
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(results: dict, out: Path, records: dict) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results))
    plot(results, out / "results.png")
    with open(out / "predictions.jsonl", "w") as f:
        for model, parts in records.items():
            for part, rows in parts.items():
                for r in rows:
                    f.write(json.dumps({"model": model, "part": part, **r}) + "\n")
    return [out / n for n in ("results.json", "results.md", "results.png", "predictions.jsonl")]
