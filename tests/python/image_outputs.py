#!/usr/bin/env python3
"""Read image outputs (SEG, SC) with highdicom — a second implementation — and print what they
say as JSON, one object per file: SOP class and UIDs, series, instance number, the source images
they reference, and for a SEG its segments (number, label, property type code) and frame count,
for an SC its photometric interpretation, size and Burned In Annotation; with --masks DIR, each
SEG's segment masks (at the source geometry, as highdicom reconstructs them) are compared pixel
for pixel with DIR/<source SOP Instance UID>.<segment number>.bin (one byte per pixel, 0/1).
image_outputs.py [--masks DIR] FILE..."""
import json
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
SC = "1.2.840.10008.5.1.4.1.1.7"


def sources(ds):
    refs = []
    for item in ds.get("SourceImageSequence", []):
        refs.append(str(item.ReferencedSOPInstanceUID))
    shared = ds.get("SharedFunctionalGroupsSequence", [None])[0]
    for fg in [shared] + list(ds.get("PerFrameFunctionalGroupsSequence", [])):
        if fg is None:
            continue
        for d in fg.get("DerivationImageSequence", []):
            for s in d.get("SourceImageSequence", []):
                refs.append(str(s.ReferencedSOPInstanceUID))
    return sorted(set(refs))


def seg_summary(path, masks_dir):
    seg = hd.seg.segread(path)
    out = {
        "segments": [],
        "frames": int(seg.NumberOfFrames),
        "device_uid": str(seg.get("DeviceUID", "")),
        "algorithm": [],
        "masks_equal": None,
    }
    for n in seg.segment_numbers:
        d = seg.get_segment_description(n)
        out["segments"].append({
            "number": int(n),
            "label": str(d.segment_label),
            "code": str(d.segmented_property_type.value),
        })
        alg = d.algorithm_identification
        if alg is not None:
            out["algorithm"].append([str(alg[0].AlgorithmName), str(alg[0].AlgorithmVersion)])
    if masks_dir is not None:
        src = sources(seg)[0]
        # highdicom rebuilds each segment's mask at the source image's geometry
        arr = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[src],
            segment_numbers=list(seg.segment_numbers),
            combine_segments=False,
            skip_overlap_checks=True,
        )[0]
        equal = True
        for i, n in enumerate(seg.segment_numbers):
            want = np.fromfile(Path(masks_dir) / f"{src}.{n}.bin", dtype=np.uint8)
            got = arr[:, :, i].astype(np.uint8).ravel()
            if want.shape != got.shape or not np.array_equal(want, got):
                equal = False
                diff = int((want != got).sum()) if want.shape == got.shape else "shape"
                out.setdefault("mismatch", []).append([int(n), diff])
        out["masks_equal"] = equal
    return out


def sc_summary(path):
    ds = pydicom.dcmread(path)
    img = hd.imread(path)  # highdicom reads it as an image
    px = img.get_frame(1)
    if not np.array_equal(px, ds.pixel_array):
        raise SystemExit(f"{path}: highdicom and pydicom frames differ")
    return {
        "photometric": str(ds.PhotometricInterpretation),
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
        "burned_in": str(ds.get("BurnedInAnnotation", "")),
        "colour_pixels": int((px.max(axis=2) - px.min(axis=2) > 40).sum()),
    }


def main(argv):
    masks_dir = None
    if argv and argv[0] == "--masks":
        masks_dir, argv = argv[1], argv[2:]
    out = []
    for path in argv:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        item = {
            "path": path,
            "sop_class_uid": str(ds.SOPClassUID),
            "sop_instance_uid": str(ds.SOPInstanceUID),
            "study_instance_uid": str(ds.StudyInstanceUID),
            "series_instance_uid": str(ds.SeriesInstanceUID),
            "instance_number": int(ds.InstanceNumber),
            "modality": str(ds.Modality),
            "sources": sources(ds),
        }
        if item["sop_class_uid"] == SEG:
            item.update(seg_summary(path, masks_dir))
        elif item["sop_class_uid"] == SC:
            item.update(sc_summary(path))
        out.append(item)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
