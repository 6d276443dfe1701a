//! Analyse: the whole per-image flow on files — decode → eligibility → preprocess → segment →
//! classify → measure — with batching, stage timings and serialisable results.
//!
//! CPU-bound and blocking throughout: call it from `spawn_blocking` or a dedicated thread.

use std::path::PathBuf;
use std::time::Instant;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use super::decode::{
    self, DecodeError, DecodeLimits, GreyImage, ImageAttributes, PixelSpacing, Voi,
};
use super::eligibility::{self, Eligibility};
use super::helper::Decoder;
use super::infer::{Engine, InferError};
use super::preprocess;
use crate::findings::{
    AnalysedImage, ImageRef, LabelResult, Measurements, ModelVersions, StageTimings,
};

/// The warning attached to every result of a model whose `cxr.trained` is "false".
pub const UNTRAINED_WARNING: &str = "UNTRAINED model: findings are not clinically meaningful";

/// Mask probability above which a pixel counts as organ.
pub const MASK_THRESHOLD: f32 = 0.5;

/// Values keyed by label, serialised as a JSON object in label order.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelMap<T>(pub Vec<(String, T)>);

impl<T: Serialize> Serialize for LabelMap<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<T> LabelMap<T> {
    /// The value for `label`.
    pub fn get(&self, label: &str) -> Option<&T> {
        self.0.iter().find(|(k, _)| k == label).map(|(_, v)| v)
    }
}

/// Present/Absent at the model's threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Call {
    Present,
    Absent,
}

/// Wall-clock time of each stage for one image, in milliseconds. Segment and classify are the
/// batch's run time divided by the images in the batch.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Timings {
    pub decode_ms: f64,
    pub preprocess_ms: f64,
    pub segment_ms: f64,
    pub classify_ms: f64,
}

/// One organ's area.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Area {
    /// Pixels above [`MASK_THRESHOLD`] in the S×S mask.
    pub pixels: u64,
    /// Fraction of the image.
    pub fraction: f64,
    /// In mm² when the pixel spacing is known.
    pub mm2: Option<f64>,
}

/// One row's horizontal extent in the S×S mask: `first..=last` on row `row`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Span {
    pub row: usize,
    pub first: usize,
    pub last: usize,
}

impl Span {
    /// Its width in mask pixels.
    pub fn width(&self) -> usize {
        self.last - self.first + 1
    }
}

/// What the cardiothoracic ratio was measured on, in S×S mask pixels: the heart's widest row
/// and the thorax's widest row (outer edges of the lungs).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct CtrBasis {
    pub heart: Span,
    pub thorax: Span,
    /// The mask size S.
    pub mask_size: usize,
}

/// Areas and the cardiothoracic ratio from the segmenter's masks.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Anatomy {
    pub left_lung: Area,
    pub right_lung: Area,
    pub lungs: Area,
    pub heart: Area,
    /// Largest horizontal heart width / largest horizontal thoracic width (outer edges of the
    /// lung masks, per row); `None` when either mask is empty.
    pub cardiothoracic_ratio: Option<f64>,
    /// Where the ratio was measured: the widest heart row and the widest thorax row (`None`
    /// with the ratio).
    pub ctr_basis: Option<CtrBasis>,
    /// Pixel spacing used for mm², with its source attribute.
    pub pixel_spacing: Option<PixelSpacing>,
}

/// A model, as named by its metadata.
#[derive(Debug, Clone, Serialize)]
pub struct ModelTag {
    pub name: String,
    pub version: String,
    pub trained: bool,
}

/// What the models found in one image.
#[derive(Debug, Clone, Serialize)]
pub struct Findings {
    pub calls: LabelMap<Call>,
    pub thresholds: LabelMap<f32>,
    pub anatomy: Anatomy,
    /// How the VOI step was done.
    pub voi: Voi,
    pub segmenter: ModelTag,
    pub classifier: ModelTag,
    /// The execution provider that ran the models.
    pub provider: String,
    /// Both models trained.
    pub trained: bool,
    /// [`UNTRAINED_WARNING`] when a model is untrained.
    pub warning: Option<String>,
    /// Segmenter output `[C,S,S]` (for overlays and the SEG; not serialised).
    #[serde(skip)]
    pub masks: Vec<f32>,
    /// The names of the segmenter's channels, in order (`cxr.mask_channels`: `left_lung`,
    /// `right_lung`, `heart` first).
    #[serde(skip)]
    pub mask_channels: Vec<String>,
    /// Classifier class maps `[L,h,w]` (for overlays; not serialised).
    #[serde(skip)]
    pub class_maps: Vec<f32>,
    #[serde(skip)]
    pub class_map_size: (usize, usize),
    /// The grey image at the segmenter's size (for overlays; not serialised).
    #[serde(skip)]
    pub grey: GreyImage,
    /// The grey image at display size, the source's aspect ratio (for the Secondary Capture;
    /// not serialised).
    #[serde(skip)]
    pub display: GreyImage,
    /// The source image's size, `(rows, columns)`: the geometry of the SEG.
    pub source_size: (usize, usize),
}

/// The result for one file: the eligibility decision and, when analysed, the findings.
#[derive(Debug, Clone, Serialize)]
pub struct ImageReport {
    pub file: String,
    pub sop_instance_uid: Option<String>,
    pub study_instance_uid: Option<String>,
    pub series_instance_uid: Option<String>,
    pub eligible: bool,
    pub reason: String,
    /// Probabilities keyed by label, in label order; `null` when not analysed.
    pub probabilities: Option<LabelMap<f32>>,
    pub findings: Option<Findings>,
    pub timings: Timings,
}

impl ImageReport {
    /// The findings of an analysed image, for the database and the report; `Err` with the reason
    /// when the image was not analysed.
    pub fn to_findings(&self, image: ImageRef) -> Result<AnalysedImage, String> {
        let (Some(probabilities), Some(f)) = (&self.probabilities, &self.findings) else {
            return Err(self.reason.clone());
        };
        let labels = probabilities
            .0
            .iter()
            .map(|(label, p)| LabelResult {
                label: label.clone(),
                probability: p.clamp(0.0, 1.0),
                threshold: f.thresholds.get(label).copied().unwrap_or(0.5),
            })
            .collect();
        let a = &f.anatomy;
        Ok(AnalysedImage {
            image,
            labels,
            cardiothoracic_ratio: a.cardiothoracic_ratio.map(|c| c as f32),
            measurements: Measurements {
                left_lung_mm2: a.left_lung.mm2,
                right_lung_mm2: a.right_lung.mm2,
                lung_area_fraction: Some(a.lungs.fraction),
                heart_mm2: a.heart.mm2,
                heart_area_fraction: Some(a.heart.fraction),
            },
            models: ModelVersions {
                segmenter_name: f.segmenter.name.clone(),
                segmenter_version: f.segmenter.version.clone(),
                classifier_name: f.classifier.name.clone(),
                classifier_version: f.classifier.version.clone(),
                trained: f.trained,
                execution_provider: f.provider.clone(),
            },
            timings: StageTimings {
                decode_ms: self.timings.decode_ms,
                preprocess_ms: self.timings.preprocess_ms,
                segment_ms: self.timings.segment_ms,
                classify_ms: self.timings.classify_ms,
            },
        })
    }
}

/// What the decode step needs to know: the caps, and the models' input sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecodeRequest {
    pub limits: DecodeLimits,
    /// The segmenter's input size S (S×S).
    pub segmenter_size: usize,
    /// The classifier's input size C (C×C).
    pub classifier_size: usize,
}

/// The decode step's result for one file: its attributes, the eligibility decision and, when
/// eligible, the grey image resized to each model's input (what crosses from the decode helper).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DecodedImage {
    pub attributes: ImageAttributes,
    pub eligible: bool,
    pub reason: String,
    /// The source image's size.
    pub rows: usize,
    pub columns: usize,
    pub voi: Option<Voi>,
    #[serde(skip)]
    pub grey_segmenter: GreyImage,
    #[serde(skip)]
    pub grey_classifier: GreyImage,
    /// The grey image for pictures a person reads (the Secondary Capture): the source's aspect
    /// ratio, longest side [`DISPLAY_LONGEST_SIDE`] (see [`display_size`]).
    #[serde(skip)]
    pub grey_display: GreyImage,
    pub decode_ms: f64,
    pub preprocess_ms: f64,
}

/// Longest side of the display image, in pixels: what a reader needs on a reading screen, and
/// what a Secondary Capture is sized to.
pub const DISPLAY_LONGEST_SIDE: usize = 1024;

/// The display image's `(width, height)` for a source of `rows`×`columns`: the aspect ratio
/// kept, the longest side [`DISPLAY_LONGEST_SIDE`] (up or down), each side at least 1.
pub fn display_size(rows: usize, columns: usize) -> (usize, usize) {
    let longest = rows.max(columns).max(1) as f64;
    let scale = DISPLAY_LONGEST_SIDE as f64 / longest;
    let side = |n: usize| ((n as f64 * scale).round() as usize).clamp(1, DISPLAY_LONGEST_SIDE);
    (side(columns), side(rows))
}

/// Decode one Part 10 file (with or without its preamble) and, when eligible, resize its grey
/// image for both models. Pure CPU work on untrusted bytes: the daemon runs it in the decode
/// helper ([`super::helper`]).
pub fn decode_for_models(bytes: &[u8], req: &DecodeRequest) -> Result<DecodedImage, DecodeError> {
    let started = Instant::now();
    let file = decode::open_bytes(bytes, &req.limits)?;
    let Eligibility { eligible, reason } = eligibility::assess(&file.attributes);
    let mut out = DecodedImage {
        attributes: file.attributes.clone(),
        eligible,
        reason,
        ..DecodedImage::default()
    };
    if !eligible {
        out.decode_ms = ms(started);
        return Ok(out);
    }
    let stored = file.stored_image(&req.limits)?;
    let (grey, voi) = decode::to_grey(&stored);
    out.decode_ms = ms(started);
    let started = Instant::now();
    out.grey_segmenter = preprocess::resize(&grey, req.segmenter_size, req.segmenter_size);
    out.grey_classifier = if req.classifier_size == req.segmenter_size {
        out.grey_segmenter.clone()
    } else {
        preprocess::resize(&grey, req.classifier_size, req.classifier_size)
    };
    let (width, height) = display_size(stored.rows, stored.columns);
    out.grey_display = preprocess::resize(&grey, width, height);
    out.preprocess_ms = ms(started);
    out.rows = stored.rows;
    out.columns = stored.columns;
    out.voi = Some(voi);
    Ok(out)
}

/// Runs the models on files, a batch at a time.
pub struct Analyser {
    pub engine: Engine,
    pub limits: DecodeLimits,
    pub batch_size: usize,
    /// Where images are decoded (a helper process in the daemon).
    pub decoder: Decoder,
}

/// An image ready for the models.
struct Prepared {
    index: usize,
    grey_segmenter: GreyImage,
    grey_display: GreyImage,
    classifier_input: Vec<f32>,
    spacing: Option<PixelSpacing>,
    rows: usize,
    columns: usize,
    voi: Voi,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

impl Analyser {
    /// Analyse `paths`, calling `emit` with each report as its batch completes (input order).
    /// Undecodable or ineligible files are reported and the others go on; only an inference
    /// failure stops the run.
    pub fn analyse_paths(
        &mut self,
        paths: &[PathBuf],
        emit: impl FnMut(ImageReport),
    ) -> Result<(), InferError> {
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        self.analyse_with(&names, |i| open_file(&paths[i]), emit)
    }

    /// Analyse the files named `names`, each opened by `open(i)` (its length and a reader, or why
    /// it cannot be read), a batch at a time; `emit` gets each report in input order.
    pub fn analyse_with(
        &mut self,
        names: &[String],
        mut load: impl FnMut(usize) -> Result<Opened, String>,
        mut emit: impl FnMut(ImageReport),
    ) -> Result<(), InferError> {
        let batch = self.batch_size.max(1);
        let mut start = 0;
        while start < names.len() {
            let end = (start + batch).min(names.len());
            let mut reports = Vec::with_capacity(end - start);
            let mut prepared = Vec::new();
            for (index, i) in (start..end).enumerate() {
                let (report, ready) = self.prepare(index, &names[i], load(i));
                reports.push(report);
                prepared.extend(ready);
            }
            if !prepared.is_empty() {
                self.run_models(&prepared, &mut reports)?;
            }
            reports.into_iter().for_each(&mut emit);
            start = end;
        }
        Ok(())
    }

    /// Analyse up to one batch of files.
    pub fn analyse_batch(&mut self, paths: &[PathBuf]) -> Result<Vec<ImageReport>, InferError> {
        let mut out = Vec::with_capacity(paths.len());
        self.analyse_paths(paths, |r| out.push(r))?;
        Ok(out)
    }

    /// Decode, decide, preprocess one file.
    fn prepare(
        &mut self,
        index: usize,
        name: &str,
        opened: Result<Opened, String>,
    ) -> (ImageReport, Option<Prepared>) {
        let mut report = ImageReport {
            file: name.to_string(),
            sop_instance_uid: None,
            study_instance_uid: None,
            series_instance_uid: None,
            eligible: false,
            reason: String::new(),
            probabilities: None,
            findings: None,
            timings: Timings::default(),
        };
        let started = Instant::now();
        let seg_size = self.engine.segmenter.info.input_size;
        let cls = &self.engine.classifier.info;
        let request = DecodeRequest {
            limits: self.limits,
            segmenter_size: seg_size,
            classifier_size: cls.input_size,
        };
        let decoded = opened
            .map_err(|e| format!("undecodable: {e}"))
            .and_then(|(len, mut file)| self.decoder.decode(&mut *file, len, &request));
        let image = match decoded {
            Ok(image) => image,
            Err(reason) => {
                report.reason = reason;
                report.timings.decode_ms = ms(started);
                return (report, None);
            }
        };
        let a = &image.attributes;
        report.sop_instance_uid = a.sop_instance_uid.clone();
        report.study_instance_uid = a.study_instance_uid.clone();
        report.series_instance_uid = a.series_instance_uid.clone();
        report.reason = image.reason.clone();
        report.timings.decode_ms = image.decode_ms;
        report.timings.preprocess_ms = image.preprocess_ms;
        let (true, Some(voi)) = (image.eligible, image.voi.clone()) else {
            return (report, None);
        };
        let started = Instant::now();
        let cls = &self.engine.classifier.info;
        let mut classifier_input = Vec::with_capacity(3 * cls.input_size * cls.input_size);
        preprocess::normalise_into(
            &image.grey_classifier.pixels,
            &cls.mean,
            &cls.std,
            &mut classifier_input,
        );
        report.timings.preprocess_ms += ms(started);
        report.eligible = true;
        let ready = Prepared {
            index,
            grey_segmenter: image.grey_segmenter,
            grey_display: image.grey_display,
            classifier_input,
            spacing: image.attributes.pixel_spacing,
            rows: image.rows,
            columns: image.columns,
            voi,
        };
        (report, Some(ready))
    }

    fn run_models(
        &mut self,
        batch: &[Prepared],
        reports: &mut [ImageReport],
    ) -> Result<(), InferError> {
        let n = batch.len();
        let seg = self.engine.segmenter.info.clone();
        let cls = self.engine.classifier.info.clone();
        let s = seg.input_size;
        let mut seg_input = Vec::with_capacity(n * s * s);
        for p in batch {
            seg_input.extend_from_slice(&p.grey_segmenter.pixels);
        }
        let started = Instant::now();
        let masks = self.engine.segment(&seg_input, n)?;
        let segment_ms = ms(started) / n as f64;

        let started = Instant::now();
        let k = cls.mask_size.unwrap_or(cls.input_size);
        let plane = s * s;
        let per_image = masks.channels * plane;
        let mut mask_input = Vec::with_capacity(n * 2 * k * k);
        let mut cls_input = Vec::with_capacity(n * 3 * cls.input_size * cls.input_size);
        for (i, p) in batch.iter().enumerate() {
            let m = &masks.data[i * per_image..(i + 1) * per_image];
            let (left, right, heart) =
                (&m[..plane], &m[plane..2 * plane], &m[2 * plane..3 * plane]);
            preprocess::classifier_masks_into(left, right, heart, s, k, &mut mask_input);
            cls_input.extend_from_slice(&p.classifier_input);
        }
        let mask_prep_ms = ms(started) / n as f64;

        let started = Instant::now();
        let out = self.engine.classify(&cls_input, &mask_input, n)?;
        let classify_ms = ms(started) / n as f64;

        let labels = cls.labels.len();
        let (mh, mw) = out.map_size;
        let trained = seg.trained && cls.trained;
        let provider = self.engine.provider_summary();
        for (i, p) in batch.iter().enumerate() {
            let probs = &out.probabilities[i * labels..(i + 1) * labels];
            let m = &masks.data[i * per_image..(i + 1) * per_image];
            let report = &mut reports[p.index];
            report.timings.segment_ms = segment_ms;
            report.timings.classify_ms = classify_ms;
            report.timings.preprocess_ms += mask_prep_ms;
            report.probabilities = Some(LabelMap(
                cls.labels
                    .iter()
                    .cloned()
                    .zip(probs.iter().copied())
                    .collect(),
            ));
            report.findings = Some(Findings {
                calls: LabelMap(
                    cls.labels
                        .iter()
                        .zip(probs.iter().zip(&cls.thresholds))
                        .map(|(l, (&pr, &t))| {
                            (
                                l.clone(),
                                if pr >= t { Call::Present } else { Call::Absent },
                            )
                        })
                        .collect(),
                ),
                thresholds: LabelMap(
                    cls.labels
                        .iter()
                        .cloned()
                        .zip(cls.thresholds.iter().copied())
                        .collect(),
                ),
                anatomy: measure(m, s, p.rows, p.columns, p.spacing),
                voi: p.voi.clone(),
                segmenter: ModelTag {
                    name: seg.model_name.clone(),
                    version: seg.model_version.clone(),
                    trained: seg.trained,
                },
                classifier: ModelTag {
                    name: cls.model_name.clone(),
                    version: cls.model_version.clone(),
                    trained: cls.trained,
                },
                provider: provider.clone(),
                trained,
                warning: (!trained).then(|| UNTRAINED_WARNING.to_string()),
                masks: m.to_vec(),
                mask_channels: seg.mask_channels.clone(),
                class_maps: out.class_maps[i * labels * mh * mw..(i + 1) * labels * mh * mw]
                    .to_vec(),
                class_map_size: (mh, mw),
                grey: p.grey_segmenter.clone(),
                display: p.grey_display.clone(),
                source_size: (p.rows, p.columns),
            });
        }
        Ok(())
    }
}

/// A file to analyse: its length and a reader over it.
pub type Opened = (u64, Box<dyn std::io::Read + Send>);

fn open_file(path: &std::path::Path) -> Result<Opened, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read the file: {e}"))?;
    let len = file
        .metadata()
        .map_err(|e| format!("cannot read the file: {e}"))?
        .len();
    Ok((len, Box::new(std::io::BufReader::new(file))))
}

/// Organ areas and the cardiothoracic ratio from segmenter masks `[C,S,S]` (channels
/// left_lung, right_lung, heart first) of an image of `rows`×`columns` original pixels.
pub fn measure(
    masks: &[f32],
    s: usize,
    rows: usize,
    columns: usize,
    spacing: Option<PixelSpacing>,
) -> Anatomy {
    let plane = s * s;
    let on = |c: usize, i: usize| masks[c * plane + i] > MASK_THRESHOLD;
    // Each S×S pixel covers (rows/S × row spacing) by (columns/S × column spacing) mm.
    let pixel_mm2 = spacing.map(|sp| {
        (rows as f64 / s as f64 * sp.row_mm) * (columns as f64 / s as f64 * sp.column_mm)
    });
    let area = |count: u64| Area {
        pixels: count,
        fraction: count as f64 / plane as f64,
        mm2: pixel_mm2.map(|a| a * count as f64),
    };
    let count = |c: usize| (0..plane).filter(|&i| on(c, i)).count() as u64;
    let (left, right, heart) = (count(0), count(1), count(2));
    // the first widest row (top to bottom) of the pixels where `pred` holds
    let widest = |pred: &dyn Fn(usize) -> bool| -> Option<Span> {
        (0..s)
            .filter_map(|y| {
                let first = (0..s).find(|&x| pred(y * s + x))?;
                let last = (0..s).rev().find(|&x| pred(y * s + x))?;
                Some(Span {
                    row: y,
                    first,
                    last,
                })
            })
            .fold(None, |best: Option<Span>, span| match best {
                Some(b) if b.width() >= span.width() => Some(b),
                _ => Some(span),
            })
    };
    let basis = match (widest(&|i| on(2, i)), widest(&|i| on(0, i) || on(1, i))) {
        (Some(heart), Some(thorax)) => Some(CtrBasis {
            heart,
            thorax,
            mask_size: s,
        }),
        _ => None,
    };
    Anatomy {
        left_lung: area(left),
        right_lung: area(right),
        lungs: area(left + right),
        heart: area(heart),
        cardiothoracic_ratio: basis.map(|b| b.heart.width() as f64 / b.thorax.width() as f64),
        ctr_basis: basis,
        pixel_spacing: spacing,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;

    #[test]
    fn ctr_and_areas_from_masks() {
        let s = 8;
        let mut m = vec![0f32; 3 * s * s];
        // Left lung columns 1..=2, right lung columns 5..=6, rows 1..=6; heart row 4 columns 3..=5.
        for y in 1..=6 {
            for x in [1, 2] {
                m[y * s + x] = 0.9;
            }
            for x in [5, 6] {
                m[s * s + y * s + x] = 0.9;
            }
        }
        for x in 3..=5 {
            m[2 * s * s + 4 * s + x] = 0.9;
        }
        let sp = PixelSpacing {
            row_mm: 0.5,
            column_mm: 0.25,
            source: decode::SpacingSource::PixelSpacing,
        };
        let a = measure(&m, s, 16, 32, Some(sp));
        assert_eq!(a.left_lung.pixels, 12);
        assert_eq!(a.heart.pixels, 3);
        // Thorax 1..=6 → 6 wide; heart 3 wide.
        assert_eq!(a.cardiothoracic_ratio, Some(0.5));
        // Each mask pixel: (16/8·0.5) × (32/8·0.25) = 1 mm².
        assert_eq!(a.heart.mm2, Some(3.0));
        assert!(
            measure(&vec![0.0; 3 * s * s], s, 8, 8, None)
                .cardiothoracic_ratio
                .is_none()
        );
    }
}
