#!/usr/bin/env python3
"""Soak run (scripts/bench-soak.sh runs it): the daemon under continuous load for a long time,
sampled every few seconds, to show that nothing leaks and no backlog grows.

  bench_soak.py --binary B --db-url URL --models DIR --ort LIB --studies DIR --seconds 1800

- The daemon (`B serve`, full-size models on the CPU, every output) sends to a pynetdicom C-STORE
  SCP in this process that timestamps each arrival (bench_turnaround.py's).
- --senders threads (default 4) each send a one-image chest study (one association) every
  --senders * 60 / --rate seconds, staggered, for --seconds: a study from the --studies pool
  (bench_turnaround.py make) with new Study/Series/SOP Instance UIDs every time.
- Every --sample seconds: the daemon's RSS (VmRSS) and open file descriptors (/proc/PID), the
  queue (jobs queued or running, outbox rows queued or sending, from PostgreSQL), the studies
  sent whose SR has not arrived yet (the backlog as a sender sees it, quiet period included),
  and the turnaround p95 of the studies whose SR arrived in the last minute (from the C-STORE
  response of the study's image to its SR's arrival, quiet period included).
- At the end: the senders stop, the last SRs are awaited (2 minutes at most), the daemon is
  stopped with SIGTERM; every SR must have arrived. Writes the samples (--csv), a plot (--png)
  and a Markdown summary (stdout, and --md): first against last tenth of the run, and the RSS
  and fd slopes over the second half (a leak shows as a slope; flat is ~0).
"""
import argparse
import csv
import os
import queue
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pydicom
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_turnaround as bt  # noqa: E402

SR = bt.COMPREHENSIVE_3D_SR


def proc_sample(pid):
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss_kib / 1024, fds


def slope_per_hour(ts, ys):
    """Least-squares slope of ys over ts (seconds), per hour."""
    n = len(ts)
    if n < 2:
        return 0.0
    mt, my = sum(ts) / n, sum(ys) / n
    den = sum((t - mt) ** 2 for t in ts)
    return 0.0 if den == 0 else sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / den * 3600


def sender(a, port, files, index, stop_at, sent, lock, failures):
    from pynetdicom import AE
    interval = a.senders * 60.0 / a.rate
    next_at = time.time() + index * interval / a.senders
    i = index
    while True:
        now = time.time()
        if next_at > stop_at:
            return
        if next_at > now:
            time.sleep(next_at - now)
        next_at += interval
        ds = pydicom.dcmread(files[i % len(files)])
        i += a.senders
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ae = AE(ae_title="BENCH_MODALITY")
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", port, ae_title="CXR_BENCH")
        if not assoc.is_established:
            failures.append("association rejected")
            continue
        status = assoc.send_c_store(ds)
        t = time.time()
        assoc.release()
        if status is None or status.Status != 0:
            failures.append(f"C-STORE status {getattr(status, 'Status', None)}")
            continue
        with lock:
            sent[str(ds.StudyInstanceUID)] = t


def queue_depth(url):
    row = bt.psql(url, """SELECT (SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')),
                                 (SELECT count(*) FROM outbox WHERE state IN ('queued', 'sending'))""")[0]
    return int(row[0]), int(row[1])


def plot(samples, png, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t = [s["t"] / 60 for s in samples]
    fig, ax = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    ax[0].plot(t, [s["rss_mib"] for s in samples])
    ax[0].set_ylabel("RSS (MiB)")
    ax[1].plot(t, [s["fds"] for s in samples])
    ax[1].set_ylabel("open fds")
    ax[2].plot(t, [s["awaiting_sr"] for s in samples], label="studies awaiting their SR")
    ax[2].plot(t, [s["jobs"] for s in samples], label="jobs queued or running")
    ax[2].plot(t, [s["outbox"] for s in samples], label="outbox queued or sending")
    ax[2].set_ylabel("backlog")
    ax[2].legend(loc="upper left", fontsize=8)
    ax[3].plot(t, [s["p95_s"] if s["p95_s"] is not None else float("nan") for s in samples])
    ax[3].set_ylabel("turnaround p95,\nlast minute (s)")
    ax[3].set_xlabel("minutes")
    for a in ax:
        a.set_ylim(bottom=0)
        a.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=80)


def run(a):
    files = sorted(Path(a.studies).glob("study-*.dcm"))
    if not files:
        sys.exit(f"no studies in {a.studies}: run bench_turnaround.py make first")
    work = tempfile.mkdtemp(prefix="cxr-soak-")
    arrivals = queue.Queue()
    port_holder = []
    scp = bt.start_scp(port_holder, arrivals)
    cfg = SimpleNamespace(threads=None, db_url=a.db_url, ort=a.ort, models=a.models,
                          quiet=a.quiet, study_extra="", outputs=["sr", "seg", "sc"])
    config = bt.write_config(work, cfg, port_holder[0])
    proc, port = bt.start_daemon(a.binary, config, a.log)
    sent, lock, failures = {}, threading.Lock(), []
    sr_at = {}
    start = time.time()
    stop_at = start + a.seconds
    threads = [threading.Thread(target=sender, args=(a, port, files, k, stop_at, sent, lock, failures),
                                daemon=True) for k in range(a.senders)]
    for th in threads:
        th.start()
    samples = []

    def drain():
        while True:
            try:
                study, sop_class, t = arrivals.get_nowait()
            except queue.Empty:
                return
            if sop_class == SR:
                sr_at.setdefault(study, t)

    def sample():
        drain()
        now = time.time()
        rss, fds = proc_sample(proc.pid)
        jobs, outbox = queue_depth(a.db_url)
        with lock:
            pending = sum(1 for s in sent if s not in sr_at)
            recent = [sr_at[s] - sent[s] for s in sr_at if s in sent and now - sr_at[s] <= 60]
        samples.append(dict(t=now - start, rss_mib=rss, fds=fds, jobs=jobs, outbox=outbox,
                            awaiting_sr=pending, sent=len(sent), srs=len(sr_at),
                            p95_s=bt.pct(recent, 95) if recent else None))
        s = samples[-1]
        print(f"{s['t']:7.0f} s  rss {rss:6.1f} MiB  fds {fds:3d}  jobs {jobs:3d}  outbox {outbox:3d}  "
              f"awaiting {pending:3d}  sent {s['sent']:5d}  p95 {s['p95_s'] or 0:5.2f} s", flush=True)

    next_sample = start
    while time.time() < stop_at:
        if proc.poll() is not None:
            sys.exit(f"the daemon exited ({proc.returncode}); see {a.log}")
        sample()
        next_sample += a.sample
        time.sleep(max(0.0, next_sample - time.time()))
    for th in threads:
        th.join()
    deadline = time.time() + 120
    while time.time() < deadline:
        drain()
        with lock:
            if all(s in sr_at for s in sent):
                break
        time.sleep(1)
    sample()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    scp.shutdown()

    with open(a.csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(samples[0]))
        w.writeheader()
        w.writerows(samples)
    missing = [s for s in sent if s not in sr_at]
    turnaround = sorted(sr_at[s] - sent[s] for s in sent if s in sr_at)
    during = [s for s in samples if s["t"] <= a.seconds]
    tenth = max(1, len(during) // 10)
    first, last = during[:tenth], during[-tenth:]
    half = during[len(during) // 2:]

    def med(rows, key):
        vals = [r[key] for r in rows if r[key] is not None]
        return statistics.median(vals) if vals else float("nan")

    title = (f"cxr-worker soak: {a.seconds / 60:.0f} min, {a.senders} senders, {a.rate:g} studies/min, "
             f"full-size models on the CPU, SR+SEG+SC")
    plot(samples, a.png, title)
    lines = [
        f"{len(sent)} studies sent ({len(failures)} sends failed), {len(sr_at)} SRs received, "
        f"{len(missing)} missing after the 2-minute drain.",
        f"Turnaround over the whole run (quiet period {a.quiet:g} s included): "
        f"p50 {bt.pct(turnaround, 50):.2f} s, p95 {bt.pct(turnaround, 95):.2f} s, max {turnaround[-1]:.2f} s."
        if turnaround else "No SR arrived.",
        "",
        "| measure | first tenth (median) | last tenth (median) | slope over the second half |",
        "|---|---|---|---|",
        f"| RSS (MiB) | {med(first, 'rss_mib'):.1f} | {med(last, 'rss_mib'):.1f} | "
        f"{slope_per_hour([r['t'] for r in half], [r['rss_mib'] for r in half]):+.1f} MiB/h |",
        f"| open fds | {med(first, 'fds'):.0f} | {med(last, 'fds'):.0f} | "
        f"{slope_per_hour([r['t'] for r in half], [r['fds'] for r in half]):+.1f} /h |",
        f"| studies awaiting their SR | {med(first, 'awaiting_sr'):.0f} | {med(last, 'awaiting_sr'):.0f} | "
        f"{slope_per_hour([r['t'] for r in half], [r['awaiting_sr'] for r in half]):+.1f} /h |",
        f"| jobs queued or running | {med(first, 'jobs'):.0f} | {med(last, 'jobs'):.0f} | "
        f"{slope_per_hour([r['t'] for r in half], [r['jobs'] for r in half]):+.1f} /h |",
        f"| turnaround p95, last minute (s) | {med(first, 'p95_s'):.2f} | {med(last, 'p95_s'):.2f} | |",
        "",
        f"Peak: RSS {max(s['rss_mib'] for s in samples):.1f} MiB, fds {max(s['fds'] for s in samples)}, "
        f"studies awaiting their SR {max(s['awaiting_sr'] for s in samples)}.",
    ]
    text = "\n".join(lines)
    print(text)
    if a.md:
        Path(a.md).write_text(text + "\n")
    if failures or missing:
        sys.exit(f"soak failed: {len(failures)} sends failed, {len(missing)} SRs missing")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary", required=True)
    p.add_argument("--db-url", required=True)
    p.add_argument("--models", required=True)
    p.add_argument("--ort", required=True)
    p.add_argument("--studies", required=True)
    p.add_argument("--seconds", type=float, default=1800)
    p.add_argument("--senders", type=int, default=4)
    p.add_argument("--rate", type=float, default=20, help="studies per minute, all senders together")
    p.add_argument("--sample", type=float, default=10)
    p.add_argument("--quiet", type=float, default=2.0)
    p.add_argument("--csv", required=True)
    p.add_argument("--png", required=True)
    p.add_argument("--md")
    p.add_argument("--log", required=True)
    run(p.parse_args())


if __name__ == "__main__":
    main()
