"""`torchrun -m megatron_ext.train` end to end (the form scripts/main.sh and Slurm use): TP=2 in two
processes; the run dir holds the resolved config, a checkpoint pointer, metrics.jsonl with one
record per step, and an offline wandb run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.multiproc


def test_torchrun_entry_point_writes_the_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1",
               PYTHONWARNINGS="ignore::UserWarning,ignore::DeprecationWarning,ignore::FutureWarning")
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node", "2",
           "-m", "megatron_ext.train", "--config", "configs/train/s1-rose-tiny.yaml",
           "parallel.tensor=2", "train.steps=3", "optim.warmup_steps=2", "checkpoint.every=3",
           f"log.run_dir={run_dir}", "log.every=1", "log.wandb=true"]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    records = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        for key in ("loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s", "corrupt_samples",
                    "peak_mem_gib", "consumed_samples"):
            assert key in r and r[key] is not None, key
        assert r["samples_per_s"] > 0 and r["tokens_per_s"] == pytest.approx(16 * r["samples_per_s"])
    assert all("mfu" in r for r in records)  # None on CPU: no peak FLOP/s to compare with
    assert records[0]["lr"] < records[1]["lr"]  # warmup, then cosine down to min_lr
    assert records[-1]["lr"] == pytest.approx(1e-3)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["parallel"]["tensor"] == 2 and cfg["train"]["steps"] == 3
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_000003"
    assert list((run_dir / "wandb").glob("offline-run-*")), "no offline wandb run"
    assert "TP=2 PP=1 DP=1" in p.stdout and "distributed optimizer" in p.stdout
