#!/usr/bin/env bash
# The GPU check in one call (see docs/gpu.md): installs wheels carried in .whl/ (when there are any)
# into a private folder, puts pactmerge's src/ on the path, and runs benchmarks/gpu_check.py.
#
#   bash benchmarks/gpu_check.sh [--log-dir DIR] [gpu_check.py flags]
#   DRY=1 bash benchmarks/gpu_check.sh        # every part on the CPU at tiny sizes
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SITE=${PACTMERGE_SITE:-/tmp/pactmerge-site}
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
extra=()
# the study's two offline tasks, when their IDX files were carried in .gpudata/ (see docs/gpu.md)
if [ -d .gpudata/mnist ] && [ -d .gpudata/fashion-mnist ]; then
    extra+=(--study-set "data.sources={mnist: $PWD/.gpudata/mnist, fashion_mnist: $PWD/.gpudata/fashion-mnist}")
fi
exec "$PY" benchmarks/gpu_check.py "${extra[@]}" "$@"
