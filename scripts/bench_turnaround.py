#!/usr/bin/env python3
"""Turnaround benchmark driver (scripts/bench-turnaround.sh runs it).

  bench_turnaround.py make --out DIR --count N
      Write N one-image chest studies (Part 10, Explicit VR Little Endian) from real chest pixel
      data: the 12 NIH ChestX-ray14 PNGs (1024x1024, 8-bit) wrapped into DX For Presentation, and
      the WG04 RG1_UNCR CR (1955x1841, 15-bit) header and pixels, in turn; every study gets new
      Study/Series/SOP Instance UIDs and a synthetic patient. Existing files are kept (a cache).
      --j2k: JPEG 2000 lossless (pylibjpeg-openjpeg) instead.

  bench_turnaround.py run --binary B --db-url URL --models DIR --ort LIB --quiet S --studies DIR
      Start a C-STORE SCP (pynetdicom) that timestamps each SR on arrival, start `B serve` with
      the SCP as its only destination, send the studies one association each, one after another
      (the next once the previous SR has arrived, or every --interval seconds), and measure per
      study: from the C-STORE response of its last instance (sender side) to the SR's arrival at
      the SCP (receiver side). Both clocks are this machine's `time.time()`. Then read the
      daemon's own timestamps and stage timings from PostgreSQL to say where the time went.
      Prints a Markdown summary and writes every sample as JSON (--json).
"""
import argparse
import datetime
import json
import math
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

ROOT = Path(__file__).resolve().parent.parent
NIH = ROOT / "tests/fixtures/nih"
RG1 = ROOT / "tests/fixtures/dicom/RG1_UNCR.dcm"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


# ---- make -------------------------------------------------------------------------------------

def new_identity(ds, i):
    now = datetime.datetime.now()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = f"BENCH^{i:04d}"
    ds.PatientID = f"BENCH{i:04d}"
    ds.AccessionNumber = f"BA{i:06d}"
    ds.StudyID = str(i)
    ds.StudyDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1


def dx_from_png(png, i):
    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.uint8)
    ds = Dataset()
    ds.SOPClassUID = DX_PRESENTATION
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.ImageLaterality = "U"
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "51185008", "SCT", "Chest"
    ds.AnatomicRegionSequence = [region]
    ds.AcquisitionContextSequence = []
    ds.DetectorType = ""
    ds.PositionerType = ""
    # nominal: the NIH PNGs were downsampled from ~3000 px films; their spacing is not published
    ds.ImagerPixelSpacing = [0.4, 0.4]
    ds.PresentationLUTShape = "IDENTITY"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Manufacturer = "cxr-worker bench"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.ReferringPhysicianName = ""
    ds.PatientOrientation = ["L", "F"]
    ds.BurnedInAnnotation = "NO"
    ds.DerivationDescription = f"NIH ChestX-ray14 {png.name}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.WindowCenter = 128
    ds.WindowWidth = 256
    ds.LossyImageCompression = "00"
    ds.PixelData = pixels.tobytes()
    new_identity(ds, i)
    return ds


def cr_from_rg1(i):
    ds = pydicom.dcmread(RG1)
    new_identity(ds, i)
    return ds


def save(ds, path, j2k):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    if j2k:
        ds.compress(JPEG2000Lossless)  # pylibjpeg-openjpeg
    tmp = path.with_suffix(".tmp")
    ds.save_as(tmp, enforce_file_format=True)
    tmp.rename(path)


def make(args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pngs = sorted(NIH.glob("*.png"))
    sources = [("nih", p) for p in pngs] + [("rg1", RG1)]
    made = 0
    for i in range(args.count):
        path = out / f"study-{i:04d}.dcm"
        if path.exists():
            continue
        kind, src = sources[i % len(sources)]
        save(dx_from_png(src, i) if kind == "nih" else cr_from_rg1(i), path, args.j2k)
        made += 1
    print(f"{args.count} studies in {out} ({made} new; sources: {len(pngs)} NIH PNGs + RG1_UNCR)")


# ---- run --------------------------------------------------------------------------------------

def start_scp(port_holder, arrivals):
    from pynetdicom import AE, evt

    def on_store(event):
        t = time.time()
        ds = event.dataset
        arrivals.put((str(ds.StudyInstanceUID), str(ds.SOPClassUID), t))
        return 0x0000

    ae = AE(ae_title="BENCH_PACS")
    for sop_class in (COMPREHENSIVE_3D_SR, SEGMENTATION, SECONDARY_CAPTURE):
        ae.add_supported_context(sop_class, [ExplicitVRLittleEndian, "1.2.840.10008.1.2"])
    server = ae.start_server(("127.0.0.1", 0), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
    port_holder.append(server.server_address[1])
    return server


def write_config(work, a, scp_port):
    threads = "" if a.threads is None else f"intra_threads = {a.threads}\n"
    text = f"""
[dicom]
ae_title = "CXR_BENCH"
listen = "127.0.0.1:0"
allowed_calling_ae_titles = ["BENCH_MODALITY@127.0.0.1"]

[database]
url = "{a.db_url}"

[spool]
dir = "{work}/spool"
# the benchmark machine's disk may be nearly full: no watermark
max_used_percent = 100

[models]
onnxruntime_library = "{Path(a.ort).resolve()}"
segmenter = "{Path(a.models).resolve() / 'anatomy-segmenter.onnx'}"
classifier = "{Path(a.models).resolve() / 'anatomy-xnet.onnx'}"
execution_providers = ["cpu"]
{threads}
[study]
quiet_period_secs = {a.quiet}
{a.study_extra}

[log]
level = "info"
format = "json"

[[destinations]]
ae_title = "BENCH_PACS"
host = "127.0.0.1"
port = {scp_port}
outputs = {json.dumps(a.outputs)}
"""
    path = Path(work) / "cxr-worker.toml"
    path.write_text(text)
    return path


def start_daemon(binary, config, log_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_WORKER__")}
    env.pop("RUST_LOG", None)
    proc = subprocess.Popen([binary, "serve", "--config", str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    addr = queue.Queue()

    def pump():
        with open(log_path, "w") as log:
            for line in proc.stderr:
                log.write(line)
                log.flush()
                if '"listening"' in line:
                    try:
                        addr.put(json.loads(line)["fields"]["addr"])
                    except (ValueError, KeyError):
                        addr.put(json.loads(line).get("addr"))
    threading.Thread(target=pump, daemon=True).start()
    deadline = time.time() + 120
    while True:
        try:
            a = addr.get(timeout=0.2)
            break
        except queue.Empty:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                sys.exit(f"daemon did not start; see {log_path}")
    return proc, int(a.rsplit(":", 1)[1])


def send_study(port, path):
    """One association, one C-STORE; returns the time the response was received."""
    from pynetdicom import AE
    ds = pydicom.dcmread(path)
    ae = AE(ae_title="BENCH_MODALITY")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="CXR_BENCH")
    if not assoc.is_established:
        sys.exit("association rejected")
    status = assoc.send_c_store(ds)
    t = time.time()
    assoc.release()
    if status is None or status.Status != 0:
        sys.exit(f"C-STORE failed: {status}")
    return str(ds.StudyInstanceUID), t


def psql(url, sql):
    out = subprocess.run(["psql", url, "-X", "-A", "-t", "-F", "\t", "-c", sql],
                         check=True, capture_output=True, text=True).stdout
    return [line.split("\t") for line in out.splitlines() if line]


def pct(values, p):
    """Nearest-rank percentile."""
    v = sorted(values)
    return v[max(0, math.ceil(p / 100 * len(v)) - 1)]


def breakdown(url):
    # per study: daemon timestamps (epoch seconds) and stage timings; one image per study
    rows = psql(url, """
        SELECT i.study_instance_uid,
               extract(epoch FROM i.received_at),
               extract(epoch FROM j.created_at),
               extract(epoch FROM a.analysed_at),
               a.decode_ms, a.preprocess_ms, a.segment_ms, a.classify_ms,
               extract(epoch FROM r.created_at),
               extract(epoch FROM t.started_at),
               extract(epoch FROM t.finished_at)
        FROM instances i
        JOIN jobs j ON j.study_instance_uid = i.study_instance_uid
        JOIN analyses a ON a.sop_instance_uid = i.sop_instance_uid
        JOIN reports r ON r.study_instance_uid = i.study_instance_uid
        -- the outbox's object column: sop_instance_uid since migration 0006, before it
        -- sr_sop_instance_uid (so the same query serves an A/B against an older build)
        JOIN outbox o ON COALESCE(to_jsonb(o)->>'sop_instance_uid',
                                  to_jsonb(o)->>'sr_sop_instance_uid') = r.sr_sop_instance_uid
        JOIN outbox_attempts t ON t.outbox_id = o.id AND t.outcome = 'sent'""")
    out = {}
    for r in rows:
        f = [float(x) for x in r[1:]]
        out[r[0]] = dict(received=f[0], job_created=f[1], analysed=f[2], decode_ms=f[3],
                         preprocess_ms=f[4], segment_ms=f[5], classify_ms=f[6],
                         report=f[7], send_start=f[8], send_end=f[9])
    return out


def run(a):
    files = sorted(Path(a.studies).glob("study-*.dcm"))[: a.count]
    if len(files) < a.count:
        sys.exit(f"only {len(files)} studies in {a.studies}: run `make` first")
    work = tempfile.mkdtemp(prefix="cxr-bench-")
    arrivals = queue.Queue()
    port = []
    scp = start_scp(port, arrivals)
    config = write_config(work, a, port[0])
    log_path = Path(a.log or Path(work) / "daemon.log")
    daemon, dport = start_daemon(a.binary, config, log_path)
    load_before = os.getloadavg()
    # per study: the time each output arrived (one-image studies: one object per output kind)
    received = {}
    want = len(a.outputs)

    def wait_sr(study, within):
        """Wait until every output of `study` has arrived."""
        deadline = time.time() + within
        while len(received.get(study, {})) < want:
            left = deadline - time.time()
            if left <= 0:
                return False
            try:
                s, sop_class, t = arrivals.get(timeout=left)
            except queue.Empty:
                return False
            got = received.setdefault(s, {})
            if sop_class in got:
                sys.exit(f"a second object of class {sop_class} arrived for study {s}")
            got[sop_class] = t
        return True

    sent = {}
    try:
        # warm-up: one study that is not counted (first inference allocates)
        warm, t = send_study(dport, files[0])
        if not wait_sr(warm, 120):
            sys.exit(f"warm-up SR did not arrive; see {log_path}")
        for path in files[1:]:
            study, t = send_study(dport, path)
            sent[study] = t
            if a.interval > 0:
                time.sleep(max(0.0, t + a.interval - time.time()))
            elif not wait_sr(study, 120):
                sys.exit(f"SR of {study} did not arrive within 120 s; see {log_path}")
        for study in sent:
            if not wait_sr(study, 300):
                sys.exit(f"SR of {study} did not arrive; see {log_path}")
        time.sleep(1.0)
        if not arrivals.empty():
            sys.exit("an output arrived twice")
    finally:
        load_after = os.getloadavg()
        daemon.terminate()
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
        scp.shutdown()

    db = breakdown(a.db_url)
    samples = []
    for study, t_sent in sent.items():
        d = db[study]
        samples.append(dict(
            study=study,
            # all outputs at the destination; the SR alone
            turnaround=max(received[study].values()) - t_sent,
            sr_turnaround=received[study][COMPREHENSIVE_3D_SR] - t_sent,
            receive_to_response=t_sent - d["received"],
            schedule_lag=d["job_created"] - d["received"] - a.quiet,
            job_to_analysed=d["analysed"] - d["job_created"],
            models=(d["decode_ms"] + d["preprocess_ms"] + d["segment_ms"] + d["classify_ms"]) / 1000,
            decode=d["decode_ms"] / 1000, preprocess=d["preprocess_ms"] / 1000,
            segment=d["segment_ms"] / 1000, classify=d["classify_ms"] / 1000,
            report=d["report"] - d["analysed"],
            outbox_pickup=d["send_start"] - d["report"],
            send=d["send_end"] - d["send_start"],
            arrival_after_send_end=received[study][COMPREHENSIVE_3D_SR] - d["send_end"],
        ))
    summary(a, samples, load_before, load_after)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(dict(
            quiet_period_s=a.quiet, interval_s=a.interval, study_extra=a.study_extra,
            outputs=a.outputs,
            load_before=load_before, load_after=load_after, cores=os.cpu_count(),
            samples=samples), indent=1))


def summary(a, samples, load_before, load_after):
    n = len(samples)
    col = lambda k: [s[k] for s in samples]  # noqa: E731
    t = col("turnaround")
    print(f"\n{n} one-image studies, quiet period {a.quiet} s, "
          f"{'one after another' if a.interval <= 0 else f'one every {a.interval} s'}"
          f"{', ' + a.study_extra.replace(chr(10), ', ') if a.study_extra else ''}; "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; "
          f"{os.cpu_count()} cores\n")
    print(f"outputs: {', '.join(a.outputs)}\n")
    print("| seconds | p50 | p95 | max | mean |")
    print("|---|---:|---:|---:|---:|")

    def row(name, v):
        print(f"| {name} | {pct(v, 50):.2f} | {pct(v, 95):.2f} | {max(v):.2f} | "
              f"{sum(v) / len(v):.2f} |")
    row("**turnaround** (last C-STORE response → every output at the destination)", t)
    row("turnaround of the SR alone", col("sr_turnaround"))
    row("**turnaround − quiet period**", [x - a.quiet for x in t])
    row("scheduling lag (job created − received − quiet period)", col("schedule_lag"))
    row("job created → findings stored", col("job_to_analysed"))
    row("  of which decode", col("decode"))
    row("  of which preprocess", col("preprocess"))
    row("  of which segment", col("segment"))
    row("  of which classify", col("classify"))
    # findings, report and outbox rows are committed in one transaction: the outputs' build
    # time is inside "job created → findings stored"
    row("findings stored → report queued", col("report"))
    row("SR queued → sender takes it", col("outbox_pickup"))
    row("C-STORE of the SR (association to release)", col("send"))
    goal = a.quiet + 3
    print(f"\np95 turnaround {pct(t, 95):.2f} s vs goal quiet period + 3 s = {goal:.2f} s: "
          f"{'met' if pct(t, 95) <= goal else 'MISSED'}")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--out", required=True)
    m.add_argument("--count", type=int, default=51)
    m.add_argument("--j2k", action="store_true", help="JPEG 2000 lossless instead of uncompressed")
    r = sub.add_parser("run")
    r.add_argument("--binary", required=True)
    r.add_argument("--db-url", required=True)
    r.add_argument("--models", required=True)
    r.add_argument("--ort", required=True)
    r.add_argument("--studies", required=True)
    r.add_argument("--count", type=int, default=51, help="studies incl. one warm-up")
    r.add_argument("--outputs", default="sr,seg,sc",
                   type=lambda v: [x.strip() for x in v.split(",") if x.strip()],
                   help="what the destination takes (comma-separated: sr, seg, sc)")
    r.add_argument("--quiet", type=float, default=2.0)
    r.add_argument("--interval", type=float, default=0.0,
                   help="send one study every S seconds (0: after the previous SR arrived)")
    r.add_argument("--threads", type=int, default=None, help="[models] intra_threads")
    r.add_argument("--study-extra", default="", help="more [study] lines, e.g. poll_interval_secs = 0.1")
    r.add_argument("--json")
    r.add_argument("--log")
    a = p.parse_args()
    make(a) if a.cmd == "make" else run(a)


if __name__ == "__main__":
    main()
