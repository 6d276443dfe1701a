#!/usr/bin/env bash
# Install or upgrade cxr-worker: binary, ONNX Runtime library, models, configuration, systemd unit,
# sysusers.d and tmpfiles.d entries, documentation.
#
#   scripts/install.sh [--gpu]            # as root, onto this machine
#   DESTDIR=/tmp/root scripts/install.sh  # into a staging tree (packaging, tests): touches nothing else
#
# Environment:
#   PREFIX=/usr/local      where the binary, library, models and docs go
#   DESTDIR=               staging root prepended to every path
#   CXR_WORKER_BIN=        a pre-built binary; default: `cargo build --release` and target/release
#   ORT_LIBRARY=           libonnxruntime.so.1.31.1; default: the one in .venv's onnxruntime wheel
#   MODELS_DIR=onnx        the *.onnx files to install (skipped with a warning when there are none)
#   --gpu                  also install systemd/gpu.conf as a drop-in (CUDA/TensorRT hosts)
#
# Upgrades: the binary, library, models and unit are replaced; /etc/cxr-worker/cxr-worker.toml is
# never overwritten (a changed template is written next to it as cxr-worker.toml.new); the spool
# and state in /var/lib/cxr-worker are not touched. The daemon applies pending database migrations
# itself at start-up, before it reports READY=1, so a restart completes the upgrade.
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
MODELS_DIR=${MODELS_DIR:-onnx}
ORT_VERSION=1.31.1
ORT_LIBRARY=${ORT_LIBRARY:-$(scripts/ort-library.sh)}
GPU=0
for arg in "$@"; do
  case "$arg" in
    --gpu) GPU=1 ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "install: unknown argument $arg" >&2; exit 2 ;;
  esac
done

SYSCONFDIR=/etc/cxr-worker
STATEDIR=/var/lib/cxr-worker
LIBDIR=$PREFIX/lib/cxr-worker
MODELDIR=$PREFIX/share/cxr-worker/models
DOCDIR=$PREFIX/share/doc/cxr-worker
# systemd reads units, sysusers.d and tmpfiles.d from /usr/lib and /usr/local/lib; any other
# prefix puts them in /etc.
case "$PREFIX" in
  /usr | /usr/local) SYSTEMD_BASE=$PREFIX/lib ;;
  *) SYSTEMD_BASE=/etc ;;
esac
UNITDIR=$SYSTEMD_BASE/systemd/system
SYSUSERSDIR=$SYSTEMD_BASE/sysusers.d
TMPFILESDIR=$SYSTEMD_BASE/tmpfiles.d
DROPINDIR=/etc/systemd/system/cxr-worker.service.d

log() { echo "install: $*" >&2; }
die() { log "$*"; exit 1; }

# put MODE SRC DEST: copy atomically (temp file + rename), so a running binary is never torn.
put() {
  local mode=$1 src=$2 dest=$DESTDIR$3
  mkdir -p "$(dirname "$dest")"
  local tmp
  tmp=$(mktemp "$dest.XXXXXX")
  cp "$src" "$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$dest"
}

# Replace @PREFIX@-style placeholders in a template.
render() {
  sed -e "s#@PREFIX@#$PREFIX#g" -e "s#@LIBDIR@#$LIBDIR#g" -e "s#@MODELDIR@#$MODELDIR#g" \
      -e "s#@STATEDIR@#$STATEDIR#g" -e "s#@DOCDIR@#$DOCDIR#g" "$1"
}

[[ $PREFIX == /* ]] || die "PREFIX must be an absolute path, got $PREFIX"
if [[ -z $DESTDIR && $(id -u) -ne 0 ]]; then
  die "installing onto this machine needs root (or set DESTDIR to stage into a directory)"
fi

# ---- the binary -------------------------------------------------------------------------------
if [[ -n ${CXR_WORKER_BIN:-} ]]; then
  BIN=$CXR_WORKER_BIN
else
  log "building the release binary"
  cargo build --release --locked --bin cxr-worker
  BIN=target/release/cxr-worker
fi
[[ -x $BIN ]] || die "binary $BIN is missing or not executable"
[[ -f $ORT_LIBRARY ]] || die "ONNX Runtime library $ORT_LIBRARY not found (run scripts/setup.sh, or set ORT_LIBRARY)"

UPGRADE=0
[[ -e $DESTDIR$PREFIX/bin/cxr-worker ]] && UPGRADE=1

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

put 0755 "$BIN" "$PREFIX/bin/cxr-worker"
put 0644 "$ORT_LIBRARY" "$LIBDIR/libonnxruntime.so.$ORT_VERSION"

# ---- models -----------------------------------------------------------------------------------
shopt -s nullglob
models=("$MODELS_DIR"/*.onnx)
shopt -u nullglob
if ((${#models[@]})); then
  for m in "${models[@]}"; do put 0644 "$m" "$MODELDIR/$(basename "$m")"; done
else
  log "warning: no models in $MODELS_DIR/*.onnx; copy them to $MODELDIR before starting the service"
fi

# ---- systemd files ----------------------------------------------------------------------------
# The unit in the repository names /usr/local paths (so it verifies as it is); follow PREFIX.
sed "s#/usr/local/#$PREFIX/#g" systemd/cxr-worker.service >"$WORK/unit"
put 0644 "$WORK/unit" "$UNITDIR/cxr-worker.service"
put 0644 systemd/cxr-worker.sysusers "$SYSUSERSDIR/cxr-worker.conf"
put 0644 systemd/cxr-worker.tmpfiles "$TMPFILESDIR/cxr-worker.conf"
put 0644 systemd/gpu.conf "$PREFIX/share/cxr-worker/systemd/gpu.conf"
if ((GPU)); then
  put 0644 systemd/gpu.conf "$DROPINDIR/gpu.conf"
fi
put 0644 docs/conformance-statement.md "$DOCDIR/conformance-statement.md"
put 0644 systemd/README.md "$DOCDIR/systemd.md"

# ---- configuration: never overwritten ---------------------------------------------------------
render systemd/cxr-worker.toml.in >"$WORK/config"
CONFIG=$SYSCONFDIR/cxr-worker.toml
mkdir -p "$DESTDIR$SYSCONFDIR"
chmod 0750 "$DESTDIR$SYSCONFDIR"
if [[ ! -e $DESTDIR$CONFIG ]]; then
  put 0640 "$WORK/config" "$CONFIG"
  log "configuration written to $CONFIG: set database.url and the allowed calling AE titles"
elif cmp -s "$WORK/config" "$DESTDIR$CONFIG"; then
  rm -f "$DESTDIR$CONFIG.new"
else
  put 0640 "$WORK/config" "$CONFIG.new"
  log "kept your $CONFIG; the new template is $CONFIG.new (compare: diff -u $CONFIG $CONFIG.new)"
fi

# ---- onto this machine: user, directories, service --------------------------------------------
if [[ -n $DESTDIR ]]; then
  log "staged into $DESTDIR"
  exit 0
fi

if command -v systemd-sysusers >/dev/null; then
  systemd-sysusers "$SYSUSERSDIR/cxr-worker.conf"
elif ! id -u cxr-worker >/dev/null 2>&1; then
  useradd --system --user-group --home-dir "$STATEDIR" --no-create-home \
    --shell /usr/sbin/nologin --comment "cxr-worker DICOM worker" cxr-worker
fi
if command -v systemd-tmpfiles >/dev/null; then
  systemd-tmpfiles --create "$TMPFILESDIR/cxr-worker.conf"
else
  install -d -m 0700 -o cxr-worker -g cxr-worker "$STATEDIR" "$STATEDIR/spool"
  install -d -m 0750 -o cxr-worker -g cxr-worker /var/log/cxr-worker
fi
# root owns the configuration; the service reads it through its group.
chown root:cxr-worker "$SYSCONFDIR" "$CONFIG"
[[ -e $CONFIG.new ]] && chown root:cxr-worker "$CONFIG.new"

if [[ -d /run/systemd/system ]]; then
  systemctl daemon-reload
  systemctl enable cxr-worker.service
  if ((UPGRADE)) && systemctl is-active --quiet cxr-worker.service; then
    log "upgrade: restarting cxr-worker (it applies pending migrations before READY=1)"
    systemctl restart cxr-worker.service
  else
    log "installed and enabled; after editing $CONFIG: systemctl start cxr-worker"
  fi
else
  log "systemd is not running (not PID 1): the unit is installed but not enabled"
fi
