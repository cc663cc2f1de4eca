#!/usr/bin/env bash
# Measure a calibration table on one Hopper GPU and run the GPU-marked tests, in under 10 minutes.
#
#   bash benchmarks/gpu_calibration.sh [OUT_DIR]
#
# 1. Finds a Python whose torch sees a CUDA GPU; if there is none, installs the CUDA build of the pinned torch
#    (torch==2.13.0 from download.pytorch.org, cu128) when the machine can reach it.
# 2. Installs sim without its dependencies when they are already there, or from wheels in .whl/ (offline machines:
#    fetch them beforehand with `pip download -d .whl`), else from PyPI.
# 3. Runs `sim calibrate --device cuda` (the full preset, 330 s at most; the quick preset if the full one does not
#    finish in time) and writes OUT_DIR/<gpu>_torch<version>.yaml (default OUT_DIR: $OUT or
#    hardware_profiles/calibrated), with the run's log and nvidia-smi's view of the GPU beside it.
# 4. Runs the tests marked `gpu` (90 s at most).
# Commit the table; a job uses it with `calibration: ../hardware_profiles/calibrated/<file>` or
# `sim run --calibration <file>`. It applies to every GPU of the same compute silicon (H100, H800, H200).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-hardware_profiles/calibrated}}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
start=$(date +%s)

PY=""
for candidate in ${PYTHON:-} python3 /opt/torch/.venv/bin/python3 .venv/bin/python; do
  if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 \
     && "$candidate" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    PY=$candidate; break
  fi
done
if [ -z "$PY" ]; then
  echo "no Python with a CUDA torch: installing torch==2.13.0 (cu128)" >&2
  python3 -m pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cu128 || {
    echo "error: cannot install a CUDA build of torch here; install one and set PYTHON" >&2; exit 1; }
  PY=python3
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "on", torch.cuda.get_device_name(0))'

if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --find-links .whl .whl/*.whl >/dev/null 2>&1 || true
fi
if ! "$PY" -c 'import simpy, pydantic, yaml, click, numpy' 2>/dev/null; then
  "$PY" -m pip install -q simpy pydantic pyyaml click numpy || {
    echo "error: sim's dependencies (simpy, pydantic, pyyaml, click, numpy) are missing; carry them as wheels in .whl/" >&2
    exit 1; }
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

gpu=$("$PY" -c 'import re, torch; print(re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name(0).lower()).strip("_"))')
ver=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0].replace(".", "_"))')
table="$OUT_DIR/${gpu}_torch${ver}.yaml"
log="$OUT_DIR/${gpu}_calibration.log"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,clocks.mem,power.limit,temperature.gpu --format=csv \
  > "$OUT_DIR/${gpu}_nvidia_smi.csv" 2>/dev/null || true

echo "measuring the full preset (330 s at most) -> $table" >&2
if ! timeout 330 "$PY" -m sim calibrate --device cuda --out "$table" 2> >(tee "$log" >&2); then
  echo "the full preset did not finish in time: measuring the quick preset (150 s at most)" >&2
  timeout 150 "$PY" -m sim calibrate --device cuda --quick --out "$table" 2> >(tee -a "$log" >&2) || {
    echo "error: calibration failed; see $log" >&2; exit 1; }
fi

echo "GPU-marked tests (90 s at most)" >&2
timeout 90 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee -a "$log" | tail -5
echo "done in $(( $(date +%s) - start )) s: $table" >&2
