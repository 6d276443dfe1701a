#!/usr/bin/env python3
"""Pixel statistics of a rendered Secondary Capture (Orthanc's /preview PNG) against the SEG of
the same image: how much of the picture inside the lung fields is coloured, how much of the grey
image outside every organ is, and how many bright pixels the banner band holds. The lung fields
come from the SEG as highdicom reads it (source geometry), mapped into the picture's image
rectangle. check_preview.py PREVIEW.png SEG.dcm LEFT TOP WIDTH HEIGHT"""
import json
import sys

import highdicom as hd
import numpy as np
from PIL import Image


def coloured(px):
    px = px.astype(np.int16)
    return (px.max(axis=-1) - px.min(axis=-1)) > 25


def main(preview, seg_path, left, top, width, height):
    img = np.asarray(Image.open(preview).convert("RGB"))
    seg = hd.seg.segread(seg_path)
    src = [s for s in seg.get_source_image_uids()][0][2]
    numbers = list(seg.segment_numbers)
    masks = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[src],
        segment_numbers=numbers,
        combine_segments=False,
        skip_overlap_checks=True,
    )[0].astype(bool)
    labels = [seg.get_segment_description(n).segment_label for n in numbers]
    rows, cols = masks.shape[:2]
    # nearest source pixel of each picture pixel of the image rectangle
    ys = np.minimum(((np.arange(height) + 0.5) * rows / height).astype(int), rows - 1)
    xs = np.minimum(((np.arange(width) + 0.5) * cols / width).astype(int), cols - 1)
    at = masks[ys][:, xs]
    lungs = np.zeros((height, width), bool)
    for i, label in enumerate(labels):
        if "lung" in label.lower():
            lungs |= at[:, :, i]
    organ = at.any(axis=2)
    picture = img[top : top + height, left : left + width]
    c = coloured(picture)
    banner = img[:top]
    out = {
        "size": [int(img.shape[1]), int(img.shape[0])],
        "lung_pixels": int(lungs.sum()),
        "lung_coloured_fraction": float(c[lungs].mean()) if lungs.any() else None,
        "outside_coloured_fraction": float(c[~organ].mean()) if (~organ).any() else None,
        "banner_bright_pixels": int((banner.max(axis=-1) > 128).sum()),
        "banner_pixels": int(banner.shape[0] * banner.shape[1]),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], *map(int, a[2:6]))
