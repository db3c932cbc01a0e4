"""bench.sweep's logic with a fake runner (no training): grid expansion, resume skipping, the
choice by validation, the final runs over seeds and the results JSON."""

import json
from pathlib import Path

import pytest
import yaml

from bench import sweep
from bench.sweep_eval import KINDS, per_kind


class FakeRunner:
    """Validation accuracy a known function of the cell; counts the cells it ran."""

    def __init__(self, fail_on: str | None = None):
        self.ran, self.fail_on = [], fail_on

    @staticmethod
    def accuracy(cell) -> float:
        # best rate 3e-4 and the second knob value for every method
        return 0.5 + (0.2 if cell.rate == 3e-4 else 0.0) + (0.1 if cell.value == sweep.KNOBS[cell.method][1][1] else 0.0)

    def __call__(self, cell, cell_dir: Path) -> dict:
        if cell.name == self.fail_on:
            raise RuntimeError("killed")
        self.ran.append(cell.name)
        cell_dir.mkdir(parents=True, exist_ok=True)
        acc = self.accuracy(cell) + 0.01 * cell.seed
        truths = ["yes", "no", "red", "circle"]
        scored = per_kind(["yes", "yes", "red", "square"], truths, ["is there a red shape?", "is there a blue shape?",
                                                                    "what color is the shape?", "what shape is this?"])
        common = dict(stages={"s1": dict(steps=2, step_s=1.0, loss=[1.0, 0.5])}, wall_s=1.0)
        if cell.phase == "grid":  # every kind read as well as the whole
            return dict(common, validation=dict(scored, accuracy=acc, prior=scored, yes_no_balanced=acc,
                                                kinds={k: dict(n=1, accuracy=acc) for k in KINDS}))
        return dict(common, test=dict(matched=dict(scored, accuracy=acc), shuffled=dict(scored, accuracy=0.4),
                              prior=dict(scored, accuracy=0.3)))


def test_grid_is_the_same_for_every_method():
    cells = sweep.grid_cells(["rose", "llava"], seeds=(1,))
    assert len(cells) == 2 * len(sweep.RATES) * 2
    for m in ("rose", "llava"):
        mine = [c for c in cells if c.method == m]
        assert sorted({c.rate for c in mine}) == sorted(sweep.RATES)
        assert {c.value for c in mine} == set(sweep.KNOBS[m][1])
    assert len({c.name for c in cells}) == len(cells)
    assert [c.method for c in cells[:2]] == ["rose", "llava"]  # round-robin: a partial sweep covers both


def test_cell_overrides_set_rate_seed_and_preset(tmp_path):
    cell = sweep.Cell("rose", 3e-4, "rose.t_scale", 0.1, 2, "final")
    s1 = cell.overrides("s1", tmp_path / "p.yaml")
    assert "optim.lr=0.0003" in s1 and "optim.min_lr=3e-05" in s1 and f"model.preset={tmp_path / 'p.yaml'}" in s1
    assert not any(o.startswith("optim.lr") for o in cell.overrides("s2", tmp_path / "p.yaml"))
    seeds = {o for o in s1 if o.startswith(("train.seed", "data.seed"))}
    assert seeds != {o for o in sweep.Cell("rose", 3e-4, "rose.t_scale", 0.1, 1, "final").overrides(
        "s1", tmp_path / "p.yaml") if o.startswith(("train.seed", "data.seed"))}
    assert cell.preset() == {"base": "main-smollm2", "rose": {"t_scale": 0.1}}
    warm = sweep.Cell("llava", 1e-3, "optim.warmup_steps", 30, 1, "grid")  # a training-config knob
    assert "optim.warmup_steps=30" in warm.overrides("s1", tmp_path / "p.yaml")
    assert not any("warmup" in o for o in warm.overrides("s2", tmp_path / "p.yaml"))
    assert warm.preset() == {"base": "main-smollm2"}


def test_cell_preset_loads_as_a_model_preset(tmp_path):
    from megatron_ext.core.presets import load_preset

    path = tmp_path / "preset.yaml"
    path.write_text(yaml.safe_dump(sweep.Cell("vlora", 1e-4, "vlora.rank", 64, 1, "grid").preset()))
    preset = load_preset(str(path))
    assert preset["vlora"]["rank"] == 64 and preset["vlora"]["every"] == 4  # the rest from the base
    assert preset["llm"]["hidden_size"] == 576


def test_sweep_runs_chooses_by_validation_and_resumes(tmp_path):
    methods = ["rose", "vlora"]
    out, js = tmp_path / "sweep", tmp_path / "fourway.json"
    grid_n = len(sweep.grid_cells(methods))
    first = FakeRunner()
    doc = sweep.sweep(out, methods, "all", [1, 2], first, js, max_cells=5)
    assert len(first.ran) == 5 and len(doc["pending"]) > 0
    assert json.loads(js.read_text())["invocations"][0]["complete"] is False

    second = FakeRunner()
    doc = sweep.sweep(out, methods, "all", [1, 2], second, js)
    assert not set(first.ran) & set(second.ran)  # finished cells are skipped
    assert len(first.ran) + len(second.ran) == grid_n + 2 * len(methods)
    for m in methods:
        c = doc["choice"][m]
        assert c["rate"] == 3e-4 and c["value"] == sweep.KNOBS[m][1][1]
        f = doc["final"][m]
        assert f["matched"]["n"] == 2 and f["matched"]["mean"] == pytest.approx(FakeRunner.accuracy(
            sweep.Cell(m, 3e-4, sweep.KNOBS[m][0], sweep.KNOBS[m][1][1], 1, "final")) + 0.015)
        assert f["matched"]["std"] == pytest.approx(0.005)
        assert set(f["kinds"]) == {"shape", "colour", "yes/no"}
    assert doc["pending"] == [] and doc["invocations"][-1]["complete"] is True
    assert len(doc["cells"]) == grid_n + 2 * len(methods) and all(c["done"] for c in doc["cells"])

    third = FakeRunner()
    sweep.sweep(out, methods, "all", [1, 2], third, js)
    assert third.ran == []


def test_the_choice_reads_every_kind_not_the_yes_no_coin():
    """A cell that is ahead overall only by guessing more yes/no right loses to one that reads colour."""
    def validation(accuracy, colour, yes_no_balanced):
        return dict(accuracy=accuracy, yes_no_balanced=yes_no_balanced,
                    kinds={"shape": dict(accuracy=1.0), "colour": dict(accuracy=colour), "yes/no": dict(accuracy=0.5)})

    lucky, reader = sweep.grid_cells(["vlora"])[:2]
    results = {lucky.name: dict(validation=validation(0.52, 0.06, 0.51)),
               reader.name: dict(validation=validation(0.50, 0.30, 0.50))}
    choice = sweep.choose(results, [lucky, reader])["vlora"]
    assert (choice["rate"], choice["value"]) == (reader.rate, reader.value)
    assert choice["validation_score"] == pytest.approx((1.0 + 0.30 + 0.50) / 3)
    assert choice["validation_accuracy"] == pytest.approx(0.50)


def test_sweep_of_some_methods_lists_all(tmp_path):
    out, js = tmp_path / "sweep", tmp_path / "fourway.json"
    runner = FakeRunner()
    doc = sweep.sweep(out, ["vlora"], "grid", [1], runner, js, max_cells=2, listed=["rose", "vlora"])
    assert {c.split("/")[1] for c in runner.ran} == {"vlora"}
    assert {c["method"] for c in doc["cells"]} == {"rose", "vlora"}
    assert sum(c["done"] for c in doc["cells"]) == 2 and "rose" not in doc["choice"]


def test_a_killed_cell_is_rerun(tmp_path):
    out, js = tmp_path / "sweep", tmp_path / "fourway.json"
    victim = sweep.grid_cells(["vora"])[1].name
    with pytest.raises(RuntimeError):
        sweep.sweep(out, ["vora"], "grid", [1], FakeRunner(fail_on=victim), js)
    again = FakeRunner()
    sweep.sweep(out, ["vora"], "grid", [1], again, js)
    assert again.ran[0] == victim


class CheckpointingRunner(FakeRunner):
    """Writes what a real cell leaves on disk: a stage's checkpoints, its metrics and an export."""

    def __call__(self, cell, cell_dir: Path) -> dict:
        stage = cell_dir / "train" / "s1"
        (stage / "checkpoints" / "step_000002").mkdir(parents=True)
        (stage / "checkpoints" / "step_000002" / "weights.pt").write_bytes(b"x" * 64)
        (stage / "metrics.jsonl").write_text("{}\n")
        (cell_dir / "hf").mkdir()
        return super().__call__(cell, cell_dir)


@pytest.mark.parametrize("keep", [False, True])
def test_a_finished_cell_drops_its_checkpoints_unless_kept(tmp_path, keep):
    out, js = tmp_path / "sweep", tmp_path / "fourway.json"
    sweep.sweep(out, ["rose"], "grid", [1], CheckpointingRunner(), js, max_cells=1, keep_checkpoints=keep)
    cell = out / sweep.grid_cells(["rose"])[0].name
    assert (cell / "done.json").is_file() and (cell / "hf").is_dir()
    assert (cell / "train" / "s1" / "metrics.jsonl").is_file()
    assert (cell / "train" / "s1" / "checkpoints").exists() is keep


def test_per_kind_and_balanced_yes_no():
    qs = ["is there a red shape?", "is there a blue shape?", "is there a green shape?", "what color is it?",
          "what shape is it?"]
    s = per_kind(["yes", "yes", "yes", "red", "circle"], ["yes", "no", "no", "red", "triangle"], qs)
    assert s["accuracy"] == pytest.approx(2 / 5)
    assert s["kinds"]["yes/no"] == {"n": 3, "accuracy": pytest.approx(1 / 3)}
    assert s["kinds"]["colour"]["accuracy"] == 1.0 and s["kinds"]["shape"]["accuracy"] == 0.0
    assert s["yes_no_balanced"] == pytest.approx(0.5)  # always 'yes': chance, whatever the imbalance


def test_balanced_yes_no_gives_the_word_prior_one_half():
    """A prior that answers each question string by its majority is right on 80% of these yes/no
    questions but reads nothing off the image: 0.5 per template. Reading the image: 1.0."""
    qs = ["is there a red shape?"] * 4 + ["is there a blue shape?"] + ["is there not a red shape?"] * 5
    truth = ["no", "no", "no", "no", "yes"] + ["yes", "yes", "yes", "yes", "no"]
    prior = ["no"] * 5 + ["yes"] * 5
    s = per_kind(prior, truth, qs)
    assert s["kinds"]["yes/no"]["accuracy"] == pytest.approx(0.8)
    assert s["yes_no_balanced"] == pytest.approx(0.5) and s["yes_no_templates"] == 2
    assert per_kind(truth, truth, qs)["yes_no_balanced"] == 1.0


def test_page_shows_every_cell_the_choice_and_true_targets(tmp_path):
    from bench import sweep_page

    out, js = tmp_path / "sweep", tmp_path / "fourway.json"
    partial = sweep.sweep(out, ["rose", "llava"], "grid", [1, 2], FakeRunner(), js, max_cells=3)
    text = sweep_page.markdown(partial, cost={})
    pending_grid = [c for c in partial["pending"] if c.startswith("grid/")]
    assert text.count(" | no | | |") == len(pending_grid) == 12 - 3  # every cell listed, done or not
    assert "not known" in text and "Pending:" in text

    doc = sweep.sweep(out, ["rose", "llava"], "all", [1, 2], FakeRunner(), js)
    cost = {"160": {"rose": 6.0, "llava": 12.0}, "320": {"rose": 8.0, "llava": 32.0}}
    text = sweep_page.markdown(doc, cost)
    best = max(doc["final"].values(), key=lambda f: f["matched"]["mean"])["matched"]["mean"]
    assert best < 0.95 and "| best method >= 0.95 overall |" in text
    row = next(line for line in text.splitlines() if line.startswith("| best method >= 0.95 overall"))
    assert row.endswith("| no |") and f"{best:.3f}" in row
    flops = next(line for line in text.splitlines() if "at 25 visual tokens" in line)
    assert "0.50x" in flops and flops.endswith("| yes |")
    assert "Pending" not in text

    page = tmp_path / "RESULTS.md"
    page.write_text("# Results\n\nprose kept\n")
    sweep_page.update_page(page, text)
    sweep_page.update_page(page, text)  # a second rewrite replaces, never appends
    assert page.read_text().count(sweep_page.BEGIN) == 1 and "prose kept" in page.read_text()


def test_balance_yes_no_equalises_each_template_and_keeps_open_questions():
    from collections import Counter

    from mainjob.data import balance_yes_no, template

    qa = {"a.png": [["is there a red shape?", "no"], ["is there a blue shape?", "no"], ["what color is the shape?", "red"]],
          "b.png": [["is there a red shape?", "yes"], ["is there not a red shape?", "no"], ["what shape is this?", "circle"]],
          "c.png": [["is there a green shape?", "no"], ["is there not a blue shape?", "yes"],
                    ["is there not a green shape?", "yes"]]}
    out = balance_yes_no(qa)
    counts = Counter((template(q), a) for pairs in out.values() for q, a in pairs if a in ("yes", "no"))
    assert template("is there a red shape?") == template("is there a blue shape?") == "is there a <colour> shape?"
    assert counts[("is there a <colour> shape?", "yes")] == counts[("is there a <colour> shape?", "no")] == 1
    assert counts[("is there not a <colour> shape?", "yes")] == counts[("is there not a <colour> shape?", "no")] == 1
    open_q = lambda d: sorted((k, q) for k, pairs in d.items() for q, a in pairs if a not in ("yes", "no"))  # noqa: E731
    assert open_q(out) == open_q(qa)
    assert out == balance_yes_no(qa)  # seeded
