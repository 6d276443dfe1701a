//! Masks at another geometry: the segmenter's S×S probability maps resampled to the source
//! image's rows×columns (the SEG) or to the display image (the Secondary Capture's outlines).
//!
//! The S×S input was the whole image resized without keeping the aspect ratio, so mask pixel
//! `(i, j)` covers source rows `[i·R/S, (i+1)·R/S)` and columns `[j·C/S, (j+1)·C/S)`. A target
//! pixel's centre `(y + ½)·S/H − ½` (likewise for x) is its position in mask coordinates; the
//! probability there is interpolated bilinearly between the four nearest mask pixels (edges
//! clamped), and the pixel is organ when it is above [`MASK_THRESHOLD`] — the threshold the
//! areas and the cardiothoracic ratio are measured with.

use super::analyser::{Findings, MASK_THRESHOLD};
use crate::findings::BitMask;

/// One output coordinate's two neighbours in a coarser (or finer) grid and the weight of the
/// second: bilinear interpolation, pixel centres aligned, edges clamped.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tap {
    pub lo: usize,
    pub hi: usize,
    pub t: f32,
}

/// The taps from a grid of `n_in` samples to `n_out`; the masks here and the class maps of
/// the picture ([`super::overlay`]) are resampled with them.
pub(super) fn taps(n_in: usize, n_out: usize) -> Vec<Tap> {
    let scale = n_in as f64 / n_out.max(1) as f64;
    let last = n_in.saturating_sub(1);
    (0..n_out)
        .map(|i| {
            let p = ((i as f64 + 0.5) * scale - 0.5).clamp(0.0, last as f64);
            let lo = p.floor() as usize;
            Tap {
                lo,
                hi: (lo + 1).min(last),
                t: (p - lo as f64) as f32,
            }
        })
        .collect()
}

/// The value at (`ty`, `tx`) between rows `r0` (at `ty.lo`) and `r1` (at `ty.hi`).
pub(super) fn bilinear(r0: &[f32], r1: &[f32], ty: &Tap, tx: &Tap) -> f32 {
    let top = r0[tx.lo] + (r0[tx.hi] - r0[tx.lo]) * tx.t;
    let bottom = r1[tx.lo] + (r1[tx.hi] - r1[tx.lo]) * tx.t;
    top + (bottom - top) * ty.t
}

/// Resample one S×S probability plane to `rows`×`columns` and threshold it. A plane of the
/// wrong length (or S = 0) gives an empty (all zero) mask of the asked size.
pub fn resample(plane: &[f32], s: usize, rows: usize, columns: usize) -> BitMask {
    let mut bits = vec![0u8; rows * columns];
    if s > 0 && plane.len() == s * s {
        let (ys, xs) = (taps(s, rows), taps(s, columns));
        for (y, ty) in ys.iter().enumerate() {
            let (r0, r1) = (&plane[ty.lo * s..][..s], &plane[ty.hi * s..][..s]);
            let row = &mut bits[y * columns..(y + 1) * columns];
            for (out, tx) in row.iter_mut().zip(&xs) {
                *out = u8::from(bilinear(r0, r1, ty, tx) > MASK_THRESHOLD);
            }
        }
    }
    BitMask {
        rows,
        columns,
        bits,
    }
}

/// Every channel of segmenter output `[C,S,S]` at `rows`×`columns`, in channel order.
pub fn resample_all(masks: &[f32], s: usize, rows: usize, columns: usize) -> Vec<BitMask> {
    let plane = s * s;
    if plane == 0 {
        return Vec::new();
    }
    masks
        .chunks_exact(plane)
        .map(|p| resample(p, s, rows, columns))
        .collect()
}

/// Each segmenter channel of an analysed image, named, at the source image's geometry: what its
/// SEG holds.
pub fn at_source(findings: &Findings) -> Vec<(String, BitMask)> {
    let (rows, columns) = findings.source_size;
    findings
        .mask_channels
        .iter()
        .cloned()
        .zip(resample_all(
            &findings.masks,
            findings.grey.width,
            rows,
            columns,
        ))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;

    #[test]
    fn same_size_is_the_threshold() {
        let plane = [0.0, 0.6, 0.4, 1.0];
        let m = resample(&plane, 2, 2, 2);
        assert_eq!(m.bits, vec![0, 1, 0, 1]);
    }

    #[test]
    fn upsampling_keeps_each_block_and_interpolates_its_edges() {
        // the right half of a 4×4 mask is organ: at 8×16 (rows×columns) the right half is
        // organ and the left half is not, with the edge where the probability crosses 0.5
        let mut plane = vec![0f32; 16];
        for y in 0..4 {
            plane[y * 4 + 2] = 1.0;
            plane[y * 4 + 3] = 1.0;
        }
        let m = resample(&plane, 4, 8, 16);
        assert_eq!((m.rows, m.columns), (8, 16));
        for y in 0..8 {
            let row = &m.bits[y * 16..(y + 1) * 16];
            assert_eq!(
                row,
                &[0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1],
                "row {y}"
            );
        }
    }

    #[test]
    fn downsampling_and_odd_sizes_stay_in_bounds() {
        let plane: Vec<f32> = (0..64).map(|i| if i % 8 < 4 { 1.0 } else { 0.0 }).collect();
        let m = resample(&plane, 8, 3, 5);
        assert_eq!(m.bits.len(), 15);
        assert_eq!(&m.bits[..5], &[1, 1, 0, 0, 0]);
        let all = resample_all(&[plane.clone(), plane].concat(), 8, 1, 1);
        assert_eq!(all.len(), 2);
    }

    #[test]
    fn a_bad_plane_gives_an_empty_mask() {
        let m = resample(&[1.0; 3], 2, 4, 4);
        assert_eq!(m.bits, vec![0; 16]);
        assert!(resample_all(&[1.0; 4], 0, 2, 2).is_empty());
    }
}
