#!/usr/bin/env python3
"""Read an SR with highdicom (a second implementation) and print what it says as JSON:
study, predecessor, evidence, and per measurement group the finding code, probability,
present/absent and the referenced image. sr_findings.py SR_FILE"""
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
    evals = [e for e in g.get_qualitative_evaluations() if key(e.value)[1] == "SCT"]
    out["findings"].append({
        "code": key(g.finding_type)[0],
        "scheme": key(g.finding_type)[1],
        "probability": float(probs[0].value),
        "present": key(evals[0].value) == PRESENT,
        "image": g.source_images[0].referenced_sop_instance_uid,
    })
print(json.dumps(out))
