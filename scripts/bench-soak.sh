#!/usr/bin/env bash
# Soak run (issue 12): the daemon under continuous load with the analysis on, sampled every 10 s:
# RSS, open fds, queue depth, studies awaiting their SR, turnaround p95 — flat at the end means no
# leak and no growing backlog. Plotted to a PNG (var/bench/soak-*.png; BENCHMARKS.md shows one).
#
#   scripts/bench-soak.sh                          # 30 minutes, 4 senders, 20 studies/min
#   SOAK_SECS=300 SOAK_RATE=30 scripts/bench-soak.sh   # a short run
#
# Full-size models on the CPU, every output (SR, SEG, SC), a fresh database (dropped afterwards),
# one-image chest studies from var/bench/studies (made by bench_turnaround.py from real chest
# pixels; each send gets new UIDs). SKIP_BUILD=1 reuses target/release/cxr-worker;
# CXR_WORKER_BIN=PATH runs another build. Needs matplotlib (installed here: WITH_BENCH=1).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
WITH_BENCH=1 scripts/setup-python.sh
ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$(scripts/ort-library.sh)}
DATABASE_URL=${DATABASE_URL:-$(scripts/pg.sh start | tail -1)}
BIN=${CXR_WORKER_BIN:-target/release/cxr-worker}
[[ "${SKIP_BUILD:-0}" == 1 || -n ${CXR_WORKER_BIN:-} ]] || cargo build --release --quiet --bin cxr-worker
[[ -f onnx/anatomy-segmenter.onnx && -f onnx/anatomy-xnet.onnx ]] || scripts/make-models.sh
mkdir -p var/bench
"$PYTHON" scripts/bench_turnaround.py make --out var/bench/studies --count 48

db="cxr_soak_$(date +%s)_$$"
psql "$DATABASE_URL" -X -q -c "CREATE DATABASE $db"
trap 'psql "$DATABASE_URL" -X -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"' EXIT
stamp=$(date -u +%Y%m%dT%H%M%SZ)
echo "cxr-worker ${CXR_WORKER_BIN:-$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo '+dirty')}; $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load $(cut -d' ' -f1-3 /proc/loadavg)"
"$PYTHON" scripts/bench_soak.py \
  --binary "$BIN" --db-url "${DATABASE_URL%/*}/$db" --models onnx --ort "$ORT_DYLIB_PATH" \
  --studies var/bench/studies --seconds "${SOAK_SECS:-1800}" --senders "${SOAK_SENDERS:-4}" \
  --rate "${SOAK_RATE:-20}" --quiet "${QUIET:-2}" \
  --csv "var/bench/soak-$stamp.csv" --png "var/bench/soak-$stamp.png" \
  --md "var/bench/soak-$stamp.md" --log "var/bench/soak-$stamp.log"
echo "load after $(cut -d' ' -f1-3 /proc/loadavg); samples var/bench/soak-$stamp.csv, plot var/bench/soak-$stamp.png"
