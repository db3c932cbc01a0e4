#!/usr/bin/env bash
# What only a GPU can show, on one fresh H100/H200, from nothing (setup included) within 8 minutes:
# one line per check (PASS/FAIL/SKIP, seconds, the line of its log that shows it) and one JSON of
# results. docs/GPU.md explains each check.
#
#   bash scripts/gpu_smoke.sh OUT_DIR        results in OUT_DIR/smoke.json, logs in OUT_DIR/*.log
#
# Each check has its own time limit (PLAN below); they add up to the budget, so the worst case is
# 8 minutes. A check passes only when its command exits 0 AND its log shows every line it must
# (a pytest run with a skip, a vLLM whose torch says CUDA False, a run on the wrong backend fail).
#   SMOKE_SETUP=0        skip scripts/setup.sh (an environment installed before)
#   SMOKE_ONLY=REGEX     run only the checks whose name matches (e.g. 's1-|resume')
#   SMOKE_VLLM_CAPTION=1 also caption the demo corpus with vLLM (outside the budget: engine start-up)
#   SMOKE_BACKEND=local SMOKE_FP8= SMOKE_TIME_SCALE=10   a CPU rehearsal of the training commands
# Nothing is downloaded after setup: the models are tiny and random, built here from config.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUDGET=480
PLAN=(setup:150 environment:15 vllm-environment:20 assets:25 gpu-tests:45 fp8-shapes:20 s1-rose:25
      s1-vlora:25 s1-vora-dali:30 save:20 resume:20 two-process:40 rose-layer:45)
OUT=${1:-${SMOKE_DIR:-$(mktemp -d /tmp/gpu-smoke.XXXXXX)}}
OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd)
PY=${PY:-$PWD/.venv/bin/python}
VLLM_PY=${VLLM_PY:-$PWD/.venv-vllm/bin/python}
BACKEND=${SMOKE_BACKEND-te}
FP8=${SMOKE_FP8-hybrid}
export PATH="$(dirname "$PY"):$PATH" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=offline \
       NO_ALBUMENTATIONS_UPDATE=1
failed=0
RESULTS=()

limit_of() {  # the PLAN's seconds for a check
  local entry
  for entry in "${PLAN[@]}"; do [ "${entry%%:*}" = "$1" ] && { echo "${entry#*:}"; return; }; done
  echo "gpu_smoke: check $1 is not in PLAN" >&2
  return 1
}

planned_total() {
  local entry total=0
  for entry in "${PLAN[@]}"; do total=$((total + ${entry#*:})); done
  echo $total
}

json_string() {  # a JSON string literal of $1
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\t'/ }
  s=${s//$'\r'/}
  printf '"%s"' "$s"
}

record() {  # record NAME STATUS SECONDS LIMIT LINE
  printf '%-4s %-18s %4ds  %s\n' "$2" "$1" "$3" "${5:0:150}"
  RESULTS+=("{\"name\": $(json_string "$1"), \"status\": \"$2\", \"seconds\": $3, \"limit_s\": $4, \"line\": $(json_string "${5:0:300}")}")
  [ "$2" = FAIL ] && failed=$((failed + 1))
  return 0
}

# check NAME PATTERNS CMD...: runs CMD under the PLAN's time limit (log in $OUT/NAME.log). PASS when
# it exits 0 and its log has a line matching each of PATTERNS (';;'-separated regexes); the line
# shown is the last pattern's match. SKIP when the log matches $SKIP_IF (a limit the check names).
check() {
  local name=$1 patterns=$2 limit t0 rc line="" missing="" p status
  shift 2
  if [ -n "${SMOKE_ONLY:-}" ] && ! [[ $name =~ $SMOKE_ONLY ]]; then return 0; fi
  limit=$(limit_of "$name") || { record "$name" FAIL 0 0 "not in PLAN"; return 0; }
  limit=$((limit * ${SMOKE_TIME_SCALE:-1}))
  t0=$(date +%s)
  timeout "$limit" bash -c '"$@"' check "$@" >"$OUT/$name.log" 2>&1  # (bash -c: CMD may be a function)
  rc=$?
  local IFS_=$IFS
  IFS=$'\n'
  for p in ${patterns//;;/$'\n'}; do
    local hit
    hit=$(grep -E -- "$p" "$OUT/$name.log" | tail -1)
    if [ -n "$hit" ]; then line=$hit; else missing=$p; fi
  done
  IFS=$IFS_
  if [ -n "${SKIP_IF:-}" ] && [ $rc -ne 0 ] && grep -qE -- "$SKIP_IF" "$OUT/$name.log"; then
    status=SKIP
    line=$(grep -E -- "$SKIP_IF" "$OUT/$name.log" | head -1)
  elif [ $rc -eq 0 ] && [ -z "$missing" ]; then
    status=PASS
  else
    status=FAIL
    if [ $rc -eq 124 ]; then line="timed out after ${limit}s"
    elif [ $rc -ne 0 ]; then line="exit $rc: $(grep -v '^\s*$' "$OUT/$name.log" | tail -1)"
    else line="exit 0 but no line matching '$missing': $(grep -v '^\s*$' "$OUT/$name.log" | tail -1)"; fi
  fi
  record "$name" "$status" "$(($(date +%s) - t0))" "$limit" "$line"
}

write_json() {
  local IFS=,
  printf '{"budget_s": %d, "planned_s": %d, "failed": %d, "checks": [%s]}\n' "$BUDGET" "$(planned_total)" \
    "$failed" "${RESULTS[*]}" >"$OUT/smoke.json"
}

train() {  # train CONFIG RUN_DIR OVERRIDES...: a tiny run on $BACKEND with $FP8
  local config=$1 run=$2
  shift 2
  "$PY" -m megatron_ext.train --config "$config" model.backend="$BACKEND" ${FP8:+train.fp8=$FP8} \
    log.run_dir="$OUT/$run" log.wandb=false log.every=1 optim.warmup_steps=1 "$@"
}

two_process() {  # PP=2 on one GPU over NCCL: ROSE with a trained tower, features to stage 1, gradients back
  local port=$((20000 + RANDOM % 20000)) pids=() rc=0 r
  for r in 0 1; do
    RANK=$r WORLD_SIZE=2 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
      "$PY" -m megatron_ext.train --config configs/train/s1-rose-tiny.yaml model.backend="$BACKEND" \
      parallel.pipeline=2 data.kind=dali data.manifest="$OUT/assets/shards/manifest.json" data.image_size=16 \
      model.vision_weights="$OUT/assets/siglip" "train.trainable=[generator,vision]" train.steps=2 \
      train.global_batch_size=8 train.micro_batch_size=2 log.run_dir="$OUT/two-process" log.wandb=false \
      log.every=1 optim.warmup_steps=1 &
    pids+=($!)
  done
  for r in "${pids[@]}"; do wait "$r" || rc=$?; done
  return $rc
}

rose_layer() {  # the 7B ROSE layer at the S1 shape against the plain layer; its JSON must exist
  python -m bench.bench_layer --max-ratio 1.25 --json $OUT/rose_layer.json || return $?
  test -s $OUT/rose_layer.json && echo "rose layer: $(tr -d '\n' < $OUT/rose_layer.json | head -c 200)"
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

[ -n "${SMOKE_LIB:-}" ] && return 0  # sourced by the tests: the functions above, nothing run

if [ "$(planned_total)" -gt "$BUDGET" ]; then
  echo "gpu_smoke: the checks' limits add up to $(planned_total)s, over the ${BUDGET}s budget" >&2
  exit 2
fi
export PY VLLM_PY OUT BACKEND FP8
export -f train two_process rose_layer caption
echo "GPU smoke: $(date -u +%FT%TZ), budget ${BUDGET}s, results in $OUT/smoke.json"
if [ "${SMOKE_SETUP:-1}" = 1 ]; then
  check setup "^torch .* CUDA True" bash -c 'bash scripts/setup.sh && bash scripts/setup_vllm.sh && "$PY" -c "import torch; print(\"torch\", torch.__version__, \"CUDA\", torch.cuda.is_available())"'
fi
TE_LINE="linear layers: Transformer Engine"
[ "$BACKEND" = te ] || TE_LINE="linear layers:"
check environment "FP8 yes" "$PY" - <<'EOF'
import torch
assert torch.cuda.is_available(), f"torch {torch.__version__} sees no CUDA device"
import transformer_engine, transformer_engine.pytorch, nvidia.dali
from transformer_engine.pytorch.fp8 import check_fp8_support
fp8, why = check_fp8_support()
print(f"torch {torch.__version__} CUDA {torch.version.cuda} on {torch.cuda.get_device_name()} | TE "
      f"{transformer_engine.__version__} FP8 {'yes' if fp8 else 'no: ' + why} | DALI {nvidia.dali.__version__}")
EOF
check vllm-environment "^vllm .* CUDA True$" "$VLLM_PY" -c "import torch, vllm; print('vllm', vllm.__version__, 'torch', torch.__version__, 'CUDA', torch.cuda.is_available())"
check assets "^smoke assets" "$PY" scripts/gpu_smoke_assets.py "$OUT/assets"
check gpu-tests "^[0-9]+ passed in " "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/model/test_rose_gpu.py \
  tests/model/test_vlora_gpu.py tests/train/test_data.py::test_dali_gpu_decoding_matches_cpu_decoding_and_resumes
check fp8-shapes "^fp8 shapes: ok" "$PY" scripts/gpu_smoke_checks.py fp8-shapes
check s1-rose "$TE_LINE;;done: step 4" train configs/train/s1-rose-tiny.yaml rose train.steps=4
check s1-vlora "$TE_LINE;;done: step 4" train configs/train/s1-vlora-tiny.yaml vlora train.steps=4
check s1-vora-dali "DALI: .*GPU \(mixed\) decode;;done: step 4" train configs/train/vora/s1-tiny.yaml vora \
  train.steps=4 data.kind=dali data.manifest="$OUT/assets/shards/manifest.json" model.vision_weights="$OUT/assets/aimv2"
resume=(checkpoint.every=2 train.global_batch_size=8 train.micro_batch_size=4)
check save "checkpoint: .*step_000002" train configs/train/s1-rose-tiny.yaml resume "${resume[@]}" train.steps=2
check resume "resumed from .* at step 2;;done: step 4" train configs/train/s1-rose-tiny.yaml resume "${resume[@]}" train.steps=4
SKIP_IF="Duplicate GPU detected" check two-process "done: step 2" two_process
check rose-layer "^rose layer: " rose_layer
if [ "${SMOKE_VLLM_CAPTION:-0}" = 1 ]; then
  PLAN+=(vllm-caption:300)
  check vllm-caption "recaption: [1-9][0-9]* captioned" caption
fi
write_json
echo "GPU smoke: $failed check(s) failed; $OUT/smoke.json"
exit $((failed > 0))
