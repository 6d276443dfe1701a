"""Inference benchmark driver: cxr-worker against the Python reference pipeline, same models, same
files, same run. Prints a markdown table of per-image stage times (median over the passes after a
warm-up pass) and each process's peak RSS. Called by scripts/bench-infer.sh."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

STAGES = ("decode_ms", "preprocess_ms", "segment_ms", "classify_ms")


def run(cmd: list[str], env: dict | None = None) -> tuple[list[dict], int, float]:
    """Run `cmd`; return its JSON lines, its peak RSS (KiB) and wall time (s)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{cmd[0]} failed:\n{err[-3000:]}")
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")], usage.ru_maxrss, wall


def median_by_file(rows: list[dict], passes: int, files: list[str]) -> dict[str, dict[str, float]]:
    """Median per file and stage over passes 2..N (pass 1 warms up caches and allocators)."""
    per: dict[str, list[dict]] = {f: [] for f in files}
    for i, row in enumerate(rows):
        if i // len(files) >= (1 if passes > 1 else 0) and row["file"] in per:
            per[row["file"]].append(row)
    return {f: {s: statistics.median(r[s] for r in rs) for s in STAGES} for f, rs in per.items() if rs}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--python", required=True)
    ap.add_argument("--segmenter", required=True)
    ap.add_argument("--classifier", required=True)
    ap.add_argument("--passes", type=int, default=4)
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    files = [str(Path(f)) for f in a.files]

    rust_rows, rust_rss, rust_wall = run(
        [a.binary, "infer", "--json", "--batch-size", "1", "--repeat", str(a.passes), "--config", a.config, *files]
    )
    rust_rows = [
        {**r["timings"], "file": r["file"], "probabilities": r["probabilities"]} for r in rust_rows if r["eligible"]
    ]
    ref = str(Path(__file__).resolve().parent.parent / "tests/python/reference.py")
    py_rows, py_rss, py_wall = run([a.python, ref, "pipeline", a.segmenter, a.classifier, *(files * a.passes)])
    py_rows = [r for r in py_rows if "file" in r and "error" not in r]

    rust = median_by_file(rust_rows, a.passes, files)
    py = median_by_file(py_rows, a.passes, files)
    diff = 0.0
    for r in rust_rows:
        p = next((x for x in py_rows if x["file"] == r["file"]), None)
        if p:
            diff = max(diff, max(abs(r["probabilities"][k] - p["probabilities"][k]) for k in p["probabilities"]))

    print("| file | stage | cxr-worker ms | Python ms | ratio |")
    print("|---|---|---:|---:|---:|")
    totals = {"rust": {s: 0.0 for s in STAGES}, "py": {s: 0.0 for s in STAGES}}
    for f in files:
        if f not in rust or f not in py:
            print(f"| {Path(f).name} | (not analysed by both) | | | |")
            continue
        for s in STAGES:
            totals["rust"][s] += rust[f][s]
            totals["py"][s] += py[f][s]
            ratio = rust[f][s] / py[f][s] if py[f][s] else float("nan")
            print(f"| {Path(f).name} | {s[:-3]} | {rust[f][s]:.1f} | {py[f][s]:.1f} | {ratio:.2f} |")
    n = len([f for f in files if f in rust and f in py])
    print()
    print("| mean per image (ms) | cxr-worker | Python | ratio |")
    print("|---|---:|---:|---:|")
    for s in STAGES:
        r, p = totals["rust"][s] / n, totals["py"][s] / n
        print(f"| {s[:-3]} | {r:.1f} | {p:.1f} | {r / p:.2f} |")
    rdp = (totals["rust"]["decode_ms"] + totals["rust"]["preprocess_ms"]) / n
    pdp = (totals["py"]["decode_ms"] + totals["py"]["preprocess_ms"]) / n
    print(f"| decode + preprocess | {rdp:.1f} | {pdp:.1f} | {rdp / pdp:.2f} |")
    rall = sum(totals["rust"].values()) / n
    pall = sum(totals["py"].values()) / n
    print(f"| end to end | {rall:.1f} | {pall:.1f} | {rall / pall:.2f} |")
    print()
    print(f"peak RSS: cxr-worker {rust_rss / 1024:.0f} MiB, Python reference {py_rss / 1024:.0f} MiB")
    print(f"wall time ({a.passes} passes over {len(files)} files, incl. start-up and model load): "
          f"cxr-worker {rust_wall:.1f} s, Python {py_wall:.1f} s")
    print(f"max |p_rust - p_python| over all labels and images: {diff:.2e}")


if __name__ == "__main__":
    main()
