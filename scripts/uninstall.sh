#!/usr/bin/env bash
# Remove cxr-worker: the service, binary, ONNX Runtime library, models, unit and docs.
# The configuration (/etc/cxr-worker), the spool and state (/var/lib/cxr-worker), the logs
# (/var/log/cxr-worker) and the system user stay, so a reinstall carries on where it stopped;
# `--purge` removes them too. The PostgreSQL database is never dropped: do that yourself
# (dropdb cxr_worker) if the findings are no longer needed.
#
#   scripts/uninstall.sh [--purge]
#   DESTDIR=/tmp/root PREFIX=/usr/local scripts/uninstall.sh [--purge]   # a staged tree
set -euo pipefail

PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
PURGE=0
for arg in "$@"; do
  case "$arg" in
    --purge) PURGE=1 ;;
    -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "uninstall: unknown argument $arg" >&2; exit 2 ;;
  esac
done
case "$PREFIX" in
  /usr | /usr/local) SYSTEMD_BASE=$PREFIX/lib ;;
  *) SYSTEMD_BASE=/etc ;;
esac

log() { echo "uninstall: $*" >&2; }
if [[ -z $DESTDIR && $(id -u) -ne 0 ]]; then
  log "removing from this machine needs root (or set DESTDIR)"
  exit 1
fi

LIVE=0
[[ -z $DESTDIR && -d /run/systemd/system ]] && LIVE=1
if ((LIVE)); then
  systemctl disable --now cxr-worker.service 2>/dev/null || true
fi

rm -f "$DESTDIR$PREFIX/bin/cxr-worker" \
      "$DESTDIR$SYSTEMD_BASE/systemd/system/cxr-worker.service" \
      "$DESTDIR$SYSTEMD_BASE/sysusers.d/cxr-worker.conf" \
      "$DESTDIR$SYSTEMD_BASE/tmpfiles.d/cxr-worker.conf"
rm -rf "$DESTDIR$PREFIX/lib/cxr-worker" \
       "$DESTDIR$PREFIX/share/cxr-worker" \
       "$DESTDIR$PREFIX/share/doc/cxr-worker" \
       "$DESTDIR/etc/systemd/system/cxr-worker.service.d"

if ((PURGE)); then
  rm -rf "$DESTDIR/etc/cxr-worker" "$DESTDIR/var/lib/cxr-worker" "$DESTDIR/var/log/cxr-worker"
  if [[ -z $DESTDIR ]] && id -u cxr-worker >/dev/null 2>&1; then
    userdel cxr-worker
  fi
  log "purged configuration, spool, state and logs (the database was left alone)"
else
  log "kept /etc/cxr-worker, /var/lib/cxr-worker and /var/log/cxr-worker (--purge removes them)"
fi

if ((LIVE)); then
  systemctl daemon-reload
  systemctl reset-failed cxr-worker.service 2>/dev/null || true
fi
