//! Preprocess: grey image → model input tensors (decode → **preprocess** → segment → classify).
//!
//! The resize is defined exactly so that a Python reference can reproduce it: it is Pillow's
//! `Image.resize(size, Image.BILINEAR)` on a 32-bit float (`"F"`) image — a separable triangle
//! filter whose support is widened by the scale factor when shrinking (anti-aliasing):
//!
//! - per axis, `scale = in / out`, `fs = max(scale, 1)`, `support = fs`;
//! - output index `o` has centre `c = (o + 0.5) · scale`, taps `x` from `trunc(c − support + 0.5)`
//!   (at least 0) to `trunc(c + support + 0.5)` (at most `in`), exclusive;
//! - weight `w(x) = max(0, 1 − |(x − c + 0.5) / fs|)`, normalised to sum 1;
//! - horizontal pass first (stored as f32), then vertical; weights and sums in f64.
//!
//! The image is resized to S×S without keeping the aspect ratio (areas are converted back with
//! per-axis pixel sizes). Then: segmenter input `[N,1,S,S]` = grey; classifier input
//! `[N,3,S,S]` = `(grey − mean[c]) / std[c]` in f32 with the model's metadata; classifier masks
//! `[N,2,K,K]` = (`max(left_lung, right_lung)`, `heart`) of the segmenter output, each
//! block-averaged over f×f blocks when S = f·K (512 → 256, 64 → 32), else resized S→K with the
//! same filter — the convention of the model side (`onnx/cxr_models/images.py`).
//!
//! Every resized value is clamped to [0, 1], as the model side does.

use super::decode::GreyImage;

/// Filter taps of one output sample: first input index and normalised weights.
struct Taps {
    start: usize,
    weights: Vec<f64>,
}

fn taps(input: usize, output: usize) -> Vec<Taps> {
    let scale = input as f64 / output as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale;
    (0..output)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            // `as i64` truncates toward zero, as Pillow's `(int)` does.
            let start = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64)
                .min(input as i64)
                .max(start as i64) as usize;
            let mut weights: Vec<f64> = (start..end)
                .map(|x| {
                    let t = ((x as f64 - center + 0.5) / filter_scale).abs();
                    if t < 1.0 { 1.0 - t } else { 0.0 }
                })
                .collect();
            let sum: f64 = weights.iter().sum();
            if sum != 0.0 {
                weights.iter_mut().for_each(|w| *w /= sum);
            }
            Taps { start, weights }
        })
        .collect()
}

/// Resize `image` to `width`×`height` with the anti-aliased triangle filter described above.
pub fn resize(image: &GreyImage, width: usize, height: usize) -> GreyImage {
    let (w_in, h_in) = (image.width, image.height);
    let horizontal = taps(w_in, width);
    let mut tmp = vec![0f32; h_in * width];
    for (row_in, row_out) in image
        .pixels
        .chunks_exact(w_in)
        .zip(tmp.chunks_exact_mut(width))
    {
        for (out, t) in row_out.iter_mut().zip(&horizontal) {
            let src = &row_in[t.start..t.start + t.weights.len()];
            *out = src
                .iter()
                .zip(&t.weights)
                .map(|(&p, &w)| f64::from(p) * w)
                .sum::<f64>() as f32;
        }
    }
    let vertical = taps(h_in, height);
    let mut pixels = vec![0f32; width * height];
    let mut acc = vec![0f64; width];
    for (row_out, t) in pixels.chunks_exact_mut(width).zip(&vertical) {
        acc.iter_mut().for_each(|a| *a = 0.0);
        for (k, &w) in t.weights.iter().enumerate() {
            let src = &tmp[(t.start + k) * width..(t.start + k + 1) * width];
            for (a, &p) in acc.iter_mut().zip(src) {
                *a += f64::from(p) * w;
            }
        }
        for (o, a) in row_out.iter_mut().zip(&acc) {
            *o = (*a as f32).clamp(0.0, 1.0);
        }
    }
    GreyImage {
        width,
        height,
        pixels,
    }
}

/// Append the classifier's 3-channel normalised input for one S×S grey image to `out`.
pub fn normalise_into(grey: &[f32], mean: &[f32; 3], std: &[f32; 3], out: &mut Vec<f32>) {
    for c in 0..3 {
        out.extend(grey.iter().map(|&g| (g - mean[c]) / std[c]));
    }
}

/// Append the classifier's mask input for one image to `out`: lungs = max(left, right) and heart,
/// each resized from S×S to K×K. `left`, `right`, `heart` are S×S channels of the segmenter.
pub fn classifier_masks_into(
    left: &[f32],
    right: &[f32],
    heart: &[f32],
    s: usize,
    k: usize,
    out: &mut Vec<f32>,
) {
    let lungs = GreyImage {
        width: s,
        height: s,
        pixels: left.iter().zip(right).map(|(&a, &b)| a.max(b)).collect(),
    };
    let heart = GreyImage {
        width: s,
        height: s,
        pixels: heart.to_vec(),
    };
    for organ in [&lungs, &heart] {
        if s.is_multiple_of(k) {
            block_mean_into(&organ.pixels, s, s / k, out);
        } else {
            out.extend(resize(organ, k, k).pixels);
        }
    }
}

/// Append the means of the f×f blocks of an S×S plane (S = f·K) to `out`, row-major.
fn block_mean_into(plane: &[f32], s: usize, f: usize, out: &mut Vec<f32>) {
    let k = s / f;
    let scale = 1.0 / (f * f) as f32;
    for by in 0..k {
        for bx in 0..k {
            let mut sum = 0f32;
            for y in by * f..(by + 1) * f {
                sum += plane[y * s + bx * f..y * s + (bx + 1) * f]
                    .iter()
                    .sum::<f32>();
            }
            out.push(sum * scale);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;

    #[test]
    fn same_size_is_identity() {
        let img = GreyImage {
            width: 3,
            height: 2,
            pixels: vec![0.0, 0.5, 1.0, 0.25, 0.75, 0.125],
        };
        assert_eq!(resize(&img, 3, 2), img);
    }

    #[test]
    fn halving_averages_with_triangle_weights() {
        // 4 → 2: o = 0 has centre 1, taps x = 0, 1, 2 with weights 0.75, 0.75, 0.25 (sum 1.75).
        let img = GreyImage {
            width: 4,
            height: 1,
            pixels: vec![0.0, 1.0, 1.0, 0.0],
        };
        let out = resize(&img, 2, 1);
        assert!(
            (out.pixels[0] - (1.0 / 1.75) as f32).abs() < 1e-6,
            "{:?}",
            out.pixels
        );
        assert!((out.pixels[0] - out.pixels[1]).abs() < 1e-6);
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = GreyImage {
            width: 37,
            height: 23,
            pixels: vec![0.3; 37 * 23],
        };
        let out = resize(&img, 8, 8);
        assert!(out.pixels.iter().all(|p| (p - 0.3).abs() < 1e-6));
    }
}
