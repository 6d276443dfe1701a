#!/usr/bin/env bash
# Runs the Python tests of onnx/: architecture, export parity on real NIH images (ONNX Runtime vs
# PyTorch, <= 1e-4), byte-reproducible tiny models, contract checker, train smoke, evaluate.
# Needs PyTorch: installs it into .venv first (cached; ~3 GB the first time).
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_TORCH=1 scripts/setup-python.sh
cd onnx
exec ../.venv/bin/python -m pytest -q tests "$@"
