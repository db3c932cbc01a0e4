"""`--dry-run` of python -m megatron_ext.train: every check, the resolved config and the plan, and
nothing started (no process group, no run directory); the Slurm scripts run it before srun, so a
config mistake is one line and exit 2 before any worker."""
import os
import subprocess

import pytest
import yaml

from errors_helpers import ROOT, assert_one_line

TINY = ROOT / "configs" / "train" / "s1-rose-tiny.yaml"


@pytest.fixture
def nothing_starts(monkeypatch):
    """Fail the test if anything would start a process group or build a model."""
    import megatron_ext.training.model as method_training
    import megatron_ext.parallel as parallel
    import megatron_ext.training.trainer as trainer  # imported before patching: it binds init_parallel by name

    def refuse(*a, **k):
        raise AssertionError("--dry-run started something")

    for module in (parallel, trainer):
        monkeypatch.setattr(module, "init_parallel", refuse)
    monkeypatch.setattr(method_training, "build_training_model", refuse)


def test_dry_run_prints_the_resolved_config_and_the_plan(tmp_path, capsys, nothing_starts):
    import torch.distributed as dist

    from megatron_ext.train import main
    from megatron_ext.training.config import load_config

    run_dir = tmp_path / "run"
    overrides = [f"log.run_dir={run_dir}", "train.steps=12"]
    assert main(["--dry-run", "--world-size", "2", "--config", str(TINY), *overrides]) == 0
    out = capsys.readouterr().out
    config, plan = out.split("# dry run: checks passed; would run\n")
    assert yaml.safe_load(config) == load_config(str(TINY), overrides).to_dict()
    assert "rose s1: 12 steps of 8 samples (1 micro-batches of 4 per rank) on synthetic data" in plan
    assert "world size 2: TP 1 x PP 1 x DP 2" in plan and "trains: generator" in plan
    assert "starts from initialisation" in plan
    assert not run_dir.exists()  # no config.yaml, no lock, no checkpoints
    assert not dist.is_initialized() or dist.get_world_size() == 1  # none started here


def test_dry_run_mistake_is_one_line_and_exit_2(tmp_path, capsys, nothing_starts):
    from megatron_ext.train import main

    code = main(["--dry-run", "--world-size", "2", "--config", str(TINY), f"log.run_dir={tmp_path}/run",
                 "train.global_batch_size=6"])
    captured = capsys.readouterr()
    assert_one_line(code, captured.err, 2, "config error: train.global_batch_size (6) must be divisible by "
                    "train.micro_batch_size (4) x data-parallel size (2) = 8")
    assert "# resolved config" not in captured.out


def _slurm(tmp_path, *overrides):
    """launch/slurm/s1.sh as sbatch runs it, with an srun that only records that it was called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "srun").write_text(f"#!/bin/sh\ntouch {tmp_path}/srun-called\n")
    (bin_dir / "srun").chmod(0o755)
    python_dir = os.path.dirname(os.path.realpath(os.sys.executable))
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "SLURM_SUBMIT_DIR")}
    env.update(SLURM_JOB_ID="77", SLURM_JOB_NAME="train-s1", SLURM_JOB_NODELIST="localhost", SLURM_NNODES="1",
               GPUS_PER_NODE="2", CONFIG=str(TINY), RUN_ROOT=str(tmp_path / "ckpt"), LOG_DIR=str(tmp_path / "logs"),
               PYTHONPATH=str(ROOT), PATH=f"{bin_dir}:{os.path.dirname(os.sys.executable)}:{python_dir}:/usr/bin:/bin")
    return subprocess.run(["bash", str(ROOT / "launch" / "slurm" / "s1.sh"), *overrides], env=env,
                          capture_output=True, text=True, timeout=300)


def test_slurm_script_stops_a_config_mistake_before_any_worker(tmp_path):
    r = _slurm(tmp_path, "train.global_batch_size=6")
    assert_one_line(r.returncode, r.stderr, 2, "config error: train.global_batch_size (6) must be divisible")
    assert not (tmp_path / "srun-called").exists()
    r = _slurm(tmp_path, "train.steps=10")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "# dry run: checks passed" in r.stdout and "world size 2" in r.stdout
    assert (tmp_path / "srun-called").exists()


def test_pipeline_dry_run_checks_and_prints_without_starting(tmp_path, capsys, monkeypatch):
    import pipeline.run as pipeline_run

    monkeypatch.setattr(pipeline_run, "run", lambda *a, **k: pytest.fail("--dry-run ran the stages"))
    urls = tmp_path / "urls.csv"
    urls.write_text("url,caption\nhttp://127.0.0.1:1/a.jpg,a cat\n")
    out_dir = tmp_path / "out"
    base = ["--config", str(ROOT / "configs/data/demo_tiny.yaml"), "--set", f"output_dir={out_dir}",
            "--stages", "download,filter,shard", "--dry-run"]
    pipeline_run.main([*base, "--set", f"input={urls}"])
    config, plan = capsys.readouterr().out.split("# dry run: checks passed; would run ")
    assert yaml.safe_load(config)["input"] == str(urls)
    assert plan.strip() == f"download, filter, shard into {out_dir}"
    assert not out_dir.exists()  # no lock, no stage folder
    with pytest.raises(SystemExit) as e:
        pipeline_run.main([*base, "--set", f"input={tmp_path}/none.csv"])
    assert_one_line(e.value.code, capsys.readouterr().err, 1, f"input URL list not found: '{tmp_path}/none.csv'")


def test_main_job_dry_run_resolves_every_stage_and_starts_nothing(tmp_path, capsys, monkeypatch):
    from mainjob import run as mainjob_run

    monkeypatch.setattr(mainjob_run, "main_job", lambda *a, **k: pytest.fail("--dry-run started the job"))
    assert mainjob_run.main(["--dry-run", "--method", "rose", "--size", "smallest", "--out", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    for stage in ("s1", "s2", "s3"):
        assert f"# {stage}: configs/train/main/rose-{stage}.yaml" in out
    assert f"starts from {tmp_path / 'm' / 'rose' / 'train' / 's2'}" in out  # s3 from s2
    assert "(DP 2)" in out and not (tmp_path / "m").exists()


@pytest.mark.parametrize("user_mode", [None, "online"])
def test_main_job_checks_each_stage_before_torchrun_and_keeps_the_users_wandb_mode(tmp_path, monkeypatch, user_mode):
    from mainjob import training
    from mainjob.settings import SIZES

    calls = []
    monkeypatch.setattr(training, "describe", lambda cfg, world: calls.append(("check", cfg.train.stage, world)))
    monkeypatch.setattr(training.proc, "run", lambda cmd, log, tag, env=None, echo=True:
                        calls.append(("torchrun", tag, env["WANDB_MODE"])) or 0.0)
    if user_mode is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", user_mode)
    training.train(tmp_path, "vlora", ("s1", "s2"), SIZES["smallest"], "manifest.json", tmp_path / "llm",
                   tmp_path / "tower", echo=False)
    mode = user_mode or "offline"
    assert calls == [("check", "s1", 2), ("torchrun", "train s1", mode), ("check", "s2", 2), ("torchrun", "train s2", mode)]
