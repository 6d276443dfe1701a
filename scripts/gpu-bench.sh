#!/usr/bin/env bash
# GPU inference benchmark: installs the GPU runtime from PyPI wheels into its own venv
# (onnxruntime-gpu 1.31.1 + the CUDA 13, cuDNN 9 and TensorRT 10 wheels its providers load),
# points cxr-worker at that build of ONNX Runtime, and runs the models at 512² with TensorRT fp16
# and with CUDA at batch 1, 8 and 32 — cxr-worker per-image stage times against bare ONNX Runtime
# `session.run` on the same provider and batch.
#
#   scripts/gpu-bench.sh                  # needs an NVIDIA driver for CUDA 13 (>= 580)
#   BATCHES=1,8,32 PASSES=3 scripts/gpu-bench.sh
#
# Env: GPU_VENV (default var/gpu-venv), MODELS (default onnx: the full-size 512² models),
# PYTHON3 (interpreter for the venv, default python3), SKIP_BUILD=1 to use an existing
# target/release/cxr-worker, BATCHES, PASSES, TRT_CACHE (default var/trt-cache).
# WHEELHOUSE=DIR installs offline from wheels fetched earlier with
#   scripts/gpu-bench.sh download DIR      (on a machine that reaches PyPI; ≈ 4 GB)
# Nothing here needs root. The first TensorRT run of each batch shape builds an engine (minutes);
# it lands in TRT_CACHE and is excluded from the timings (warm-up pass).
set -euo pipefail
cd "$(dirname "$0")/.."

GPU_VENV=${GPU_VENV:-var/gpu-venv}
MODELS=${MODELS:-onnx}
BATCHES=${BATCHES:-1,8,32}
PASSES=${PASSES:-3}
TRT_CACHE=$(realpath -m "${TRT_CACHE:-var/trt-cache}")
PYTHON3=${PYTHON3:-python3}

WHEELS=(
  "onnxruntime-gpu==1.31.1"
  "nvidia-cuda-runtime>=13,<14" "nvidia-cublas>=13,<14" "nvidia-cuda-nvrtc>=13,<14"
  "nvidia-nvjitlink>=13,<14" "nvidia-cufft>=12,<13" "nvidia-curand>=10.4,<11"
  "nvidia-cudnn-cu13>=9,<10"
  "tensorrt-cu13-libs>=10,<11"
  "numpy"
)
if [[ "${1:-}" == download ]]; then
  dest=${2:?usage: scripts/gpu-bench.sh download DIR}
  "$PYTHON3" -m pip download --only-binary=:all: --platform manylinux_2_28_x86_64 \
    --python-version "$("$PYTHON3" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')" \
    -d "$dest" "${WHEELS[@]}"
  exit 0
fi

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
  || echo "warning: nvidia-smi not found; the providers will fall back to CPU" >&2

if [[ ! -x "$GPU_VENV/bin/python" ]]; then
  "$PYTHON3" -m venv "$GPU_VENV"
fi
# ONNX Runtime GPU 1.31.1 is built for CUDA 13 / cuDNN 9; its TensorRT provider wants TensorRT 10.
if [[ -n "${WHEELHOUSE:-}" ]]; then
  "$GPU_VENV/bin/pip" install --quiet --no-index --find-links "$WHEELHOUSE" "${WHEELS[@]}"
else
  "$GPU_VENV/bin/pip" install --quiet "${WHEELS[@]}"
fi

site=$("$GPU_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ORT_LIB=$(ls "$site"/onnxruntime/capi/libonnxruntime.so.1.31.1)
# Every lib/ folder the nvidia-* and tensorrt wheels install, plus ONNX Runtime's own (providers).
libdirs=$(find "$site/nvidia" "$site/tensorrt_libs" -type d \( -name lib -o -name tensorrt_libs \) 2>/dev/null | sort -u | paste -sd:)
export LD_LIBRARY_PATH="$site/onnxruntime/capi:${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$GPU_VENV/bin/python" -c 'import onnxruntime as o; print("onnxruntime", o.__version__, o.get_available_providers())'

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then cargo build --release --quiet; fi
SEG=$(realpath "$MODELS/anatomy-segmenter.onnx")
CLS=$(realpath "$MODELS/anatomy-xnet.onnx")
mkdir -p "$TRT_CACHE"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
F=tests/fixtures/dicom
"$GPU_VENV/bin/python" scripts/bench_batches.py --binary target/release/cxr-worker --ort-library "$ORT_LIB" \
  --segmenter "$SEG" --classifier "$CLS" --cache "$TRT_CACHE" --batches "$BATCHES" --passes "$PASSES" \
  --work "$work" \
  "$F/RG1_UNCR.dcm" "$F/RG1_J2KR.dcm" "$F/966_fixed.dcm" \
  "$F/siim_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
