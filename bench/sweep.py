"""The four-way comparison tuned alike: one grid for every method, chosen on validation, then the
final runs over seeds.

    python -m bench.sweep --out runs/sweep [--methods rose,llava,vlora,vora] [--phase grid|final|all]
        [--grid-steps 150] [--seeds 1,2] [--val-images 60] [--max-cells N] [--json docs/results/fourway.json]

grid   every method gets the same S1 peak rates (RATES) times its own structural knob (KNOBS: a
       key of its preset section and two values), S1 only (the main job's S1 config, --grid-steps
       steps, seed 1). Each cell is exported and scored, greedy, on the validation split: the
       questions of --val-images easy-VQA TRAIN images after the ones the main job serves (held
       out of training; the test split is never used for a choice).
choice per method the cell with the best validation score (selection_score: the mean of shape, colour
       and balanced yes/no accuracy; mean over the seeds a cell ran).
final  the chosen rate and knob through all of the method's stages (the main job's configs), once
       per seed, scored on the main job's held-out TEST questions (matched, shuffled images,
       prior), with accuracy per kind of question.

Every cell is a directory under --out with done.json once finished: a rerun skips finished cells,
so an interrupted sweep resumes with the same command. After each cell the results JSON (--json)
is rewritten with the grid, every cell (done or not), the choice and, per method, mean and spread
(population standard deviation) over seeds; `python -m bench.fourway_page --sweep JSON` renders it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml

from bench.common import machine_load
from bench.sweep_eval import from_predictions, score_export, selection_score, validation_questions
from mainjob.settings import METHODS, SIZES, train_config

log = logging.getLogger("bench.sweep")
ORDER = ("rose", "llava", "vlora", "vora")
RATES = (3e-4, 1e-3, 1e-4)  # S1 peak rates, the same for every method (run in this order)
# the one structural knob per method: a key of its preset section, the main job's value first
# (a train-config key, optim.*, applies to S1 like the rate)
KNOBS = {
    "rose": ("rose.t_scale", (0.1, 1.0)),     # the rotation head's output scale (S1 stability)
    # LLaVA's projector is transformers' fixed 2-layer MLP (the export's): its knob is the warm-up
    # that the rate reaches its peak over
    "llava": ("optim.warmup_steps", (10, 30)),
    "vlora": ("vlora.rank", (32, 64)),
    "vora": ("vora.rank", (64, 128)),
}
PRESET = "main-smollm2"
CONFIG_SECTIONS = ("optim", "train", "data")


@dataclass(frozen=True)
class Cell:
    method: str
    rate: float
    knob: str
    value: object
    seed: int
    phase: str  # "grid" (S1 only, validation) or "final" (all stages, test)

    @property
    def name(self) -> str:
        value = str(self.value).lower()
        return f"{self.phase}/{self.method}/lr{self.rate:g}-{self.knob.split('.')[-1]}{value}-seed{self.seed}"

    @property
    def in_config(self) -> bool:
        """The knob is a training-config key (S1's), not a preset one."""
        return self.knob.split(".")[0] in CONFIG_SECTIONS

    def preset(self) -> dict:
        """The method's preset: the main job's with the knob set (`base:` keeps the rest)."""
        section, key = self.knob.split(".")
        return {"base": PRESET} if self.in_config else {"base": PRESET, section: {key: self.value}}

    def overrides(self, stage: str, preset_path: Path) -> list[str]:
        """Config overrides of one stage: the preset, the seed (training and data order) and, in
        S1, the peak rate (min_lr a tenth of it, as every main-job config has)."""
        data_seed = yaml.safe_load(train_config(self.method, stage).read_text())["data"]["seed"]
        out = [f"model.preset={preset_path}", f"train.seed={1233 + self.seed}",
               f"data.seed={data_seed + 10 * (self.seed - 1)}", "log.wandb=false"]
        if stage == "s1":
            out += [f"optim.lr={self.rate:g}", f"optim.min_lr={self.rate / 10:g}"]
            if self.in_config:
                out.append(f"{self.knob}={self.value}")
        return out


def grid_cells(methods, rates=RATES, knobs=None, seeds=(1,)) -> list[Cell]:
    """Every (rate, knob value, seed) of every method, round-robin over the methods (knob value,
    then rate, outermost), so that a sweep stopped early has covered every method alike."""
    knobs = knobs or KNOBS
    n_values = max(len(knobs[m][1]) for m in methods)
    return [Cell(m, r, knobs[m][0], knobs[m][1][i], s, "grid") for i in range(n_values) for r in rates
            for s in seeds for m in methods if i < len(knobs[m][1])]


def final_cells(choice: dict, seeds) -> list[Cell]:
    return [dataclasses.replace(Cell(**{k: c[k] for k in ("method", "rate", "knob", "value")}, seed=s, phase="final"))
            for c in choice.values() for s in seeds]


def load_done(root: Path, cell: Cell) -> dict | None:
    done = root / cell.name / "done.json"
    return json.loads(done.read_text()) if done.is_file() else None


def choose(results: dict, cells: list[Cell]) -> dict:
    """{method: the grid cell with the best mean selection_score over its seeds} among the
    finished cells (ties: the first in grid order); a method with no finished cell is left out."""
    best: dict = {}
    by_setting: dict = {}
    for cell in cells:
        r = results.get(cell.name)
        if r is None:
            continue
        key = (cell.method, cell.rate, cell.knob, str(cell.value))
        by_setting.setdefault(key, (cell, []))[1].append(r["validation"])
    for (method, *_), (cell, validations) in by_setting.items():
        score = statistics.fmean(selection_score(v) for v in validations)
        if method not in best or score > best[method]["validation_score"]:
            best[method] = dict(method=method, rate=cell.rate, knob=cell.knob, value=cell.value,
                                validation_score=score, seeds=len(validations),
                                validation_accuracy=statistics.fmean(v["accuracy"] for v in validations))
    return best


def spread(values: list) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return dict(n=0, mean=None, std=None)
    return dict(n=len(values), mean=statistics.fmean(values), std=statistics.pstdev(values),
                min=min(values), max=max(values))


def final_summary(results: dict, cells: list[Cell]) -> dict:
    """Per method: mean and spread over seeds of the test accuracy (matched, shuffled, prior)
    and of each kind's accuracy, and yes/no balanced accuracy."""
    out: dict = {}
    for cell in cells:
        r = results.get(cell.name)
        if r is not None:
            out.setdefault(cell.method, []).append(r["test"])
    summary = {}
    for method, tests in out.items():
        s = {view: spread([t[view]["accuracy"] for t in tests]) for view in ("matched", "shuffled", "prior")}
        s["kinds"] = {k: spread([t["matched"]["kinds"][k]["accuracy"] for t in tests])
                      for k in tests[0]["matched"]["kinds"]}
        s["yes_no_balanced"] = spread([t["matched"]["yes_no_balanced"] for t in tests])
        summary[method] = s
    return summary


class Runner:
    """Trains, exports and scores one cell through the main job's own steps."""

    def __init__(self, out: Path, size_name: str, grid_steps: int, val_images: int, echo: bool = False):
        from mainjob import assets, data

        # the yes/no-balanced mix (mainjob/data.balance_yes_no): an answer read off the words
        # cannot reach a low loss on it, so validation tells image reading from the word prior
        self.size = dataclasses.replace(SIZES[size_name], balance_yes_no=True)
        self.grid_size = dataclasses.replace(self.size, steps_scale=grid_steps / _s1_steps())
        shared = out / "assets"
        self.llm, self.tower = assets.llm(shared), assets.vision_tower(shared)
        built = data.build(out / "data", self.size, assets.captioner(shared), echo=echo)
        self.manifest, self.data = built["manifest"], {k: built.get(k) for k in ("input", "kept", "dropped")}
        self.val_questions = validation_questions(self.size.easyvqa_images, val_images)
        self.echo = echo

    def __call__(self, cell: Cell, cell_dir: Path) -> dict:
        from mainjob import inference, training

        cell_dir.mkdir(parents=True, exist_ok=True)
        preset = cell_dir / "preset.yaml"
        preset.write_text(yaml.safe_dump(cell.preset()))
        stages = ("s1",) if cell.phase == "grid" else METHODS[cell.method]
        size = self.grid_size if cell.phase == "grid" else self.size
        t0 = time.time()
        trained = training.train(cell_dir, cell.method, stages, size, self.manifest, self.llm, self.tower,
                                 echo=self.echo, extra={s: cell.overrides(s, preset) for s in stages})
        hf_dir, _ = inference.export(cell_dir, trained[stages[-1]]["run_dir"], self.llm, echo=self.echo)
        result = dict(cell=dataclasses.asdict(cell), load=machine_load(),
                      stages={s: stage_record(t) for s, t in trained.items()})
        if cell.phase == "grid":
            result["validation"] = score_export(hf_dir, self.val_questions)
        else:
            evaluation = inference.evaluate(cell_dir, hf_dir, self.size.test_questions, echo=self.echo)
            rows = [json.loads(line) for line in (Path(evaluation["results"]).parent / "predictions.jsonl")
                    .read_text().splitlines() if line.strip()]
            result["test"] = from_predictions(rows)
            result["test"]["evaluation"] = {k: evaluation[k] for k in ("greedy", "prior", "stderr") if k in evaluation}
        result["wall_s"] = round(time.time() - t0, 1)
        return result


def stage_record(trained: dict) -> dict:
    """A stage's steps, losses and the seconds its steps took (metrics.jsonl's step_time_s: true
    even when this invocation found the stage trained by an earlier one)."""
    m = trained["metrics"]
    return dict(steps=trained["steps"], loss=[r["loss"] for r in m], step_s=round(sum(r["step_time_s"] for r in m), 1))


def _s1_steps() -> int:
    return yaml.safe_load(train_config("rose", "s1").read_text())["train"]["steps"]


def sweep(out: Path, methods, phase: str, seeds, runner, json_path: Path, max_cells: int | None = None,
          grid_seeds=(1,), command: str = "", listed=None, keep_checkpoints: bool = False) -> dict:
    """Runs the cells of `methods` not yet done (at most max_cells this time), rewriting json_path
    after each with every cell of the `listed` methods (default: `methods`), done or not."""
    run_methods = list(methods)
    methods = [m for m in (listed or run_methods) if m in set(listed or run_methods) | set(run_methods)]
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    # one file per invocation (several may run at once on disjoint --methods), all on the page
    invocations = out / "invocations"
    invocations.mkdir(exist_ok=True)
    mine = invocations / f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{len(list(invocations.iterdir()))}.json"
    record = dict(command=command, started=started, load_start=machine_load())
    grid = grid_cells(methods, seeds=grid_seeds)
    ran = 0

    def state() -> dict:
        results = {c.name: r for c in grid if (r := load_done(out, c)) is not None}
        choice = choose(results, grid)
        final = final_cells(choice, seeds)
        results.update({c.name: r for c in final if (r := load_done(out, c)) is not None})
        return dict(results=results, choice=choice, final=final)

    def write(s: dict, finished: bool) -> dict:
        record.update(cells_run=ran, load_end=machine_load(),
                      ended=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), complete=finished)
        mine.write_text(json.dumps(record, indent=2))
        history = [json.loads(f.read_text()) for f in sorted(invocations.glob("*.json"))]
        doc = dict(
            command=command, invocations=history,
            grid=dict(methods=list(methods), rates=list(RATES), knobs={m: dict(key=KNOBS[m][0], values=list(KNOBS[m][1]))
                                                                        for m in methods},
                      seeds=list(grid_seeds), steps=getattr(runner, "grid_size", None) and
                      round(_s1_steps() * runner.grid_size.steps_scale),
                      validation=dict(questions=len(getattr(runner, "val_questions", [])),
                                      split="easy-VQA train images after the served ones"),
                      data="the main job's shards with yes/no answers balanced per question template"),
            cells=[dict(name=c.name, phase=c.phase, **{k: v for k, v in dataclasses.asdict(c).items() if k != "phase"},
                        done=c.name in s["results"], result=s["results"].get(c.name))
                   for c in grid + s["final"]],
            choice=s["choice"], final_seeds=list(seeds),
            final=final_summary(s["results"], s["final"]),
            pending=[c.name for c in grid + s["final"] if c.name not in s["results"]])
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(doc, indent=2, default=str))
        return doc

    def run_cells(cells: list) -> bool:
        """Run the unfinished cells of this invocation's methods; False once --max-cells is reached."""
        nonlocal ran, s
        for cell in [c for c in cells if c.name not in s["results"] and c.method in run_methods]:
            if max_cells is not None and ran >= max_cells:
                return False
            log.info("== %s", cell.name)
            _finish(out, cell, runner, keep_checkpoints)
            ran += 1
            s = state()
            write(s, False)
        return True

    s = state()
    if phase in ("grid", "all") and not run_cells(grid):
        return write(s, False)
    if phase in ("final", "all"):
        if any(load_done(out, c) is None for c in grid):
            log.warning("the grid is not finished: the final runs use the choice among the finished cells")
        if not run_cells(s["final"]):
            return write(s, False)
    return write(s, not any(c.name not in s["results"] for c in grid + s["final"]))


def _finish(out: Path, cell: Cell, runner, keep_checkpoints: bool = False) -> None:
    cell_dir = out / cell.name
    result = runner(cell, cell_dir)
    (cell_dir / "done.json").write_text(json.dumps(result, indent=2, default=str))
    if not keep_checkpoints:
        # a finished cell is its export, metrics and done.json; its checkpoints (1.3 GB per stage
        # at the main job's size) would fill the disk long before the grid ends
        for checkpoints in sorted((cell_dir / "train").glob("*/checkpoints")):
            shutil.rmtree(checkpoints)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/sweep")
    ap.add_argument("--methods", default=",".join(ORDER))
    ap.add_argument("--phase", default="all", choices=("grid", "final", "all"))
    ap.add_argument("--grid-steps", type=int, default=150, help="S1 steps of a grid cell (the main job's: 150)")
    ap.add_argument("--seeds", default="1,2", help="seeds of the final runs")
    ap.add_argument("--val-images", type=int, default=60, help="validation images (about 10 questions each)")
    ap.add_argument("--max-cells", type=int, help="stop after this many cells (resume later)")
    ap.add_argument("--size", default="default", choices=sorted(SIZES))
    ap.add_argument("--json", default="docs/results/fourway.json")
    ap.add_argument("--keep-checkpoints", action="store_true",
                    help="keep each finished cell's training checkpoints (default: removed once it is exported and scored)")
    args = ap.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        ap.error(f"--methods {','.join(unknown)}: choose from {','.join(METHODS)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    out = Path(args.out).resolve()
    runner = Runner(out, args.size, args.grid_steps, args.val_images)
    sweep(out, methods, args.phase, [int(s) for s in args.seeds.split(",")], runner, Path(args.json),
          args.max_cells, command="python -m bench.sweep " + " ".join(argv if argv is not None else sys.argv[1:]),
          listed=[m for m in ORDER if m in METHODS], keep_checkpoints=args.keep_checkpoints)
    return 0


if __name__ == "__main__":
    sys.exit(main())
