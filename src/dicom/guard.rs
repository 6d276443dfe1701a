//! Structural guard for untrusted DICOM bytes: walks every element header before dicom-rs parses
//! anything, so that no declared length, nesting or count can make the parser allocate more than
//! the bytes hold, recurse without bound, or read the data differently from this walk.
//!
//! dicom-rs allocates a value buffer of the declared length before reading it, and builds nested
//! sequences recursively. The [`Walker`] therefore follows dicom-rs's own reading rules exactly
//! (dicom-parser 0.10 `DataSetReader`), and refuses what it cannot size:
//! - explicit VR: the 21 short VRs have a 2-byte length, every other known VR a 4-byte one; an
//!   unknown VR code is refused (dicom-rs would read it as UN with a 4-byte length);
//! - implicit VR: an element is a sequence when the standard dictionary says SQ;
//! - an undefined length opens encapsulated pixel data on (7FE0,0010) and a sequence, in the same
//!   encoding, on any other element (dicom-rs "discards the VR" there);
//! - every defined length must fit in what remains of its enclosing item or sequence, and of the
//!   data set; sequences and items of undefined length must be closed; delimiters outside their
//!   sequence are refused;
//! - nesting depth, element count and the bytes kept of the header are capped ([`Limits`]);
//! - a deflated data set is inflated as it streams, never beyond its cap.
//!
//! The walk is incremental ([`Walker::feed`]): the receiver checks a data set fragment by fragment
//! as it arrives, keeping only the header (the elements before Pixel Data) in memory.

use std::io::Read;

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

use crate::dicom::text::trim_padding;

/// Undefined length marker.
const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: Tag = Tag(0xFFFE, 0xE000);
const ITEM_DELIMITER: Tag = Tag(0xFFFE, 0xE00D);
const SEQUENCE_DELIMITER: Tag = Tag(0xFFFE, 0xE0DD);
const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);

/// Caps of the walk. The defaults fit every real radiograph with a wide margin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deepest sequence nesting accepted.
    pub max_depth: usize,
    /// Most elements (items and fragments included) in the whole data set.
    pub max_elements: u64,
    /// Most elements before the Pixel Data (what the header parse turns into objects).
    pub max_header_elements: u64,
    /// Most bytes kept of the header (the elements before the top-level Pixel Data).
    pub max_header_bytes: usize,
    /// Largest inflated size of a deflated data set.
    pub max_inflated: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_depth: 32,
            max_elements: 1_000_000,
            max_header_elements: 100_000,
            max_header_bytes: 16 << 20,
            max_inflated: 1 << 30,
        }
    }
}

impl Limits {
    /// The defaults, with deflated data sets capped at `max_inflated` bytes.
    pub fn with_max_inflated(max_inflated: u64) -> Self {
        Self {
            max_inflated,
            ..Self::default()
        }
    }
}

/// Why the bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    #[error("not a DICOM Part 10 file: no \"DICM\" prefix")]
    NoPrefix,
    #[error("file meta information has no Transfer Syntax UID")]
    NoTransferSyntax,
    #[error("truncated: the data ends inside an element, item or sequence (byte {offset})")]
    Truncated { offset: u64 },
    #[error("element {tag} at byte {offset} declares {declared} bytes but only {available} remain")]
    LengthExceedsData {
        tag: String,
        offset: u64,
        declared: u64,
        available: u64,
    },
    #[error("element {tag} ({vr}) at byte {offset} has {len} bytes, not a multiple of {unit}")]
    PartialValue {
        tag: String,
        vr: String,
        offset: u64,
        len: u32,
        unit: u32,
    },
    #[error("element {tag} at byte {offset} has an unknown VR {vr:?}")]
    UnknownVr {
        tag: String,
        offset: u64,
        vr: String,
    },
    #[error("{what} at byte {offset}, outside the sequence or item it would close")]
    StrayDelimiter { what: &'static str, offset: u64 },
    #[error("{tag} at byte {offset} where a sequence item was expected")]
    ExpectedItem { tag: String, offset: u64 },
    #[error("pixel data fragment of undefined length at byte {offset}")]
    UndefinedFragment { offset: u64 },
    #[error("sequences nested deeper than {limit} levels")]
    TooDeep { limit: usize },
    #[error("more than {limit} elements")]
    TooManyElements { limit: u64 },
    #[error("the header (elements before Pixel Data) exceeds {limit} bytes")]
    HeaderTooLarge { limit: usize },
    #[error("deflated data set cannot be inflated: {0}")]
    Inflate(String),
    #[error("deflated data set inflates beyond the {limit}-byte cap")]
    InflatedTooLarge { limit: u64 },
}

impl GuardError {
    /// Whether the bytes may be well formed but exceed a resource cap (an "out of resources"
    /// answer), rather than being malformed ("cannot understand").
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            Self::TooDeep { .. }
                | Self::TooManyElements { .. }
                | Self::HeaderTooLarge { .. }
                | Self::InflatedTooLarge { .. }
        )
    }
}

/// The encoding of a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    pub explicit: bool,
    pub big_endian: bool,
    pub deflated: bool,
}

impl Encoding {
    /// The data set encoding of a transfer syntax. Every syntax other than the three native ones
    /// encodes its data set as Explicit VR Little Endian.
    pub fn of_transfer_syntax(uid: &str) -> Self {
        let (explicit, big_endian, deflated) = match trim_padding(uid) {
            "1.2.840.10008.1.2" => (false, false, false),
            "1.2.840.10008.1.2.2" => (true, true, false),
            "1.2.840.10008.1.2.1.99" => (true, false, true),
            _ => (true, false, false),
        };
        Self {
            explicit,
            big_endian,
            deflated,
        }
    }
}

/// What a complete walk found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// The data set's bytes before the top-level Pixel Data (inflated when deflated); `None`
    /// unless the walker was asked to keep it.
    pub header: Option<Vec<u8>>,
    /// Offset of the top-level Pixel Data element in the (inflated) data set.
    pub pixel_data_offset: Option<u64>,
    /// Elements, items and fragments seen.
    pub elements: u64,
    /// Bytes walked (inflated size when deflated).
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The data set itself.
    Root,
    /// A sequence item: data elements.
    Item,
    /// A sequence: items.
    Sequence,
    /// Encapsulated pixel data: fragments.
    Fragments,
}

#[derive(Debug, Clone, Copy)]
struct Frame {
    kind: Kind,
    /// Where a defined-length container ends; `None`: closed by its delimiter.
    end: Option<u64>,
}

/// An incremental structural walk of one data set (without file meta).
#[derive(Debug)]
pub struct Walker {
    enc: Encoding,
    limits: Limits,
    /// Bytes walked so far (of the inflated stream when deflated).
    pos: u64,
    head: [u8; 12],
    head_len: usize,
    /// Value bytes still to pass over.
    skip: u64,
    stack: Vec<Frame>,
    elements: u64,
    header: Option<Vec<u8>>,
    collecting: bool,
    pixel_data_offset: Option<u64>,
    inflater: Option<Inflater>,
    failed: Option<GuardError>,
}

#[derive(Debug)]
struct Inflater {
    state: flate2::Decompress,
    out: Vec<u8>,
    done: bool,
}

/// Inflated bytes produced per step.
const INFLATE_CHUNK: usize = 64 * 1024;

impl Walker {
    /// A walk of a data set in `transfer_syntax`; with `keep_header`, the bytes before the
    /// top-level Pixel Data are kept for [`Summary::header`].
    pub fn new(transfer_syntax: &str, limits: Limits, keep_header: bool) -> Self {
        let enc = Encoding::of_transfer_syntax(transfer_syntax);
        Self {
            enc,
            limits,
            pos: 0,
            head: [0; 12],
            head_len: 0,
            skip: 0,
            stack: vec![Frame {
                kind: Kind::Root,
                end: None,
            }],
            elements: 0,
            header: keep_header.then(Vec::new),
            collecting: keep_header,
            pixel_data_offset: None,
            inflater: enc.deflated.then(|| Inflater {
                state: flate2::Decompress::new(false),
                out: vec![0; INFLATE_CHUNK],
                done: false,
            }),
            failed: None,
        }
    }

    /// Bytes of header kept so far.
    pub fn header_len(&self) -> usize {
        self.header.as_ref().map_or(0, Vec::len)
    }

    /// Whether the whole header has been walked (the top-level Pixel Data was reached).
    pub fn header_complete(&self) -> bool {
        self.pixel_data_offset.is_some()
    }

    /// The header kept so far (complete once [`Walker::header_complete`]).
    pub fn into_header(self) -> Option<Vec<u8>> {
        self.header
    }

    /// Walk the next bytes of the data set (as received: deflated when the syntax is). After an
    /// error every later call returns it again.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), GuardError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = if self.inflater.is_some() {
            self.feed_deflated(data, false)
        } else {
            self.feed_plain(data)
        };
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    /// The data set is complete: check that nothing is left open.
    pub fn finish(mut self) -> Result<Summary, GuardError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if self.inflater.is_some() {
            self.feed_deflated(&[], true)?;
        }
        let truncated = GuardError::Truncated { offset: self.pos };
        if self.skip > 0 || self.head_len > 0 {
            return Err(truncated);
        }
        match self.stack.as_slice() {
            [root] if root.kind == Kind::Root => {}
            _ => return Err(truncated),
        }
        Ok(Summary {
            header: self.header,
            pixel_data_offset: self.pixel_data_offset,
            elements: self.elements,
            size: self.pos,
        })
    }

    fn feed_deflated(&mut self, mut data: &[u8], finish: bool) -> Result<(), GuardError> {
        loop {
            let Some(inf) = self.inflater.as_mut() else {
                return Ok(());
            };
            if inf.done {
                // bytes after the end of the deflate stream are ignored, as dicom-rs does
                return Ok(());
            }
            let flush = if finish {
                flate2::FlushDecompress::Finish
            } else {
                flate2::FlushDecompress::None
            };
            let (before_in, before_out) = (inf.state.total_in(), inf.state.total_out());
            let status = inf
                .state
                .decompress(data, &mut inf.out, flush)
                .map_err(|e| GuardError::Inflate(e.to_string()))?;
            let consumed = (inf.state.total_in() - before_in) as usize;
            let produced = (inf.state.total_out() - before_out) as usize;
            data = &data[consumed.min(data.len())..];
            if inf.state.total_out() > self.limits.max_inflated {
                return Err(GuardError::InflatedTooLarge {
                    limit: self.limits.max_inflated,
                });
            }
            if status == flate2::Status::StreamEnd {
                inf.done = true;
            }
            let out = std::mem::take(&mut inf.out);
            let walked = self.feed_plain(&out[..produced]);
            if let Some(inf) = self.inflater.as_mut() {
                inf.out = out;
            }
            walked?;
            let done = self.inflater.as_ref().is_none_or(|i| i.done);
            if done {
                return Ok(());
            }
            if produced == 0 && (consumed == 0 || data.is_empty()) {
                if finish {
                    return Err(GuardError::Inflate(
                        "the deflate stream is cut short".into(),
                    ));
                }
                return Ok(());
            }
        }
    }

    fn feed_plain(&mut self, mut data: &[u8]) -> Result<(), GuardError> {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len() as u64) as usize;
                self.keep(&data[..n])?;
                self.pos += n as u64;
                self.skip -= n as u64;
                data = &data[n..];
                if self.skip == 0 {
                    self.close_frames()?;
                }
                continue;
            }
            let need = self.header_need()?;
            let take = (need - self.head_len).min(data.len());
            self.head[self.head_len..self.head_len + take].copy_from_slice(&data[..take]);
            self.head_len += take;
            data = &data[take..];
            if self.head_len == need && self.header_need()? == need {
                self.on_header()?;
            }
        }
        Ok(())
    }

    fn top(&self) -> Frame {
        self.stack.last().copied().unwrap_or(Frame {
            kind: Kind::Root,
            end: None,
        })
    }

    /// Bytes of the element header being read: 8 until the VR says 12.
    fn header_need(&self) -> Result<usize, GuardError> {
        if self.head_len < 8 {
            return Ok(8);
        }
        let top = self.top().kind;
        if matches!(top, Kind::Sequence | Kind::Fragments) || !self.enc.explicit {
            return Ok(8);
        }
        let tag = self.tag();
        if tag.group() == 0xFFFE {
            return Ok(8);
        }
        match VR::from_binary([self.head[4], self.head[5]]) {
            Some(vr) if has_long_length(vr) => Ok(12),
            Some(_) => Ok(8),
            None => Err(GuardError::UnknownVr {
                tag: tag_name(tag),
                offset: self.pos,
                vr: String::from_utf8_lossy(&self.head[4..6])
                    .escape_debug()
                    .to_string(),
            }),
        }
    }

    fn u16_at(&self, i: usize) -> u16 {
        let b = [self.head[i], self.head[i + 1]];
        if self.enc.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    }

    fn u32_at(&self, i: usize) -> u32 {
        let b = [
            self.head[i],
            self.head[i + 1],
            self.head[i + 2],
            self.head[i + 3],
        ];
        if self.enc.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    fn tag(&self) -> Tag {
        Tag(self.u16_at(0), self.u16_at(2))
    }

    /// A complete element or item header is in `head`.
    fn on_header(&mut self) -> Result<(), GuardError> {
        let start = self.pos;
        let hlen = self.head_len;
        let tag = self.tag();
        let top = self.top();
        let (vr, len) = if matches!(top.kind, Kind::Sequence | Kind::Fragments)
            || tag.group() == 0xFFFE
            || !self.enc.explicit
        {
            (None, self.u32_at(4))
        } else if hlen == 12 {
            (
                VR::from_binary([self.head[4], self.head[5]]),
                self.u32_at(8),
            )
        } else {
            (
                VR::from_binary([self.head[4], self.head[5]]),
                u32::from(self.u16_at(6)),
            )
        };
        let at_pixel_data = top.kind == Kind::Root && self.collecting && tag >= PIXEL_DATA;
        if at_pixel_data {
            self.collecting = false;
            self.pixel_data_offset = Some(start);
        } else if self.collecting {
            let head = self.head;
            self.keep(&head[..hlen])?;
        }
        self.head_len = 0;
        self.pos += hlen as u64;
        match top.kind {
            Kind::Sequence | Kind::Fragments => self.on_item(tag, len, start, top)?,
            Kind::Root | Kind::Item => self.on_element(tag, vr, len, start, top)?,
        }
        self.close_frames()
    }

    /// An item (or the sequence delimiter) inside a sequence or encapsulated pixel data.
    fn on_item(&mut self, tag: Tag, len: u32, start: u64, top: Frame) -> Result<(), GuardError> {
        if tag == SEQUENCE_DELIMITER {
            if top.end.is_some() {
                return Err(GuardError::StrayDelimiter {
                    what: "sequence delimiter in a sequence of defined length",
                    offset: start,
                });
            }
            self.stack.pop();
            return Ok(());
        }
        if tag != ITEM {
            return Err(GuardError::ExpectedItem {
                tag: tag_name(tag),
                offset: start,
            });
        }
        self.count()?;
        if top.kind == Kind::Fragments {
            if len == UNDEFINED {
                return Err(GuardError::UndefinedFragment { offset: start });
            }
            self.fits(tag, len, start)?;
            self.skip = u64::from(len);
            return Ok(());
        }
        if len == UNDEFINED {
            return self.push(Kind::Item, None);
        }
        self.fits(tag, len, start)?;
        self.push(Kind::Item, Some(self.pos + u64::from(len)))
    }

    /// A data element (or an item delimiter) inside the data set or an item.
    fn on_element(
        &mut self,
        tag: Tag,
        vr: Option<VR>,
        len: u32,
        start: u64,
        top: Frame,
    ) -> Result<(), GuardError> {
        if tag == ITEM_DELIMITER {
            if top.kind == Kind::Item && top.end.is_none() {
                self.stack.pop();
                return Ok(());
            }
            return Err(GuardError::StrayDelimiter {
                what: "item delimiter",
                offset: start,
            });
        }
        if tag.group() == 0xFFFE {
            return Err(GuardError::StrayDelimiter {
                what: if tag == SEQUENCE_DELIMITER {
                    "sequence delimiter"
                } else {
                    "item"
                },
                offset: start,
            });
        }
        self.count()?;
        if len == UNDEFINED {
            let kind = if tag == PIXEL_DATA {
                Kind::Fragments
            } else {
                Kind::Sequence
            };
            return self.push(kind, None);
        }
        self.fits(tag, len, start)?;
        if self.is_sequence(tag, vr) {
            return self.push(Kind::Sequence, Some(self.pos + u64::from(len)));
        }
        // dicom-rs reads binary numbers whole and leaves a partial one unread: the rest of the
        // data set would then be read from the wrong place (fuzzing found a 2 GB allocation)
        let vr = if self.enc.explicit {
            vr
        } else {
            Some(implicit_vr(tag))
        };
        if let Some(vr) = vr {
            let unit = value_unit(vr);
            if unit > 1 && !len.is_multiple_of(unit) {
                return Err(GuardError::PartialValue {
                    tag: tag_name(tag),
                    vr: String::from(vr.to_string()),
                    offset: start,
                    len,
                    unit,
                });
            }
        }
        self.skip = u64::from(len);
        Ok(())
    }

    /// Whether a defined-length element holds items, as dicom-rs reads it.
    fn is_sequence(&self, tag: Tag, vr: Option<VR>) -> bool {
        if self.enc.explicit {
            return vr == Some(VR::SQ);
        }
        if tag == PIXEL_DATA || (tag.group() >> 8 == 0x60 && tag.element() == 0x3000) {
            return false;
        }
        StandardDataDictionary
            .by_tag(tag)
            .is_some_and(|e| e.vr().relaxed() == VR::SQ)
    }

    /// A value of `len` bytes starting here must fit in every enclosing container.
    fn fits(&self, tag: Tag, len: u32, start: u64) -> Result<(), GuardError> {
        let end = self.pos + u64::from(len);
        if let Some(limit) = self.stack.iter().rev().find_map(|f| f.end)
            && end > limit
        {
            return Err(GuardError::LengthExceedsData {
                tag: tag_name(tag),
                offset: start,
                declared: u64::from(len),
                available: limit.saturating_sub(self.pos),
            });
        }
        Ok(())
    }

    fn push(&mut self, kind: Kind, end: Option<u64>) -> Result<(), GuardError> {
        let depth = self
            .stack
            .iter()
            .filter(|f| f.kind == Kind::Sequence || f.kind == Kind::Fragments)
            .count();
        if matches!(kind, Kind::Sequence | Kind::Fragments) && depth >= self.limits.max_depth {
            return Err(GuardError::TooDeep {
                limit: self.limits.max_depth,
            });
        }
        self.stack.push(Frame { kind, end });
        Ok(())
    }

    /// Pop every defined-length container that ends here (the data set itself stays).
    fn close_frames(&mut self) -> Result<(), GuardError> {
        while let Some(top) = self.stack.last().copied() {
            if top.kind == Kind::Root {
                return Ok(());
            }
            match top.end {
                Some(end) if end == self.pos => {
                    self.stack.pop();
                }
                Some(end) if end < self.pos => {
                    return Err(GuardError::Truncated { offset: end });
                }
                _ => return Ok(()),
            }
        }
        Ok(())
    }

    fn count(&mut self) -> Result<(), GuardError> {
        self.elements += 1;
        if self.elements > self.limits.max_elements {
            return Err(GuardError::TooManyElements {
                limit: self.limits.max_elements,
            });
        }
        if self.collecting && self.elements > self.limits.max_header_elements {
            return Err(GuardError::TooManyElements {
                limit: self.limits.max_header_elements,
            });
        }
        Ok(())
    }

    /// Keep header bytes, within the cap.
    fn keep(&mut self, bytes: &[u8]) -> Result<(), GuardError> {
        if !self.collecting {
            return Ok(());
        }
        if let Some(h) = self.header.as_mut() {
            if h.len() + bytes.len() > self.limits.max_header_bytes {
                return Err(GuardError::HeaderTooLarge {
                    limit: self.limits.max_header_bytes,
                });
            }
            h.extend_from_slice(bytes);
        }
        Ok(())
    }
}

/// The VR dicom-rs gives an element in implicit VR: OW for Pixel Data and Overlay Data, else the
/// dictionary's (relaxed), UN when the dictionary does not know the tag.
fn implicit_vr(tag: Tag) -> VR {
    if tag == PIXEL_DATA || (tag.group() >> 8 == 0x60 && tag.element() == 0x3000) {
        return VR::OW;
    }
    StandardDataDictionary
        .by_tag(tag)
        .map_or(VR::UN, |e| e.vr().relaxed())
}

/// Bytes of one value of a binary numeric VR (1 for the others), as dicom-rs reads them.
fn value_unit(vr: VR) -> u32 {
    match vr {
        VR::US | VR::SS | VR::OW => 2,
        VR::AT | VR::FL | VR::OF | VR::SL | VR::UL | VR::OL => 4,
        VR::FD | VR::OD | VR::SV | VR::UV | VR::OV => 8,
        _ => 1,
    }
}

/// The VRs with a 4-byte length in explicit VR encodings (every known VR but the 21 short ones),
/// as dicom-encoding reads them.
fn has_long_length(vr: VR) -> bool {
    !matches!(
        vr,
        VR::AE
            | VR::AS
            | VR::AT
            | VR::CS
            | VR::DA
            | VR::DS
            | VR::DT
            | VR::FL
            | VR::FD
            | VR::IS
            | VR::LO
            | VR::LT
            | VR::PN
            | VR::SH
            | VR::SL
            | VR::SS
            | VR::ST
            | VR::TM
            | VR::UI
            | VR::UL
            | VR::US
    )
}

fn tag_name(tag: Tag) -> String {
    format!("({:04X},{:04X})", tag.group(), tag.element())
}

/// Where the file's parts start, as found by [`check`].
#[derive(Debug, Clone)]
pub struct Layout {
    /// Offset of the "DICM" magic (0 or 128).
    pub magic_offset: usize,
    /// Offset of the data set (after the file meta group).
    pub dataset_offset: usize,
    /// Transfer syntax UID of the data set, trimmed.
    pub transfer_syntax: String,
    /// What the walk of the data set found.
    pub summary: Summary,
}

/// Walk `bytes` (a Part 10 file, with or without the 128-byte preamble): the file meta group,
/// then the data set, every declared length checked against the data that remains.
pub fn check(bytes: &[u8], limits: Limits) -> Result<Layout, GuardError> {
    let magic_offset = if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
        128
    } else if bytes.len() >= 4 && &bytes[..4] == b"DICM" {
        0
    } else {
        return Err(GuardError::NoPrefix);
    };
    let (dataset_offset, ts) = scan_meta(bytes, magic_offset + 4)?;
    let ts = ts.ok_or(GuardError::NoTransferSyntax)?;
    let summary = check_data_set(&bytes[dataset_offset..], &ts, limits, false)?;
    Ok(Layout {
        magic_offset,
        dataset_offset,
        transfer_syntax: ts,
        summary,
    })
}

/// Walk a whole data set (without file meta) encoded in `transfer_syntax`.
pub fn check_data_set(
    data: &[u8],
    transfer_syntax: &str,
    limits: Limits,
    keep_header: bool,
) -> Result<Summary, GuardError> {
    let mut walker = Walker::new(transfer_syntax, limits, keep_header);
    if !walker.enc.deflated
        && let Some(root) = walker.stack.first_mut()
    {
        // the whole data set is here: an overrun is named where it is declared
        root.end = Some(data.len() as u64);
    }
    walker.feed(data)?;
    walker.finish()
}

/// Scan the group 0002 elements (explicit VR little endian) from `pos`; return where the data set
/// starts and the transfer syntax UID.
fn scan_meta(bytes: &[u8], mut pos: usize) -> Result<(usize, Option<String>), GuardError> {
    let mut ts = None;
    while let Some(head) = bytes.get(pos..pos + 8) {
        let group = u16::from_le_bytes([head[0], head[1]]);
        if group != 0x0002 {
            break;
        }
        let tag = Tag(group, u16::from_le_bytes([head[2], head[3]]));
        let Some(vr) = VR::from_binary([head[4], head[5]]) else {
            return Err(GuardError::UnknownVr {
                tag: tag_name(tag),
                offset: pos as u64,
                vr: String::from_utf8_lossy(&head[4..6])
                    .escape_debug()
                    .to_string(),
            });
        };
        let (len, value_start) = if has_long_length(vr) {
            let Some(l) = bytes.get(pos + 8..pos + 12) else {
                return Err(GuardError::Truncated { offset: pos as u64 });
            };
            (
                u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize,
                pos + 12,
            )
        } else {
            (usize::from(u16::from_le_bytes([head[6], head[7]])), pos + 8)
        };
        let Some(value) = bytes.get(value_start..value_start.saturating_add(len)) else {
            return Err(GuardError::LengthExceedsData {
                tag: tag_name(tag),
                offset: pos as u64,
                declared: len as u64,
                available: bytes.len().saturating_sub(value_start) as u64,
            });
        };
        if tag == Tag(0x0002, 0x0010) {
            ts = Some(trim_padding(&String::from_utf8_lossy(value)).to_string());
        }
        pos = value_start + len;
    }
    Ok((pos, ts))
}

/// Read the header of a Part 10 file (with its 128-byte preamble) from `file`: the file meta is
/// parsed from the first MiB, then the data set is walked as a stream, only until its top-level
/// Pixel Data. Returns the transfer syntax and the header (the elements before Pixel Data,
/// inflated when deflated), every length checked on the way.
pub fn read_header(file: &mut dyn Read, limits: Limits) -> Result<(String, Vec<u8>), GuardError> {
    let mut first = Vec::new();
    file.take(1 << 20)
        .read_to_end(&mut first)
        .map_err(|e| GuardError::Inflate(format!("cannot read the file: {e}")))?;
    if first.get(128..132) != Some(b"DICM") {
        return Err(GuardError::NoPrefix);
    }
    let (dataset_offset, ts) = scan_meta(&first, 132)?;
    let ts = ts.ok_or(GuardError::NoTransferSyntax)?;
    let mut walker = Walker::new(&ts, limits, true);
    walker.feed(&first[dataset_offset..])?;
    let mut buf = vec![0u8; 1 << 16];
    while !walker.header_complete() {
        let n = file
            .read(&mut buf)
            .map_err(|e| GuardError::Inflate(format!("cannot read the file: {e}")))?;
        if n == 0 {
            let summary = walker.finish()?;
            return Ok((ts, summary.header.unwrap_or_default()));
        }
        walker.feed(&buf[..n])?;
    }
    Ok((ts, walker.into_header().unwrap_or_default()))
}

/// Inflate a whole deflated data set, at most `max` bytes (for tools that need the bytes).
pub fn inflate(data: &[u8], max: u64) -> Result<Vec<u8>, GuardError> {
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(data)
        .take(max.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| GuardError::Inflate(e.to_string()))?;
    if out.len() as u64 > max {
        return Err(GuardError::InflatedTooLarge { limit: max });
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;

    const EXPLICIT: &str = "1.2.840.10008.1.2.1";
    const IMPLICIT: &str = "1.2.840.10008.1.2";

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

    fn walk(data: &[u8], ts: &str) -> Result<Summary, GuardError> {
        check_data_set(data, ts, Limits::default(), true)
    }

    /// Feed `data` one byte at a time: the streaming walk must agree with the whole-slice walk.
    fn walk_bytewise(data: &[u8], ts: &str) -> Result<Summary, GuardError> {
        let mut w = Walker::new(ts, Limits::default(), true);
        for b in data {
            w.feed(std::slice::from_ref(b))?;
        }
        w.finish()
    }

    fn explicit_sq_undefined(tag: (u16, u16)) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&tag.0.to_le_bytes());
        v.extend_from_slice(&tag.1.to_le_bytes());
        v.extend_from_slice(b"SQ\0\0");
        v.extend_from_slice(&UNDEFINED.to_le_bytes());
        v
    }

    fn item_undefined() -> Vec<u8> {
        let mut v = vec![0xFE, 0xFF, 0x00, 0xE0];
        v.extend_from_slice(&UNDEFINED.to_le_bytes());
        v
    }

    fn item_end() -> Vec<u8> {
        vec![0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]
    }

    fn seq_end() -> Vec<u8> {
        vec![0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]
    }

    #[test]
    fn huge_declared_length_is_refused() {
        // (0009,0010) OB with a 4 GB length and 4 bytes of data.
        let mut el = vec![0x09, 0x00, 0x10, 0x00, b'O', b'B', 0, 0];
        el.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        el.extend_from_slice(&[1, 2, 3, 4]);
        let err = check(&file_with(&el), Limits::default()).unwrap_err();
        assert!(matches!(err, GuardError::LengthExceedsData { .. }), "{err}");
        // streamed, the data set's end is known only when it comes
        let mut w = Walker::new(EXPLICIT, Limits::default(), true);
        w.feed(&el).unwrap();
        assert!(matches!(w.finish(), Err(GuardError::Truncated { .. })));
        // inside an item of defined length the overrun is named at once
        let mut ds = explicit_sq_undefined((0x0008, 0x1115));
        ds.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
        ds.extend_from_slice(&16u32.to_le_bytes());
        ds.extend_from_slice(&el);
        let err = walk(&ds, EXPLICIT).unwrap_err();
        assert!(matches!(err, GuardError::LengthExceedsData { .. }), "{err}");
        assert!(err.to_string().contains("(0009,0010)"), "{err}");
    }

    #[test]
    fn partial_binary_values_are_refused() {
        // (0008,1030) declared FL with 6 bytes: dicom-rs would read one float and lose its place
        // (the fuzzing finding dataset-8cf1a36793e54f21)
        let mut ds = vec![0x08, 0x00, 0x30, 0x10, b'F', b'L', 6, 0];
        ds.extend_from_slice(b"THORAX");
        ds.extend_from_slice(&[0x08, 0x00, 0x40, 0x10, b'L', b'O', 2, 0, b'O', b'D']);
        let err = walk(&ds, EXPLICIT).unwrap_err();
        assert!(
            matches!(
                err,
                GuardError::PartialValue {
                    unit: 4,
                    len: 6,
                    ..
                }
            ),
            "{err}"
        );
        // implicit VR: the dictionary's VR counts, (0028,0010) Rows is US
        let mut ds = vec![0x28, 0x00, 0x10, 0x00, 3, 0, 0, 0, 1, 2, 3];
        assert!(matches!(
            walk(&ds, IMPLICIT),
            Err(GuardError::PartialValue { unit: 2, .. })
        ));
        ds[4] = 2;
        ds.pop();
        assert!(walk(&ds, IMPLICIT).is_ok());
    }

    #[test]
    fn unknown_vr_is_refused_not_guessed() {
        // "ZZ" would be read by dicom-rs with a 4-byte length: refuse instead of guessing.
        let mut ds = vec![0x09, 0x00, 0x10, 0x00, b'Z', b'Z', 0x04, 0x00];
        ds.extend_from_slice(&[0xF0, 0xFF, 0xFF, 0xFF, 1, 2]);
        let err = walk(&ds, EXPLICIT).unwrap_err();
        assert!(matches!(err, GuardError::UnknownVr { .. }), "{err}");
    }

    #[test]
    fn deep_nesting_is_refused_in_every_encoding() {
        let mut ds = Vec::new();
        for _ in 0..40 {
            ds.extend(explicit_sq_undefined((0x0008, 0x1115)));
            ds.extend(item_undefined());
        }
        let err = walk(&ds, EXPLICIT).unwrap_err();
        assert_eq!(err, GuardError::TooDeep { limit: 32 });
        assert!(err.is_limit());
        // any undefined-length element opens a sequence for dicom-rs, whatever its VR
        let mut ds = Vec::new();
        for _ in 0..40 {
            ds.extend_from_slice(&[0x09, 0x00, 0x10, 0x10, b'U', b'N', 0, 0]);
            ds.extend_from_slice(&UNDEFINED.to_le_bytes());
            ds.extend(item_undefined());
        }
        assert_eq!(
            walk(&ds, EXPLICIT).unwrap_err(),
            GuardError::TooDeep { limit: 32 }
        );
        // implicit VR: private tags with undefined length are sequences too
        let mut ds = Vec::new();
        for _ in 0..40 {
            ds.extend_from_slice(&[0x09, 0x00, 0x10, 0x10]);
            ds.extend_from_slice(&UNDEFINED.to_le_bytes());
            ds.extend(item_undefined());
        }
        assert_eq!(
            walk(&ds, IMPLICIT).unwrap_err(),
            GuardError::TooDeep { limit: 32 }
        );
    }

    #[test]
    fn nested_sequences_and_items_close_properly() {
        // SQ(undefined) { item(undefined) { CS } item-end } seq-end, then a defined SQ
        let mut ds = explicit_sq_undefined((0x0008, 0x1115));
        ds.extend(item_undefined());
        ds.extend_from_slice(&[0x08, 0x00, 0x60, 0x00, b'C', b'S', 2, 0, b'C', b'R']);
        ds.extend(item_end());
        ds.extend(seq_end());
        // (0008,1140) SQ length 18 { item length 10 { CS "DX" } }
        ds.extend_from_slice(&[0x08, 0x00, 0x40, 0x11, b'S', b'Q', 0, 0]);
        ds.extend_from_slice(&18u32.to_le_bytes());
        ds.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
        ds.extend_from_slice(&10u32.to_le_bytes());
        ds.extend_from_slice(&[0x08, 0x00, 0x60, 0x00, b'C', b'S', 2, 0, b'D', b'X']);
        ds.extend_from_slice(&[
            0x10, 0x00, 0x10, 0x00, b'P', b'N', 4, 0, b'A', b'^', b'B', b' ',
        ]);
        let whole = walk(&ds, EXPLICIT).unwrap();
        assert_eq!(whole.header.as_deref(), Some(&ds[..]));
        assert_eq!(walk_bytewise(&ds, EXPLICIT).unwrap(), whole);
        // an unclosed item, a stray delimiter, a non-item inside a sequence
        let cut = &ds[..ds.len() - 12 - 18 - 12 - 16];
        assert!(matches!(
            walk(cut, EXPLICIT),
            Err(GuardError::Truncated { .. })
        ));
        assert!(matches!(
            walk(&seq_end(), EXPLICIT),
            Err(GuardError::StrayDelimiter { .. })
        ));
        assert!(matches!(
            walk(&item_end(), EXPLICIT),
            Err(GuardError::StrayDelimiter { .. })
        ));
        let mut bad = explicit_sq_undefined((0x0008, 0x1115));
        bad.extend_from_slice(&[0x08, 0x00, 0x60, 0x00, b'C', b'S', 2, 0, b'C', b'R']);
        assert!(matches!(
            walk(&bad, EXPLICIT),
            Err(GuardError::ExpectedItem { .. })
        ));
    }

    #[test]
    fn header_stops_at_pixel_data_and_fragments_are_checked() {
        let mut ds = vec![0x28, 0x00, 0x10, 0x00, b'U', b'S', 2, 0, 4, 0];
        let header_len = ds.len();
        ds.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0]);
        ds.extend_from_slice(&UNDEFINED.to_le_bytes());
        ds.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]); // empty offset table
        ds.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 4, 0, 0, 0, 1, 2, 3, 4]);
        ds.extend(seq_end());
        let s = walk(&ds, EXPLICIT).unwrap();
        assert_eq!(s.header.as_deref(), Some(&ds[..header_len]));
        assert_eq!(s.pixel_data_offset, Some(header_len as u64));
        assert_eq!(walk_bytewise(&ds, EXPLICIT).unwrap(), s);
        // a fragment longer than what follows, or of undefined length
        let mut long = ds[..header_len + 12].to_vec();
        long.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0x7F, 1]);
        assert!(walk(&long, EXPLICIT).is_err());
        let mut undefined = ds[..header_len + 12].to_vec();
        undefined.extend(item_undefined());
        assert!(matches!(
            walk(&undefined, EXPLICIT),
            Err(GuardError::UndefinedFragment { .. })
        ));
    }

    #[test]
    fn header_and_element_caps() {
        let el = [
            0x10, 0x00, 0x10, 0x00, b'P', b'N', 4, 0, b'A', b'^', b'B', b' ',
        ];
        let ds: Vec<u8> = el.iter().copied().cycle().take(el.len() * 100).collect();
        let small = Limits {
            max_header_bytes: 600,
            ..Limits::default()
        };
        let err = check_data_set(&ds, EXPLICIT, small, true).unwrap_err();
        assert_eq!(err, GuardError::HeaderTooLarge { limit: 600 });
        let few = Limits {
            max_header_elements: 50,
            ..Limits::default()
        };
        let err = check_data_set(&ds, EXPLICIT, few, true).unwrap_err();
        assert_eq!(err, GuardError::TooManyElements { limit: 50 });
        assert!(check_data_set(&ds, EXPLICIT, Limits::default(), true).is_ok());
    }

    #[test]
    fn deflated_data_sets_stream_within_their_cap() {
        use std::io::Write;
        let el = [
            0x10, 0x00, 0x10, 0x00, b'P', b'N', 4, 0, b'A', b'^', b'B', b' ',
        ];
        let ds: Vec<u8> = el.iter().copied().cycle().take(el.len() * 1000).collect();
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(&ds).unwrap();
        let deflated = z.finish().unwrap();
        let ts = "1.2.840.10008.1.2.1.99";
        let s = walk(&deflated, ts).unwrap();
        assert_eq!(s.size, ds.len() as u64);
        assert_eq!(s.header.as_deref(), Some(&ds[..]));
        assert_eq!(walk_bytewise(&deflated, ts).unwrap(), s);
        let capped = Limits::with_max_inflated(1000);
        assert_eq!(
            check_data_set(&deflated, ts, capped, false).unwrap_err(),
            GuardError::InflatedTooLarge { limit: 1000 }
        );
        // a bomb: 64 MiB of zeros in a (0009,1010) OB inflates past a 1 MiB cap, streaming
        let mut bomb = vec![0x09, 0x00, 0x10, 0x10, b'O', b'B', 0, 0];
        bomb.extend_from_slice(&(64u32 << 20).to_le_bytes());
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(&bomb).unwrap();
        z.write_all(&vec![0u8; 64 << 20]).unwrap();
        let bomb = z.finish().unwrap();
        assert!(bomb.len() < 1 << 20);
        assert_eq!(
            check_data_set(&bomb, ts, Limits::with_max_inflated(1 << 20), false).unwrap_err(),
            GuardError::InflatedTooLarge { limit: 1 << 20 }
        );
        assert!(walk(&deflated[..deflated.len() / 2], ts).is_err());
    }

    #[test]
    fn big_endian_and_implicit_lengths() {
        // explicit VR big endian: (0028,0010) US 2 = 512
        let ds = [0x00, 0x28, 0x00, 0x10, b'U', b'S', 0, 2, 0x02, 0x00];
        assert!(walk(&ds, "1.2.840.10008.1.2.2").is_ok());
        assert!(walk(&ds[..9], "1.2.840.10008.1.2.2").is_err());
        // implicit VR: (0008,1115) is SQ in the dictionary: a defined-length sequence of items
        let mut ds = vec![0x08, 0x00, 0x15, 0x11];
        ds.extend_from_slice(&8u32.to_le_bytes());
        ds.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]);
        assert!(walk(&ds, IMPLICIT).is_ok());
        ds[4] = 12; // the sequence claims more than the data set holds
        assert!(walk(&ds, IMPLICIT).is_err());
    }

    #[test]
    fn well_formed_file_passes() {
        let el = [
            0x10, 0x00, 0x10, 0x00, b'P', b'N', 4, 0, b'A', b'^', b'B', b' ',
        ];
        let layout = check(&file_with(&el), Limits::default()).unwrap();
        assert_eq!(layout.transfer_syntax, "1.2.840.10008.1.2.1");
        assert_eq!(layout.magic_offset, 128);
        assert_eq!(layout.dataset_offset, 128 + 4 + 8 + 20);
    }
}
