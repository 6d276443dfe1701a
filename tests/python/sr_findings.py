#!/usr/bin/env python3
"""Read an SR with highdicom (a second implementation) and print what it says as JSON:
study, predecessor, evidence (and other evidence: our SEGs and SCs), per measurement group the
finding code, probability, present/absent and the referenced image, per planar ROI group (TID
1410) the organ, the SEG frame and segment, the source image and the area, and the SEG frames the
cardiothoracic ratio was inferred from. sr_findings.py SR_FILE"""
import json
import sys

import highdicom as hd
import pydicom

PRESENT = ("52101004", "SCT")


def key(c):
    return (str(c.value), str(c.scheme_designator))


ds = pydicom.dcmread(sys.argv[1])
sr = hd.sr.srread(sys.argv[1])
out = {
    "sop_class_uid": str(ds.SOPClassUID),
    "study_instance_uid": str(ds.StudyInstanceUID),
    "patient_id": str(ds.get("PatientID", "")),
    "instance_number": int(ds.InstanceNumber),
    "predecessor": [
        s.ReferencedSOPInstanceUID
        for st in ds.get("PredecessorDocumentsSequence", [])
        for se in st.ReferencedSeriesSequence
        for s in se.ReferencedSOPSequence
    ],
    "evidence": sorted(e[2] for e in sr.get_evidence(current_procedure_only=True)),
    "other_evidence": sorted(
        str(s.ReferencedSOPInstanceUID)
        for st in ds.get("PertinentOtherEvidenceSequence", [])
        for se in st.ReferencedSeriesSequence
        for s in se.ReferencedSOPSequence
    ),
    "regions": [],
    "ctr_basis": [],
    "findings": [],
    "texts": [],
}


def texts(items):
    for it in items:
        if it.ValueType == "TEXT":
            out["texts"].append(str(it.TextValue))
        texts(it.get("ContentSequence", []))


texts(ds.ContentSequence)
for g in sr.content.get_image_measurement_groups():
    if g.finding_type is None:
        continue
    probs = [m for m in g.get_measurements() if key(m.name) == ("122157", "DCM")]
    if not probs:
        continue
    evals = [e for e in g.get_qualitative_evaluations() if key(e.value)[1] == "SCT"]
    out["findings"].append({
        "code": key(g.finding_type)[0],
        "scheme": key(g.finding_type)[1],
        "probability": float(probs[0].value),
        "present": key(evals[0].value) == PRESENT,
        "image": g.source_images[0].referenced_sop_instance_uid,
    })

for g in sr.content.get_planar_roi_measurement_groups():
    segment = g.referenced_segmentation_frame
    if segment is None:
        continue
    areas = [m for m in g.get_measurements() if key(m.name) == ("42798000", "SCT")]
    out["regions"].append({
        "tracking": str(g.tracking_identifier),
        "finding": key(g.finding_type)[0],
        "seg": segment.referenced_sop_instance_uid,
        "frame": [int(f) for f in segment.referenced_frame_numbers or []],
        "source": segment.source_image_for_segmentation.referenced_sop_instance_uid,
        "area_mm2": float(areas[0].value) if areas else None,
    })


def device(items):
    for it in items:
        names = it.get("ConceptNameCodeSequence", [])
        if it.ValueType == "UIDREF" and names and names[0].CodeValue == "121012":
            out["device_uid"] = str(it.UID)


def ctr(items):
    for it in items:
        names = it.get("ConceptNameCodeSequence", [])
        if it.ValueType == "NUM" and names and names[0].CodeValue == "CTR":
            for c in it.get("ContentSequence", []):
                if c.RelationshipType == "INFERRED FROM" and c.ValueType == "IMAGE":
                    r = c.ReferencedSOPSequence[0]
                    out["ctr_basis"].append([str(r.ReferencedSOPInstanceUID), int(r.ReferencedFrameNumber)])
        ctr(it.get("ContentSequence", []))


ctr(ds.ContentSequence)
device(ds.ContentSequence)
print(json.dumps(out))
