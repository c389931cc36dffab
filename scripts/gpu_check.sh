#!/usr/bin/env bash
# One prepared GPU check, under 8 minutes on one H200:
#   bash scripts/gpu_check.sh [OUT_DIR]        (OUT_DIR defaults to $OUT, else runs/gpu_check)
# Uses .venv if present, else the machine's python3 (a GPU image with torch). Packages missing there
# (simpy) can be carried as wheels in .whl/ (see docs/gpu.md); they are installed to /tmp/site first.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-runs/gpu_check}}
mkdir -p "$OUT_DIR"
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 LLAMA_COURSE_CACHE="$OUT_DIR/cache"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
# measures, trains, and calibrates: writes gpu_check.{json,md} and <preset>_profile.json (e.g. h200_profile.json),
# which the simulator applies with LLAMA_COURSE_GPU_PROFILE=$OUT_DIR/h200_profile.json (docs/gpu.md)
$PY -m llama_course.commands.gpu_check --out "$OUT_DIR" "${@:2}" 2>&1 | tee "$OUT_DIR/gpu_check.log"
