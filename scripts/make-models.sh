#!/usr/bin/env bash
# Writes the full-size models onnx/anatomy-segmenter.onnx and onnx/anatomy-xnet.onnx: seeded random
# weights (seed 0), marked cxr.trained=false — there are no trained weights on these machines.
# Skips the export when both files are newer than every source in onnx/cxr_models/.
#   scripts/make-models.sh                       untrained, seed 0
#   SEED=1 scripts/make-models.sh                another seed (forces the export)
#   SEGMENTER_CKPT=seg.pt CLASSIFIER_CKPT=xnet.pt scripts/make-models.sh   trained checkpoints
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_TORCH=1 scripts/setup-python.sh
seg=onnx/anatomy-segmenter.onnx cls=onnx/anatomy-xnet.onnx
args=(--seed "${SEED:-0}")
[[ -n ${SEGMENTER_CKPT:-} ]] && args+=(--segmenter-checkpoint "$(realpath "$SEGMENTER_CKPT")")
[[ -n ${CLASSIFIER_CKPT:-} ]] && args+=(--classifier-checkpoint "$(realpath "$CLASSIFIER_CKPT")")
if [[ -z ${SEED:-}${SEGMENTER_CKPT:-}${CLASSIFIER_CKPT:-} && -f $seg && -f $cls ]] \
  && [[ -z $(find onnx/cxr_models -name '*.py' \( -newer "$seg" -o -newer "$cls" \)) ]]; then
  echo "make-models: $seg and $cls are up to date"
  exit 0
fi
cd onnx
../.venv/bin/python -m cxr_models.export "${args[@]}"
