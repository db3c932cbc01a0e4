#!/usr/bin/env bash
# Every GPU path on one H100/H200, one line per check (PASS/FAIL, seconds, what it saw); about
# 5-8 minutes. Logs stay in $SMOKE_DIR (default: a new /tmp/gpu-smoke.*). docs/GPU.md explains it.
#
#   bash scripts/gpu_smoke.sh
#
# The device has no network, so everything must be installed before (on a node with the driver):
#   bash scripts/setup.sh          .venv: torch 2.13.0+cu128 (or cu126, from the driver), megatron-core
#                                  0.16.1, transformer-engine 2.11.0 with transformer-engine-torch built
#                                  against that torch, nvidia-dali-cuda120 2.4.0, the train/data/dev extras
#                                  (img2dataset, dashscope)
#   bash scripts/setup_vllm.sh     .venv-vllm: vllm 0.33.0 with its own torch, ray 2.60.0 (the vLLM check;
#                                  reported FAIL with the reason when absent)
# Nothing is downloaded at run time: the models are tiny and random, built here from config.
# SMOKE_ONLY=REGEX runs only the checks whose name matches (e.g. SMOKE_ONLY='s1-|resume' to rerun);
# SMOKE_BACKEND=local SMOKE_FP8= SMOKE_TIME_SCALE=10 runs the training lines without TE, with 10x
# the time limits (a CPU rehearsal of the commands).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
VLLM_PY=${VLLM_PY:-.venv-vllm/bin/python}
OUT=${SMOKE_DIR:-$(mktemp -d /tmp/gpu-smoke.XXXXXX)}
BACKEND=${SMOKE_BACKEND-te}
FP8=${SMOKE_FP8-hybrid}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=offline NO_ALBUMENTATIONS_UPDATE=1
mkdir -p "$OUT"
failed=0

# check NAME SECONDS PATTERN CMD...: runs CMD (log in $OUT/NAME.log), PASS when it exits 0 and its
# log has a line matching PATTERN; the line printed is that match (or the log's last line).
check() {
  local name=$1 limit=$2 pattern=$3 t0 rc line
  shift 3
  if [ -n "${SMOKE_ONLY:-}" ] && ! [[ $name =~ $SMOKE_ONLY ]]; then return 0; fi
  limit=$((limit * ${SMOKE_TIME_SCALE:-1}))
  t0=$(date +%s)
  timeout "$limit" bash -c '"$@"' check "$@" >"$OUT/$name.log" 2>&1  # (bash -c: CMD may be a function)
  rc=$?
  line=$(grep -E -- "$pattern" "$OUT/$name.log" | tail -1)
  if [ $rc -eq 0 ] && [ -n "$line" ]; then status=PASS; else
    status=FAIL; failed=$((failed + 1))
    [ -n "$line" ] || line="exit $rc: $(grep -v '^\s*$' "$OUT/$name.log" | tail -1)"
  fi
  printf '%-4s %-22s %4ds  %s\n' "$status" "$name" "$(($(date +%s) - t0))" "${line:0:150}"
}

train() {  # train CONFIG RUN_DIR OVERRIDES...: a tiny S1 on $BACKEND with $FP8
  local config=$1 run=$2
  shift 2
  "$PY" -m megatron_ext.train --config "$config" model.backend="$BACKEND" ${FP8:+train.fp8=$FP8} \
    log.run_dir="$OUT/$run" log.wandb=false log.every=1 optim.warmup_steps=1 "$@"
}

caption() {  # the demo corpus through download + recaption, the captioner on vLLM
  "$PY" -m pipeline.demo_data --urls "$OUT/urls.csv" --n-good 8 >"$OUT/demo_server.log" 2>&1 &
  local server=$!
  for _ in $(seq 50); do [ -s "$OUT/urls.csv" ] && break; sleep 0.2; done
  "$PY" pipeline/run.py --config configs/data/demo_tiny.yaml --stages download,recaption \
    --set input="$OUT/urls.csv" --set output_dir="$OUT/data" --set recaption.backend=vllm \
    --set recaption.model="$OUT/assets/captioner32" --set recaption.vllm.python="$VLLM_PY"
  local rc=$?
  kill "$server" 2>/dev/null
  return $rc
}

export PY VLLM_PY OUT BACKEND FP8
export -f train caption
echo "GPU smoke: $(date -u +%FT%TZ), logs in $OUT"
check environment 120 "^torch" "$PY" - <<'EOF'
import importlib, torch
assert torch.cuda.is_available(), f"torch {torch.__version__} sees no CUDA device"
import transformer_engine, nvidia.dali
from transformer_engine.pytorch.fp8 import check_fp8_support
fp8, why = check_fp8_support()
print(f"torch {torch.__version__} CUDA {torch.version.cuda} on {torch.cuda.get_device_name()} | TE "
      f"{transformer_engine.__version__} FP8 {'yes' if fp8 else 'no: ' + why} | DALI {nvidia.dali.__version__}")
EOF
check vllm-environment 60 "^vllm" "$VLLM_PY" -c "import torch, vllm; print('vllm', vllm.__version__, 'torch', torch.__version__, 'CUDA', torch.cuda.is_available())"
check assets 180 "^smoke assets" "$PY" scripts/gpu_smoke_assets.py "$OUT/assets"
check gpu-tests 240 "passed" "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/model/test_rose_gpu.py tests/model/test_vlora_gpu.py
check dali-mixed-decode 120 "passed" "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/train/test_data.py -k dali_gpu
check s1-rose 120 "done: step 4" train configs/train/s1-rose-tiny.yaml rose train.steps=4
check s1-vlora 120 "done: step 4" train configs/train/s1-vlora-tiny.yaml vlora train.steps=4
check s1-vora 150 "done: step 4" train configs/train/vora/s1-tiny.yaml vora train.steps=4 \
  data.manifest="$OUT/assets/shards/manifest.json" model.vision_weights="$OUT/assets/aimv2"
resume=(checkpoint.every=2 train.global_batch_size=8 train.micro_batch_size=4)
check save 120 "checkpoint: .*step_000002" train configs/train/s1-rose-tiny.yaml resume "${resume[@]}" train.steps=2
check resume 120 "resumed from .* at step 2" train configs/train/s1-rose-tiny.yaml resume "${resume[@]}" train.steps=4
check vllm-caption 300 "recaption: [1-9][0-9]* captioned" caption
check bench-7b-layer 240 "ROSE layer, frozen LLM" "$PY" bench/bench_layer.py --shape 7b --tokens 512 --reps 3
echo "GPU smoke: $failed check(s) failed"
exit $((failed > 0))
