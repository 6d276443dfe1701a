"""Second-implementation check of a Segmentation written by cxr-worker (report stage): highdicom
and pydicom read it back and must find exactly what the Rust side says it wrote.

usage: check_seg.py SEG_FILE SOURCE_FILE MASKS_BIN EXPECTED_JSON
Exit status 0 when every check passes; otherwise prints each failure and exits 1.

MASKS_BIN: the masks as written, one byte (0 or 1) per pixel, row-major, one rows×columns
plane per segment in segment order.
EXPECTED_JSON (written by tests/seg.rs):
  sop_instance_uid, series_instance_uid, study_instance_uid, patient_name, device_uid, rows,
  columns,
  algorithm_name, algorithm_version, algorithm_parameters (dict or null),
  segment_description (str or null),
  source: {sop_class_uid, sop_instance_uid, series_instance_uid},
  segments: [{number, channel, label, code, scheme, meaning, pixels}]
"""

import json
import sys

import highdicom as hd
import numpy as np
import pydicom

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
ANATOMICAL_STRUCTURE = ("123037004", "SCT")
ARTIFICIAL_INTELLIGENCE = ("123110", "DCM")

failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)


def code_key(c):
    return (str(c.value), str(c.scheme_designator))


def check_header(ds, exp):
    check(ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1", "transfer syntax")
    check(ds.SOPClassUID == SEG_SOP_CLASS, f"SOP class {ds.SOPClassUID}")
    check(ds.SOPInstanceUID == exp["sop_instance_uid"], "SOP instance UID")
    check(ds.SeriesInstanceUID == exp["series_instance_uid"], "series UID")
    check(ds.StudyInstanceUID == exp["study_instance_uid"], "study UID")
    check(str(ds.PatientName) == exp["patient_name"],
          f"patient name: {str(ds.PatientName)!r} != {exp['patient_name']!r}")
    check(ds.Modality == "SEG", f"modality {ds.Modality}")
    check(ds.SegmentationType == "BINARY", f"segmentation type {ds.SegmentationType}")
    check((ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (1, 1, 0), "bits")
    check(ds.PhotometricInterpretation == "MONOCHROME2", "photometric interpretation")
    check((ds.Rows, ds.Columns) == (exp["rows"], exp["columns"]),
          f"geometry {ds.Rows}x{ds.Columns} != {exp['rows']}x{exp['columns']}")
    check(int(ds.NumberOfFrames) == len(exp["segments"]),
          f"{ds.NumberOfFrames} frames for {len(exp['segments'])} segments")
    check(list(ds.ImageType) == ["DERIVED", "PRIMARY"], f"image type {ds.ImageType}")
    check(ds.get("DeviceUID") == exp["device_uid"],
          f"Device UID {ds.get('DeviceUID')!r} != {exp['device_uid']!r}")
    check("FrameOfReferenceUID" not in ds, "a Frame of Reference UID was written")


def check_segment(seg, e, exp):
    n = e["number"]
    d = seg.get_segment_description(n)
    check(d.segment_label == e["label"], f"segment {n}: label {d.segment_label!r} != {e['label']!r}")
    t = d.segmented_property_type
    check((t.value, t.scheme_designator, t.meaning) == (e["code"], e["scheme"], e["meaning"]),
          f"segment {n}: property type {t.value}/{t.scheme_designator}/{t.meaning} != "
          f"{e['code']}/{e['scheme']}/{e['meaning']}")
    check(code_key(d.segmented_property_category) == ANATOMICAL_STRUCTURE,
          f"segment {n}: category {code_key(d.segmented_property_category)}")
    check(d.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
          f"segment {n}: algorithm type {d.algorithm_type}")
    check(d.SegmentAlgorithmName == exp["algorithm_name"], f"segment {n}: algorithm name")
    check(d.get("SegmentDescription") == exp["segment_description"],
          f"segment {n}: description {d.get('SegmentDescription')!r}")
    alg = d.algorithm_identification
    check(alg is not None, f"segment {n}: no algorithm identification")
    if alg is None:
        return
    check(alg.name == exp["algorithm_name"], f"segment {n}: algorithm {alg.name!r}")
    check(alg.version == exp["algorithm_version"],
          f"segment {n}: algorithm version {alg.version!r} != {exp['algorithm_version']!r}")
    check(code_key(alg.family) == ARTIFICIAL_INTELLIGENCE, f"segment {n}: family {alg.family}")
    check(alg.parameters == exp["algorithm_parameters"],
          f"segment {n}: parameters {alg.parameters!r} != {exp['algorithm_parameters']!r}")


def check_references(seg, src):
    refs = seg.get_source_image_uids()
    want = (src.StudyInstanceUID, src.SeriesInstanceUID, src.SOPInstanceUID)
    check([tuple(str(u) for u in r) for r in refs] == [want],
          f"source references {refs} != [{want}]")


def check_pixels(seg, src, masks_path, exp):
    n = len(exp["segments"])
    rows, columns = exp["rows"], exp["columns"]
    masks = np.fromfile(masks_path, dtype=np.uint8)
    check(masks.size == n * rows * columns, f"masks file has {masks.size} pixels")
    if masks.size != n * rows * columns:
        return
    masks = masks.reshape(n, rows, columns).astype(bool)
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[src.SOPInstanceUID],
        segment_numbers=[e["number"] for e in exp["segments"]],
    )
    check(pixels.shape == (1, rows, columns, n), f"pixel array shape {pixels.shape}")
    if pixels.shape != (1, rows, columns, n):
        return
    for i, e in enumerate(exp["segments"]):
        got = pixels[0, :, :, i].astype(bool)
        diff = int(np.count_nonzero(got != masks[i]))
        check(diff == 0, f"segment {e['number']} ({e['label']}): {diff} pixels differ")
        check(int(masks[i].sum()) == e["pixels"],
              f"segment {e['number']}: masks file has {int(masks[i].sum())} pixels set, "
              f"expected {e['pixels']}")


def main(seg_path, source_path, masks_path, expected_path):
    with open(expected_path, encoding="utf-8") as f:
        exp = json.load(f)
    ds = pydicom.dcmread(seg_path)
    check_header(ds, exp)
    src = pydicom.dcmread(source_path, stop_before_pixels=True)
    check(src.SOPInstanceUID == exp["source"]["sop_instance_uid"], "expected source")

    seg = hd.seg.segread(seg_path)
    check(seg.number_of_segments == len(exp["segments"]),
          f"{seg.number_of_segments} segments, expected {len(exp['segments'])}")
    check(list(seg.segment_numbers) == [e["number"] for e in exp["segments"]],
          f"segment numbers {list(seg.segment_numbers)}")
    for e in exp["segments"]:
        check_segment(seg, e, exp)
    check_references(seg, src)
    check_pixels(seg, src, masks_path, exp)


if __name__ == "__main__":
    if len(sys.argv) != 5:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    try:
        main(*sys.argv[1:])
    except Exception as e:  # noqa: BLE001 - any reader failure is a check failure
        import traceback

        traceback.print_exc()
        failures.append(f"highdicom could not read the SEG: {e!r}")
    if failures:
        print(f"check_seg.py: {len(failures)} failure(s):", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
        sys.exit(1)
    print("check_seg.py: ok")
