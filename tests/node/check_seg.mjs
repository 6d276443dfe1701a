// Third-implementation check of a Segmentation written by cxr-worker (report stage): dcmjs
// parses it and must find exactly what the Rust side says it wrote.
//
// usage: node check_seg.mjs SEG_FILE EXPECTED_JSON
// Exit status 0 when every check passes; otherwise prints each failure and exits 1.
//
// EXPECTED_JSON (written by tests/seg.rs): sop_instance_uid, rows, columns,
//   source: {sop_class_uid, sop_instance_uid, series_instance_uid},
//   segments: [{number, label, code, scheme, meaning, pixels (count of set pixels)}]

import { readFileSync } from "node:fs";
import dcmjs from "dcmjs";

const SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4";
const failures = [];

function check(cond, msg) {
  if (!cond) failures.push(msg);
}

// A naturalized sequence as an array (absent → empty).
function items(seq) {
  if (seq === undefined || seq === null) return [];
  return Array.isArray(seq) ? seq : [seq];
}

function readSeg(path) {
  const bytes = readFileSync(path);
  const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  const dicomDict = dcmjs.data.DicomMessage.readFile(buffer);
  return dcmjs.data.DicomMetaDictionary.naturalizeDataset(dicomDict.dict);
}

function checkSegments(ds, exp) {
  const segs = items(ds.SegmentSequence);
  check(segs.length === exp.segments.length,
    `segment count ${segs.length} != ${exp.segments.length}`);
  exp.segments.forEach((e, i) => {
    const s = segs[i];
    if (!s) return;
    check(s.SegmentNumber === e.number, `segment ${i}: number ${s.SegmentNumber} != ${e.number}`);
    check(s.SegmentLabel === e.label, `segment ${i}: label ${s.SegmentLabel} != ${e.label}`);
    const t = items(s.SegmentedPropertyTypeCodeSequence)[0] || {};
    check(t.CodeValue === e.code && t.CodingSchemeDesignator === e.scheme && t.CodeMeaning === e.meaning,
      `segment ${i}: property type ${t.CodeValue}/${t.CodingSchemeDesignator}/${t.CodeMeaning} != ${e.code}/${e.scheme}/${e.meaning}`);
    const c = items(s.SegmentedPropertyCategoryCodeSequence)[0] || {};
    check(c.CodeValue === "123037004" && c.CodingSchemeDesignator === "SCT",
      `segment ${i}: property category ${c.CodeValue}/${c.CodingSchemeDesignator}`);
  });
}

function checkFrames(ds, exp) {
  const frames = items(ds.PerFrameFunctionalGroupsSequence);
  check(Number(ds.NumberOfFrames) === exp.segments.length,
    `NumberOfFrames ${ds.NumberOfFrames} != ${exp.segments.length}`);
  check(frames.length === exp.segments.length,
    `per-frame functional groups: ${frames.length} items, expected ${exp.segments.length}`);
  frames.forEach((f, i) => {
    const id = items(f.SegmentIdentificationSequence)[0] || {};
    check(id.ReferencedSegmentNumber === i + 1,
      `frame ${i + 1}: Referenced Segment Number ${id.ReferencedSegmentNumber} != ${i + 1}`);
    const der = items(f.DerivationImageSequence)[0] || {};
    const src = items(der.SourceImageSequence)[0] || {};
    check(src.ReferencedSOPInstanceUID === exp.source.sop_instance_uid,
      `frame ${i + 1}: source SOP Instance UID ${src.ReferencedSOPInstanceUID} != ${exp.source.sop_instance_uid}`);
    check(src.ReferencedSOPClassUID === exp.source.sop_class_uid,
      `frame ${i + 1}: source SOP Class UID ${src.ReferencedSOPClassUID} != ${exp.source.sop_class_uid}`);
    const purpose = items(src.PurposeOfReferenceCodeSequence)[0] || {};
    check(purpose.CodeValue === "121322", `frame ${i + 1}: purpose of reference ${purpose.CodeValue}`);
    const code = items(der.DerivationCodeSequence)[0] || {};
    check(code.CodeValue === "113076", `frame ${i + 1}: derivation code ${code.CodeValue}`);
  });
}

// Count the set bits of each frame in the continuous 1-bit stream (LSB first).
function checkPixels(ds, exp) {
  const data = items(ds.PixelData)[0];
  if (!data) {
    failures.push("no Pixel Data");
    return;
  }
  const bytes = new Uint8Array(data);
  const perFrame = exp.rows * exp.columns;
  const needed = Math.ceil((perFrame * exp.segments.length) / 8);
  check(bytes.length >= needed && bytes.length % 2 === 0,
    `Pixel Data has ${bytes.length} bytes, expected ${needed} padded to even`);
  exp.segments.forEach((e, i) => {
    let count = 0;
    for (let k = i * perFrame; k < (i + 1) * perFrame; k++) {
      if (bytes[k >> 3] & (1 << (k & 7))) count++;
    }
    check(count === e.pixels, `frame ${i + 1}: ${count} pixels set, expected ${e.pixels}`);
  });
}

function main(segPath, expectedPath) {
  const exp = JSON.parse(readFileSync(expectedPath, "utf8"));
  const ds = readSeg(segPath);
  check(ds.SOPClassUID === SEG_SOP_CLASS, `SOP class ${ds.SOPClassUID}`);
  check(ds.SOPInstanceUID === exp.sop_instance_uid, `SOP instance ${ds.SOPInstanceUID}`);
  check(ds.Modality === "SEG", `modality ${ds.Modality}`);
  check(ds.SegmentationType === "BINARY", `segmentation type ${ds.SegmentationType}`);
  check(ds.Rows === exp.rows && ds.Columns === exp.columns,
    `geometry ${ds.Rows}x${ds.Columns} != ${exp.rows}x${exp.columns}`);
  checkSegments(ds, exp);
  checkFrames(ds, exp);
  checkPixels(ds, exp);
}

const [segPath, expectedPath] = process.argv.slice(2);
if (!segPath || !expectedPath) {
  console.error("usage: node check_seg.mjs SEG_FILE EXPECTED_JSON");
  process.exit(2);
}
try {
  main(segPath, expectedPath);
} catch (e) {
  failures.push(`dcmjs could not read the SEG: ${e.stack || e}`);
}
if (failures.length) {
  console.error(`check_seg.mjs: ${failures.length} failure(s) in ${segPath}:`);
  for (const f of failures) console.error(`  - ${f}`);
  process.exit(1);
}
console.log(`check_seg.mjs: ok (${segPath})`);
