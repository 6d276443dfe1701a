#!/usr/bin/env bash
# Creates the project's Python environment in .venv (reused when its requirements are unchanged).
#   scripts/setup-python.sh          test requirements (pydicom, pynetdicom, highdicom, onnxruntime...)
#   WITH_TORCH=1 scripts/setup-python.sh   also PyTorch, for onnx/ export and parity tests
#   WITH_BENCH=1 scripts/setup-python.sh   also what the benchmarks plot with (matplotlib)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [[ ! -x $VENV/bin/python ]]; then
  python3 -m venv "$VENV" || { apt-get install -y -qq python3-venv && python3 -m venv "$VENV"; }
fi
install_if_changed() {
  local req=$1 stamp=$VENV/.$(basename "$1").sha
  local sum; sum=$(sha256sum "$req" | cut -d' ' -f1)
  if [[ ! -f $stamp || $(cat "$stamp") != "$sum" ]]; then
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$req"
    echo "$sum" > "$stamp"
  fi
}
install_if_changed requirements/test.txt
if [[ ${WITH_TORCH:-0} == 1 ]]; then
  install_if_changed requirements/torch.txt
fi
if [[ ${WITH_BENCH:-0} == 1 ]]; then
  install_if_changed requirements/bench.txt
fi
