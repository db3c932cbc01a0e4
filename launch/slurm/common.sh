#!/usr/bin/env bash
# Shared by s1.sh, s2.sh, s3.sh (sourced after they set STAGE and their #SBATCH lines).
#
# One srun task per node runs launch/slurm/node.sh, which starts torchrun with GPUS_PER_NODE workers;
# rendezvous (c10d) on the first node of the allocation. Knobs (environment):
#   METHOD=rose|vlora|vora     which configs/train/<METHOD>/<STAGE>.yaml (default rose)
#   CONFIG=path                another config instead
#   RUN_ROOT=/checkpoints      run dirs are $RUN_ROOT/<METHOD>/<STAGE> (checkpoints, metrics.jsonl)
#   GPUS_PER_NODE=8            default: $SLURM_GPUS_ON_NODE, else 8
#   ENV_HOOK=path              sourced on every node before torchrun (modules, venv, NCCL vars)
#   CONTAINER_IMAGE=image      run inside a container (pyxis: srun --container-image)
#   CONTAINER_MOUNTS=a:b,...   pyxis mounts (the repo, data and RUN_ROOT must be visible)
#   LOG_DIR=logs               per-job logs: <job>-<id>.out (batch) and <job>-<id>-node<N>.log
#   DRY_RUN=1                  print the exact commands instead of running them (no cluster needed)
# Extra arguments to sN.sh are passed on as config overrides (section.key=value).
#
# Preemption and the time limit: #SBATCH --signal=B:USR1@180 warns this script 3 minutes early;
# it forwards USR1 to the training processes, which checkpoint after the current step and exit,
# then the job requeues itself (--requeue) and resumes from <run dir>/checkpoints/latest. A job
# requeued by Slurm's own preemption resumes from the last periodic checkpoint the same way.
set -euo pipefail

REPO=${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
METHOD=${METHOD:-rose}
CONFIG=${CONFIG:-configs/train/${METHOD}/${STAGE}.yaml}
RUN_ROOT=${RUN_ROOT:-/checkpoints}
RUN_DIR=${RUN_DIR:-${RUN_ROOT}/${METHOD}/${STAGE}}
LOG_DIR=${LOG_DIR:-logs}
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
DRY_RUN=${DRY_RUN:-0}

if [[ "$DRY_RUN" == 1 ]]; then  # outside an allocation: stand-ins for what Slurm would set
    SLURM_JOB_ID=${SLURM_JOB_ID:-0}
    SLURM_JOB_NAME=${SLURM_JOB_NAME:-${METHOD}-${STAGE}}
    SLURM_JOB_NODELIST=${SLURM_JOB_NODELIST:-$(hostname)}
    SLURM_NNODES=${SLURM_NNODES:-1}
fi
: "${SLURM_JOB_ID:?run through sbatch (or DRY_RUN=1)}"

first_node() {
    if command -v scontrol >/dev/null 2>&1; then
        scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1
    else  # dry run off-cluster: a plain comma-separated list
        echo "${SLURM_JOB_NODELIST%%,*}"
    fi
}
MASTER_ADDR=$(first_node)
MASTER_PORT=${MASTER_PORT:-$((29500 + SLURM_JOB_ID % 1000))}

# previous stage's checkpoint: s2 starts from s1's, s3 from s2's
INIT_ARGS=()
if [[ -n "${PREV_STAGE:-}" ]]; then
    PREV_DIR=${PREV_DIR:-${RUN_ROOT}/${METHOD}/${PREV_STAGE}}
    if [[ "$DRY_RUN" != 1 && ! -f "${PREV_DIR}/checkpoints/latest" && ! -f "${RUN_DIR}/checkpoints/latest" ]]; then
        echo "error: ${STAGE} starts from ${PREV_STAGE}'s checkpoint, but ${PREV_DIR}/checkpoints/latest does not exist" >&2
        exit 2
    fi
    INIT_ARGS=("train.init_from=${PREV_DIR}")
fi

TRAIN_CMD=(torchrun --nnodes="${SLURM_NNODES}" --nproc-per-node="${GPUS_PER_NODE}"
           --rdzv-backend=c10d --rdzv-endpoint="${MASTER_ADDR}:${MASTER_PORT}" --rdzv-id="${SLURM_JOB_ID}"
           -m megatron_ext.train --config "${CONFIG}" "log.run_dir=${RUN_DIR}" "${INIT_ARGS[@]}" "$@")
SRUN_CMD=(srun --nodes="${SLURM_NNODES}" --ntasks-per-node=1 --kill-on-bad-exit=1
          --output="${LOG_DIR}/${SLURM_JOB_NAME}-${SLURM_JOB_ID}-node%n.log")
if [[ -n "${CONTAINER_IMAGE:-}" ]]; then
    SRUN_CMD+=(--container-image="${CONTAINER_IMAGE}" --container-workdir="${REPO}")
    [[ -n "${CONTAINER_MOUNTS:-}" ]] && SRUN_CMD+=(--container-mounts="${CONTAINER_MOUNTS}")
fi
SRUN_CMD+=(bash "${REPO}/launch/slurm/node.sh" "${TRAIN_CMD[@]}")

if [[ "$DRY_RUN" == 1 ]]; then
    echo "# ${METHOD} ${STAGE}: ${SLURM_NNODES} node(s) x ${GPUS_PER_NODE} GPUs, rendezvous ${MASTER_ADDR}:${MASTER_PORT}"
    echo "cd ${REPO}"
    echo "export ENV_HOOK=${ENV_HOOK:-} WANDB_MODE=${WANDB_MODE:-offline}"
    printf '%q ' "${SRUN_CMD[@]}"; echo
    echo "# on USR1: forward to srun, wait, then: scontrol requeue ${SLURM_JOB_ID}"
    exit 0
fi

cd "$REPO"
mkdir -p "$LOG_DIR" "$RUN_DIR"
export ENV_HOOK=${ENV_HOOK:-} WANDB_MODE=${WANDB_MODE:-offline}
( [[ -z "${ENV_HOOK:-}" ]] || source "$ENV_HOOK"; python -m megatron_ext.train --dry-run --world-size "$((SLURM_NNODES * GPUS_PER_NODE))" "${TRAIN_CMD[@]:8}" ) || exit $?  # checks + resolved config; a mistake is one line before any worker
echo "$(date -Is) ${SLURM_JOB_NAME} ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}): ${SRUN_CMD[*]}"

REQUEUE=0
"${SRUN_CMD[@]}" &
SRUN_PID=$!
trap 'echo "$(date -Is) USR1: checkpoint and requeue"; REQUEUE=1; kill -USR1 "$SRUN_PID"' USR1
while kill -0 "$SRUN_PID" 2>/dev/null; do
    wait "$SRUN_PID" && STATUS=0 || STATUS=$?
done
if [[ "$REQUEUE" == 1 ]]; then
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
exit "${STATUS:-0}"
