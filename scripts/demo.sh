#!/usr/bin/env bash
# make demo: the whole loop on this machine, loopback only.
#   Orthanc (a real PACS) holds real chest radiographs and pushes them to cxr-worker;
#   cxr-worker receives them, waits for the study to complete, runs the anatomy segmenter and
#   Anatomy-XNet, stores the findings in PostgreSQL and sends three outputs back to Orthanc: the
#   DICOM SR, the anatomy Segmentation (SEG) and the results picture (Secondary Capture).
# Shows the findings table from the database, the SR as Orthanc stored it (dsrdump), and the SEG
# and SC as pictures (var/demo/*.png: Orthanc's rendering of the SC, the SEG over its image).
set -euo pipefail
cd "$(dirname "$0")/.."
DB_ADMIN=${DATABASE_URL:-$(scripts/pg.sh start)}
ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$(scripts/ort-library.sh)}
DEMO=$PWD/var/demo
PORT=${DEMO_PORT:-11112}
ORTHANC_DICOM=${DEMO_ORTHANC_DICOM:-14242}
ORTHANC_HTTP=${DEMO_ORTHANC_HTTP:-18042}
AE=CXR_WORKER
BIN=target/release/cxr-worker
F=tests/fixtures/dicom
rm -rf "$DEMO"; mkdir -p "$DEMO"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
orthanc() { curl -sf --max-time 30 "http://127.0.0.1:$ORTHANC_HTTP$1" "${@:2}"; }

# a database of its own for the demo
base=${DB_ADMIN%/*}
psql "$DB_ADMIN" -qAtc "DROP DATABASE IF EXISTS cxr_demo WITH (FORCE)" >/dev/null
psql "$DB_ADMIN" -qAtc "CREATE DATABASE cxr_demo" >/dev/null
DB="$base/cxr_demo"

cat > "$DEMO/cxr-worker.toml" <<EOF
[dicom]
ae_title = "$AE"
listen = "127.0.0.1:$PORT"
allowed_calling_ae_titles = ["ORTHANC@127.0.0.1"]

[database]
url = "$DB"

[spool]
dir = "spool"
# a demo machine's disk may be nearly full; production keeps the default 90 (see config/)
max_used_percent = 100

[models]
onnxruntime_library = "$ORT_DYLIB_PATH"
segmenter = "$PWD/onnx/anatomy-segmenter.onnx"
classifier = "$PWD/onnx/anatomy-xnet.onnx"
execution_providers = ["tensorrt", "cuda", "cpu"]

[study]
quiet_period_secs = 2
workers = 1

[[destinations]]
name = "orthanc"
ae_title = "ORTHANC"
host = "127.0.0.1"
port = $ORTHANC_DICOM

[log]
level = "info,jpeg2k=warn"
EOF

say "Orthanc: a real PACS, on loopback (DICOM $ORTHANC_DICOM, HTTP $ORTHANC_HTTP)"
python3 - "$DEMO" "$ORTHANC_DICOM" "$ORTHANC_HTTP" "$AE" "$PORT" <<'PY'
import json, sys
demo, dicom, http, ae, port = sys.argv[1:]
c = json.load(open("tests/orthanc/orthanc.json"))
c.update({"StorageDirectory": f"{demo}/orthanc", "IndexDirectory": f"{demo}/orthanc",
          "HttpPort": int(http), "DicomPort": int(dicom), "DicomAet": "ORTHANC",
          "DicomModalities": {"cxr": [ae, "127.0.0.1", int(port)]}})
json.dump(c, open(f"{demo}/orthanc.json", "w"), indent=1)
PY
Orthanc "$DEMO/orthanc.json" > "$DEMO/orthanc.log" 2>&1 &
pids+=($!)
for _ in $(seq 150); do orthanc /system >/dev/null 2>&1 && break; sleep 0.2; done
orthanc /system | python3 -c 'import json,sys; s=json.load(sys.stdin); print("  Orthanc", s["Version"], "AE", s["DicomAet"])'

say "cxr-worker: check the configuration, then start (AE $AE on 127.0.0.1:$PORT)"
$BIN check-config --config "$DEMO/cxr-worker.toml"
$BIN serve --config "$DEMO/cxr-worker.toml" 2> "$DEMO/cxr-worker.log" &
pids+=($!)
for _ in $(seq 300); do grep -q "listening" "$DEMO/cxr-worker.log" 2>/dev/null && break; sleep 0.1; done
grep -E "execution provider in use|listening" "$DEMO/cxr-worker.log" | sed 's/^/  /'

say "Upload real chest radiographs to Orthanc, then Orthanc pushes each study to cxr-worker (C-STORE)"
studies=()
for f in RG1_UNCR.dcm 966_fixed.dcm RG2_RLE.dcm; do
  study=$(orthanc /instances -X POST --data-binary "@$F/$f" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ParentStudy"])')
  studies+=("$study")
  echo "  $f -> Orthanc study $study"
done
echo "  (RG1_UNCR: chest CR PA; 966_fixed: chest DX PA; RG2_RLE: a hip radiograph, not chest)"
for s in "${studies[@]}"; do
  orthanc /modalities/cxr/store -X POST -d "{\"Resources\": [\"$s\"], \"Synchronous\": true}" >/dev/null
done
echo "  pushed ${#studies[@]} studies"

say "Waiting for the outputs to come back to Orthanc: 3 SRs, and a SEG and an SC per analysed image"
count() { orthanc /tools/find -X POST -d "{\"Level\":\"Instance\",\"Query\":{\"Modality\":\"$1\"}}" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))'; }
for _ in $(seq 240); do
  n=$(count SR); nseg=$(count SEG); nsc=$(count OT)
  [[ $n -ge 3 && $nseg -ge 2 && $nsc -ge 2 ]] && break
  sleep 0.5
done
echo "  in Orthanc: $n SR(s), $nseg SEG(s), $nsc SC(s)"

say "What the database recorded: each received image and its processing state"
psql "$DB" -P pager=off -c "
  SELECT s.accession_number AS accession, i.modality, i.body_part_examined AS body_part,
         i.view_position AS view, i.state, left(coalesce(i.state_reason, ''), 50) AS reason
  FROM instances i JOIN studies s USING (study_instance_uid) ORDER BY i.received_at"

say "The findings table (Anatomy-XNet probabilities per label; UNTRAINED demo weights)"
psql "$DB" -P pager=off -c "
  SELECT s.accession_number AS accession, f.label, round(f.probability::numeric, 3) AS probability,
         f.threshold, CASE WHEN f.present THEN 'Present' ELSE 'Absent' END AS call
  FROM findings f JOIN studies s USING (study_instance_uid)
  ORDER BY s.accession_number, f.label_index" > "$DEMO/findings.txt"
head -n 34 "$DEMO/findings.txt"
psql "$DB" -P pager=off -c "
  SELECT s.accession_number AS accession, round(a.cardiothoracic_ratio::numeric, 3) AS ctr,
         a.execution_provider AS provider, round(a.decode_ms) AS decode_ms,
         round(a.segment_ms) AS segment_ms, round(a.classify_ms) AS classify_ms, a.trained
  FROM analyses a JOIN studies s USING (study_instance_uid)"
psql "$DB" -P pager=off -c "SELECT accession_number, report_kind, positive_labels, reason FROM latest_results"
psql "$DB" -P pager=off -c "SELECT destination_name, state, attempts, last_status FROM outbox"

say "The SR as Orthanc stored it (dsrdump), and the validators"
sr_uid=$(psql "$DB" -qAtc "SELECT sr_sop_instance_uid FROM reports WHERE kind = 'findings' ORDER BY id LIMIT 1")
sr=$(orthanc /tools/find -X POST -d "{\"Level\":\"Instance\",\"Query\":{\"SOPInstanceUID\":\"$sr_uid\"}}" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)[0])')
orthanc "/instances/$sr/file" > "$DEMO/report-from-orthanc.dcm"
dsrdump "$DEMO/report-from-orthanc.dcm" > "$DEMO/report-from-orthanc.txt"
head -n 90 "$DEMO/report-from-orthanc.txt"
echo "  ... ($(wc -l < "$DEMO/report-from-orthanc.txt") lines in all: $DEMO/report-from-orthanc.txt)"
for f in $(orthanc /tools/find -X POST -d '{"Level":"Instance","Query":{"Modality":"SR"}}' | python3 -c 'import json,sys; print(" ".join(json.load(sys.stdin)))'); do
  orthanc "/instances/$f/file" > "$DEMO/sr-$f.dcm"
  printf '  %s: dciodvfy errors %s, dsrdump errors %s\n' "$f" \
    "$(dciodvfy "$DEMO/sr-$f.dcm" 2>&1 | grep -c '^Error' || true)" \
    "$(dsrdump "$DEMO/sr-$f.dcm" 2>&1 | grep -c '^[EF]:' || true)"
done

say "The SEG and the SC of each analysed image, as Orthanc holds them"
orthanc /tools/find -X POST -d '{"Level":"Instance","Query":{},"Expand":true}' | python3 -c '
import json, sys
for i in json.load(sys.stdin):
    t = i["MainDicomTags"]
    print(i["ID"], t.get("SOPInstanceUID", ""))' > "$DEMO/instances.txt"
shown=0
for uid in $(psql "$DB" -qAtc "SELECT sop_instance_uid FROM image_outputs ORDER BY id"); do
  read -r kind src <<< "$(psql "$DB" -qAtc "SELECT kind, source_sop_instance_uid FROM image_outputs WHERE sop_instance_uid = '$uid'" | tr '|' ' ')"
  id=$(awk -v u="$uid" '$2 == u { print $1 }' "$DEMO/instances.txt")
  [[ -n $id ]] || { echo "  $kind $uid: not in Orthanc"; continue; }
  orthanc "/instances/$id/file" > "$DEMO/$kind-$uid.dcm"
  printf '  %s %s of image %s: dciodvfy errors %s\n' "$kind" "$uid" "$src" \
    "$(dciodvfy "$DEMO/$kind-$uid.dcm" 2>&1 | grep -c '^Error' || true)"
  if [[ $shown -lt 2 ]]; then
    srcid=$(awk -v u="$src" '$2 == u { print $1 }' "$DEMO/instances.txt")
    if [[ $kind == sc ]]; then
      orthanc "/instances/$id/preview" > "$DEMO/sc-preview.png"
      echo "    Orthanc's rendering of the SC: $DEMO/sc-preview.png"
    else
      orthanc "/instances/$srcid/file" > "$DEMO/source-$src.dcm"
      .venv/bin/python scripts/render-seg.py "$DEMO/$kind-$uid.dcm" "$DEMO/source-$src.dcm" "$DEMO/seg-overlay.png"
      echo "    the SEG over its image (read by highdicom): $DEMO/seg-overlay.png"
    fi
    shown=$((shown + 1))
  fi
done

say "The daemon log (identifiers as UIDs only: no patient names or IDs)"
grep -E "job done|stored|sent" "$DEMO/cxr-worker.log" | tail -n 8 | cut -c1-220 | sed 's/^/  /'
echo
echo "Demo files: $DEMO (Orthanc storage, the spool, the archive of outputs, the pictures, logs)."
