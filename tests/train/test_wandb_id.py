"""A resumed or requeued run continues its logs: its wandb run (the id is derived from the run
directory and stored in it, megatron_ext/training/metrics.py wandb_run_id, and wandb.init resumes
it) and its metrics.jsonl (each step once)."""
import json
import re

from megatron_ext.training.config import load_config
from megatron_ext.training.metrics import WANDB_ID_FILE, Metrics, wandb_run_id


def test_the_id_is_stable_per_run_directory_and_stored_in_it(tmp_path):
    a, b = tmp_path / "rose s1", tmp_path / "other" / "rose s1"
    first = wandb_run_id(a)
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", first) and first.startswith("rose-s1-")
    assert (a / WANDB_ID_FILE).read_text().strip() == first
    assert wandb_run_id(a) == first  # a resume reads it back
    assert wandb_run_id(b) != first  # the same name elsewhere is another run
    moved = tmp_path / "moved"
    a.rename(moved)
    assert wandb_run_id(moved) == first  # the stored id travels with the directory


def test_a_resumed_run_logs_into_the_same_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    cfg = load_config(None, [f"log.run_dir={run_dir}", "log.wandb=true", "log.wandb_mode=offline"])
    ids = []
    for start in (0, 2):  # the first job, then its requeue resuming at step 2
        metrics = Metrics(run_dir, cfg, total_steps=4, start_step=start, enabled=True)
        ids.append(metrics.wandb.id)
        metrics.close()
    assert ids[0] == ids[1] == wandb_run_id(run_dir)
    assert all(p.name.endswith(ids[0]) for p in (run_dir / "wandb").glob("offline-run-*"))


def test_a_resumed_run_records_each_step_once(tmp_path):
    """Killed after logging step 4 (and half of step 5) with its last checkpoint at step 2: the
    resume trains steps 3 and 4 again, and only its records of them stay."""
    run_dir = tmp_path / "run"
    cfg = load_config(None, [f"log.run_dir={run_dir}", "log.wandb=false"])
    record = dict(lr=1e-3, grad_norm=1.0, samples_per_s=1.0, tokens_per_s=24.0, peak_mem_gib=1.0)
    metrics = Metrics(run_dir, cfg, total_steps=6, start_step=0, enabled=True)
    for step in range(1, 5):
        metrics.step(dict(record, step=step, loss=10.0 - step))
    metrics.file.write('{"step": 5, "lo')  # the kill cut this line off
    metrics.close()
    resumed = Metrics(run_dir, cfg, total_steps=6, start_step=2, enabled=True)
    resumed.step(dict(record, step=3, loss=0.5))
    resumed.close()
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(m["step"], m["loss"]) for m in lines] == [(1, 9.0), (2, 8.0), (3, 0.5)]
