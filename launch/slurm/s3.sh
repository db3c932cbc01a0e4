#!/usr/bin/env bash
# Stage S3 (ROSE by default; METHOD=vlora|vora for theirs). See common.sh for the knobs.
#   sbatch launch/slurm/s3.sh [section.key=value ...]
#   DRY_RUN=1 bash launch/slurm/s3.sh      # print the exact commands
#SBATCH --job-name=train-s3
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=96
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@180
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out
STAGE=s3
PREV_STAGE=s2
if [[ -n "${SLURM_SUBMIT_DIR:-}" && -f "${SLURM_SUBMIT_DIR}/launch/slurm/common.sh" ]]; then
    source "${SLURM_SUBMIT_DIR}/launch/slurm/common.sh" "$@"  # sbatch runs a copy of this file
else
    source "$(dirname "${BASH_SOURCE[0]}")/common.sh" "$@"
fi
