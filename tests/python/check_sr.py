"""Second-implementation check of an SR written by cxr-worker (report stage): highdicom and
pydicom read it back and must find exactly what the Rust side says it wrote.

usage: check_sr.py SR_FILE EXPECTED_JSON
Exit status 0 when every check passes; otherwise prints each failure and exits 1.

EXPECTED_JSON (written by tests/sr.rs):
  sop_instance_uid, series_instance_uid, study_instance_uid, patient_name, patient_id,
  specific_character_set (str or null), completion_flag, device_uid,
  predecessor_sop_instance_uid (str or null), evidence (list of SOP Instance UIDs),
  findings: [{code, scheme, meaning, probability, present, image, site (code value or null)}],
  ratios: [{value, image}], comments: [str]
"""

import json
import sys

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes

PRESENT = ("52101004", "SCT")
ABSENT = ("272519000", "SCT")
CTR = ("CTR", "99CXRW")

failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)


def code_key(c):
    return (str(c.value), str(c.scheme_designator))


def main(path, expected_path):
    with open(expected_path, encoding="utf-8") as f:
        exp = json.load(f)

    ds = pydicom.dcmread(path)
    check(ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1", "transfer syntax")
    check(ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34", "SOP class")
    check(ds.SOPInstanceUID == exp["sop_instance_uid"], "SOP instance UID")
    check(ds.SeriesInstanceUID == exp["series_instance_uid"], "series UID")
    check(ds.StudyInstanceUID == exp["study_instance_uid"], "study UID")
    check(ds.Modality == "SR", "modality")
    check(ds.VerificationFlag == "UNVERIFIED", "verification flag")
    check(ds.CompletionFlag == exp["completion_flag"], "completion flag")
    check(str(ds.PatientName) == exp["patient_name"],
          f"patient name: {str(ds.PatientName)!r} != {exp['patient_name']!r}")
    check(ds.PatientID == exp["patient_id"], "patient ID")
    cs = ds.get("SpecificCharacterSet")
    check(cs == exp["specific_character_set"],
          f"specific character set {cs!r} != {exp['specific_character_set']!r}")

    eq = ds.ContributingEquipmentSequence[0]
    purpose = eq.PurposeOfReferenceCodeSequence[0]
    check((purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning)
          == ("Newcode1", "99IHE", "Processing Algorithm"), "purpose of reference")
    check(eq.DeviceUID == exp["device_uid"], "contributing equipment device UID")

    pred = exp["predecessor_sop_instance_uid"]
    if pred is None:
        check("PredecessorDocumentsSequence" not in ds, "unexpected predecessor")
    else:
        got = [sop.ReferencedSOPInstanceUID
               for st in ds.PredecessorDocumentsSequence
               for se in st.ReferencedSeriesSequence
               for sop in se.ReferencedSOPSequence]
        check(got == [pred], f"predecessor {got} != {[pred]}")

    sr = hd.sr.srread(path)
    evidence = sorted(e[2] for e in sr.get_evidence(current_procedure_only=True))
    check(evidence == sorted(exp["evidence"]), f"evidence {evidence} != {exp['evidence']}")

    report = sr.content
    check(isinstance(report, hd.sr.MeasurementReport), "root is not a TID 1500 report")
    check_observer(report, exp)
    check_procedure(ds)
    check_findings(report, exp)
    check_comments(ds, exp)


def check_observer(report, exp):
    observers = report.get_observer_contexts(observer_type=codes.DCM.Device)
    check(len(observers) == 1, f"{len(observers)} device observer contexts")
    if observers:
        uid = observers[0].observer_identifying_attributes.uid
        check(uid == exp["device_uid"], f"device observer UID {uid}")


def check_procedure(ds):
    procedures = [
        (it.ConceptCodeSequence[0].CodeValue, it.ConceptCodeSequence[0].CodingSchemeDesignator)
        for it in ds.ContentSequence
        if it.ValueType == "CODE" and it.ConceptNameCodeSequence[0].CodeValue == "121058"
    ]
    check(procedures == [("399208008", "SCT")], f"procedure reported {procedures}")


def check_findings(report, exp):
    groups = report.get_image_measurement_groups()
    found = []
    ratios = []
    for g in groups:
        check(g.tracking_identifier, "group without tracking identifier")
        check(g.tracking_uid, "group without tracking UID")
        images = [s.referenced_sop_instance_uid for s in g.source_images]
        check(len(images) == 1, f"group {g.tracking_identifier}: {len(images)} source images")
        image = images[0] if images else None
        sites = [code_key(s.value) for s in g.finding_sites]
        if g.finding_type is None:
            for m in g.get_measurements():
                if code_key(m.name) == CTR:
                    ratios.append({"value": float(m.value), "image": image})
                    check(code_key(m.unit) == ("1", "UCUM"), "CTR unit")
            continue
        finding = code_key(g.finding_type)
        probs = [m for m in g.get_measurements() if code_key(m.name) == ("122157", "DCM")]
        check(len(probs) == 1, f"{finding}: {len(probs)} probabilities")
        if probs:
            check(code_key(probs[0].unit) == ("1", "UCUM"), f"{finding}: unit")
        evals = [e for e in g.get_qualitative_evaluations()
                 if code_key(e.value) in (PRESENT, ABSENT)]
        check(len(evals) == 1, f"{finding}: {len(evals)} present/absent evaluations")
        algo = {str(it.ConceptNameCodeSequence[0].CodeValue): it.TextValue
                for it in g[0].ContentSequence if it.ValueType == "TEXT"}
        check(algo.get("111001") and algo.get("111003"),
              f"{finding}: algorithm name and version (TID 4019)")
        found.append({
            "code": finding[0],
            "scheme": finding[1],
            "meaning": str(g.finding_type.meaning),
            "probability": float(probs[0].value) if probs else None,
            "present": bool(evals) and code_key(evals[0].value) == PRESENT,
            "image": image,
            "site": sites[0][0] if sites else None,
        })

    def by_key(items):
        return {(f["image"], f["code"], f["scheme"]): f for f in items}

    want = by_key(exp["findings"])
    got = by_key(found)
    check(len(found) == len(got), "two measurement groups for the same image and finding")
    for k in sorted(set(want) - set(got)):
        check(False, f"finding {k} missing")
    for k in sorted(set(got) - set(want)):
        check(False, f"unexpected finding {k}")
    for k in sorted(set(want) & set(got)):
        w, g = want[k], got[k]
        for field in ("meaning", "present", "site"):
            check(w[field] == g[field], f"finding {k}: {field} {g[field]!r} != {w[field]!r}")
        check(g["probability"] is not None and abs(g["probability"] - w["probability"]) < 1e-6,
              f"finding {k}: probability {g['probability']} != {w['probability']}")
    want_r = sorted(exp["ratios"], key=lambda r: r["image"])
    got_r = sorted(ratios, key=lambda r: r["image"])
    check(len(want_r) == len(got_r), f"{len(got_r)} ratios, expected {len(want_r)}")
    for w, g in zip(want_r, got_r):
        check(g["image"] == w["image"] and abs(g["value"] - w["value"]) < 1e-6,
              f"ratio {g} != {w}")


def check_comments(ds, exp):
    texts = []

    def walk(items):
        for it in items:
            if it.ValueType == "TEXT" and it.ConceptNameCodeSequence[0].CodeValue == "121106":
                texts.append(it.TextValue)
            if "ContentSequence" in it:
                walk(it.ContentSequence)

    walk(ds.ContentSequence)
    check(sorted(texts) == sorted(exp["comments"]), f"comments {texts} != {exp['comments']}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1], sys.argv[2])
    for f in failures:
        print(f"FAIL: {f}")
    if failures:
        sys.exit(1)
    print("ok")
