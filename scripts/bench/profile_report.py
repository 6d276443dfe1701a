#!/usr/bin/env python3
"""Per-instance time split of a cxr-worker run traced by scripts/bench/profile-cxr.sh.

Usage: profile_report.py STRACE_FILE JSON_LOG N WALL_SECONDS ASSOCIATIONS
The strace file has file syscalls only (-f -T -ttt -y); the log is the daemon's JSON log with its
"stored" events (timestamp = when the instance was committed, ms = since its data set was
complete). With one association the stages of an instance do not overlap another's, so each
instance's interval is split along the syscalls that fall in it.
"""

import json
import re
import statistics
import sys
from datetime import datetime

CALL = re.compile(r"^(\d+) ([\d.]+) (\w+)\((?:(\d+)<(TCP:\[[^\]]*\]|[^>]*)>)?")
RESUMED = re.compile(r"^(\d+) [\d.]+ <\.\.\. (\w+) resumed>")
DURATION = re.compile(r"<([\d.]+)>$")
RESULT = re.compile(r"= (\d+) <[\d.]+>$")


def read_ops(path: str) -> list[tuple[float, float, str]]:
    ops, pending = [], {}
    for line in open(path):
        line = line.strip()
        if line.endswith("<unfinished ...>"):
            m = CALL.match(line)
            if m:
                pending[m.group(1)] = (float(m.group(2)), m.group(3), m.group(5) or "")
            continue
        m = RESUMED.match(line)
        if m:
            if m.group(1) not in pending:
                continue
            t0, call, target = pending.pop(m.group(1))
        else:
            m = CALL.match(line)
            if not m:
                continue
            t0, call, target = float(m.group(2)), m.group(3), m.group(5) or ""
        d = DURATION.search(line)
        if not d or "= -1" in line:
            continue
        t1 = t0 + float(d.group(1))
        if call == "write" and target.endswith(".part"):
            ops.append((t0, t1, "write:" + target))
        elif call in ("fsync", "fdatasync"):
            ops.append((t0, t1, "fsync_file" if target.endswith(".part") else "fsync_dir"))
        elif call.startswith("rename"):
            ops.append((t0, t1, "rename"))
        elif target.startswith("TCP:") and call in ("recvfrom", "read", "sendto", "write"):
            r = RESULT.search(line)
            size = int(r.group(1)) if r else 0
            kind = "recv" if call in ("recvfrom", "read") else "send"
            if size:
                ops.append((t0, t1, f"{kind}:{size}:{target}"))
    ops.sort()
    return ops


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> None:
    trace, log, n, wall, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
    ops = read_ops(trace)
    stored = []
    for line in open(log):
        e = json.loads(line)
        if e.get("message") == "stored":
            end = datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
            stored.append((end, e["ms"]))
    ms_all = sorted(ms for _, ms in stored)
    cycle = wall / n * mode * 1000
    st = med(ms_all)
    print(f"{n} instances over {mode} association(s): {len(stored)} stored, wall {wall:.2f} s, "
          f"{n / wall:.1f} instances/s")
    print(f"  per association an instance every {cycle:.1f} ms: ~{cycle - st:.1f} ms receiving it "
          f"(sender included), {st:.1f} ms from the complete data set to Success "
          f"(p90 {ms_all[int(len(ms_all) * 0.9) - 1]} ms)")
    segs: dict[str, list[float]] = {k: [] for k in (
        "parse", "write", "fsync_file", "db_insert", "publish", "fsync_dir", "commit")}
    for end, ms in stored:
        start = end - ms / 1000
        mine = [o for o in ops if start - 0.002 <= o[0] and o[1] <= end + 0.002]
        w = [o for o in mine if o[2].startswith("write:")]
        f = [o for o in mine if o[2] == "fsync_file"]
        d = [o for o in mine if o[2] in ("fsync_dir", "rename")]
        if mode != 1 or not (w and f and d):
            continue
        segs["parse"].append((w[0][0] - start) * 1000)
        segs["write"].append((w[-1][1] - w[0][0]) * 1000)
        segs["fsync_file"].append((f[-1][1] - f[0][0]) * 1000)
        segs["db_insert"].append((d[0][0] - f[-1][1]) * 1000)
        segs["publish"].append((d[-1][1] - d[0][0]) * 1000)
        segs["fsync_dir"].append(sum((o[1] - o[0]) * 1000 for o in d if o[2] == "fsync_dir"))
        segs["commit"].append((end - d[-1][1]) * 1000)
    # the network side, per DICOM connection (one that received a large read)
    conns: dict[str, list] = {}
    for a, b, k in ops:
        if k.startswith(("recv:", "send:")):
            kind, size, target = k.split(":", 2)
            conns.setdefault(target, []).append((a, b, kind, int(size)))
    turnaround, receive, store = [], [], []
    for evs in conns.values():
        if not any(kind == "recv" and size >= 65536 for _, _, kind, size in evs):
            continue
        sends = [e for e in evs if e[2] == "send"]
        recvs = [e for e in evs if e[2] == "recv"]
        for s0, s1 in zip(sends[1:], sends[2:]):
            r = [e for e in recvs if s0[1] <= e[0] <= s1[0]]
            if sum(e[3] for e in r) < 1_000_000:
                continue
            turnaround.append((r[0][0] - s0[1]) * 1000)
            receive.append((r[-1][1] - r[0][0]) * 1000)
            store.append((s1[0] - r[-1][1]) * 1000)
    if receive:
        print(f"  per association, median per instance: sender turnaround (our response -> its "
              f"next byte) {med(turnaround):.1f} ms, receiving the 8 MB {med(receive):.1f} ms, "
              f"last byte -> our response {med(store):.1f} ms")
    names = {
        "parse": "scan + header parse (data set complete -> first write)",
        "write": "write of the staged file (into the page cache)",
        "fsync_file": "fsync of the staged file",
        "db_insert": "BEGIN + INSERTs in PostgreSQL",
        "publish": "mkdir + rename + 2 directory fsyncs",
        "fsync_dir": "  of which the directory fsyncs",
        "commit": "COMMIT (PostgreSQL WAL flush) + log line",
    }
    if mode != 1:
        # instances overlap: report the syscalls themselves
        writes: dict[str, float] = {}
        for a, b, k in ops:
            if k.startswith("write:"):
                writes[k] = writes.get(k, 0.0) + (b - a) * 1000
        segs["write"] = list(writes.values())
        segs["fsync_file"] = [(b - a) * 1000 for a, b, k in ops if k == "fsync_file"]
        segs["fsync_dir"] = [(b - a) * 1000 for a, b, k in ops if k == "fsync_dir"]
        names["fsync_dir"] = "one directory fsync (2 per instance)"
    for k, v in segs.items():
        if v:
            print(f"  {names[k]:56s} median {med(v):6.1f} ms")


if __name__ == "__main__":
    main()
