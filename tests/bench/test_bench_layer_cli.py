"""bench.bench_layer's interface, which scripts/gpu_smoke.sh relies on: `--max-ratio R` exits 1 above
R (0 at or below) and prints the S1 ratio; `--json PATH` writes the figures."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path, max_ratio):
    out = tmp_path / f"layer-{max_ratio}.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "bench.bench_layer", "--shape", "tiny", "--tokens", "8",
                           "--batch", "2", "--visual-tokens", "4", "--reps", "1", "--max-ratio", str(max_ratio),
                           "--json", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return proc, json.loads(out.read_text())


@pytest.mark.parametrize("max_ratio, code", [(1000.0, 0), (0.01, 1)])
def test_max_ratio_sets_the_exit_status_and_json_holds_the_figures(tmp_path, max_ratio, code):
    proc, figures = _run(tmp_path, max_ratio)
    assert proc.returncode == code, proc.stderr[-2000:]
    assert f"S1 ratio, ROSE layer with the LLM frozen / plain frozen layer: {figures['s1_ratio']:.2f}" in proc.stdout
    assert figures["ok"] is (code == 0) and figures["max_ratio"] == max_ratio
    assert figures["s1_ratio"] == pytest.approx(figures["ms"]["ROSE layer, frozen LLM (S1)"]
                                                / figures["ms"]["plain layer, frozen"])
    assert figures["device"] in ("cpu", "cuda") and "load average" in figures["load_before"]
