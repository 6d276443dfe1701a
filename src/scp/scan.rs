//! A structural check of a received data set before it is parsed: every declared length must fit
//! in the bytes that arrived, sequences and items must be closed, and the data set must end on an
//! element boundary. It catches truncated data sets (answered C000) and keeps the parser from
//! allocating by a forged length (a few bytes declaring gigabytes).
//!
//! Deflated data sets are checked by the parser alone (their lengths apply to the inflated stream).

use dicom_core::Tag;
use dicom_core::dictionary::DataDictionary;
use dicom_core::header::VR;
use dicom_dictionary_std::StandardDataDictionary;

const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: Tag = Tag(0xFFFE, 0xE000);
const ITEM_END: Tag = Tag(0xFFFE, 0xE00D);
const SEQUENCE_END: Tag = Tag(0xFFFE, 0xE0DD);
const MAX_DEPTH: usize = 32;

/// How the data set is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    pub explicit_vr: bool,
    pub big_endian: bool,
}

impl Encoding {
    /// The encoding of a transfer syntax, or `None` for deflated data (not scanned).
    pub fn of(transfer_syntax: &str) -> Option<Self> {
        match transfer_syntax {
            "1.2.840.10008.1.2" => Some(Self {
                explicit_vr: false,
                big_endian: false,
            }),
            "1.2.840.10008.1.2.2" => Some(Self {
                explicit_vr: true,
                big_endian: true,
            }),
            "1.2.840.10008.1.2.1.99" => None,
            _ => Some(Self {
                explicit_vr: true,
                big_endian: false,
            }),
        }
    }
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
    enc: Encoding,
}

/// Check the structure of `data`; the error says where it breaks.
pub fn check(data: &[u8], enc: Encoding) -> Result<(), String> {
    let mut c = Cursor { data, pos: 0, enc };
    c.dataset(data.len(), 0, false)
}

impl Cursor<'_> {
    fn u16(&mut self) -> Result<u16, String> {
        let big = self.enc.big_endian;
        let b = self.take(2)?;
        Ok(if big {
            u16::from_be_bytes([b[0], b[1]])
        } else {
            u16::from_le_bytes([b[0], b[1]])
        })
    }

    fn u32(&mut self) -> Result<u32, String> {
        let big = self.enc.big_endian;
        let b = self.take(4)?;
        let a = [b[0], b[1], b[2], b[3]];
        Ok(if big {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        })
    }

    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.data.len())
            .ok_or_else(|| format!("data set truncated at byte {}", self.pos))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn tag(&mut self) -> Result<Tag, String> {
        Ok(Tag(self.u16()?, self.u16()?))
    }

    /// Elements until `end`, or until an item delimiter when `in_undefined_item`.
    fn dataset(&mut self, end: usize, depth: usize, in_undefined_item: bool) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err("sequences nested too deep".into());
        }
        while self.pos < end {
            let at = self.pos;
            let tag = self.tag()?;
            if tag == ITEM_END {
                if !in_undefined_item {
                    return Err(format!("unexpected item delimiter at byte {at}"));
                }
                self.u32()?;
                return Ok(());
            }
            if tag.0 == 0xFFFE {
                return Err(format!("unexpected {tag} at byte {at}"));
            }
            let (vr, len) = self.header(tag)?;
            if len == UNDEFINED {
                if vr == VR::SQ || vr == VR::UN {
                    self.items(depth + 1, true)?;
                } else if vr == VR::OB || vr == VR::OW {
                    self.items(depth + 1, false)?; // encapsulated pixel data fragments
                } else {
                    return Err(format!("{tag} at byte {at}: undefined length on VR {vr:?}"));
                }
                continue;
            }
            let len = len as usize;
            if len > end.saturating_sub(self.pos) {
                return Err(format!(
                    "{tag} at byte {at} declares {len} bytes but {} remain",
                    end.saturating_sub(self.pos)
                ));
            }
            if vr == VR::SQ {
                let stop = self.pos + len;
                self.defined_items(stop, depth + 1)?;
            } else {
                self.pos += len;
            }
        }
        if in_undefined_item {
            return Err("item not closed by an item delimiter".into());
        }
        if self.pos != end {
            return Err(format!(
                "element runs past its container at byte {}",
                self.pos
            ));
        }
        Ok(())
    }

    fn header(&mut self, tag: Tag) -> Result<(VR, u32), String> {
        if !self.enc.explicit_vr {
            let vr = StandardDataDictionary
                .by_tag(tag)
                .map(|e| e.vr.relaxed())
                .unwrap_or(VR::UN);
            return Ok((vr, self.u32()?));
        }
        let code = self.take(2)?;
        let vr = VR::from_binary([code[0], code[1]]).unwrap_or(VR::UN);
        let long = matches!(
            vr,
            VR::OB
                | VR::OD
                | VR::OF
                | VR::OL
                | VR::OV
                | VR::OW
                | VR::SQ
                | VR::SV
                | VR::UC
                | VR::UN
                | VR::UR
                | VR::UT
                | VR::UV
        );
        if long {
            self.take(2)?;
            Ok((vr, self.u32()?))
        } else {
            Ok((vr, u32::from(self.u16()?)))
        }
    }

    /// Items of an undefined-length sequence (or pixel data fragments) up to the sequence delimiter.
    fn items(&mut self, depth: usize, nested_datasets: bool) -> Result<(), String> {
        loop {
            let at = self.pos;
            let tag = self.tag()?;
            let len = self.u32()?;
            if tag == SEQUENCE_END {
                return Ok(());
            }
            if tag != ITEM {
                return Err(format!("expected an item at byte {at}, found {tag}"));
            }
            self.item_body(len, depth, nested_datasets, at)?;
        }
    }

    /// Items of a defined-length sequence, filling exactly `stop`.
    fn defined_items(&mut self, stop: usize, depth: usize) -> Result<(), String> {
        while self.pos < stop {
            let at = self.pos;
            let tag = self.tag()?;
            let len = self.u32()?;
            if tag != ITEM {
                return Err(format!("expected an item at byte {at}, found {tag}"));
            }
            self.item_body(len, depth, true, at)?;
        }
        if self.pos != stop {
            return Err(format!(
                "sequence items run past the sequence at byte {}",
                self.pos
            ));
        }
        Ok(())
    }

    fn item_body(
        &mut self,
        len: u32,
        depth: usize,
        dataset: bool,
        at: usize,
    ) -> Result<(), String> {
        if len == UNDEFINED {
            if !dataset {
                return Err(format!(
                    "pixel data fragment at byte {at} has undefined length"
                ));
            }
            return self.dataset(self.data.len(), depth, true);
        }
        let len = len as usize;
        if len > self.data.len() - self.pos {
            return Err(format!(
                "item at byte {at} declares {len} bytes but {} remain",
                self.data.len() - self.pos
            ));
        }
        let stop = self.pos + len;
        if dataset {
            self.dataset(stop, depth, false)
        } else {
            self.pos = stop;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LE: Encoding = Encoding {
        explicit_vr: true,
        big_endian: false,
    };

    fn element(group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&group.to_le_bytes());
        v.extend_from_slice(&elem.to_le_bytes());
        v.extend_from_slice(vr);
        v.extend_from_slice(&(value.len() as u16).to_le_bytes());
        v.extend_from_slice(value);
        v
    }

    #[test]
    fn accepts_well_formed_and_refuses_truncated_or_forged() {
        let mut ds = element(0x0008, 0x0060, b"CS", b"CR");
        ds.extend(element(0x0010, 0x0010, b"PN", b"DOE^J "));
        assert_eq!(check(&ds, LE), Ok(()));
        assert!(check(&ds[..ds.len() - 1], LE).is_err());
        // OB with a forged 4 GB length
        let mut forged = ds.clone();
        forged.extend_from_slice(&[
            0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xF0, 0xFF, 0xFF, 0xFF,
        ]);
        assert!(check(&forged, LE).unwrap_err().contains("declares"));
        // undefined-length sequence never closed
        let mut open = ds;
        open.extend_from_slice(&[
            0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        assert!(check(&open, LE).is_err());
    }
}
