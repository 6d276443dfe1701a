"""The tables of scripts/bench-year.sh: empty against full database, with the goals of issue 12.

usage: year_report.py SAMPLES.tsv SIZES.tsv OUT.md SIZES_OUT.md FILL_NOTE LOAD_NOTE MACHINE
SAMPLES: db, measure, milliseconds (one line per sample). SIZES: psql rows (see the script).
"""

import sys


def pct(values, q):
    """The q-quantile (nearest rank) of values."""
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q * len(v) + 0.5) - 1))]


def goal_of(measure):
    """(goal text, check(empty p50, empty p95, full p50, full p95) -> bool or None)."""
    if measure == "/metrics":
        return "p95 < 100 ms", lambda e50, e95, f50, f95: f95 < 100
    if measure.startswith("findings") or measure == "status":
        return "p50 < 200 ms", lambda e50, e95, f50, f95: f50 < 200
    if measure.startswith("retention"):
        return "(measured)", lambda *_: None
    # a hot path: its median and its 95th percentile each within 1.2x of the empty database's
    return "≤ 1.2× empty", lambda e50, e95, f50, f95: (f50 <= 1.2 * e50, f95 <= 1.2 * e95)


def main():
    samples, sizes, out, sizes_out, fill_note, load_note, machine = sys.argv[1:8]
    data, order = {}, []
    for line in open(samples):
        db, measure, ms = line.rstrip("\n").split("\t")
        if measure not in order:
            order.append(measure)
        data.setdefault((db, measure), []).append(float(ms))
    lines = [
        "| measure | n | empty p50 / p95 ms | full p50 / p95 ms | full / empty p50, p95 | goal | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in order:
        e, f = data.get(("empty", m)), data.get(("full", m))
        if not e or not f:
            continue
        e50, e95, f50, f95 = pct(e, 0.5), pct(e, 0.95), pct(f, 0.5), pct(f, 0.95)
        goal, check = goal_of(m)
        ok = check(e50, e95, f50, f95)
        if ok is None:
            met = "—"
        elif isinstance(ok, tuple):
            met = {(True, True): "yes", (True, False): "p50 yes, **p95 no**",
                   (False, True): "**p50 no**, p95 yes", (False, False): "**no**"}[ok]
        else:
            met = "yes" if ok else "**no**"
        r50 = f50 / e50 if e50 else float("inf")
        r95 = f95 / e95 if e95 else float("inf")
        lines.append(
            f"| {m} | {len(f)} | {e50:.2f} / {e95:.2f} | {f50:.2f} / {f95:.2f} "
            f"| {r50:.2f}×, {r95:.2f}× | {goal} | {met} |"
        )
    table = "\n".join(lines) + f"\n\n{fill_note}.\n{load_note}.\n{machine}.\n"
    print(table)
    open(out, "w").write(table)

    tables, indexes = [], []
    for line in open(sizes):
        kind, name, a, size, idx, total = line.rstrip("\n").split("\t")
        if kind == "table":
            tables.append((name, int(a), int(size), int(idx), int(total)))
        else:
            indexes.append((name, a, int(size)))
    mib = lambda b: f"{b / 1048576:.1f}"
    s = ["| table | rows | heap MiB | indexes MiB | total MiB |", "|---|---|---|---|---|"]
    s += [f"| {n} | {r:,} | {mib(h)} | {mib(i)} | {mib(t)} |" for n, r, h, i, t in tables]
    s += ["", "| index | table | MiB |", "|---|---|---|"]
    s += [f"| {n} | {t} | {mib(b)} |" for n, t, b in indexes]
    text = "\n".join(s) + "\n"
    print(text)
    open(sizes_out, "w").write(text)


if __name__ == "__main__":
    main()
