#!/usr/bin/env python3
"""Render a SEG over its source radiograph as a PNG, as a viewer would show it: the source in
grey (its VOI window, or min/max), each segment as a translucent fill with a solid outline in its
own colour, and a key. Reads both with highdicom/pydicom (a second implementation), so the
picture shows what another reader makes of our SEG.
render-seg.py SEG SOURCE OUT.png [--longest N]"""
import sys

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image, ImageDraw

COLOURS = [(0, 200, 255), (0, 230, 60), (255, 200, 0), (255, 80, 200)]


def grey(ds):
    px = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        px = pydicom.pixels.apply_voi_lut(px, ds, index=0).astype(np.float64)
    lo, hi = np.percentile(px, 0.5), np.percentile(px, 99.5)
    g = np.clip((px - lo) / max(hi - lo, 1e-6), 0, 1)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        g = 1 - g
    return g


def main(seg_path, source_path, out, longest=1024):
    seg = hd.seg.segread(seg_path)
    src = pydicom.dcmread(source_path)
    g = grey(src)
    if g.ndim == 3:  # an RGB source: use its mean
        g = g.mean(axis=2)
    numbers = list(seg.segment_numbers)
    masks = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[src.SOPInstanceUID],
        segment_numbers=numbers,
        combine_segments=False,
        skip_overlap_checks=True,
    )[0]
    rgb = np.repeat((g * 255)[:, :, None], 3, axis=2)
    for i, n in enumerate(numbers):
        m = masks[:, :, i].astype(bool)
        c = np.array(COLOURS[i % len(COLOURS)], dtype=np.float64)
        rgb[m] = rgb[m] * 0.7 + c * 0.3
        edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
        # thicken the outline so it survives the downscale
        for _ in range(max(1, max(m.shape) // 512)):
            edge = edge | np.roll(edge, 1, 0) | np.roll(edge, 1, 1)
        rgb[edge] = c
    img = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    scale = longest / max(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    for i, n in enumerate(numbers):
        label = seg.get_segment_description(n).segment_label
        y = 8 + 22 * i
        draw.rectangle([8, y, 24, y + 16], fill=COLOURS[i % len(COLOURS)])
        draw.text((30, y + 2), f"segment {n}: {label}", fill=(255, 255, 255))
    img.save(out)


if __name__ == "__main__":
    args = sys.argv[1:]
    longest = 1024
    if "--longest" in args:
        i = args.index("--longest")
        longest = int(args[i + 1])
        del args[i : i + 2]
    main(*args, longest=longest)
