#!/usr/bin/env bash
# Installs what the project needs on a Debian/Ubuntu machine, skipping what is already present:
# DCMTK and dicom3tools (peers and validators), Orthanc (a real PACS for the send tests), cmake (JPEG-LS codec build), openssl (test certificates), PostgreSQL,
# the Rust toolchain check, and the Python environment in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v storescu >/dev/null || need+=(dcmtk)
command -v dciodvfy >/dev/null || need+=(dicom3tools)
command -v Orthanc >/dev/null || need+=(orthanc)
command -v cmake >/dev/null || need+=(cmake)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v c++ >/dev/null || need+=(g++)
command -v pkg-config >/dev/null || need+=(pkg-config)
# the DICOM TLS tests and benchmark make their certificates with the openssl CLI
command -v openssl >/dev/null || need+=(openssl)
# ip (iproute2): tests/scale_out.rs puts each daemon on a "host" of its own (a network namespace)
[[ -x /usr/sbin/ip || -x /sbin/ip ]] || command -v ip >/dev/null || need+=(iproute2)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v psql >/dev/null || need+=(postgresql-client)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if ((${#need[@]})); then
  echo "setup: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # a packaged PostgreSQL service is not ours: the project runs its own cluster (scripts/pg.sh)
  if [[ " ${need[*]} " == *" postgresql "* ]]; then
    systemctl disable --now postgresql >/dev/null 2>&1 || service postgresql stop >/dev/null 2>&1 || true
  fi
  # nor is the packaged Orthanc (all interfaces, ports 4242/8042): the tests start their own on
  # loopback ports. Each step on its own: without systemd as PID 1, `systemctl disable` removes
  # the unit's link but `--now` fails, and only `service` stops it.
  if [[ " ${need[*]} " == *" orthanc "* ]]; then
    systemctl disable --now orthanc >/dev/null 2>&1 || true
    service orthanc stop >/dev/null 2>&1 || true
    update-rc.d orthanc disable >/dev/null 2>&1 || true
    if pgrep -x Orthanc >/dev/null; then
      echo "setup: warning: a packaged Orthanc is still running; stop it (service orthanc stop)" >&2
    fi
  fi
fi
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }
scripts/setup-python.sh
scripts/setup-node.sh
