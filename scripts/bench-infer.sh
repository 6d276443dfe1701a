#!/usr/bin/env bash
# Inference benchmark: cxr-worker (release) against the Python reference pipeline (pydicom +
# pylibjpeg + numpy + Pillow + onnxruntime) on the real chest fixtures, same models, same run.
# Per image: decode / preprocess / segment / classify (median of the passes after a warm-up),
# and the peak RSS of each process.
#
#   scripts/bench-infer.sh                       # full-size models if onnx/*.onnx exist, else tiny
#   MODELS=onnx/tiny scripts/bench-infer.sh      # choose the model folder
#   PASSES=6 PROVIDERS='["cuda","cpu"]' scripts/bench-infer.sh
#
# Env: MODELS (folder with anatomy-segmenter.onnx and anatomy-xnet.onnx), PASSES (default 4),
# PROVIDERS (TOML list, default ["cpu"]), THREADS (intra-op threads, 0 = all cores),
# ORT_DYLIB_PATH (default: the venv's onnxruntime wheel), PYTHON (default .venv/bin/python),
# SKIP_BUILD=1 to reuse target/release/cxr-worker; CXR_WORKER_BIN=PATH to run another build.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
PASSES=${PASSES:-4}
PROVIDERS=${PROVIDERS:-'["cpu"]'}
THREADS=${THREADS:-0}
if [[ -z "${MODELS:-}" ]]; then
  if [[ -f onnx/anatomy-segmenter.onnx && -f onnx/anatomy-xnet.onnx ]]; then MODELS=onnx; else MODELS=onnx/tiny; fi
fi
ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$(scripts/ort-library.sh)}
SEG=$(realpath "$MODELS/anatomy-segmenter.onnx")
CLS=$(realpath "$MODELS/anatomy-xnet.onnx")

# CXR_WORKER_BIN: another build (e.g. the previous main's) for a same-session A/B
BIN=${CXR_WORKER_BIN:-target/release/cxr-worker}
[[ "${SKIP_BUILD:-0}" == 1 || -n ${CXR_WORKER_BIN:-} ]] || cargo build --release --quiet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/bench.toml" <<TOML
[database]
url = "postgres://bench@127.0.0.1/unused"
[spool]
dir = "$work/spool"
[models]
onnxruntime_library = "$ORT_DYLIB_PATH"
segmenter = "$SEG"
classifier = "$CLS"
execution_providers = $PROVIDERS
intra_threads = $THREADS
[log]
level = "warn,cxr_worker=info"
TOML

F=tests/fixtures/dicom
files=(
  "$F/RG1_UNCR.dcm"      # 1955x1841 15-bit, uncompressed
  "$F/RG1_J2KR.dcm"      # same, JPEG 2000 lossless
  "$F/RG1_JLSN.dcm"      # same, JPEG-LS near-lossless
  "$F/966_fixed.dcm"     # 2128x2000 12-bit DX, JPEG 2000 lossless
  "$F/siim_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"  # 1024x1024 8-bit JPEG
)
echo "models: $SEG, $CLS; providers $PROVIDERS; $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
"$PYTHON" scripts/bench_infer.py --binary "$BIN" --config "$work/bench.toml" \
  --python "$PYTHON" --segmenter "$SEG" --classifier "$CLS" --passes "$PASSES" "${files[@]}"
