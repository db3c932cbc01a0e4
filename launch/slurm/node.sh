#!/usr/bin/env bash
# One per node (srun task): environment hook, then torchrun. A USR1 from the batch script (via
# srun) goes to the training processes (torchrun's children), not to torchrun, which would die.
set -euo pipefail
if [[ -n "${ENV_HOOK:-}" ]]; then
    # shellcheck disable=SC1090
    source "$ENV_HOOK"
fi
export PYTHONUNBUFFERED=1
"$@" &
LAUNCHER=$!
trap 'pkill -USR1 -P "$LAUNCHER" || true' USR1
while kill -0 "$LAUNCHER" 2>/dev/null; do
    wait "$LAUNCHER" && STATUS=0 || STATUS=$?
done
exit "${STATUS:-0}"
