//! Pre-parse guard for untrusted DICOM bytes: walks every element header before dicom-rs parses
//! the file, so that no declared length can ask for more memory than the file holds.
//!
//! dicom-rs allocates a value buffer of the declared length before reading it; a few-KB file
//! declaring a 4 GB element would make it allocate 4 GB. This walk refuses any defined length
//! larger than what remains of its container (the file, or the enclosing item or sequence),
//! nested sequences included, and any deflated data set that inflates beyond the size cap.

use std::io::Read;

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

/// Undefined length marker.
const UNDEFINED: u32 = 0xFFFF_FFFF;
/// Deepest sequence nesting accepted.
const MAX_DEPTH: usize = 32;

/// Why the bytes were refused.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("not a DICOM Part 10 file: no \"DICM\" prefix")]
    NoPrefix,
    #[error("file meta information has no Transfer Syntax UID")]
    NoTransferSyntax,
    #[error("truncated: element header at byte {offset} runs past the end")]
    Truncated { offset: usize },
    #[error("element {tag} at byte {offset} declares {declared} bytes but only {available} remain")]
    LengthExceedsData {
        tag: String,
        offset: usize,
        declared: u64,
        available: u64,
    },
    #[error("delimiter outside any sequence at byte {offset}")]
    StrayDelimiter { offset: usize },
    #[error("sequences nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("deflated data set cannot be inflated: {0}")]
    Inflate(std::io::Error),
    #[error("deflated data set inflates beyond the {limit}-byte cap")]
    InflatedTooLarge { limit: u64 },
}

/// The encoding of the main data set.
#[derive(Debug, Clone, Copy)]
struct Encoding {
    explicit: bool,
    big_endian: bool,
}

/// Where the file's parts start, as found by [`check`].
#[derive(Debug, Clone)]
pub struct Layout {
    /// Offset of the "DICM" magic (0 or 128).
    pub magic_offset: usize,
    /// Transfer syntax UID of the data set, trimmed.
    pub transfer_syntax: String,
}

/// Walk `bytes` (a Part 10 file, with or without the 128-byte preamble) and check every declared
/// length against the data that remains. `max_inflated` caps the size of a deflated data set.
pub fn check(bytes: &[u8], max_inflated: u64) -> Result<Layout, GuardError> {
    let magic_offset = if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
        128
    } else if bytes.len() >= 4 && &bytes[..4] == b"DICM" {
        0
    } else {
        return Err(GuardError::NoPrefix);
    };
    let meta_start = magic_offset + 4;
    let meta = Encoding {
        explicit: true,
        big_endian: false,
    };
    let (meta_end, ts) = scan_meta(bytes, meta_start, meta)?;
    let ts = ts.ok_or(GuardError::NoTransferSyntax)?;
    check_data_set(&bytes[meta_end..], &ts, max_inflated)?;
    Ok(Layout {
        magic_offset,
        transfer_syntax: ts,
    })
}

/// Check a data set (without file meta) encoded in `transfer_syntax`: every declared length fits
/// the data, sequences and items of undefined length are closed. `max_inflated` caps the size
/// of a deflated data set. Used on received data sets before they are parsed or stored.
pub fn check_data_set(
    data: &[u8],
    transfer_syntax: &str,
    max_inflated: u64,
) -> Result<(), GuardError> {
    let explicit_le = Encoding {
        explicit: true,
        big_endian: false,
    };
    match transfer_syntax {
        "1.2.840.10008.1.2" => walk(data, implicit_le(), 0, 0, false).map(|_| ()),
        "1.2.840.10008.1.2.2" => walk(
            data,
            Encoding {
                explicit: true,
                big_endian: true,
            },
            0,
            0,
            false,
        )
        .map(|_| ()),
        "1.2.840.10008.1.2.1.99" => {
            let inflated = inflate(data, max_inflated)?;
            walk(&inflated, explicit_le, 0, 0, false).map(|_| ())
        }
        // Every other transfer syntax encodes the data set as Explicit VR Little Endian.
        _ => walk(data, explicit_le, 0, 0, false).map(|_| ()),
    }
}

fn implicit_le() -> Encoding {
    Encoding {
        explicit: false,
        big_endian: false,
    }
}

fn inflate(data: &[u8], max: u64) -> Result<Vec<u8>, GuardError> {
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(data)
        .take(max.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(GuardError::Inflate)?;
    if out.len() as u64 > max {
        return Err(GuardError::InflatedTooLarge { limit: max });
    }
    Ok(out)
}

/// Scan group 0002 elements; return where the data set starts and the transfer syntax UID.
fn scan_meta(
    bytes: &[u8],
    mut pos: usize,
    enc: Encoding,
) -> Result<(usize, Option<String>), GuardError> {
    let mut ts = None;
    while pos + 8 <= bytes.len() && u16_at(bytes, pos, false) == 0x0002 {
        let header = header_at(bytes, pos, enc)?;
        let len = header.len as usize;
        let end = header
            .value_start
            .checked_add(len)
            .filter(|e| *e <= bytes.len());
        let Some(end) = end else {
            return Err(too_long(
                &header,
                pos,
                bytes.len() - header.value_start.min(bytes.len()),
            ));
        };
        if header.tag == Tag(0x0002, 0x0010) {
            let raw = &bytes[header.value_start..end];
            ts = Some(
                String::from_utf8_lossy(raw)
                    .trim_end_matches(['\0', ' '])
                    .to_string(),
            );
        }
        pos = end;
    }
    Ok((pos, ts))
}

struct Header {
    tag: Tag,
    vr: Option<VR>,
    len: u32,
    value_start: usize,
}

fn u16_at(b: &[u8], pos: usize, big: bool) -> u16 {
    let v = [b[pos], b[pos + 1]];
    if big {
        u16::from_be_bytes(v)
    } else {
        u16::from_le_bytes(v)
    }
}

fn u32_at(b: &[u8], pos: usize, big: bool) -> u32 {
    let v = [b[pos], b[pos + 1], b[pos + 2], b[pos + 3]];
    if big {
        u32::from_be_bytes(v)
    } else {
        u32::from_le_bytes(v)
    }
}

fn header_at(b: &[u8], pos: usize, enc: Encoding) -> Result<Header, GuardError> {
    let truncated = GuardError::Truncated { offset: pos };
    if pos + 8 > b.len() {
        return Err(truncated);
    }
    let tag = Tag(
        u16_at(b, pos, enc.big_endian),
        u16_at(b, pos + 2, enc.big_endian),
    );
    // Item and delimiter tags never carry a VR.
    if tag.group() == 0xFFFE || !enc.explicit {
        return Ok(Header {
            tag,
            vr: None,
            len: u32_at(b, pos + 4, enc.big_endian),
            value_start: pos + 8,
        });
    }
    let vr = VR::from_binary([b[pos + 4], b[pos + 5]]);
    let long = matches!(
        vr,
        Some(
            VR::OB
                | VR::OD
                | VR::OF
                | VR::OL
                | VR::OV
                | VR::OW
                | VR::SQ
                | VR::UC
                | VR::UR
                | VR::UT
                | VR::UN
                | VR::SV
                | VR::UV
        )
    );
    if long {
        if pos + 12 > b.len() {
            return Err(truncated);
        }
        Ok(Header {
            tag,
            vr,
            len: u32_at(b, pos + 8, enc.big_endian),
            value_start: pos + 12,
        })
    } else {
        Ok(Header {
            tag,
            vr,
            len: u32::from(u16_at(b, pos + 6, enc.big_endian)),
            value_start: pos + 8,
        })
    }
}

fn too_long(h: &Header, offset: usize, available: usize) -> GuardError {
    GuardError::LengthExceedsData {
        tag: format!("({:04X},{:04X})", h.tag.group(), h.tag.element()),
        offset,
        declared: u64::from(h.len),
        available: available as u64,
    }
}

/// Whether the element's value is a sequence of items (in this encoding).
fn is_sequence(h: &Header, explicit: bool) -> bool {
    if explicit {
        return h.vr == Some(VR::SQ);
    }
    matches!(
        StandardDataDictionary.by_tag(h.tag).map(|e| e.vr()),
        Some(VirtualVr::Exact(VR::SQ))
    )
}

/// Walk the elements of `b[start..]` until its end or a delimiter; return the position after it.
/// An item of undefined length (`in_undefined_item`) must be closed by its delimiter: reaching
/// the end of the data first means the data set was cut short.
fn walk(
    b: &[u8],
    enc: Encoding,
    start: usize,
    depth: usize,
    in_undefined_item: bool,
) -> Result<usize, GuardError> {
    if depth > MAX_DEPTH {
        return Err(GuardError::TooDeep);
    }
    let mut pos = start;
    while pos < b.len() {
        let h = header_at(b, pos, enc)?;
        if h.tag == Tag(0xFFFE, 0xE00D) || h.tag == Tag(0xFFFE, 0xE0DD) {
            if depth == 0 {
                return Err(GuardError::StrayDelimiter { offset: pos });
            }
            return Ok(h.value_start);
        }
        if h.len == UNDEFINED {
            // Undefined length: a sequence, encapsulated pixel data, or UN holding an implicit
            // VR sequence. Their items are checked one by one.
            let inner = if h.vr == Some(VR::UN) {
                implicit_le()
            } else {
                enc
            };
            let pixel_fragments = h.tag == Tag(0x7FE0, 0x0010);
            pos = walk_items(
                b,
                inner,
                h.value_start,
                b.len(),
                pixel_fragments,
                depth + 1,
                true,
            )?;
            continue;
        }
        let available = b.len() - h.value_start.min(b.len());
        if h.len as usize > available {
            return Err(too_long(&h, pos, available));
        }
        let end = h.value_start + h.len as usize;
        if is_sequence(&h, enc.explicit) {
            walk_items(&b[..end], enc, h.value_start, end, false, depth + 1, false)?;
        }
        pos = end;
    }
    if in_undefined_item {
        return Err(GuardError::Truncated { offset: pos });
    }
    Ok(pos)
}

/// Walk the items of a sequence starting at `start`, up to `end` or the sequence delimiter; a
/// sequence of undefined length must end with its delimiter.
fn walk_items(
    b: &[u8],
    enc: Encoding,
    start: usize,
    end: usize,
    fragments: bool,
    depth: usize,
    undefined: bool,
) -> Result<usize, GuardError> {
    if depth > MAX_DEPTH {
        return Err(GuardError::TooDeep);
    }
    let mut pos = start;
    while pos < end {
        let h = header_at(
            b,
            pos,
            Encoding {
                explicit: false,
                ..enc
            },
        )?;
        if h.tag == Tag(0xFFFE, 0xE0DD) {
            return Ok(h.value_start);
        }
        if h.tag != Tag(0xFFFE, 0xE000) {
            // Not an item: let the parser report the malformed sequence.
            return Ok(end);
        }
        if h.len == UNDEFINED && !fragments {
            pos = walk(b, enc, h.value_start, depth + 1, true)?;
            continue;
        }
        let available = end - h.value_start.min(end);
        if h.len as usize > available {
            return Err(too_long(&h, pos, available));
        }
        let item_end = h.value_start + h.len as usize;
        if !fragments {
            walk(&b[..item_end], enc, h.value_start, depth + 1, false)?;
        }
        pos = item_end;
    }
    if undefined {
        return Err(GuardError::Truncated { offset: pos });
    }
    Ok(pos)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;

    fn file_with(element: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 128];
        f.extend_from_slice(b"DICM");
        let ts = b"1.2.840.10008.1.2.1\0";
        f.extend_from_slice(&[0x02, 0x00, 0x10, 0x00, b'U', b'I']);
        f.extend_from_slice(&(ts.len() as u16).to_le_bytes());
        f.extend_from_slice(ts);
        f.extend_from_slice(element);
        f
    }

    #[test]
    fn huge_declared_length_is_refused() {
        // (0009,0010) OB with a 4 GB length and 4 bytes of data.
        let mut el = vec![0x09, 0x00, 0x10, 0x00, b'O', b'B', 0, 0];
        el.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        el.extend_from_slice(&[1, 2, 3, 4]);
        let err = check(&file_with(&el), 1 << 20).unwrap_err();
        assert!(matches!(err, GuardError::LengthExceedsData { .. }), "{err}");
        assert!(err.to_string().contains("(0009,0010)"), "{err}");
    }

    #[test]
    fn nested_item_length_is_checked() {
        // SQ of undefined length, one item declaring more bytes than the file has.
        let mut el = vec![0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0];
        el.extend_from_slice(&UNDEFINED.to_le_bytes());
        el.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
        el.extend_from_slice(&1_000_000u32.to_le_bytes());
        el.extend_from_slice(&[0; 16]);
        assert!(check(&file_with(&el), 1 << 20).is_err());
    }

    #[test]
    fn truncated_or_unclosed_data_sets_are_refused() {
        let mut ds = vec![0x08, 0x00, 0x60, 0x00, b'C', b'S', 2, 0, b'C', b'R'];
        assert!(check_data_set(&ds, "1.2.840.10008.1.2.1", 1 << 20).is_ok());
        assert!(check_data_set(&ds[..ds.len() - 1], "1.2.840.10008.1.2.1", 1 << 20).is_err());
        // an undefined-length sequence whose delimiter never comes
        ds.extend_from_slice(&[0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0]);
        ds.extend_from_slice(&UNDEFINED.to_le_bytes());
        let err = check_data_set(&ds, "1.2.840.10008.1.2.1", 1 << 20).unwrap_err();
        assert!(matches!(err, GuardError::Truncated { .. }), "{err}");
        // closed: passes
        ds.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        assert!(check_data_set(&ds, "1.2.840.10008.1.2.1", 1 << 20).is_ok());
        // a delimiter at the top level
        let stray = [0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0];
        assert!(check_data_set(&stray, "1.2.840.10008.1.2.1", 1 << 20).is_err());
    }

    #[test]
    fn well_formed_element_passes() {
        let el = [
            0x10, 0x00, 0x10, 0x00, b'P', b'N', 4, 0, b'A', b'^', b'B', b' ',
        ];
        let layout = check(&file_with(&el), 1 << 20).unwrap();
        assert_eq!(layout.transfer_syntax, "1.2.840.10008.1.2.1");
        assert_eq!(layout.magic_offset, 128);
    }
}
