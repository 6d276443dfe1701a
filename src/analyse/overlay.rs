//! Overlay (analyse stage, after measure): the picture of one analysed image that a person reads
//! — the content of the Secondary Capture (`report::sc`) and of the CLI's `--overlay` PNGs.
//!
//! From top to bottom, on a canvas at least [`MIN_WIDTH`] wide (black, the image centred):
//! - a banner: [`BANNER_TEXT`], and [`UNTRAINED_TEXT`] in red when a model is untrained;
//! - the display image in grey, whole, with
//!   - a light tint inside each lung field and 3-px outlines of the right lung, the left lung
//!     and the heart ([`RIGHT_LUNG`], [`LEFT_LUNG`], [`HEART`]), from the segmenter's masks
//!     resampled to the display size ([`super::masks::resample`]);
//!   - the class map of each positive finding (probability ≥ its threshold, at most
//!     [`MAX_DRAWN_FINDINGS`], most probable first): normalised to its own min/max, upsampled
//!     bilinearly, drawn translucent where it is above half its range, more opaque where it is
//!     higher ([`FINDING_COLOURS`]);
//!   - the cardiothoracic-ratio basis: the heart's widest row and the thorax's widest row as
//!     horizontal lines with end ticks;
//! - a legend: the organ colours, each drawn finding with its probability (or the three most
//!   probable labels when none is positive), the ratio, the models.
//!
//! Text is `font8x8`, ASCII only, scaled by whole pixels. Rendering is a pure function of the
//! findings; every buffer is allocated once per picture, never per pixel.

use std::path::{Path, PathBuf};

use font8x8::{BASIC_FONTS, UnicodeFonts};

use super::analyser::{CtrBasis, Findings, LabelMap, MASK_THRESHOLD};
use super::masks::{self, bilinear, taps};
use crate::findings::BitMask;

/// An RGB colour.
pub type Rgb = [u8; 3];

/// Narrowest canvas, in pixels: wide enough for the banner and the legend at twice the font size.
pub const MIN_WIDTH: usize = 768;
/// Most class maps drawn on one picture.
pub const MAX_DRAWN_FINDINGS: usize = 3;
/// First banner line, always there.
pub const BANNER_TEXT: &str = "AI RESULT - NOT FOR PRIMARY DIAGNOSIS";
/// Second banner line, when a model is untrained.
pub const UNTRAINED_TEXT: &str = "UNTRAINED MODEL - NOT CLINICALLY MEANINGFUL";

/// Colour of the right lung's outline and tint.
pub const RIGHT_LUNG: Rgb = [40, 120, 255];
/// Colour of the left lung's outline and tint.
pub const LEFT_LUNG: Rgb = [40, 210, 80];
/// Colour of the heart's outline.
pub const HEART: Rgb = [255, 210, 0];
/// Colours of the drawn class maps, most probable finding first.
pub const FINDING_COLOURS: [Rgb; MAX_DRAWN_FINDINGS] =
    [[255, 40, 40], [255, 0, 220], [0, 235, 235]];

const BANNER_COLOUR: Rgb = [255, 255, 255];
const WARNING_COLOUR: Rgb = [255, 56, 56];
const TEXT_COLOUR: Rgb = [225, 225, 225];
const HALO: Rgb = [0, 0, 0];
/// Opacity of the tint inside the lung fields.
const TINT_ALPHA: f32 = 0.18;
/// Opacity of a class map at its maximum; it falls linearly with the normalised activation to
/// 0 at [`MAP_FLOOR`], so a map fades out instead of ending in a hard edge.
const MAP_ALPHA: f32 = 0.6;
/// Normalised activation below which a class map is not drawn.
const MAP_FLOOR: f32 = 0.5;
/// Space around the text of the bands, in pixels.
const MARGIN: usize = 12;
/// Scale of the legend's 8×8 glyphs.
const LEGEND_SCALE: usize = 2;
/// Half the length of the ticks at the ends of the ratio's lines.
const TICK: usize = 9;

/// An 8-bit RGB picture: `width`×`height` pixels, row-major, 3 bytes per pixel.
#[derive(Clone, PartialEq, Eq)]
pub struct Picture {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
    /// Where the display image lies in the canvas (below the banner, centred).
    pub image: Rect,
}

impl std::fmt::Debug for Picture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Picture")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("rgb_bytes", &self.rgb.len())
            .field("image", &self.image)
            .finish()
    }
}

impl Picture {
    /// The colour at `(x, y)`; `None` outside the picture.
    pub fn pixel(&self, x: usize, y: usize) -> Option<Rgb> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y * self.width + x) * 3;
        let p = self.rgb.get(i..i + 3)?;
        Some([p[0], p[1], p[2]])
    }
}

/// A rectangle of the canvas: top-left corner and size, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rect {
    pub left: usize,
    pub top: usize,
    pub width: usize,
    pub height: usize,
}

/// Why a picture could not be written as PNG.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// The png crate refused the picture (e.g. a buffer that does not match its size).
    #[error("cannot encode the picture as PNG")]
    Encode {
        #[source]
        source: png::EncodingError,
    },
    /// The file could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Encode a picture as an 8-bit RGB PNG.
pub fn encode_png(picture: &Picture) -> Result<Vec<u8>, OverlayError> {
    let encode = |source| OverlayError::Encode { source };
    let (w, h) = (dimension(picture.width), dimension(picture.height));
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header().map_err(encode)?;
    writer.write_image_data(&picture.rgb).map_err(encode)?;
    writer.finish().map_err(encode)?;
    Ok(out)
}

/// A size as PNG's u32; an impossible one (over u32) becomes 0, which the encoder refuses.
fn dimension(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

/// Encode a picture as PNG ([`encode_png`]) and write it to `path`.
pub fn write_png(path: &Path, picture: &Picture) -> Result<(), OverlayError> {
    let bytes = encode_png(picture)?;
    std::fs::write(path, bytes).map_err(|source| OverlayError::Write {
        path: path.to_path_buf(),
        source,
    })
}

// ---------------------------------------------------------------- the picture

/// A finding whose class map is drawn.
#[derive(Debug, Clone)]
struct Drawn {
    /// Its index in the classifier's order (the class map's index).
    index: usize,
    label: String,
    probability: f32,
    colour: Rgb,
}

/// The banner's lines: always the AI-result line, and the untrained warning when so.
fn banner_lines(trained: bool) -> Vec<(&'static str, Rgb)> {
    let mut banner = vec![(BANNER_TEXT, BANNER_COLOUR)];
    if !trained {
        banner.push((UNTRAINED_TEXT, WARNING_COLOUR));
    }
    banner
}

/// Where a display image of `width`×`height` lies in its picture: below the banner, centred.
/// What a reader of the picture (a test, a viewer's measurement) needs to map its pixels back
/// to the source image.
pub fn image_rect(width: usize, height: usize, trained: bool) -> Rect {
    let canvas = width.max(MIN_WIDTH);
    let banner = banner_lines(trained);
    let scale = banner_scale(&banner, canvas - 2 * MARGIN);
    let banner_height =
        2 * MARGIN + banner.len() * 8 * scale + (banner.len() - 1) * line_gap(scale);
    Rect {
        left: (canvas - width) / 2,
        top: banner_height,
        width,
        height,
    }
}

/// Render the picture of one analysed image (see the module documentation).
pub fn render(findings: &Findings, probabilities: &LabelMap<f32>) -> Picture {
    let display = &findings.display;
    let width = display.width.max(MIN_WIDTH);
    let text_width = width - 2 * MARGIN;

    let banner = banner_lines(findings.trained);
    let banner_scale = banner_scale(&banner, text_width);
    let image = image_rect(display.width, display.height, findings.trained);
    let banner_height = image.top;

    let (positives, drawn) = drawn_findings(findings, probabilities);
    let legend = legend(findings, probabilities, positives, &drawn);
    let rows = layout(&legend, text_width, LEGEND_SCALE);
    let legend_height =
        2 * MARGIN + (rows.len() * row_pitch(LEGEND_SCALE)).saturating_sub(line_gap(LEGEND_SCALE));

    let mut canvas = Canvas::new(width, banner_height + image.height + legend_height);

    let mut y = MARGIN;
    for (text, colour) in &banner {
        let w = text_px(text, banner_scale);
        canvas.text(
            (width.saturating_sub(w)) / 2,
            y,
            text,
            banner_scale,
            *colour,
        );
        y += 8 * banner_scale + line_gap(banner_scale);
    }

    if image.width > 0 && image.height > 0 {
        draw_image(&mut canvas, image, findings, &drawn);
    }

    let top = image.top + image.height + MARGIN;
    for (r, row) in rows.iter().enumerate() {
        let y = top + r * row_pitch(LEGEND_SCALE);
        for placed in row {
            canvas.chunk(MARGIN + placed.x, y, &placed.chunk, LEGEND_SCALE);
        }
    }

    Picture {
        width: canvas.width,
        height: canvas.height,
        rgb: canvas.rgb,
        image,
    }
}

/// Grey image, lung tints, class maps, outlines and the ratio's lines, in that order.
fn draw_image(canvas: &mut Canvas, image: Rect, findings: &Findings, drawn: &[Drawn]) {
    draw_grey(canvas, image, findings);
    let organs = Organs::at(findings, image.height, image.width);
    if let Some(o) = &organs {
        tint_lungs(canvas, image, o);
    }
    // least probable first, so the most probable finding's map is on top
    for d in drawn.iter().rev() {
        draw_class_map(canvas, image, findings, d);
    }
    if let Some(o) = &organs {
        for (mask, colour) in [
            (&o.right, RIGHT_LUNG),
            (&o.left, LEFT_LUNG),
            (&o.heart, HEART),
        ] {
            outline(canvas, image, mask, colour);
        }
    }
    if let Some(basis) = &findings.anatomy.ctr_basis {
        draw_ctr_basis(canvas, image, findings, basis);
    }
}

fn draw_grey(canvas: &mut Canvas, image: Rect, findings: &Findings) {
    let pixels = &findings.display.pixels;
    for (y, src) in pixels
        .chunks_exact(image.width)
        .take(image.height)
        .enumerate()
    {
        let row = canvas.image_row(image, y);
        for (out, &g) in row.chunks_exact_mut(3).zip(src) {
            let v = (g.clamp(0.0, 1.0) * 255.0 + 0.5) as u8;
            out.copy_from_slice(&[v, v, v]);
        }
    }
}

/// The positive findings (probability ≥ threshold) counted, and the most probable of them to
/// draw, each with its colour.
fn drawn_findings(findings: &Findings, probabilities: &LabelMap<f32>) -> (usize, Vec<Drawn>) {
    let mut positive: Vec<(usize, &String, f32)> = probabilities
        .0
        .iter()
        .enumerate()
        .filter(|(_, (label, p))| *p >= findings.thresholds.get(label).copied().unwrap_or(0.5))
        .map(|(index, (label, p))| (index, label, *p))
        .collect();
    positive.sort_by(|a, b| b.2.total_cmp(&a.2));
    let drawn = positive
        .iter()
        .zip(FINDING_COLOURS)
        .map(|(&(index, label, probability), colour)| Drawn {
            index,
            label: label.clone(),
            probability,
            colour,
        })
        .collect();
    (positive.len(), drawn)
}

// ---------------------------------------------------------------- organs

/// The organ masks at display size.
struct Organs {
    right: BitMask,
    left: BitMask,
    heart: BitMask,
}

impl Organs {
    /// Resample the right lung, left lung and heart masks to `rows`×`columns`; `None` when the
    /// masks do not have the shape their channel names say.
    fn at(findings: &Findings, rows: usize, columns: usize) -> Option<Self> {
        let (planes, s) = mask_planes(findings)?;
        let get = |name: &str, fallback: usize| -> Option<BitMask> {
            let c = channel(findings, name, fallback)?;
            Some(masks::resample(planes.get(c)?, s, rows, columns))
        };
        Some(Self {
            right: get("right_lung", 1)?,
            left: get("left_lung", 0)?,
            heart: get("heart", 2)?,
        })
    }
}

/// The segmenter's planes `[C][S·S]` and S, when `masks` is `C·S·S` long (C from the channel
/// names; 3 when they are not given).
fn mask_planes(findings: &Findings) -> Option<(Vec<&[f32]>, usize)> {
    let channels = match findings.mask_channels.len() {
        0 => 3,
        n => n,
    };
    let plane = findings.masks.len() / channels;
    let s = (plane as f64).sqrt().round() as usize;
    if s == 0 || s * s * channels != findings.masks.len() {
        return None;
    }
    Some((findings.masks.chunks_exact(s * s).collect(), s))
}

/// The index of the channel called `name` (or `fallback` when the channels are unnamed).
fn channel(findings: &Findings, name: &str, fallback: usize) -> Option<usize> {
    if findings.mask_channels.is_empty() {
        Some(fallback)
    } else {
        findings.mask_channels.iter().position(|c| c == name)
    }
}

fn tint_lungs(canvas: &mut Canvas, image: Rect, organs: &Organs) {
    for y in 0..image.height {
        let span = y * image.width..(y + 1) * image.width;
        let (right, left) = (&organs.right.bits[span.clone()], &organs.left.bits[span]);
        let row = canvas.image_row(image, y);
        for ((px, &r), &l) in row.chunks_exact_mut(3).zip(right).zip(left) {
            if r != 0 {
                mix(px, RIGHT_LUNG, TINT_ALPHA);
            } else if l != 0 {
                mix(px, LEFT_LUNG, TINT_ALPHA);
            }
        }
    }
}

/// Paint a 3×3 square on every edge pixel of `mask` (an organ pixel with a 4-neighbour outside
/// the organ or the image): a line about 3 px wide along the organ's border.
fn outline(canvas: &mut Canvas, image: Rect, mask: &BitMask, colour: Rgb) {
    let (w, h) = (mask.columns, mask.rows);
    let on = |x: usize, y: usize| mask.bits[y * w + x] != 0;
    for y in 0..h {
        for x in 0..w {
            if !on(x, y) {
                continue;
            }
            let edge = x == 0
                || y == 0
                || x + 1 == w
                || y + 1 == h
                || !on(x - 1, y)
                || !on(x + 1, y)
                || !on(x, y - 1)
                || !on(x, y + 1);
            if edge {
                let (x0, y0) = (x.saturating_sub(1), y.saturating_sub(1));
                canvas.fill_in(image, x0, y0, (x + 2).min(w), (y + 2).min(h), colour);
            }
        }
    }
}

// ---------------------------------------------------------------- class maps

/// The class map of `d`, normalised to its own range, where it is above [`MAP_FLOOR`].
fn draw_class_map(canvas: &mut Canvas, image: Rect, findings: &Findings, d: &Drawn) {
    let (mh, mw) = findings.class_map_size;
    let Some(map) = findings
        .class_maps
        .get(d.index * mh * mw..(d.index + 1) * mh * mw)
    else {
        return;
    };
    let (lo, hi) = map
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    if mh == 0 || mw == 0 || !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return;
    }
    let range = hi - lo;
    let (ys, xs) = (taps(mh, image.height), taps(mw, image.width));
    for (y, ty) in ys.iter().enumerate() {
        let (r0, r1) = (&map[ty.lo * mw..][..mw], &map[ty.hi * mw..][..mw]);
        let row = canvas.image_row(image, y);
        for (px, tx) in row.chunks_exact_mut(3).zip(&xs) {
            let a = (bilinear(r0, r1, ty, tx) - lo) / range;
            if a > MAP_FLOOR {
                mix(
                    px,
                    d.colour,
                    MAP_ALPHA * (a.min(1.0) - MAP_FLOOR) / (1.0 - MAP_FLOOR),
                );
            }
        }
    }
}

// ---------------------------------------------------------------- cardiothoracic ratio

/// The heart's widest row (heart colour) and the thorax's widest row (each half in the colour of
/// the lung at its end), mask coordinates scaled to the display image.
fn draw_ctr_basis(canvas: &mut Canvas, image: Rect, findings: &Findings, basis: &CtrBasis) {
    let s = basis.mask_size;
    if s == 0 {
        return;
    }
    let lung_at = |row: usize, x: usize| -> Rgb {
        let right = channel(findings, "right_lung", 1)
            .and_then(|c| findings.masks.get(c * s * s + row * s + x))
            .is_some_and(|&p| p > MASK_THRESHOLD);
        if right { RIGHT_LUNG } else { LEFT_LUNG }
    };
    let t = basis.thorax;
    let ends = [lung_at(t.row, t.first), lung_at(t.row, t.last)];
    let h = basis.heart;
    for (span, colours) in [(t, ends), (h, [HEART, HEART])] {
        let y = (((span.row as f64 + 0.5) * image.height as f64 / s as f64) as usize)
            .min(image.height - 1);
        let x0 = (span.first * image.width / s).min(image.width - 1);
        let x1 = ((span.last + 1) * image.width / s).clamp(x0 + 1, image.width);
        let mid = (x0 + x1) / 2;
        // a black halo first, then the line: visible on bright and dark lungs alike
        for (grow, left, right) in [(1, HALO, HALO), (0, colours[0], colours[1])] {
            let (top, bottom) = (y.saturating_sub(1 + grow), y + 2 + grow);
            let (tick_top, tick_bottom) = (y.saturating_sub(TICK + grow), y + TICK + 1 + grow);
            let (a, b) = (x0.saturating_sub(grow), x1 + grow);
            canvas.fill_in(image, a, top, mid, bottom, left);
            canvas.fill_in(image, mid, top, b, bottom, right);
            canvas.fill_in(image, a, tick_top, x0 + 2 + grow, tick_bottom, left);
            let tick_right = x1.saturating_sub(2 + grow);
            canvas.fill_in(image, tick_right, tick_top, b, tick_bottom, right);
        }
    }
}

// ---------------------------------------------------------------- legend

/// A run of text drawn as one piece, with an optional colour key before it.
#[derive(Debug, Clone)]
struct Chunk {
    key: Option<Rgb>,
    text: String,
    colour: Rgb,
    /// Space before it when it follows another chunk on the same row, in glyph widths.
    gap: usize,
}

/// A chunk at its x position (from the text margin).
#[derive(Debug, Clone)]
struct Placed {
    x: usize,
    chunk: Chunk,
}

/// A paragraph of the legend: starts a new row and wraps between its chunks.
type Paragraph = Vec<Chunk>;

fn keyed(colour: Rgb, text: &str) -> Chunk {
    Chunk {
        key: Some(colour),
        text: ascii(text),
        colour: TEXT_COLOUR,
        gap: 2,
    }
}

/// Text that may wrap between its words.
fn words(text: &str) -> Vec<Chunk> {
    text.split_whitespace()
        .map(|w| Chunk {
            key: None,
            text: ascii(w),
            colour: TEXT_COLOUR,
            gap: 1,
        })
        .collect()
}

/// What the legend says: organ keys, findings, ratio, models.
fn legend(
    findings: &Findings,
    probabilities: &LabelMap<f32>,
    positives: usize,
    drawn: &[Drawn],
) -> Vec<Paragraph> {
    let mut out = vec![vec![
        keyed(RIGHT_LUNG, "Right lung"),
        keyed(LEFT_LUNG, "Left lung"),
        keyed(HEART, "Heart"),
    ]];
    if drawn.is_empty() {
        out.push(words("No finding above threshold"));
        let mut top: Vec<&(String, f32)> = probabilities
            .0
            .iter()
            .filter(|(_, p)| p.is_finite())
            .collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1));
        if !top.is_empty() {
            let mut p = words("Highest:");
            p.extend(top.iter().take(3).map(|(label, prob)| Chunk {
                gap: 2,
                ..plain(&finding_text(label, *prob))
            }));
            out.push(p);
        }
    } else {
        let mut p = words("Above threshold:");
        p.extend(
            drawn
                .iter()
                .map(|d| keyed(d.colour, &finding_text(&d.label, d.probability))),
        );
        if positives > drawn.len() {
            p.push(Chunk {
                gap: 2,
                ..plain(&format!("(+{} more)", positives - drawn.len()))
            });
        }
        out.push(p);
    }
    if let Some(ctr) = findings.anatomy.cardiothoracic_ratio {
        let mut p = vec![plain(&format!("CTR {ctr:.2}"))];
        p.extend(words("(widest heart / widest thorax: the two lines)"));
        out.push(p);
    }
    let (c, s) = (&findings.classifier, &findings.segmenter);
    out.push(words(&format!(
        "Models: {} {}, {} {}",
        c.name, c.version, s.name, s.version
    )));
    out
}

fn plain(text: &str) -> Chunk {
    Chunk {
        key: None,
        text: ascii(text),
        colour: TEXT_COLOUR,
        gap: 1,
    }
}

/// "Pleural thickening 0.87".
fn finding_text(label: &str, probability: f32) -> String {
    let name = ascii(&label.replace('_', " "));
    let mut chars = name.chars();
    let first: String = chars.next().into_iter().collect();
    format!("{first}{} {probability:.2}", chars.as_str().to_lowercase())
}

/// Printable ASCII; anything else becomes `?`.
fn ascii(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Place the paragraphs' chunks in rows of at most `width` pixels; a chunk wider than a row is
/// cut to fit.
fn layout(paragraphs: &[Paragraph], width: usize, scale: usize) -> Vec<Vec<Placed>> {
    let glyph = 8 * scale;
    let mut rows: Vec<Vec<Placed>> = Vec::new();
    for paragraph in paragraphs {
        let mut row: Vec<Placed> = Vec::new();
        let mut x = 0;
        for chunk in paragraph {
            let mut chunk = chunk.clone();
            let key = if chunk.key.is_some() { 2 * glyph } else { 0 };
            let fits = width.saturating_sub(key) / glyph;
            if chunk.text.len() > fits {
                chunk.text.truncate(fits);
            }
            let w = key + chunk.text.len() * glyph;
            let gap = chunk.gap * glyph;
            if !row.is_empty() && x + gap + w > width {
                rows.push(std::mem::take(&mut row));
                x = 0;
            }
            let at = if row.is_empty() { 0 } else { x + gap };
            x = at + w;
            row.push(Placed { x: at, chunk });
        }
        rows.push(row);
    }
    rows
}

/// The largest glyph scale (3, 2 or 1) at which every line fits in `width`.
fn banner_scale(lines: &[(&str, Rgb)], width: usize) -> usize {
    let longest = lines.iter().map(|(t, _)| t.len()).max().unwrap_or(0);
    (1..=3)
        .rev()
        .find(|s| longest * 8 * s <= width)
        .unwrap_or(1)
}

fn text_px(text: &str, scale: usize) -> usize {
    text.len() * 8 * scale
}

fn line_gap(scale: usize) -> usize {
    4 * scale
}

fn row_pitch(scale: usize) -> usize {
    8 * scale + line_gap(scale)
}

// ---------------------------------------------------------------- canvas

/// Blend `colour` over one pixel at opacity `alpha` (in [0, 1]; integer arithmetic, in 256ths).
fn mix(px: &mut [u8], colour: Rgb, alpha: f32) {
    let a = (alpha.clamp(0.0, 1.0) * 256.0) as u32;
    for (d, &c) in px.iter_mut().zip(&colour) {
        *d = ((u32::from(*d) * (256 - a) + u32::from(c) * a + 128) >> 8) as u8;
    }
}

/// The RGB buffer being drawn on; every drawing call is clipped to it.
struct Canvas {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl Canvas {
    fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            rgb: vec![0; width * height * 3],
        }
    }

    /// Row `y` of the image rectangle.
    fn image_row(&mut self, image: Rect, y: usize) -> &mut [u8] {
        let start = ((image.top + y) * self.width + image.left) * 3;
        &mut self.rgb[start..start + image.width * 3]
    }

    /// Fill `[x0, x1) × [y0, y1)`, clipped to the canvas.
    fn fill(&mut self, x0: usize, y0: usize, x1: usize, y1: usize, colour: Rgb) {
        let (x1, y1) = (x1.min(self.width), y1.min(self.height));
        for y in y0..y1 {
            let row = &mut self.rgb[y * self.width * 3..(y + 1) * self.width * 3];
            for px in row.chunks_exact_mut(3).take(x1).skip(x0) {
                px.copy_from_slice(&colour);
            }
        }
    }

    /// Fill a rectangle given in image coordinates, clipped to the image.
    fn fill_in(&mut self, image: Rect, x0: usize, y0: usize, x1: usize, y1: usize, colour: Rgb) {
        let (x1, y1) = (x1.min(image.width), y1.min(image.height));
        if x0 < x1 && y0 < y1 {
            let (l, t) = (image.left, image.top);
            self.fill(l + x0, t + y0, l + x1, t + y1, colour);
        }
    }

    /// Draw ASCII `text` with its top-left corner at `(x, y)`, each font pixel `scale`×`scale`.
    fn text(&mut self, x: usize, y: usize, text: &str, scale: usize, colour: Rgb) {
        for (i, c) in text.chars().enumerate() {
            let Some(glyph) = BASIC_FONTS.get(c) else {
                continue;
            };
            let gx = x + i * 8 * scale;
            for (r, bits) in glyph.iter().enumerate() {
                for b in 0..8 {
                    if bits >> b & 1 == 1 {
                        let (px, py) = (gx + b * scale, y + r * scale);
                        self.fill(px, py, px + scale, py + scale, colour);
                    }
                }
            }
        }
    }

    /// A legend chunk: its key (a square the size of a glyph) and its text.
    fn chunk(&mut self, x: usize, y: usize, chunk: &Chunk, scale: usize) {
        let glyph = 8 * scale;
        let mut x = x;
        if let Some(key) = chunk.key {
            self.fill(x, y, x + glyph, y + glyph, key);
            x += 2 * glyph;
        }
        self.text(x, y, &chunk.text, scale, chunk.colour);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;
    use crate::analyse::analyser::{Call, ModelTag, measure};
    use crate::analyse::decode::{GreyImage, Voi};

    const S: usize = 32;
    const LABELS: [&str; 3] = ["Effusion", "Mass", "Pleural_Thickening"];
    /// Class maps are 8×8; Effusion's peak is at map cell (row 1, column 4): top centre.
    const MAP: usize = 8;

    /// An ellipse of organ in channel `c` of `[3,S,S]` masks: centre and radii in mask pixels.
    fn ellipse(masks: &mut [f32], c: usize, (cy, cx): (f32, f32), (ry, rx): (f32, f32)) {
        for y in 0..S {
            for x in 0..S {
                let (dy, dx) = ((y as f32 - cy) / ry, (x as f32 - cx) / rx);
                if dy * dy + dx * dx <= 1.0 {
                    masks[c * S * S + y * S + x] = 1.0;
                }
            }
        }
    }

    /// A `w`×`h` display image (a horizontal ramp) with two lungs and a heart, Effusion at 0.9
    /// (positive) and the others below their threshold.
    fn findings(w: usize, h: usize, trained: bool) -> (Findings, LabelMap<f32>) {
        let mut masks = vec![0f32; 3 * S * S];
        ellipse(&mut masks, 0, (14.0, 23.0), (9.0, 5.0)); // left lung: image right
        ellipse(&mut masks, 1, (14.0, 8.0), (9.0, 5.0)); // right lung: image left
        ellipse(&mut masks, 2, (21.0, 17.0), (4.0, 5.0)); // heart
        let mut class_maps = vec![0f32; LABELS.len() * MAP * MAP];
        class_maps[MAP + 4] = 1.0;
        let probabilities = [0.9, 0.2, 0.1];
        let thresholds = [0.5, 0.5, 0.4];
        let tag = |name: &str| ModelTag {
            name: name.into(),
            version: "1.0.0".into(),
            trained,
        };
        let label_map = |v: &[f32]| {
            LabelMap(
                LABELS
                    .iter()
                    .zip(v)
                    .map(|(l, &p)| (l.to_string(), p))
                    .collect::<Vec<_>>(),
            )
        };
        let thresholds = label_map(&thresholds);
        let findings = Findings {
            calls: LabelMap(
                LABELS
                    .iter()
                    .zip(probabilities.iter().zip(&thresholds.0))
                    .map(|(l, (p, (_, t)))| {
                        (
                            l.to_string(),
                            if p >= t { Call::Present } else { Call::Absent },
                        )
                    })
                    .collect(),
            ),
            thresholds,
            anatomy: measure(&masks, S, h, w, None),
            voi: Voi::MinMax { min: 0.0, max: 1.0 },
            segmenter: tag("anatomy-segmenter"),
            classifier: tag("anatomy-xnet"),
            provider: "cpu".into(),
            trained,
            warning: None,
            masks,
            mask_channels: vec!["left_lung".into(), "right_lung".into(), "heart".into()],
            class_maps,
            class_map_size: (MAP, MAP),
            grey: GreyImage::default(),
            display: GreyImage {
                width: w,
                height: h,
                pixels: (0..w * h)
                    .map(|i| 0.2 + 0.6 * (i % w.max(1)) as f32 / w.max(1) as f32)
                    .collect(),
            },
            source_size: (h, w),
        };
        (findings, label_map(&probabilities))
    }

    /// The canvas pixel at display position `(x, y)` (fractions of the display image).
    fn at(p: &Picture, fx: f32, fy: f32) -> Rgb {
        let x = p.image.left + (fx * p.image.width as f32) as usize;
        let y = p.image.top + (fy * p.image.height as f32) as usize;
        p.pixel(x, y).unwrap()
    }

    fn rows(p: &Picture, ys: std::ops::Range<usize>) -> impl Iterator<Item = Rgb> + '_ {
        ys.flat_map(move |y| (0..p.width).map(move |x| p.pixel(x, y).unwrap()))
    }

    #[test]
    fn banner_says_ai_result_and_warns_when_untrained() {
        let (f, probs) = findings(600, 700, true);
        let trained = render(&f, &probs);
        let (f, probs) = findings(600, 700, false);
        let untrained = render(&f, &probs);
        for p in [&trained, &untrained] {
            assert!(p.image.top > 0);
            assert!(rows(p, 0..p.image.top).any(|c| c == BANNER_COLOUR));
        }
        assert!(untrained.image.top > trained.image.top);
        assert!(rows(&untrained, 0..untrained.image.top).any(|c| c == WARNING_COLOUR));
        assert!(!rows(&trained, 0..trained.image.top).any(|c| c == WARNING_COLOUR));
        // the untrained line is the longest: it still fits at scale 2 on the narrowest canvas
        assert_eq!(
            banner_scale(&[(UNTRAINED_TEXT, WARNING_COLOUR)], MIN_WIDTH - 2 * MARGIN),
            2
        );
    }

    #[test]
    fn lung_fields_are_tinted_and_outlined_and_the_rest_stays_grey() {
        let (f, probs) = findings(640, 640, true);
        let p = render(&f, &probs);
        // lung centres (mask (14, 8) and (14, 23) of 32): tinted, not grey
        let [r, g, b] = at(&p, 8.5 / 32.0, 14.5 / 32.0);
        assert!(b > g && g > r, "right lung {:?}", [r, g, b]);
        let [r, g, b] = at(&p, 23.5 / 32.0, 14.5 / 32.0);
        assert!(g > b && b > r, "left lung {:?}", [r, g, b]);
        // outside every organ and map: grey
        let [r, g, b] = at(&p, 0.5 / 32.0, 31.5 / 32.0);
        assert!(r == g && g == b, "{:?}", [r, g, b]);
        // each organ's outline colour is on the image
        let image: Vec<Rgb> = rows(&p, p.image.top..p.image.top + p.image.height).collect();
        for colour in [RIGHT_LUNG, LEFT_LUNG, HEART] {
            assert!(image.contains(&colour), "{colour:?}");
        }
    }

    #[test]
    fn the_class_map_of_a_positive_finding_is_drawn_and_of_a_negative_one_not() {
        let (f, probs) = findings(640, 640, true);
        let peak = (4.5 / 8.0, 1.5 / 8.0);
        let [r, g, b] = at(&render(&f, &probs), peak.0, peak.1);
        assert!(r > g + 40 && r > b + 40, "{:?}", [r, g, b]);
        let none = LabelMap(probs.0.iter().map(|(l, _)| (l.clone(), 0.1)).collect());
        let [r, g, b] = at(&render(&f, &none), peak.0, peak.1);
        assert!(r == g && g == b, "{:?}", [r, g, b]);
    }

    #[test]
    fn the_ratio_lines_lie_on_the_widest_rows() {
        let (f, probs) = findings(640, 640, true);
        let basis = f.anatomy.ctr_basis.unwrap();
        let p = render(&f, &probs);
        let h = basis.heart;
        let y = (h.row as f32 + 0.5) / S as f32;
        let x = (h.first + h.last + 1) as f32 / 2.0 / S as f32;
        assert_eq!(at(&p, x, y), HEART);
        let t = basis.thorax;
        let y = (t.row as f32 + 0.5) / S as f32;
        assert_eq!(at(&p, (t.first as f32 + 1.0) / S as f32, y), RIGHT_LUNG);
        assert_eq!(at(&p, t.last as f32 / S as f32, y), LEFT_LUNG);
    }

    #[test]
    fn the_canvas_is_at_least_768_wide_with_the_whole_image_centred() {
        let (f, probs) = findings(300, 400, true);
        let p = render(&f, &probs);
        assert_eq!(p.width, MIN_WIDTH);
        assert_eq!(p.rgb.len(), p.width * p.height * 3);
        assert_eq!(p.image.left, (MIN_WIDTH - 300) / 2);
        assert_eq!((p.image.width, p.image.height), (300, 400));
        assert!(p.height > p.image.top + 400);
        // black on either side of the image, grey at its first and last columns
        let y = p.image.top + 399;
        assert_eq!(p.pixel(p.image.left - 1, y), Some([0, 0, 0]));
        assert_eq!(p.pixel(p.image.left + 300, y), Some([0, 0, 0]));
        let g = (0.2f32 * 255.0).round() as u8;
        assert_eq!(p.pixel(p.image.left, y), Some([g, g, g]));

        let (f, probs) = findings(1024, 800, true);
        let p = render(&f, &probs);
        assert_eq!((p.width, p.image.left, p.image.width), (1024, 0, 1024));
        assert_eq!(p.rgb.len(), p.width * p.height * 3);
    }

    #[test]
    fn the_legend_names_organs_findings_ratio_and_models() {
        let (f, probs) = findings(640, 640, true);
        let p = render(&f, &probs);
        let band: Vec<Rgb> = rows(&p, p.image.top + p.image.height..p.height).collect();
        for colour in [
            TEXT_COLOUR,
            RIGHT_LUNG,
            LEFT_LUNG,
            HEART,
            FINDING_COLOURS[0],
        ] {
            assert!(band.contains(&colour), "{colour:?}");
        }
        assert!(!band.contains(&FINDING_COLOURS[1]));

        let text = |probs: &LabelMap<f32>| -> String {
            let (n, drawn) = drawn_findings(&f, probs);
            legend_text(&legend(&f, probs, n, &drawn))
        };
        let t = text(&probs);
        assert!(t.contains("Effusion 0.90"), "{t}");
        assert!(t.contains("CTR 0."), "{t}");
        assert!(t.contains("anatomy-xnet 1.0.0"), "{t}");
        assert!(!t.contains("Mass"), "{t}");
        let none = LabelMap(vec![
            ("Effusion".into(), 0.3),
            ("Mass".into(), 0.35),
            ("Pleural_Thickening".into(), 0.2),
        ]);
        let t = text(&none);
        assert!(t.contains("No finding above threshold"), "{t}");
        assert!(
            t.contains("Mass 0.35 Effusion 0.30 Pleural thickening 0.20"),
            "{t}"
        );
        let all = LabelMap(LABELS.iter().map(|l| (l.to_string(), 0.95)).collect());
        let (n, drawn) = drawn_findings(&f, &all);
        assert_eq!((n, drawn.len()), (3, 3));
    }

    fn legend_text(paragraphs: &[Paragraph]) -> String {
        paragraphs
            .iter()
            .map(|p| {
                p.iter()
                    .map(|c| c.text.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn long_legend_text_wraps_and_is_cut_to_the_width() {
        let para = vec![words(&"word ".repeat(40)), vec![plain(&"x".repeat(100))]];
        let rows = layout(&para, 200, 2);
        assert!(rows.len() > 3);
        for row in &rows {
            for placed in row {
                assert!(placed.x + placed.chunk.text.len() * 16 <= 200, "{placed:?}");
            }
        }
        assert_eq!(
            finding_text("Pleural_Thickening", 0.874),
            "Pleural thickening 0.87"
        );
        assert_eq!(ascii("Müller"), "M?ller");
    }

    #[test]
    fn degenerate_images_do_not_panic() {
        for (w, h) in [(1, 1), (1, 700), (700, 1), (0, 0), (0, 5), (5, 0)] {
            let (f, probs) = findings(w, h, false);
            let p = render(&f, &probs);
            assert_eq!(p.rgb.len(), p.width * p.height * 3, "{w}x{h}");
            assert!(p.width >= MIN_WIDTH);
        }
        // masks and maps of the wrong shape, a display buffer too short: drawn without them
        let (mut f, probs) = findings(100, 100, true);
        f.masks.truncate(10);
        f.class_maps.truncate(3);
        f.display.pixels.truncate(50);
        let p = render(&f, &probs);
        assert_eq!(p.rgb.len(), p.width * p.height * 3);
    }

    #[test]
    fn png_round_trip() {
        let (f, probs) = findings(200, 300, false);
        let p = render(&f, &probs);
        let bytes = encode_png(&p).unwrap();
        let mut reader = png::Decoder::new(bytes.as_slice()).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(
            (info.width as usize, info.height as usize),
            (p.width, p.height)
        );
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(&buf[..info.buffer_size()], p.rgb.as_slice());
        let broken = Picture {
            rgb: vec![0; 5],
            ..p
        };
        assert!(encode_png(&broken).is_err());
    }

    /// Prints the time of the largest picture with every label positive (3 class maps): the
    /// budget is about 50 ms in an optimised build.
    #[test]
    fn render_time() {
        let (f, probs) = findings(1024, 1024, false);
        let probs = LabelMap(probs.0.iter().map(|(l, _)| (l.clone(), 0.95)).collect());
        let started = std::time::Instant::now();
        let p = render(&f, &probs);
        eprintln!(
            "render 1024x1024 -> {}x{}: {:.1} ms (this profile)",
            p.width,
            p.height,
            started.elapsed().as_secs_f64() * 1e3
        );
    }
}
