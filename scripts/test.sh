#!/usr/bin/env bash
# Run the test suite: sets up .venv if needed, then pytest. Extra arguments go to pytest.
# PYTEST_WORKERS (default 2, the CI machine's cores; 0 runs in this process) pytest-xdist workers,
# one test file each at a time (tests/conftest.py keeps what shares a fixture together); the
# collection order is kept: the longest groups start first. Each worker and what it starts use one
# thread (OMP_NUM_THREADS, unless set): two workers with two threads each on two cores spin-wait, and
# the main job's evaluation took 7x its time alone.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "${@:-tests}"
