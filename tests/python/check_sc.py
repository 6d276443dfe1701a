"""Second-implementation check of a Secondary Capture written by cxr-worker (report stage):
highdicom and pydicom read it back and must find what the Rust side says it drew.

usage: check_sc.py SC_FILE EXPECTED_JSON
Exit status 0 when every check passes; otherwise prints each failure and exits 1.

EXPECTED_JSON (written by tests/sc.rs):
  sop_instance_uid, series_instance_uid, study_instance_uid,
  source: {sop_class_uid, sop_instance_uid, series_instance_uid},
  rows, columns, banner_rows (rows above the image: the banner band),
  lungs: [[x, y], ...] (canvas pixels inside the lung fields, which must show colour),
  pixels: [{x, y, rgb: [r, g, b]}, ...] (exact values)
"""

import json
import sys

import highdicom as hd
import numpy as np
import pydicom

SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)


def main(path, expected_path):
    with open(expected_path, encoding="utf-8") as f:
        exp = json.load(f)

    ds = pydicom.dcmread(path)
    check(ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1", "transfer syntax")
    check(ds.SOPClassUID == SC_CLASS, f"SOP class {ds.SOPClassUID}")
    check(ds.SOPInstanceUID == exp["sop_instance_uid"], "SOP instance UID")
    check(ds.SeriesInstanceUID == exp["series_instance_uid"], "series UID")
    check(ds.StudyInstanceUID == exp["study_instance_uid"], "study UID")
    check(ds.Modality == "OT", f"modality {ds.Modality}")
    check(ds.ConversionType == "WSD", "conversion type")
    check(ds.BurnedInAnnotation == "YES", "burned in annotation")
    check(list(ds.ImageType) == ["DERIVED", "SECONDARY"], f"image type {ds.ImageType}")
    check(ds.SamplesPerPixel == 3 and ds.PhotometricInterpretation == "RGB", "RGB")
    check(ds.PlanarConfiguration == 0, "planar configuration")
    check(ds.BitsAllocated == 8 and ds.BitsStored == 8 and ds.HighBit == 7, "8 bits")
    check((ds.Rows, ds.Columns) == (exp["rows"], exp["columns"]), "size")
    check(max(ds.Rows, ds.Columns) >= 1024, f"longest side {max(ds.Rows, ds.Columns)} < 1024")

    src = exp["source"]
    items = ds.SourceImageSequence
    check(len(items) == 1, "one source image")
    ref = items[0]
    check(ref.ReferencedSOPClassUID == src["sop_class_uid"], "source SOP class")
    check(ref.ReferencedSOPInstanceUID == src["sop_instance_uid"], "source SOP instance")
    purpose = ref.PurposeOfReferenceCodeSequence[0]
    check((purpose.CodeValue, purpose.CodingSchemeDesignator) == ("121322", "DCM"),
          "purpose of reference")

    # highdicom: the image, its source reference, its frame
    img = hd.imread(path)
    uids = img.get_source_image_uids()
    check((exp["study_instance_uid"], src["series_instance_uid"], src["sop_instance_uid"])
          in [tuple(u) for u in uids], f"highdicom source image UIDs {uids}")
    frame = img.get_frame(1, dtype=np.uint8)
    check(frame.shape == (exp["rows"], exp["columns"], 3), f"frame shape {frame.shape}")
    check(np.array_equal(frame, ds.pixel_array), "highdicom and pydicom frames differ")

    banner = frame[: exp["banner_rows"]]
    check(exp["banner_rows"] > 0 and banner.max() > 0, "banner rows are all black")
    for x, y in exp["lungs"]:
        r, g, b = (int(v) for v in frame[y, x])
        check(not (r == g == b), f"no colour inside the lung field at ({x}, {y}): {r, g, b}")
    for p in exp["pixels"]:
        got = [int(v) for v in frame[p["y"], p["x"]]]
        check(got == p["rgb"], f"pixel ({p['x']}, {p['y']}) {got} != {p['rgb']}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__)
        sys.exit(2)
    main(sys.argv[1], sys.argv[2])
    for f in failures:
        print("FAIL:", f)
    if failures:
        sys.exit(1)
    print("ok")
