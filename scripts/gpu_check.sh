#!/usr/bin/env bash
# One prepared GPU check, at most 8 minutes on one H100 or H200; exits non-zero as soon as a run fails:
#   bash scripts/gpu_check.sh [OUT_DIR] [--quick] [--dry-run] [--fail-at STEP]
# OUT_DIR defaults to $OUT, else runs/gpu_check. Steps (llama_course/commands/gpu_check.py): device,
# numerics (GPU vs CPU), models (small + ~1B bf16, eager and compiled, with the simulator's prediction),
# calibration (writes <preset>_profile.json), engines (one rank, strict mode), two_ranks (>= 2 GPUs: every
# engine on NCCL). --dry-run runs the cheap steps on the CPU; --fail-at STEP proves the check can fail.
# Uses $PY if set, else .venv if present, else the machine's python3 (a GPU image with torch). Packages missing there
# (simpy) can be carried as wheels in .whl/ (see docs/gpu.md); they are installed to /tmp/site first.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-runs/gpu_check}}
shift || true
mkdir -p "$OUT_DIR"
if [ -z "${PY:-}" ]; then PY=python3; if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 LLAMA_COURSE_CACHE="$OUT_DIR/cache"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "nvidia-smi: not found"
# the whole check under one 8-minute limit (exit 124 when it runs over); pipefail carries its exit code
# through tee, set -e stops the script there
timeout 480 $PY -m llama_course.commands.gpu_check --out "$OUT_DIR" "$@" 2>&1 | tee "$OUT_DIR/gpu_check.log"
echo "gpu_check: all steps passed; summary in $OUT_DIR/gpu_check.md"
