#!/usr/bin/env bash
# make demo: start the worker on a private PostgreSQL, send real chest radiographs to it with
# DCMTK as a PACS would, and show what was received and recorded.
set -euo pipefail
cd "$(dirname "$0")/.."
DB_ADMIN=${DATABASE_URL:-$(scripts/pg.sh start)}
DEMO=$PWD/var/demo
PORT=${DEMO_PORT:-11112}
AE=CXR_WORKER
BIN=target/release/cxr-worker
rm -rf "$DEMO"; mkdir -p "$DEMO"

# a database of its own for the demo
base=${DB_ADMIN%/*}
psql "$DB_ADMIN" -qAtc "DROP DATABASE IF EXISTS cxr_demo WITH (FORCE)" >/dev/null
psql "$DB_ADMIN" -qAtc "CREATE DATABASE cxr_demo" >/dev/null
export CXR_WORKER__DATABASE__URL="$base/cxr_demo"
export CXR_WORKER__SPOOL__DIR="$DEMO/spool"
export CXR_WORKER__DICOM__LISTEN="127.0.0.1:$PORT"
export CXR_WORKER__DICOM__AE_TITLE="$AE"

echo "== checking the configuration"
$BIN check-config --config config/cxr-worker.toml

echo "== starting cxr-worker (AE $AE on 127.0.0.1:$PORT)"
$BIN serve --config config/cxr-worker.toml 2> "$DEMO/cxr-worker.log" &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  grep -q '"listening"\|listening' "$DEMO/cxr-worker.log" 2>/dev/null && break
  sleep 0.1
done

echo "== C-ECHO"
echoscu -v -aec "$AE" 127.0.0.1 "$PORT" 2>&1 | grep -E "Received Echo Response|Association" || true

F=tests/fixtures/dicom
echo "== sending real chest radiographs with DCMTK dcmsend (one association, each file in its own transfer syntax)"
dcmsend -aec "$AE" 127.0.0.1 "$PORT" \
  "$F/RG1_UNCR.dcm" "$F/RG1_J2KR.dcm" "$F/RG1_JLSN.dcm" "$F/966_fixed.dcm" "$F/RG2_RLE.dcm" 2>&1 | sed 's/^/  /'

echo "== sending one again (a duplicate is acknowledged and counted, not stored twice)"
storescu -aec "$AE" 127.0.0.1 "$PORT" "$F/RG1_UNCR.dcm" && echo "  Success"

echo "== what the database recorded"
psql "$CXR_WORKER__DATABASE__URL" -P pager=off -c "
  SELECT s.accession_number, s.study_date, i.modality, i.body_part_examined AS body_part,
         i.view_position AS view, i.transfer_syntax_uid, i.size_bytes, i.duplicate_count AS dups,
         i.state, i.calling_ae_title
  FROM instances i JOIN studies s USING (study_instance_uid) ORDER BY i.received_at"

echo "== the spool (Part 10 files as received)"
find "$DEMO/spool/objects" -name '*.dcm' -printf '  %s bytes  %P\n'

kill -TERM $PID; wait $PID || true
trap - EXIT
echo "== daemon log (no patient names or IDs in it)"
sed 's/^/  /' "$DEMO/cxr-worker.log" | tail -n 20
