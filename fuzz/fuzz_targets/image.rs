//! Shared by the decoder targets: a chest CR data set around one fuzzed codestream fragment,
//! decoded as the decode helper does (codestream checks, then the codec, then our conversions).

use cxr_worker::analyse::decode::{self, DecodeLimits};
use cxr_worker::dicom::header::file_preamble_and_meta;

const CR: &str = "1.2.840.10008.5.1.4.1.1.1";

fn el(group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    let mut v = value.to_vec();
    if v.len() % 2 == 1 {
        v.push(if vr == b"UI" { 0 } else { b' ' });
    }
    let mut out = Vec::with_capacity(8 + v.len());
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(vr);
    out.extend_from_slice(&(v.len() as u16).to_le_bytes());
    out.extend_from_slice(&v);
    out
}

/// The data set header of an image: rows, columns, bits stored, samples per pixel.
pub fn image_header(rows: u16, cols: u16, bits_stored: u16, samples: u16) -> Vec<u8> {
    let bits_allocated: u16 = if bits_stored > 8 { 16 } else { 8 };
    [
        el(0x0008, 0x0016, b"UI", CR.as_bytes()),
        el(0x0008, 0x0018, b"UI", b"1.2.3.4"),
        el(0x0008, 0x0060, b"CS", b"CR"),
        el(0x0018, 0x0015, b"CS", b"CHEST"),
        el(0x0018, 0x5101, b"CS", b"PA"),
        el(0x0020, 0x000D, b"UI", b"1.2.3"),
        el(0x0020, 0x000E, b"UI", b"1.2.3.1"),
        el(0x0028, 0x0002, b"US", &samples.to_le_bytes()),
        el(0x0028, 0x0004, b"CS", b"MONOCHROME2"),
        el(0x0028, 0x0010, b"US", &rows.to_le_bytes()),
        el(0x0028, 0x0011, b"US", &cols.to_le_bytes()),
        el(0x0028, 0x0100, b"US", &bits_allocated.to_le_bytes()),
        el(0x0028, 0x0101, b"US", &bits_stored.to_le_bytes()),
        el(0x0028, 0x0102, b"US", &(bits_stored - 1).to_le_bytes()),
        el(0x0028, 0x0103, b"US", &0u16.to_le_bytes()),
    ]
    .concat()
}

/// Decode a Part 10 file made of `dataset` in `ts`, with small caps.
pub fn decode_file(ts: &str, dataset: &[u8]) {
    let Ok(meta) = file_preamble_and_meta(CR, "1.2.3.4", ts, "FUZZ") else {
        return;
    };
    let file = [meta.as_slice(), dataset].concat();
    let limits = DecodeLimits {
        max_file_bytes: 8 << 20,
        max_pixels: 4_000_000,
    };
    if let Ok(f) = decode::open_bytes(&file, &limits)
        && let Ok(stored) = f.stored_image(&limits)
    {
        let _ = decode::to_grey(&stored);
    }
}

/// Input: rows (u16 LE), columns (u16 LE), bits stored, samples per pixel (odd: 3), then one
/// fragment of encapsulated pixel data.
pub fn decode_encapsulated(ts: &str, data: &[u8]) {
    let [r0, r1, c0, c1, bits, samples, fragment @ ..] = data else {
        return;
    };
    let rows = u16::from_le_bytes([*r0, *r1]) % 4096 + 1;
    let cols = u16::from_le_bytes([*c0, *c1]) % 4096 + 1;
    let bits_stored = u16::from(*bits % 16) + 1;
    let samples = if samples & 1 == 1 { 3 } else { 1 };
    let mut ds = image_header(rows, cols, bits_stored, samples);
    ds.extend_from_slice(&[
        0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
    ]);
    ds.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]);
    let mut frag = fragment.to_vec();
    if frag.len() % 2 == 1 {
        frag.push(0);
    }
    ds.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
    ds.extend_from_slice(&(frag.len() as u32).to_le_bytes());
    ds.extend_from_slice(&frag);
    ds.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    decode_file(ts, &ds);
}
