"""A killed launcher takes its workers with it, and a killed worker its forked checkpoint
writers: checked by pid, with a control run without the guard showing the check can fail."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from errors_helpers import ROOT

WORKER = Path(__file__).with_name("lifetime_worker.py")
TORCHRUN = Path(sys.executable).parent / "torchrun"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (dead, not yet reaped) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def _wait(cond, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return cond()


def _launch(tmp_path, guard=True):
    from pvcommon.lifetime import loopback_rendezvous

    env = dict(os.environ, PYTHONPATH=str(ROOT), NO_GUARD="0" if guard else "1")
    launcher = subprocess.Popen([str(TORCHRUN), *loopback_rendezvous(), "--nproc-per-node=2", str(WORKER),
                                 str(tmp_path)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    names = [f"{kind}-{rank}.pid" for kind in ("worker", "writer", "spawned") for rank in (0, 1)]
    assert _wait(lambda: all((tmp_path / n).is_file() and (tmp_path / n).read_text() for n in names), 120), \
        "workers did not start"
    return launcher, {n: int((tmp_path / n).read_text()) for n in names}


def _cleanup(pids):
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.multiproc
def test_killed_launcher_takes_workers_and_writers(tmp_path):
    launcher, pids = _launch(tmp_path)
    try:
        launcher.kill()  # SIGKILL: torchrun gets no chance to stop anything itself
        launcher.wait()
        assert _wait(lambda: not any(_alive(p) for p in pids.values()), 15), \
            {n: p for n, p in pids.items() if _alive(p)}
    finally:
        _cleanup(pids.values())


@pytest.mark.multiproc
def test_killed_worker_takes_its_writer(tmp_path):
    launcher, pids = _launch(tmp_path)
    try:
        os.kill(pids["worker-0.pid"], signal.SIGKILL)
        assert _wait(lambda: not _alive(pids["writer-0.pid"]) and not _alive(pids["spawned-0.pid"]), 15)
    finally:
        launcher.kill()
        launcher.wait()
        _cleanup(pids.values())


@pytest.mark.multiproc
def test_control_without_the_guard_leaves_orphans(tmp_path):
    """The same launch without die_with_launcher(): the workers outlive a killed torchrun (what
    issue 15 saw), so the two tests above measure the guard, not torchrun."""
    launcher, pids = _launch(tmp_path, guard=False)
    try:
        launcher.kill()
        launcher.wait()
        time.sleep(3)
        assert all(_alive(p) for p in pids.values())
    finally:
        _cleanup(pids.values())


def _descendants(pid: int) -> set:
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
            todo += [k for k in kids if k not in out]
            out.update(kids)
    return out


@pytest.mark.slow  # a real tiny training run under torchrun, about a minute on 2 loaded cores
@pytest.mark.multiproc
def test_killed_torchrun_leaves_no_training_process(tmp_path):
    """`torchrun -m megatron_ext.train` killed mid-run (checkpointing every step, so Megatron's
    writers fork): no worker and no writer of that run is left, checked by pid."""
    from pvcommon.lifetime import loopback_rendezvous

    run_dir = tmp_path / "run"
    launcher = subprocess.Popen(
        [str(TORCHRUN), *loopback_rendezvous(), "--nproc-per-node=2", "-m", "megatron_ext.train",
         "--config", str(ROOT / "configs" / "train" / "s1-rose-tiny.yaml"), f"log.run_dir={run_dir}",
         "train.steps=100000", "checkpoint.every=1", "log.wandb=false", "optim.warmup_steps=1"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    seen = set()
    try:
        metrics = run_dir / "metrics.jsonl"
        assert _wait(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 2, 300)
        for _ in range(10):  # a few samples of the tree catch the writers between steps
            seen |= _descendants(launcher.pid)
            time.sleep(0.3)
        assert len(seen) >= 2
        launcher.kill()
        launcher.wait()
        assert _wait(lambda: not any(_alive(p) for p in seen), 30), [p for p in seen if _alive(p)]
    finally:
        if launcher.poll() is None:
            launcher.kill()
        _cleanup(seen)
