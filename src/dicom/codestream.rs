//! Codestream headers checked against the data set before a codec sees them (decode step).
//!
//! The codec crates trust the codestream: a JPEG whose frame header disagrees with Rows/Columns,
//! an RLE header whose segment table points outside its fragment, or a JPEG-LS header claiming
//! 65535 × 65535 × 3 samples make them panic or allocate without bound. Here each codestream's
//! own header (JPEG SOFn, JPEG-LS SOF55, JPEG 2000 SIZ, the RLE segment table) is read and must
//! agree with Rows, Columns, Samples per Pixel and Bits Allocated; native pixel data must hold a
//! whole frame. Only then is the frame decoded.

/// What the data set says a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameShape {
    pub rows: u32,
    pub columns: u32,
    pub samples_per_pixel: u16,
    pub bits_allocated: u16,
    pub bits_stored: u16,
}

/// Why a codestream was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CodestreamError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, CodestreamError> {
    Err(CodestreamError(msg.into()))
}

/// How a transfer syntax encodes its pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Uncompressed (native) pixel data, deflated data sets included.
    Native,
    Jpeg,
    JpegLs,
    Jpeg2000,
    Rle,
}

impl Codec {
    /// The codec of a transfer syntax, `None` when it is not one this worker decodes.
    pub fn of(transfer_syntax: &str) -> Option<Self> {
        Some(match crate::dicom::text::trim_padding(transfer_syntax) {
            "1.2.840.10008.1.2"
            | "1.2.840.10008.1.2.1"
            | "1.2.840.10008.1.2.1.99"
            | "1.2.840.10008.1.2.2" => Self::Native,
            "1.2.840.10008.1.2.4.50"
            | "1.2.840.10008.1.2.4.51"
            | "1.2.840.10008.1.2.4.57"
            | "1.2.840.10008.1.2.4.70" => Self::Jpeg,
            "1.2.840.10008.1.2.4.80" | "1.2.840.10008.1.2.4.81" => Self::JpegLs,
            "1.2.840.10008.1.2.4.90" | "1.2.840.10008.1.2.4.91" => Self::Jpeg2000,
            "1.2.840.10008.1.2.5" => Self::Rle,
            _ => return None,
        })
    }
}

/// Check the first frame: `native_len` is the length of native pixel data (for
/// [`Codec::Native`]); `head` the first bytes of the frame's codestream (the first fragments of
/// encapsulated pixel data, up to [`HEAD_BYTES`]) and `fragment` its first fragment (for RLE,
/// whose segments are all in it).
pub fn check_frame(
    codec: Codec,
    shape: FrameShape,
    native_len: Option<u64>,
    head: &[u8],
    fragment: &[u8],
) -> Result<(), CodestreamError> {
    check_shape(shape)?;
    match codec {
        Codec::Native => check_native(shape, native_len.unwrap_or(0)),
        Codec::Jpeg => check_jpeg(shape, head, false),
        Codec::JpegLs => check_jpeg(shape, head, true),
        Codec::Jpeg2000 => check_j2k(shape, head),
        Codec::Rle => check_rle(shape, fragment),
    }
}

/// Bytes of the frame's codestream read for its header.
pub const HEAD_BYTES: usize = 1 << 20;

fn check_shape(s: FrameShape) -> Result<(), CodestreamError> {
    if s.rows == 0 || s.columns == 0 {
        return err("Rows or Columns is 0");
    }
    if !matches!(s.samples_per_pixel, 1 | 3) {
        return err(format!(
            "Samples per Pixel {} is not 1 or 3",
            s.samples_per_pixel
        ));
    }
    if !matches!(s.bits_allocated, 1 | 8 | 16 | 32) {
        return err(format!(
            "Bits Allocated {} is not 1, 8, 16 or 32",
            s.bits_allocated
        ));
    }
    if s.bits_stored == 0 || s.bits_stored > s.bits_allocated {
        return err(format!(
            "Bits Stored {} does not fit Bits Allocated {}",
            s.bits_stored, s.bits_allocated
        ));
    }
    Ok(())
}

/// Bytes of one native frame.
fn frame_bytes(s: FrameShape) -> u64 {
    let bits = u64::from(s.rows)
        * u64::from(s.columns)
        * u64::from(s.samples_per_pixel)
        * u64::from(s.bits_allocated);
    bits.div_ceil(8)
}

fn check_native(s: FrameShape, len: u64) -> Result<(), CodestreamError> {
    let need = frame_bytes(s);
    if len < need {
        return err(format!(
            "native pixel data holds {len} bytes; one {}x{} frame of {} sample(s) at {} bits needs {need}",
            s.rows, s.columns, s.samples_per_pixel, s.bits_allocated
        ));
    }
    Ok(())
}

fn be16(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

fn be32(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_be_bytes([
        *b.get(i)?,
        *b.get(i + 1)?,
        *b.get(i + 2)?,
        *b.get(i + 3)?,
    ]))
}

fn le32(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_le_bytes([
        *b.get(i)?,
        *b.get(i + 1)?,
        *b.get(i + 2)?,
        *b.get(i + 3)?,
    ]))
}

/// A frame header: precision, lines, samples per line, components.
struct FrameHeader {
    precision: u8,
    lines: u16,
    samples_per_line: u16,
    components: u8,
}

/// Find the frame header (SOFn for JPEG, SOF55 for JPEG-LS) by walking the marker segments from
/// SOI.
fn jpeg_frame_header(head: &[u8], ls: bool) -> Result<FrameHeader, CodestreamError> {
    if head.get(..2) != Some(&[0xFF, 0xD8]) {
        return err("the codestream does not start with a JPEG SOI marker");
    }
    let mut pos = 2usize;
    loop {
        // skip fill bytes
        while head.get(pos) == Some(&0xFF) && head.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        let (Some(&0xFF), Some(&marker)) = (head.get(pos), head.get(pos + 1)) else {
            return err("no frame header (SOF) before the end of the codestream head");
        };
        pos += 2;
        // markers without a length
        if marker == 0x01 || (0xD0..=0xD8).contains(&marker) {
            continue;
        }
        if marker == 0xD9 || marker == 0xDA {
            return err("the scan starts before any frame header (SOF)");
        }
        let Some(len) = be16(head, pos) else {
            return err("a marker segment is cut short");
        };
        let len = usize::from(len);
        if len < 2 {
            return err("a marker segment has a length below 2");
        }
        let is_sof = if ls {
            marker == 0xF7
        } else {
            matches!(marker, 0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF)
        };
        if is_sof {
            let (Some(&precision), Some(lines), Some(samples_per_line), Some(&components)) = (
                head.get(pos + 2),
                be16(head, pos + 3),
                be16(head, pos + 5),
                head.get(pos + 7),
            ) else {
                return err("the frame header is cut short");
            };
            if len < 8 + 3 * usize::from(components) {
                return err("the frame header is shorter than its components need");
            }
            return Ok(FrameHeader {
                precision,
                lines,
                samples_per_line,
                components,
            });
        }
        if !ls && marker == 0xF7 {
            return err("a JPEG-LS frame in a JPEG transfer syntax");
        }
        pos += len;
    }
}

fn check_jpeg(s: FrameShape, head: &[u8], ls: bool) -> Result<(), CodestreamError> {
    let kind = if ls { "JPEG-LS" } else { "JPEG" };
    let h = jpeg_frame_header(head, ls)?;
    if u32::from(h.lines) != s.rows || u32::from(h.samples_per_line) != s.columns {
        return err(format!(
            "the {kind} frame is {}x{} but Rows x Columns is {}x{}",
            h.lines, h.samples_per_line, s.rows, s.columns
        ));
    }
    if u16::from(h.components) != s.samples_per_pixel {
        return err(format!(
            "the {kind} frame has {} component(s) but Samples per Pixel is {}",
            h.components, s.samples_per_pixel
        ));
    }
    if h.precision < 2 || u16::from(h.precision) > s.bits_allocated.max(8) || h.precision > 16 {
        return err(format!(
            "the {kind} precision of {} bits does not fit Bits Allocated {}",
            h.precision, s.bits_allocated
        ));
    }
    Ok(())
}

/// The JPEG 2000 codestream inside `head`: raw (SOC first), or the `jp2c` box of a JP2 file.
fn j2k_codestream(head: &[u8]) -> Result<&[u8], CodestreamError> {
    if head.get(..2) == Some(&[0xFF, 0x4F]) {
        return Ok(head);
    }
    let mut pos = 0usize;
    while let Some(len) = be32(head, pos) {
        let kind = head.get(pos + 4..pos + 8);
        let (start, size) = match len {
            1 => {
                let hi = be32(head, pos + 8).unwrap_or(0);
                let lo = be32(head, pos + 12).unwrap_or(0);
                (
                    pos + 16,
                    (u64::from(hi) << 32 | u64::from(lo)).saturating_sub(16),
                )
            }
            0 => (pos + 8, u64::MAX),
            n if n >= 8 => (pos + 8, u64::from(n) - 8),
            _ => return err("a JP2 box has a length below 8"),
        };
        if kind == Some(b"jp2c") {
            return Ok(head.get(start..).unwrap_or_default());
        }
        pos = usize::try_from(size)
            .ok()
            .and_then(|s| start.checked_add(s))
            .filter(|&p| p <= head.len())
            .ok_or_else(|| CodestreamError("no JPEG 2000 codestream found".into()))?;
    }
    err("no JPEG 2000 codestream (SOC marker) found")
}

fn check_j2k(s: FrameShape, head: &[u8]) -> Result<(), CodestreamError> {
    let cs = j2k_codestream(head)?;
    if cs.get(..4) != Some(&[0xFF, 0x4F, 0xFF, 0x51]) {
        return err("the JPEG 2000 codestream does not start with SOC then SIZ");
    }
    let siz = &cs[4..];
    let field = |i: usize| be32(siz, i);
    let (Some(lsiz), Some(xsiz), Some(ysiz), Some(xo), Some(yo), Some(xt), Some(yt)) = (
        be16(siz, 0),
        field(4),
        field(8),
        field(12),
        field(16),
        field(20),
        field(24),
    ) else {
        return err("the SIZ marker segment is cut short");
    };
    let (Some(csiz), Some(xto), Some(yto)) = (be16(siz, 36), field(28), field(32)) else {
        return err("the SIZ marker segment is cut short");
    };
    if usize::from(lsiz) != 38 + 3 * usize::from(csiz) || siz.len() < usize::from(lsiz) {
        return err("the SIZ marker segment length does not match its components");
    }
    if xsiz <= xo || ysiz <= yo || xt == 0 || yt == 0 || xto > xo || yto > yo {
        return err("the SIZ image or tile geometry is inconsistent");
    }
    let (width, height) = (xsiz - xo, ysiz - yo);
    if height != s.rows || width != s.columns {
        return err(format!(
            "the JPEG 2000 image is {height}x{width} but Rows x Columns is {}x{}",
            s.rows, s.columns
        ));
    }
    if csiz != s.samples_per_pixel {
        return err(format!(
            "the JPEG 2000 image has {csiz} component(s) but Samples per Pixel is {}",
            s.samples_per_pixel
        ));
    }
    let tiles = u64::from(xsiz - xto).div_ceil(u64::from(xt))
        * u64::from(ysiz - yto).div_ceil(u64::from(yt));
    if tiles > 65_535 {
        return err(format!("the JPEG 2000 image has {tiles} tiles"));
    }
    for c in 0..usize::from(csiz) {
        let base = 38 + 3 * c;
        let (Some(&ssiz), Some(&xr), Some(&yr)) =
            (siz.get(base), siz.get(base + 1), siz.get(base + 2))
        else {
            return err("the SIZ component table is cut short");
        };
        let bits = u16::from(ssiz & 0x7F) + 1;
        if bits > s.bits_allocated.max(8) || bits > 16 {
            return err(format!(
                "JPEG 2000 component {c} has {bits} bits, more than Bits Allocated {}",
                s.bits_allocated
            ));
        }
        if xr != 1 || yr != 1 {
            return err(format!("JPEG 2000 component {c} is subsampled"));
        }
    }
    Ok(())
}

fn check_rle(s: FrameShape, fragment: &[u8]) -> Result<(), CodestreamError> {
    if !s.bits_allocated.is_multiple_of(8) {
        return err(format!("RLE with Bits Allocated {}", s.bits_allocated));
    }
    let Some(segments) = le32(fragment, 0) else {
        return err("the RLE header is cut short");
    };
    let expected = u32::from(s.samples_per_pixel) * u32::from(s.bits_allocated / 8);
    if segments != expected {
        return err(format!(
            "the RLE header names {segments} segment(s); {} sample(s) of {} bits need {expected}",
            s.samples_per_pixel, s.bits_allocated
        ));
    }
    if fragment.len() < 64 {
        return err("the RLE header is cut short");
    }
    let mut starts = Vec::with_capacity(segments as usize);
    for i in 0..segments as usize {
        let offset = le32(fragment, 4 + 4 * i).map_or(u64::MAX, u64::from);
        let previous = starts.last().copied().unwrap_or(0);
        if (i == 0 && offset != 64)
            || (i > 0 && offset <= previous)
            || offset >= fragment.len() as u64
        {
            return err(format!(
                "RLE segment {i} starts at byte {offset}, outside its {}-byte fragment or out of order",
                fragment.len()
            ));
        }
        starts.push(offset);
    }
    // every segment must decode to a whole plane: the codec indexes its output by the image size
    let plane = u64::from(s.rows) * u64::from(s.columns);
    for (i, &start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(fragment.len() as u64);
        let segment = &fragment[start as usize..end as usize];
        let decoded = packbits_length(segment);
        if decoded < plane {
            return err(format!(
                "RLE segment {i} decodes to {decoded} bytes; a {}x{} plane needs {plane}",
                s.rows, s.columns
            ));
        }
    }
    Ok(())
}

/// Bytes a PackBits segment decodes to, read as the codec reads it (a run cut short by the end
/// of the segment counts what is there).
fn packbits_length(segment: &[u8]) -> u64 {
    let mut pos = 0usize;
    let mut out = 0u64;
    while pos < segment.len() {
        let h = segment[pos] as i8;
        pos += 1;
        if (-127..=-1).contains(&h) {
            if pos >= segment.len() {
                break;
            }
            out += (1 - i64::from(h)) as u64;
            pos += 1;
        } else if h >= 0 {
            let n = h as usize + 1;
            out += n.min(segment.len() - pos) as u64;
            pos += n;
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;

    const SHAPE: FrameShape = FrameShape {
        rows: 4,
        columns: 6,
        samples_per_pixel: 1,
        bits_allocated: 16,
        bits_stored: 12,
    };

    fn jpeg(marker: u8, precision: u8, lines: u16, cols: u16, comps: u8) -> Vec<u8> {
        let mut v = vec![0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 0, 0, 0xFF, marker];
        let len = 8 + 3 * u16::from(comps);
        v.extend_from_slice(&len.to_be_bytes());
        v.push(precision);
        v.extend_from_slice(&lines.to_be_bytes());
        v.extend_from_slice(&cols.to_be_bytes());
        v.push(comps);
        for c in 0..comps {
            v.extend_from_slice(&[c + 1, 0x11, 0]);
        }
        v
    }

    #[test]
    fn jpeg_and_jpeg_ls_frames_must_match_the_data_set() {
        let ok = |c, h: &[u8]| check_frame(c, SHAPE, None, h, h);
        assert!(ok(Codec::Jpeg, &jpeg(0xC3, 12, 4, 6, 1)).is_ok());
        let e = ok(Codec::Jpeg, &jpeg(0xC3, 12, 5, 6, 1)).unwrap_err();
        assert!(e.0.contains("5x6"), "{e}");
        assert!(ok(Codec::Jpeg, &jpeg(0xC0, 8, 4, 6, 3)).is_err());
        // the 25.7 GB JPEG-LS header
        assert!(ok(Codec::JpegLs, &jpeg(0xF7, 16, 65535, 65535, 3)).is_err());
        assert!(ok(Codec::JpegLs, &jpeg(0xF7, 12, 4, 6, 1)).is_ok());
        assert!(ok(Codec::Jpeg, &[0xFF, 0xD8, 0xFF]).is_err());
        assert!(ok(Codec::Jpeg, b"not a jpeg").is_err());
    }

    fn j2k(width: u32, height: u32, comps: u16, ssiz: u8) -> Vec<u8> {
        let mut v = vec![0xFF, 0x4F, 0xFF, 0x51];
        v.extend_from_slice(&(38 + 3 * comps).to_be_bytes());
        v.extend_from_slice(&[0, 0]);
        for f in [width, height, 0, 0, width, height, 0, 0] {
            v.extend_from_slice(&f.to_be_bytes());
        }
        v.extend_from_slice(&comps.to_be_bytes());
        for _ in 0..comps {
            v.extend_from_slice(&[ssiz, 1, 1]);
        }
        v
    }

    #[test]
    fn jpeg_2000_size_must_match() {
        let ok = |h: &[u8]| check_frame(Codec::Jpeg2000, SHAPE, None, h, h);
        assert!(ok(&j2k(6, 4, 1, 11)).is_ok());
        assert!(ok(&j2k(6, 5, 1, 11)).is_err());
        assert!(ok(&j2k(6, 4, 3, 11)).is_err());
        assert!(ok(&j2k(6, 4, 1, 23)).is_err());
        assert!(ok(&j2k(6, 4, 1, 11)[..20]).is_err());
    }

    /// Two PackBits segments of a 4 x 6 plane (24 bytes each): `first` then `second`.
    fn rle(first: &[u8], second: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 64];
        f[0] = 2;
        f[4] = 64;
        f[8..12].copy_from_slice(&(64 + first.len() as u32).to_le_bytes());
        f.extend_from_slice(first);
        f.extend_from_slice(second);
        f
    }

    #[test]
    fn rle_segments_must_fit_their_fragment_and_fill_their_plane() {
        let ok = |f: &[u8]| check_frame(Codec::Rle, SHAPE, None, f, f);
        // a run of 24 zeros (-23: 24 copies), and 24 literal bytes
        let run = [0xE9u8, 0];
        let mut literal = vec![23u8];
        literal.extend_from_slice(&[5; 24]);
        assert!(ok(&rle(&run, &literal)).is_ok());
        // the second segment starts past the fragment's end
        let mut bad = rle(&run, &literal);
        bad[8..12].copy_from_slice(&500u32.to_le_bytes());
        assert!(ok(&bad).is_err());
        // one segment for 16-bit samples
        let mut one = rle(&run, &literal);
        one[0] = 1;
        assert!(ok(&one).is_err());
        // a segment that decodes to less than a plane (the codec would index past it: the
        // fuzzing crash crash-33c21602975f77ad of dicom-transfer-syntax-registry 0.10.1)
        let short = [0xEAu8, 0]; // 23 copies
        let e = ok(&rle(&run, &short)).unwrap_err();
        assert!(e.0.contains("decodes to 23 bytes"), "{e}");
        // a literal cut by the segment's end counts what is there
        assert!(ok(&rle(&run, &literal[..20])).is_err());
        assert_eq!(packbits_length(&[0x80, 0x81, 7, 1, 9]), 128 + 1);
    }

    #[test]
    fn native_frames_must_be_whole() {
        assert!(check_frame(Codec::Native, SHAPE, Some(48), &[], &[]).is_ok());
        assert!(check_frame(Codec::Native, SHAPE, Some(47), &[], &[]).is_err());
        let bad = FrameShape {
            bits_stored: 17,
            ..SHAPE
        };
        assert!(check_frame(Codec::Native, bad, Some(48), &[], &[]).is_err());
    }
}
