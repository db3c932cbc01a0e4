"""scripts/gpu_smoke.sh's control flow on the CPU: its checks' limits fit the 8-minute budget, a
check passes only when its command exits 0 and its log shows every line it must, a timeout or a
missing line fails it, and the results land in one JSON. The GPU run itself: docs/GPU.md."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_smoke.sh"


def _lib(tmp_path, body: str) -> subprocess.CompletedProcess:
    """Source the script's functions (SMOKE_LIB=1) with OUT=tmp_path, then run `body`."""
    code = f'SMOKE_LIB=1 source {SCRIPT} {tmp_path}\n{body}\n'
    return subprocess.run(["bash", "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_the_checks_limits_fit_the_budget_of_8_minutes(tmp_path):
    out = _lib(tmp_path, 'echo "$BUDGET $(planned_total)"')
    budget, total = map(int, out.stdout.split())
    assert budget == 480 and 0 < total <= budget
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_a_check_passes_only_on_exit_0_with_every_line_it_needs(tmp_path):
    out = _lib(tmp_path, """
PLAN=(a:5 b:5 c:5 d:1 e:5 f:5)
check a "^ready;;done: step 4" bash -c 'echo ready; echo "done: step 4"'
check b "^ready;;done: step 4" bash -c 'echo "done: step 4"'
check c "done" bash -c 'echo done; exit 3'
check d "done" bash -c 'sleep 5; echo done'
SKIP_IF="Duplicate GPU detected" check e "done" bash -c 'echo "NCCL: Duplicate GPU detected : rank 1"; exit 1'
SKIP_IF="Duplicate GPU detected" check f "done" bash -c 'exit 1'
write_json
echo "failed=$failed"
""")
    lines = {l.split()[1]: l for l in out.stdout.splitlines() if l[:4] in ("PASS", "FAIL", "SKIP")}
    assert lines["a"].startswith("PASS") and "done: step 4" in lines["a"]
    assert lines["b"].startswith("FAIL") and "no line matching '^ready'" in lines["b"]
    assert lines["c"].startswith("FAIL") and "exit 3" in lines["c"]
    assert lines["d"].startswith("FAIL") and "timed out after 1s" in lines["d"]
    assert lines["e"].startswith("SKIP") and "Duplicate GPU detected" in lines["e"]
    assert lines["f"].startswith("FAIL")  # a failure that is not the named limit stays a failure
    assert "failed=4" in out.stdout
    results = json.loads((tmp_path / "smoke.json").read_text())
    assert results["failed"] == 4 and results["budget_s"] == 480
    assert [(c["name"], c["status"]) for c in results["checks"]] == [
        ("a", "PASS"), ("b", "FAIL"), ("c", "FAIL"), ("d", "FAIL"), ("e", "SKIP"), ("f", "FAIL")]
    assert (tmp_path / "a.log").read_text() == "ready\ndone: step 4\n"


def test_a_whole_run_whose_tools_print_nothing_passes_nothing(tmp_path):
    """Every tool a stand-in that exits 0 silently: no check may pass on what it does not see."""
    stub = tmp_path / "bin"
    stub.mkdir()
    for name in ("python", "vllm-python"):
        (stub / name).write_text("#!/bin/sh\nexit 0\n")
        (stub / name).chmod(0o755)
    env = dict(os.environ, PY=str(stub / "python"), VLLM_PY=str(stub / "vllm-python"), SMOKE_SETUP="0")
    run = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr
    results = json.loads((tmp_path / "out" / "smoke.json").read_text())
    names = [c["name"] for c in results["checks"]]
    assert "rose-layer" in names and "two-process" in names and "setup" not in names
    assert all(c["status"] == "FAIL" for c in results["checks"]), results
    assert results["failed"] == len(names) == 12
    assert "python -m bench.bench_layer --max-ratio 1.25 --json $OUT/rose_layer.json" in SCRIPT.read_text()
