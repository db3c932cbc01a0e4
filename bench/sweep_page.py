"""The sweep's section of docs/RESULTS.md, from bench.sweep's results JSON: how it ran (every
invocation, its start, end and machine load), the grid with every cell, the choice, the final runs'
mean and spread over seeds per kind of question, what is still pending and the command that
resumes it, and the targets against what was measured.

    python -m bench.sweep_page [--json docs/results/fourway.json] [--page docs/RESULTS.md]

The page keeps its prose; the generated part sits between the two marker lines (added at the end
of the page the first time)."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from bench.fourway_page import NAMES
from bench.sweep_eval import selection_score

BEGIN, END = "<!-- bench.sweep_page: begin -->", "<!-- bench.sweep_page: end -->"
INFERENCE_COST = Path(__file__).resolve().parent.parent / "docs" / "results" / "inference_cost.json"


def _f(x, digits=3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ms(s: dict) -> str:
    """mean +- spread over seeds ('-' without runs)."""
    if not s or not s.get("n"):
        return "-"
    return f"{s['mean']:.3f} ± {s['std']:.3f} (n={s['n']})"


def _loss_tail(result: dict, last: int = 10) -> float | None:
    losses = result["stages"].get("s1", {}).get("loss") or []
    return statistics.fmean(losses[-last:]) if losses else None


def grid_rows(doc: dict) -> list[str]:
    rows = ["| method | knob | S1 peak rate | seed | done | S1 loss (mean of last 10 steps) | validation accuracy | "
            "shape | colour | yes/no | yes/no balanced | score (chooses) | S1 steps' time (min) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    prior = None
    for c in doc["cells"]:
        if c["phase"] != "grid":
            continue
        knob = f"{c['knob']}={c['value']}"
        if not c["done"]:
            rows.append(f"| {NAMES[c['method']]} | {knob} | {c['rate']:g} | {c['seed']} | no | | | | | | | | |")
            continue
        r, v = c["result"], c["result"]["validation"]
        prior = prior or v.get("prior")
        k = v["kinds"]
        rows.append(f"| {NAMES[c['method']]} | {knob} | {c['rate']:g} | {c['seed']} | yes | {_f(_loss_tail(r))} | "
                    f"{_f(v['accuracy'])} | {_f(k['shape']['accuracy'])} | {_f(k['colour']['accuracy'])} | "
                    f"{_f(k['yes/no']['accuracy'])} | {_f(v['yes_no_balanced'])} | {_f(selection_score(v))} | "
                    f"{_f(r['stages']['s1'].get('step_s', 0) / 60, 1)} |")
    if prior:
        k = prior["kinds"]
        rows.append(f"| question-only prior | | | | | | {_f(prior['accuracy'])} | {_f(k['shape']['accuracy'])} | "
                    f"{_f(k['colour']['accuracy'])} | {_f(k['yes/no']['accuracy'])} | {_f(prior['yes_no_balanced'])} | "
                    f"{_f(selection_score(prior))} | |")
    return rows


def final_rows(doc: dict) -> list[str]:
    rows = ["| method | chosen (validation score; finished grid cells of the method) | test accuracy | "
            "shuffled images | prior | shape | colour | yes/no | yes/no balanced |", "|---|---|---|---|---|---|---|---|---|"]
    for m, c in doc["choice"].items():
        f = doc["final"].get(m, {})
        k = f.get("kinds", {})
        cells = [x for x in doc["cells"] if x["phase"] == "grid" and x["method"] == m]
        done = sum(x["done"] for x in cells)
        rows.append(f"| {NAMES[m]} | lr {c['rate']:g}, {c['knob']}={c['value']} ({c['validation_score']:.3f}; "
                    f"{done} of {len(cells)}{'' if done == len(cells) else ': provisional'}) | "
                    f"{_ms(f.get('matched'))} | {_ms(f.get('shuffled'))} | {_ms(f.get('prior'))} | "
                    f"{_ms(k.get('shape'))} | {_ms(k.get('colour'))} | {_ms(k.get('yes/no'))} | "
                    f"{_ms(f.get('yes_no_balanced'))} |")
    return rows


def gflops(cost_file: Path = INFERENCE_COST) -> dict:
    """{size: {method: counted GFLOPs}} from bench.inference_cost's JSON."""
    if not cost_file.is_file():
        return {}
    costs = json.loads(cost_file.read_text())["costs"]
    return {size: {m: c.get("counted_gflops") for m, c in per.items()} for size, per in costs.items()}


def target_rows(doc: dict, cost: dict) -> list[str]:
    """The issue's targets on the final runs' TEST accuracy (mean over seeds); a target whose
    numbers do not exist yet says so instead of a verdict."""
    rows = ["| target | measured | met |", "|---|---|---|"]
    final = {m: f for m, f in doc["final"].items() if f.get("matched", {}).get("n")}
    acc = {m: f["matched"]["mean"] for m, f in final.items()}
    missing = [NAMES[m] for m in doc["grid"]["methods"] if m not in acc]
    note = f"not measured: no final run of {', '.join(missing)}" if missing else None
    if acc:
        best = max(acc, key=acc.get)
        kinds = final[best]["kinds"]
        worst_kind = min(kinds, key=lambda k: kinds[k]["mean"])
        rows.append(f"| best method >= 0.95 overall | {NAMES[best]} {acc[best]:.3f} | {'yes' if acc[best] >= 0.95 else 'no'} |")
        rows.append(f"| best method >= 0.90 on each kind | {NAMES[best]} lowest: {worst_kind} {kinds[worst_kind]['mean']:.3f} | "
                    f"{'yes' if kinds[worst_kind]['mean'] >= 0.90 else 'no'} |")
        low = min(acc, key=acc.get)
        rows.append(f"| every method >= 0.85 | lowest: {NAMES[low]} {acc[low]:.3f}{'; ' + note if note else ''} | "
                    f"{'no' if acc[low] < 0.85 else 'not known' if note else 'yes'} |")
    else:
        rows += [f"| best method >= 0.95 overall, >= 0.90 on each kind | {note} | not known |",
                 f"| every method >= 0.85 | {note} | not known |"]
    input_space = [m for m in ("llava", "vora") if m in acc]
    if "rose" in acc and input_space:
        ref = max(input_space, key=acc.get)
        gap = acc[ref] - acc["rose"]
        rows.append(f"| ROSE within 0.02 of the best input-space method ({NAMES[ref]}) or ahead | "
                    f"{gap:+.3f} ({NAMES[ref]} - ROSE) | {'yes' if gap <= 0.02 else 'no'} |")
    else:
        rows.append("| ROSE within 0.02 of the best input-space method or ahead | not measured: no final run of "
                    "ROSE and an input-space method | not known |")
    for size, tokens, limit in (("160", 25, 0.5), ("320", 100, 0.25)):
        g = cost.get(size, {})
        if g.get("rose") and g.get("llava"):
            ratio = g["rose"] / g["llava"]
            rows.append(f"| ROSE <= {limit}x LLaVA's inference GFLOPs at {tokens} visual tokens | "
                        f"{ratio:.2f}x ({g['rose']:.2f} / {g['llava']:.2f}) | {'yes' if ratio <= limit else 'no'} |")
    return rows


def markdown(doc: dict, cost: dict | None = None) -> str:
    cost = gflops() if cost is None else cost
    g = doc["grid"]
    lines = [BEGIN, "", "### How the sweep ran", "",
             "| invocation | started | ended | cells run | machine load at start | at end | finished the sweep |",
             "|---|---|---|---|---|---|---|"]
    for inv in doc["invocations"]:
        lines.append(f"| `{inv['command']}` | {inv['started']} | {inv.get('ended', '-')} | {inv.get('cells_run', 0)} | "
                     f"{inv.get('load_start', '-')} | {inv.get('load_end', '-')} | {'yes' if inv.get('complete') else 'no'} |")
    knobs = "; ".join(f"{NAMES[m]} `{k['key']}` in {k['values']}" for m, k in g["knobs"].items())
    done = sum(c["done"] for c in doc["cells"])
    lines += ["", f"Grid: S1 peak rates {', '.join(f'{r:g}' for r in g['rates'])} for every method, times one "
              f"knob per method ({knobs}); S1 only, {g['steps']} steps, seed(s) {g['seeds']}; validation: "
              f"{g['validation']['questions']} questions of {g['validation']['split']}. Final runs: the chosen "
              f"cell through all stages, seeds {doc['final_seeds']}, on the main job's test questions. "
              f"{done} of {len(doc['cells'])} cells done.", "",
              "### Every grid cell (validation split, greedy answers)", "", *grid_rows(doc), "",
              "![S1 loss of every finished grid cell](results/sweep_s1_loss.png)", "",
              "### The choice and the final runs (test questions; mean ± population spread over seeds)", ""]
    lines += final_rows(doc) if doc["choice"] else ["No grid cell has finished: nothing is chosen yet."]
    lines += ["", "### Against the targets", "", *target_rows(doc, cost), ""]
    if doc["pending"]:
        lines += [f"Pending: {len(doc['pending'])} cells ({', '.join(doc['pending'][:6])}"
                  f"{', ...' if len(doc['pending']) > 6 else ''}). The same command resumes the sweep: finished "
                  "cells are skipped (`python -m bench.sweep --out runs/sweep ...`, see the invocations above).", ""]
    lines.append(END)
    return "\n".join(lines)


def loss_plot(doc: dict, png: Path, window: int = 5) -> Path | None:
    """Every finished grid cell's S1 loss (a running mean over `window` steps), one line per cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [c for c in doc["cells"] if c["phase"] == "grid" and c["done"]]
    if not cells:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for c in cells:
        loss = c["result"]["stages"]["s1"]["loss"]
        smooth = [statistics.fmean(loss[max(0, i - window + 1):i + 1]) for i in range(len(loss))]
        ax.plot(range(1, len(loss) + 1), smooth, label=f"{NAMES[c['method']]} lr {c['rate']:g}, {c['knob'].split('.')[-1]} {c['value']}")
    ax.set_xlabel("S1 step")
    ax.set_ylabel(f"loss (mean of {window} steps)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def update_page(page: Path, section: str) -> None:
    text = page.read_text() if page.is_file() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    page.write_text(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default="docs/results/fourway.json")
    ap.add_argument("--page", default="docs/RESULTS.md")
    args = ap.parse_args(argv)
    doc = json.loads(Path(args.json).read_text())
    loss_plot(doc, Path(args.json).parent / "sweep_s1_loss.png")
    update_page(Path(args.page), markdown(doc))
    print(args.page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
