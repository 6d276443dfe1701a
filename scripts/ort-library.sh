#!/usr/bin/env bash
# Prints the path of ONNX Runtime's library in the project's Python environment (.venv), whatever
# the environment's Python version (3.11 on Debian 12, 3.12 on Ubuntu 24.04, 3.13 on Debian 13).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
for lib in "$PWD/$VENV"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1; do
  if [[ -e $lib ]]; then
    echo "$lib"
    exit 0
  fi
done
echo "ort-library: no libonnxruntime.so.1.31.1 in $VENV (run scripts/setup.sh)" >&2
exit 1
