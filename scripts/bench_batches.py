"""GPU batch benchmark driver (called by scripts/gpu-bench.sh): cxr-worker at several batch sizes
and execution providers, against bare ONNX Runtime (Python, same library build, same provider,
same batch) on the same models. Prints a markdown table."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def cxr_worker(binary: str, config: Path, files: list[str], passes: int, env: dict) -> list[dict]:
    cmd = [binary, "infer", "--json", "--repeat", str(passes), "--config", str(config), *files]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"cxr-worker failed:\n{out.stderr[-4000:]}")
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    provider = [line for line in out.stderr.splitlines() if "execution provider in use" in line]
    print(f"  cxr-worker: {provider[-1].strip() if provider else '(no provider line)'}", file=sys.stderr)
    return lines


def bare_ort(model: str, provider: str, batch: int, fp16: bool, cache: str, runs: int) -> float:
    """Milliseconds per image of `session.run` alone on random inputs of the contracted shapes."""
    import onnxruntime as ort

    if provider == "tensorrt":
        providers = [
            ("TensorrtExecutionProvider", {"trt_fp16_enable": fp16, "trt_engine_cache_enable": True,
                                           "trt_engine_cache_path": cache, "trt_timing_cache_enable": True,
                                           "trt_timing_cache_path": cache}),
            "CUDAExecutionProvider",
        ]
    else:
        providers = ["CUDAExecutionProvider"]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model, opts, providers=providers)
    meta = sess.get_modelmeta().custom_metadata_map
    s = int(meta["cxr.input_size"])
    rng = np.random.default_rng(0)
    feeds = {}
    for i in sess.get_inputs():
        shape = [batch] + [int(d) for d in i.shape[1:]]
        feeds[i.name] = rng.random(shape, dtype=np.float32)
    assert s > 0
    for _ in range(3):
        sess.run(None, feeds)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3 / batch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--ort-library", required=True)
    ap.add_argument("--segmenter", required=True)
    ap.add_argument("--classifier", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--work", required=True)
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    work = Path(a.work)
    env = dict(os.environ)
    runs = [("tensorrt", True, '["tensorrt", "cpu"]'), ("cuda", False, '["cuda", "cpu"]')]
    print("| provider | batch | decode ms/img | preprocess ms/img | segment ms/img | classify ms/img "
          "| classifier img/s | bare ORT classifier ms/img | bare ORT img/s | classify / bare |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for provider, fp16, providers in runs:
        for batch in (int(b) for b in a.batches.split(",")):
            config = work / f"{provider}-{batch}.toml"
            config.write_text(
                f'[database]\nurl = "postgres://bench@127.0.0.1/unused"\n[spool]\ndir = "{work}/spool"\n'
                f'[models]\nonnxruntime_library = "{a.ort_library}"\nsegmenter = "{a.segmenter}"\n'
                f'classifier = "{a.classifier}"\nexecution_providers = {providers}\nbatch_size = {batch}\n'
                f'tensorrt_fp16 = {"true" if fp16 else "false"}\ntensorrt_cache_dir = "{a.cache}"\n'
                f'[log]\nlevel = "warn,cxr_worker=info"\n'
            )
            files = (a.files * (2 * batch // len(a.files) + 1))[: 2 * batch]  # two full batches
            print(f"{provider} batch {batch}: {len(files)} images x {a.passes} passes", file=sys.stderr)
            rows = cxr_worker(a.binary, config, files, a.passes, env)
            rows = [r for r in rows[len(files):] if r["eligible"]]  # drop the warm-up pass
            med = {k: statistics.median(r["timings"][k] for r in rows)
                   for k in ("decode_ms", "preprocess_ms", "segment_ms", "classify_ms")}
            bare = bare_ort(a.classifier, provider, batch, fp16, a.cache, 20)
            name = "tensorrt fp16" if fp16 else provider
            print(f"| {name} | {batch} | {med['decode_ms']:.1f} | {med['preprocess_ms']:.1f} | "
                  f"{med['segment_ms']:.2f} | {med['classify_ms']:.2f} | {1e3 / med['classify_ms']:.0f} | "
                  f"{bare:.2f} | {1e3 / bare:.0f} | {med['classify_ms'] / bare:.2f} |", flush=True)


if __name__ == "__main__":
    main()
