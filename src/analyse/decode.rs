//! Decode: DICOM bytes → stored pixel values → a grey image in [0, 1] (0 = black), the first step
//! of the pipeline (spool → **decode** → preprocess → infer).
//!
//! The steps, each defined exactly so that the Python reference (`tests/python/reference.py`)
//! reproduces them; `docs/preprocessing.md` states the same rules in prose:
//!
//! 1. **Guard**: the file must fit the size cap, and every declared element length must fit in
//!    the bytes that remain ([`crate::dicom::guard`]), before dicom-rs parses anything.
//! 2. **Pixels**: the first frame is decoded by dicom-pixeldata (any transfer syntax of
//!    [`crate::dicom::sop_classes::TRANSFER_SYNTAXES`]); 8- or 16-bit samples are masked to
//!    BitsStored (after shifting by `HighBit + 1 - BitsStored`) and sign-extended when
//!    PixelRepresentation is 1. Only MONOCHROME1/MONOCHROME2 with one sample per pixel is accepted.
//! 3. **Modality LUT**: `m = RescaleSlope · v + RescaleIntercept` (1 and 0 when absent). A Modality
//!    LUT Sequence is not applied (not used by CR/DX for presentation).
//! 4. **VOI**: the first Window Center/Width pair, with VOI LUT Function LINEAR (default),
//!    LINEAR_EXACT or SIGMOID as in PS3.3 C.11.2.1.2, scaled to [0, 1]; else the first item of
//!    the VOI LUT Sequence, `LUTData[clamp(round(m) − first mapped, 0, n − 1)] / (2^bits − 1)`;
//!    else the fallback: min/max of `m` over the image, `(m − min) / (max − min)` (0 when flat).
//! 5. **MONOCHROME1** is inverted: `y = 1 − y` (dicom-pixeldata never inverts).

use std::path::Path;

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::PixelDecoder;
use serde::{Deserialize, Serialize};

use crate::dicom::codestream::{self, Codec, CodestreamError, FrameShape};
use crate::dicom::guard::{self, GuardError};
use crate::dicom::sop_classes;
use crate::dicom::text::element_text_lenient;

/// Caps applied to every file before decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecodeLimits {
    /// Largest file (and largest inflated deflated data set) accepted, in bytes.
    pub max_file_bytes: u64,
    /// Largest frame accepted, in pixels (rows × columns).
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_file_bytes: 1 << 30,
            max_pixels: 100_000_000,
        }
    }
}

/// Why a file could not be decoded; the message is the reason recorded for the image.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("cannot read the file: {0}")]
    Read(std::io::Error),
    #[error("file is {size} bytes, over the {limit}-byte cap")]
    TooLarge { size: u64, limit: u64 },
    #[error("malformed DICOM: {0}")]
    Malformed(#[from] GuardError),
    #[error("cannot parse the DICOM data set: {0}")]
    Parse(String),
    #[error("transfer syntax {0} is not one this worker decodes")]
    TransferSyntax(String),
    #[error("the data set has no pixel data")]
    NoPixelData,
    #[error("unsupported image: {0}")]
    Unsupported(String),
    #[error("frame of {rows}x{columns} pixels exceeds the {limit}-pixel cap")]
    TooManyPixels { rows: u32, columns: u32, limit: u64 },
    #[error("pixel data does not match the image attributes ({transfer_syntax}): {source}")]
    Codestream {
        transfer_syntax: String,
        source: CodestreamError,
    },
    #[error("pixel data cannot be decoded ({transfer_syntax}): {message}")]
    Pixels {
        transfer_syntax: String,
        message: String,
    },
}

/// A coded entry of a DICOM code sequence (ViewCodeSequence, AnatomicRegionSequence).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Code {
    pub value: String,
    pub scheme: String,
    pub meaning: String,
}

/// Physical size of a pixel, in millimetres, and which attribute gave it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct PixelSpacing {
    /// Distance between rows (vertical size of a pixel), mm.
    pub row_mm: f64,
    /// Distance between columns (horizontal size of a pixel), mm.
    pub column_mm: f64,
    /// `PixelSpacing` (calibrated to the patient) or `ImagerPixelSpacing` (detector plane).
    pub source: SpacingSource,
}

/// The attribute a [`PixelSpacing`] came from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum SpacingSource {
    PixelSpacing,
    ImagerPixelSpacing,
}

/// The attributes the pipeline reads, parsed once. No patient-identifying attribute is read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageAttributes {
    pub sop_instance_uid: Option<String>,
    pub sop_class_uid: Option<String>,
    pub study_instance_uid: Option<String>,
    pub series_instance_uid: Option<String>,
    pub transfer_syntax: String,
    pub modality: Option<String>,
    pub body_part_examined: Option<String>,
    pub view_position: Option<String>,
    pub view_codes: Vec<Code>,
    pub anatomic_region_codes: Vec<Code>,
    pub photometric_interpretation: Option<String>,
    pub rows: Option<u32>,
    pub columns: Option<u32>,
    pub pixel_spacing: Option<PixelSpacing>,
}

/// A parsed DICOM file whose pixels are not decoded yet.
pub struct DicomFile {
    pub attributes: ImageAttributes,
    object: DefaultDicomObject,
}

impl std::fmt::Debug for DicomFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DicomFile")
            .field("attributes", &self.attributes)
            .finish_non_exhaustive()
    }
}

/// How the VOI step was done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Voi {
    /// Window Center/Width from the file, with its VOI LUT Function.
    Window {
        center: f64,
        width: f64,
        function: VoiFunction,
    },
    /// VOI LUT Sequence item: first mapped value, bits per entry, table.
    #[serde(rename = "voi_lut")]
    Lut {
        first_mapped: i32,
        bits: u8,
        #[serde(skip)]
        table: Vec<u16>,
    },
    /// No VOI in the file: min/max of the modality values.
    MinMax { min: f64, max: f64 },
}

/// VOI LUT Function (0028,1056).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VoiFunction {
    Linear,
    LinearExact,
    Sigmoid,
}

/// The first frame's stored values and the attributes that turn them into a grey image.
#[derive(Debug, Clone)]
pub struct StoredImage {
    pub rows: usize,
    pub columns: usize,
    /// Stored values, masked to BitsStored and sign-extended, row-major.
    pub values: Vec<i32>,
    pub bits_stored: u16,
    pub signed: bool,
    pub monochrome1: bool,
    pub rescale_slope: f64,
    pub rescale_intercept: f64,
    /// The VOI from the file (window or LUT); `None` selects the min/max fallback.
    pub voi: Option<Voi>,
}

/// A single-channel float image, row-major.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GreyImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<f32>,
}

/// Read and parse a file from disk (see [`open_bytes`]).
pub fn open_path(path: &Path, limits: &DecodeLimits) -> Result<DicomFile, DecodeError> {
    let size = std::fs::metadata(path).map_err(DecodeError::Read)?.len();
    if size > limits.max_file_bytes {
        return Err(DecodeError::TooLarge {
            size,
            limit: limits.max_file_bytes,
        });
    }
    let bytes = std::fs::read(path).map_err(DecodeError::Read)?;
    open_bytes(&bytes, limits)
}

/// Parse a Part 10 file held in memory (with or without its 128-byte preamble), after the
/// [`guard`] walk. The pixels are decoded later, by [`DicomFile::stored_image`].
pub fn open_bytes(bytes: &[u8], limits: &DecodeLimits) -> Result<DicomFile, DecodeError> {
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(DecodeError::TooLarge {
            size: bytes.len() as u64,
            limit: limits.max_file_bytes,
        });
    }
    let layout = guard::check(
        bytes,
        guard::Limits::with_max_inflated(limits.max_file_bytes),
    )?;
    let object = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Never)
        .from_reader(&bytes[layout.magic_offset..])
        .map_err(|e| DecodeError::Parse(e.to_string()))?;
    let attributes = read_attributes(&object, layout.transfer_syntax);
    Ok(DicomFile { attributes, object })
}

/// Decode a file all the way to its grey image: [`open_path`], then
/// [`DicomFile::stored_image`], then [`to_grey`].
pub fn decode_path(
    path: &Path,
    limits: &DecodeLimits,
) -> Result<(DicomFile, GreyImage, Voi), DecodeError> {
    let file = open_path(path, limits)?;
    let stored = file.stored_image(limits)?;
    let (grey, voi) = to_grey(&stored);
    Ok((file, grey, voi))
}

fn floats(obj: &DefaultDicomObject, tag: Tag) -> Option<Vec<f64>> {
    obj.element_opt(tag).ok()??.to_multi_float64().ok()
}

fn uint(obj: &DefaultDicomObject, tag: Tag) -> Option<u32> {
    obj.element_opt(tag).ok()??.to_int::<u32>().ok()
}

fn codes(obj: &DefaultDicomObject, tag: Tag) -> Vec<Code> {
    let Some(items) = obj.element_opt(tag).ok().flatten().and_then(|e| e.items()) else {
        return Vec::new();
    };
    items
        .iter()
        .map(|item| {
            let field = |t: Tag| element_text_lenient(item, t).unwrap_or_default();
            Code {
                value: field(tags::CODE_VALUE),
                scheme: field(tags::CODING_SCHEME_DESIGNATOR),
                meaning: field(tags::CODE_MEANING),
            }
        })
        .collect()
}

fn spacing(obj: &DefaultDicomObject) -> Option<PixelSpacing> {
    [
        (tags::PIXEL_SPACING, SpacingSource::PixelSpacing),
        (
            tags::IMAGER_PIXEL_SPACING,
            SpacingSource::ImagerPixelSpacing,
        ),
    ]
    .into_iter()
    .find_map(|(tag, source)| match floats(obj, tag)?.as_slice() {
        [row, col, ..] if row.is_finite() && col.is_finite() && *row > 0.0 && *col > 0.0 => {
            Some(PixelSpacing {
                row_mm: *row,
                column_mm: *col,
                source,
            })
        }
        _ => None,
    })
}

fn read_attributes(obj: &DefaultDicomObject, transfer_syntax: String) -> ImageAttributes {
    ImageAttributes {
        sop_instance_uid: element_text_lenient(obj, tags::SOP_INSTANCE_UID),
        sop_class_uid: element_text_lenient(obj, tags::SOP_CLASS_UID),
        study_instance_uid: element_text_lenient(obj, tags::STUDY_INSTANCE_UID),
        series_instance_uid: element_text_lenient(obj, tags::SERIES_INSTANCE_UID),
        transfer_syntax,
        modality: element_text_lenient(obj, tags::MODALITY),
        body_part_examined: element_text_lenient(obj, tags::BODY_PART_EXAMINED),
        view_position: element_text_lenient(obj, tags::VIEW_POSITION),
        view_codes: codes(obj, tags::VIEW_CODE_SEQUENCE),
        anatomic_region_codes: codes(obj, tags::ANATOMIC_REGION_SEQUENCE),
        photometric_interpretation: element_text_lenient(obj, tags::PHOTOMETRIC_INTERPRETATION),
        rows: uint(obj, tags::ROWS),
        columns: uint(obj, tags::COLUMNS),
        pixel_spacing: spacing(obj),
    }
}

impl DicomFile {
    /// Decode the first frame to stored values, with the attributes of the modality and VOI
    /// steps. Plain CPU work: call it from `spawn_blocking` in async code.
    pub fn stored_image(&self, limits: &DecodeLimits) -> Result<StoredImage, DecodeError> {
        let a = &self.attributes;
        if !sop_classes::is_accepted_transfer_syntax(&a.transfer_syntax) {
            return Err(DecodeError::TransferSyntax(a.transfer_syntax.clone()));
        }
        if self
            .object
            .element_opt(tags::PIXEL_DATA)
            .ok()
            .flatten()
            .is_none()
        {
            return Err(DecodeError::NoPixelData);
        }
        let monochrome1 = match a.photometric_interpretation.as_deref() {
            Some("MONOCHROME1") => true,
            Some("MONOCHROME2") => false,
            other => {
                return Err(DecodeError::Unsupported(format!(
                    "PhotometricInterpretation {} is not MONOCHROME1 or MONOCHROME2",
                    other.unwrap_or("(absent)")
                )));
            }
        };
        let (rows, columns) = (a.rows.unwrap_or(0), a.columns.unwrap_or(0));
        if rows == 0 || columns == 0 {
            return Err(DecodeError::Unsupported(
                "Rows or Columns is absent or 0".into(),
            ));
        }
        if u64::from(rows) * u64::from(columns) > limits.max_pixels {
            return Err(DecodeError::TooManyPixels {
                rows,
                columns,
                limit: limits.max_pixels,
            });
        }
        let pixels_error = |message: String| DecodeError::Pixels {
            transfer_syntax: a.transfer_syntax.clone(),
            message,
        };
        self.check_codestream(rows, columns)?;
        let decoded = self
            .object
            .decode_pixel_data_frame(0)
            .map_err(|e| pixels_error(e.to_string()))?;
        if decoded.samples_per_pixel() != 1 {
            return Err(DecodeError::Unsupported(format!(
                "{} samples per pixel; a radiograph has 1",
                decoded.samples_per_pixel()
            )));
        }
        let signed = decoded.pixel_representation() == dicom_pixeldata::PixelRepresentation::Signed;
        let values = stored_values(
            decoded.data(),
            decoded.bits_allocated(),
            decoded.bits_stored(),
            decoded.high_bit(),
            signed,
            rows as usize * columns as usize,
        )
        .map_err(pixels_error)?;
        let (slope, intercept) = match decoded.rescale().ok().and_then(|r| r.first().copied()) {
            Some(r) if r.slope.is_finite() && r.intercept.is_finite() && r.slope != 0.0 => {
                (r.slope, r.intercept)
            }
            _ => (1.0, 0.0),
        };
        Ok(StoredImage {
            rows: rows as usize,
            columns: columns as usize,
            values,
            bits_stored: decoded.bits_stored(),
            signed,
            monochrome1,
            rescale_slope: slope,
            rescale_intercept: intercept,
            voi: self.voi(&decoded),
        })
    }

    /// The first frame's codestream header (or native length) must agree with the image
    /// attributes before any codec sees it ([`codestream`]).
    fn check_codestream(&self, rows: u32, columns: u32) -> Result<(), DecodeError> {
        let ts = &self.attributes.transfer_syntax;
        let codec = Codec::of(ts).ok_or_else(|| DecodeError::TransferSyntax(ts.clone()))?;
        let u16_of = |tag| {
            self.object
                .element_opt(tag)
                .ok()
                .flatten()
                .and_then(|e| e.to_int::<u16>().ok())
        };
        let shape = FrameShape {
            rows,
            columns,
            samples_per_pixel: u16_of(tags::SAMPLES_PER_PIXEL).unwrap_or(1),
            bits_allocated: u16_of(tags::BITS_ALLOCATED).unwrap_or(0),
            bits_stored: u16_of(tags::BITS_STORED).unwrap_or(0),
        };
        let pixel_data = self
            .object
            .element_opt(tags::PIXEL_DATA)
            .ok()
            .flatten()
            .ok_or(DecodeError::NoPixelData)?;
        let (native_len, head, first) = match pixel_data.value().fragments() {
            Some(fragments) => {
                let mut head = Vec::new();
                for f in fragments {
                    if head.len() >= codestream::HEAD_BYTES {
                        break;
                    }
                    let room = codestream::HEAD_BYTES - head.len();
                    head.extend_from_slice(&f[..f.len().min(room)]);
                }
                let first = fragments.first().map_or(&[][..], Vec::as_slice);
                (None, head, first)
            }
            None => {
                let len = pixel_data
                    .value()
                    .primitive()
                    .map_or(0, |p| p.calculate_byte_len() as u64);
                (Some(len), Vec::new(), &[][..])
            }
        };
        codestream::check_frame(codec, shape, native_len, &head, first).map_err(|source| {
            DecodeError::Codestream {
                transfer_syntax: ts.clone(),
                source,
            }
        })
    }

    /// The VOI the file asks for: the first valid window, else the first VOI LUT.
    fn voi(&self, decoded: &dicom_pixeldata::DecodedPixelData<'_>) -> Option<Voi> {
        let function = match element_text_lenient(&self.object, tags::VOILUT_FUNCTION).as_deref() {
            Some("LINEAR_EXACT") => VoiFunction::LinearExact,
            Some("SIGMOID") => VoiFunction::Sigmoid,
            _ => VoiFunction::Linear,
        };
        let centers = floats(&self.object, tags::WINDOW_CENTER).unwrap_or_default();
        let widths = floats(&self.object, tags::WINDOW_WIDTH).unwrap_or_default();
        if let (Some(&center), Some(&width)) = (centers.first(), widths.first()) {
            let valid_width = match function {
                VoiFunction::Linear => width >= 1.0,
                _ => width > 0.0,
            };
            if center.is_finite() && width.is_finite() && valid_width {
                return Some(Voi::Window {
                    center,
                    width,
                    function,
                });
            }
        }
        let luts = decoded.voi_lut_sequence().ok().flatten()?;
        let lut = luts
            .first()
            .filter(|l| !l.data.is_empty() && (1..=16).contains(&l.bits_stored))?;
        Some(Voi::Lut {
            first_mapped: lut.min_pixel_value,
            bits: lut.bits_stored,
            table: lut.data.clone(),
        })
    }
}

/// Samples of `data` (native-endian, as dicom-pixeldata decodes them), masked to `bits_stored`
/// below `high_bit`, sign-extended when `signed`.
pub fn stored_values(
    data: &[u8],
    bits_allocated: u16,
    bits_stored: u16,
    high_bit: u16,
    signed: bool,
    count: usize,
) -> Result<Vec<i32>, String> {
    if bits_stored == 0 || bits_stored > bits_allocated || high_bit + 1 < bits_stored {
        return Err(format!(
            "inconsistent BitsAllocated {bits_allocated}, BitsStored {bits_stored}, HighBit {high_bit}"
        ));
    }
    let shift = u32::from(high_bit + 1 - bits_stored);
    let mask: u32 = if bits_stored >= 32 {
        u32::MAX
    } else {
        (1u32 << bits_stored) - 1
    };
    let sign_bit: u32 = 1u32 << (bits_stored - 1);
    let convert = |raw: u32| -> i32 {
        let v = (raw >> shift) & mask;
        if signed && v & sign_bit != 0 {
            (i64::from(v) - (1i64 << bits_stored)) as i32
        } else {
            v as i32
        }
    };
    match bits_allocated {
        8 if data.len() >= count => Ok(data[..count]
            .iter()
            .map(|&b| convert(u32::from(b)))
            .collect()),
        16 if data.len() >= count * 2 => Ok(data[..count * 2]
            .chunks_exact(2)
            .map(|c| convert(u32::from(u16::from_ne_bytes([c[0], c[1]]))))
            .collect()),
        8 | 16 => Err(format!(
            "decoded frame has {} bytes, expected {} samples of {bits_allocated} bits",
            data.len(),
            count
        )),
        other => Err(format!("BitsAllocated {other} is not supported (8 or 16)")),
    }
}

/// Apply the modality LUT, the VOI and the MONOCHROME1 inversion: a grey image in [0, 1].
pub fn to_grey(image: &StoredImage) -> (GreyImage, Voi) {
    let (slope, intercept) = (image.rescale_slope, image.rescale_intercept);
    let modality = move |v: i32| slope * f64::from(v) + intercept;
    // Stored values span at most 2^16 integers: the whole mapping is computed once per distinct
    // value (a table over [lo, hi]) and looked up per pixel — the same arithmetic, done once.
    let (lo, hi) = image
        .values
        .iter()
        .fold((i32::MAX, i32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    let (lo, hi) = if lo > hi { (0, 0) } else { (lo, hi) };
    let voi = image.voi.clone().unwrap_or_else(|| {
        // The modality LUT is linear: the extremes of m are at the extremes of v.
        let (a, b) = (modality(lo), modality(hi));
        Voi::MinMax {
            min: a.min(b),
            max: a.max(b),
        }
    });
    let pixels = grey_pixels(image, &voi, lo, hi);
    (
        GreyImage {
            width: image.columns,
            height: image.rows,
            pixels,
        },
        voi,
    )
}

/// Map every stored value through modality LUT, VOI, clamp and inversion, via a table over
/// `[lo, hi]` when the range is small (always, for BitsStored ≤ 16).
fn grey_pixels(image: &StoredImage, voi: &Voi, lo: i32, hi: i32) -> Vec<f32> {
    let (slope, intercept) = (image.rescale_slope, image.rescale_intercept);
    let map = voi_function(voi);
    let invert = image.monochrome1;
    let grey_of = |v: i32| -> f32 {
        let y = map(slope * f64::from(v) + intercept).clamp(0.0, 1.0);
        (if invert { 1.0 - y } else { y }) as f32
    };
    if i64::from(hi) - i64::from(lo) < (1 << 17) {
        let table: Vec<f32> = (lo..=hi).map(grey_of).collect();
        image
            .values
            .iter()
            .map(|&v| table[(v - lo) as usize])
            .collect()
    } else {
        image.values.iter().map(|&v| grey_of(v)).collect()
    }
}

/// The VOI transformation of a modality value `m`, before clamping to [0, 1].
fn voi_function(voi: &Voi) -> Box<dyn Fn(f64) -> f64 + '_> {
    match voi {
        Voi::Window {
            center: c,
            width: w,
            function,
        } => {
            let (c, w) = (*c, *w);
            match function {
                // PS3.3 C.11.2.1.2.1: ((x − (c − 0.5)) / (w − 1) + 0.5), clamped.
                VoiFunction::Linear if w > 1.0 => {
                    Box::new(move |x| (x - (c - 0.5)) / (w - 1.0) + 0.5)
                }
                VoiFunction::Linear => Box::new(move |x| if x <= c - 0.5 { 0.0 } else { 1.0 }),
                VoiFunction::LinearExact => Box::new(move |x| (x - c) / w + 0.5),
                VoiFunction::Sigmoid => Box::new(move |x| 1.0 / (1.0 + (-4.0 * (x - c) / w).exp())),
            }
        }
        Voi::Lut {
            first_mapped,
            bits,
            table,
        } => {
            let top = ((1u32 << bits) - 1) as f64;
            let last = table.len() as i64 - 1;
            let first = i64::from(*first_mapped);
            Box::new(move |x| {
                let index = (x.round() as i64 - first).clamp(0, last);
                f64::from(table[index as usize]) / top
            })
        }
        Voi::MinMax { min, max } => {
            let (min, range) = (*min, max - min);
            Box::new(move |x| if range > 0.0 { (x - min) / range } else { 0.0 })
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;

    #[test]
    fn stored_values_mask_and_sign_extend() {
        // 12 bits stored in 16, high bit 11: overlay bits above are dropped.
        let data: Vec<u8> = [0xF800u16 | 0x0FFF, 0x0800, 0x07FF]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        assert_eq!(
            stored_values(&data, 16, 12, 11, false, 3).unwrap(),
            vec![4095, 2048, 2047]
        );
        assert_eq!(
            stored_values(&data, 16, 12, 11, true, 3).unwrap(),
            vec![-1, -2048, 2047]
        );
        assert!(stored_values(&data, 16, 12, 11, false, 4).is_err());
    }

    fn image(values: Vec<i32>, voi: Option<Voi>, monochrome1: bool) -> StoredImage {
        StoredImage {
            rows: 1,
            columns: values.len(),
            values,
            bits_stored: 12,
            signed: false,
            monochrome1,
            rescale_slope: 2.0,
            rescale_intercept: -10.0,
            voi,
        }
    }

    #[test]
    fn window_follows_the_standard_linear_formula() {
        let voi = Voi::Window {
            center: 100.0,
            width: 101.0,
            function: VoiFunction::Linear,
        };
        // m = 2v − 10: 40 → 70, 55 → 100, 80 → 150.
        let (grey, _) = to_grey(&image(vec![0, 55, 80], Some(voi), false));
        assert_eq!(grey.pixels[0], 0.0);
        assert!((grey.pixels[1] - 0.505).abs() < 1e-6, "{}", grey.pixels[1]);
        assert_eq!(grey.pixels[2], 1.0);
    }

    #[test]
    fn fallback_is_min_max_and_monochrome1_inverts() {
        let (grey, voi) = to_grey(&image(vec![10, 20, 30], None, true));
        assert_eq!(
            voi,
            Voi::MinMax {
                min: 10.0,
                max: 50.0
            }
        );
        assert_eq!(grey.pixels, vec![1.0, 0.5, 0.0]);
    }
}
