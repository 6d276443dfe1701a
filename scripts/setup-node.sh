#!/usr/bin/env bash
# Installs what the dcmjs read-back of the SEG tests needs (tests/node/check_seg.mjs): Node.js and
# npm (apt, only when missing), then the locked packages of tests/node (npm ci, only when
# node_modules is missing or older than package-lock.json). Install scripts are not run: dcmjs
# needs none.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "setup-node: installing nodejs npm" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
cd tests/node
# npm writes node_modules/.package-lock.json on every install: it dates node_modules.
if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci --no-audit --no-fund --ignore-scripts
fi
