"""Independent Python reference for the Rust pipeline: pydicom + pylibjpeg (+ pyjpegls) decode,
pydicom's own windowing, numpy, Pillow's resize, onnxruntime.

Used by tests/decode.rs, tests/infer.rs and scripts/bench-infer.sh. Subcommands:

  grey FILE SIZE OUT [STORED]  grey image resized to SIZE x SIZE, float32 raw little-endian ->
                            OUT; prints a JSON line {"rows", "columns", "voi"}. With STORED (int32
                            raw), those stored values replace the decoder's (to compare the
                            preprocessing alone where lossy decoders may differ by 1 LSB)
  stored FILE OUT           stored values (int32 raw) of the first frame -> OUT
  run MODEL OUTDIR NAME=PATH:D0,D1,..  run an ONNX model on raw float32 inputs (CPU); writes
                            OUTDIR/<output>.f32 and prints {"output": [shape], ...}
  pipeline SEG CLS FILE...  the whole reference pipeline per file; one JSON line per file with
                            the stage timings (ms) and probabilities; a last line with peak RSS
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_windowing


def stored(ds: pydicom.Dataset) -> np.ndarray:
    """First frame's stored values (pydicom masks to BitsStored and sign-extends)."""
    arr = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        arr = arr[0]
    return arr


def grey(ds: pydicom.Dataset, values: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Modality LUT, VOI (window via pydicom, else VOI LUT, else min/max), MONOCHROME1 inversion."""
    arr = (stored(ds) if values is None else values).astype(np.float64)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    m = arr * slope + intercept
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        # pydicom scales the window output to the stored range [y_min, y_max] (after rescale).
        bits = int(ds.BitsStored)
        if int(ds.PixelRepresentation) == 0:
            y_min, y_max = 0.0, 2.0**bits - 1
        else:
            y_min, y_max = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
        if "RescaleSlope" in ds or "RescaleIntercept" in ds:
            y_min, y_max = y_min * slope + intercept, y_max * slope + intercept
        y = (apply_windowing(m, ds) - y_min) / (y_max - y_min)
        voi = {"kind": "window"}
    elif "VOILUTSequence" in ds:
        item = ds.VOILUTSequence[0]
        n, first, bits = (int(v) for v in item.LUTDescriptor)
        table = np.asarray(item.LUTData, dtype=np.float64)
        idx = np.clip(np.round(m).astype(np.int64) - first, 0, len(table) - 1)
        y = table[idx] / (2.0**bits - 1)
        voi = {"kind": "voi_lut"}
    else:
        lo, hi = float(m.min()), float(m.max())
        y = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
        voi = {"kind": "min_max", "min": lo, "max": hi}
    y = np.clip(y, 0.0, 1.0)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        y = 1.0 - y
    return y.astype(np.float32), voi


def resize(arr: np.ndarray, size: int) -> np.ndarray:
    """Pillow's anti-aliased bilinear resize of a float32 image, clipped to [0, 1]."""
    if arr.shape == (size, size):
        return arr.astype(np.float32)
    out = Image.fromarray(arr.astype(np.float32)).resize((size, size), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


def organ_masks(seg: np.ndarray, k: int) -> np.ndarray:
    """[N,C,S,S] segmenter output -> [N,2,K,K]: max(left, right) lungs and heart, block mean or resize."""
    organs = np.stack([np.maximum(seg[:, 0], seg[:, 1]), seg[:, 2]], axis=1).astype(np.float32)
    n, c, s, _ = organs.shape
    if s == k:
        return organs
    if s % k == 0:
        f = s // k
        return organs.reshape(n, c, k, f, k, f).mean(axis=(3, 5)).astype(np.float32)
    return np.stack([[resize(organs[i, j], k) for j in range(c)] for i in range(n)])


def meta(session, key: str) -> str:
    return session.get_modelmeta().custom_metadata_map[key]


def cmd_grey(path: str, size: str, out: str, values: str | None = None) -> None:
    ds = pydicom.dcmread(path)
    given = None
    if values is not None:
        given = np.fromfile(values, dtype="<i4").reshape(int(ds.Rows), int(ds.Columns))
    g, voi = grey(ds, given)
    resize(g, int(size)).astype("<f4").tofile(out)
    print(json.dumps({"rows": g.shape[0], "columns": g.shape[1], "voi": voi}))


def cmd_stored(path: str, out: str) -> None:
    stored(pydicom.dcmread(path)).astype("<i4").tofile(out)


def session(model: str, threads: int = 0):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def cmd_run(model: str, outdir: str, *inputs: str) -> None:
    feeds = {}
    for spec in inputs:
        name, rest = spec.split("=", 1)
        path, shape = rest.rsplit(":", 1)
        feeds[name] = np.fromfile(path, dtype="<f4").reshape([int(d) for d in shape.split(",")])
    sess = session(model)
    names = [o.name for o in sess.get_outputs()]
    shapes = {}
    for name, value in zip(names, sess.run(names, feeds)):
        value.astype("<f4").tofile(Path(outdir) / f"{name}.f32")
        shapes[name] = list(value.shape)
    print(json.dumps(shapes))


def cmd_pipeline(seg_path: str, cls_path: str, *files: str) -> None:
    seg, cls = session(seg_path), session(cls_path)
    s_seg = int(meta(seg, "cxr.input_size"))
    s_cls = int(meta(cls, "cxr.input_size"))
    k = int(meta(cls, "cxr.mask_size"))
    mean = np.asarray([float(v) for v in meta(cls, "cxr.normalization_mean").split(",")], np.float32)
    std = np.asarray([float(v) for v in meta(cls, "cxr.normalization_std").split(",")], np.float32)
    labels = meta(cls, "cxr.labels").split(",")
    for path in files:
        t0 = time.perf_counter()
        try:
            g, _ = grey(pydicom.dcmread(path))
        except Exception as err:  # a reference run reports every decoder failure the same way
            print(json.dumps({"file": path, "error": str(err)}))
            continue
        t1 = time.perf_counter()
        g_seg = resize(g, s_seg)
        g_cls = g_seg if s_cls == s_seg else resize(g, s_cls)
        image = ((np.repeat(g_cls[None, None], 3, axis=1) - mean.reshape(1, 3, 1, 1)) / std.reshape(1, 3, 1, 1)).astype(np.float32)
        t2 = time.perf_counter()
        masks = seg.run(["masks"], {"image": g_seg[None, None]})[0]
        t3 = time.perf_counter()
        organ = organ_masks(masks, k)
        t4 = time.perf_counter()
        probs = cls.run(["probabilities"], {"image": image, "masks": organ})[0][0]
        t5 = time.perf_counter()
        ms = lambda a, b: (b - a) * 1e3  # noqa: E731
        print(json.dumps({
            "file": path,
            "decode_ms": ms(t0, t1),
            "preprocess_ms": ms(t1, t2) + ms(t3, t4),
            "segment_ms": ms(t2, t3),
            "classify_ms": ms(t4, t5),
            "probabilities": dict(zip(labels, map(float, probs))),
        }), flush=True)
    print(json.dumps({"peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def main(argv: list[str]) -> None:
    commands = {"grey": cmd_grey, "stored": cmd_stored, "run": cmd_run, "pipeline": cmd_pipeline}
    if len(argv) < 2 or argv[1] not in commands:
        sys.exit(__doc__)
    commands[argv[1]](*argv[2:])


if __name__ == "__main__":
    main(sys.argv)
