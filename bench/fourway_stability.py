"""ROSE's S1 before and after the stability knob, from two runs' metrics.jsonl at the same steps:
loss, gradient norm (before clipping) and the size of the rotations (rose_skew_norm_max, the
largest Frobenius norm of a block's skew-symmetric P).

    python -m bench.fourway_stability NAME=RUN_DIR NAME=RUN_DIR --png docs/results/rose_s1_stability.png

Prints a markdown table (every 5th step) and, per run, the largest loss increase between two
consecutive steps after the warm-up, and writes the plot."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a training run directory (no metrics.jsonl)")
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows[r["step"]] = r  # a resumed run appends: the last record of a step wins
    return [rows[s] for s in sorted(rows)]


def worst_jump(rows: list[dict], after: int = 10) -> dict:
    """The largest loss rise from one step to the next after step `after` (the warm-up)."""
    jumps = [(b["loss"] - a["loss"], b["step"]) for a, b in zip(rows, rows[1:]) if a["step"] >= after]
    rise, step = max(jumps) if jumps else (0.0, None)
    return dict(rise=rise, step=step, max_loss_after_warmup=max(r["loss"] for r in rows if r["step"] > after),
                max_grad_norm=max(r["grad_norm"] for r in rows))


def table(runs: dict, every: int = 5) -> str:
    names = list(runs)
    steps = sorted(set.intersection(*({r["step"] for r in rows} for rows in runs.values())))
    head = "| step | " + " | ".join(f"{n} loss | {n} grad norm | {n} skew max" for n in names) + " |"
    lines = [head, "|---|" + "---|---|---|" * len(names)]
    by = {n: {r["step"]: r for r in rows} for n, rows in runs.items()}
    for s in steps:
        if s == 1 or s % every == 0:
            cells = [f"{by[n][s]['loss']:.3f} | {by[n][s]['grad_norm']:.0f} | {by[n][s].get('rose_skew_norm_max', 0):.2f}"
                     for n in names]
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs: dict, png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for name, rows in runs.items():
        steps = [r["step"] for r in rows]
        axes[0].plot(steps, [r["loss"] for r in rows], label=name)
        axes[1].plot(steps, [r["grad_norm"] for r in rows], label=name)
        axes[2].plot(steps, [r.get("rose_skew_norm_max", float("nan")) for r in rows], label=name)
    for ax, title in zip(axes, ("S1 loss", "gradient norm (before clipping at 1.0)", "largest skew norm |P|_F")):
        ax.set_title(title)
        ax.set_xlabel("step")
    axes[1].set_yscale("log")
    axes[0].legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    ap.add_argument("--png", default="docs/results/rose_s1_stability.png")
    args = ap.parse_args(argv)
    runs = {}
    for spec in args.runs:
        name, _, path = spec.rpartition("=")
        runs[name or Path(path).name] = read(Path(path))
    print(table(runs))
    for name, rows in runs.items():
        print(f"{name}: {json.dumps(worst_jump(rows))}")
    print(plot(runs, Path(args.png)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
