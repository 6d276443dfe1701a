//! Overlays: PNG pictures of an analysed image for a human reader — the grey image with the
//! organ masks tinted (left), and with the class map of the most probable finding (right).
//!
//! A minimal PNG writer (8-bit RGB, zlib via flate2) keeps the dependency list short.

use std::io::Write;
use std::path::Path;

use super::analyser::Findings;

/// Write the overlay of `findings` to `path` as PNG.
pub fn write_png(path: &Path, findings: &Findings, probabilities: &[f32]) -> std::io::Result<()> {
    let (w, h, rgb) = render(findings, probabilities);
    std::fs::write(path, encode_png(w, h, &rgb)?)
}

/// Render the two panels side by side: `(width, height, RGB bytes)`.
pub fn render(findings: &Findings, probabilities: &[f32]) -> (usize, usize, Vec<u8>) {
    let g = &findings.grey;
    let (s, plane) = (g.width, g.width * g.height);
    let masks = &findings.masks;
    let best = probabilities
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i);
    let (mh, mw) = findings.class_map_size;
    let map = findings
        .class_maps
        .get(best * mh * mw..(best + 1) * mh * mw)
        .unwrap_or(&[]);
    let (lo, hi) = map
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    let width = 2 * s;
    let mut rgb = vec![0u8; width * g.height * 3];
    for y in 0..g.height {
        for x in 0..s {
            let i = y * s + x;
            let grey = g.pixels[i];
            let at = |c: usize| masks.get(c * plane + i).copied().unwrap_or(0.0);
            // Left panel: left lung green, right lung blue, heart red, at 40 % opacity.
            let tint = [at(2), at(0), at(1)];
            let left: Vec<u8> = (0..3)
                .map(|c| to_byte(grey * (1.0 - 0.4 * tint[c].min(1.0)) + 0.4 * tint[c].min(1.0)))
                .collect();
            // Right panel: the class map, nearest-neighbour upsampled, as a red heat.
            let heat = if mh > 0 && mw > 0 && hi > lo {
                (map[(y * mh / g.height) * mw + x * mw / s] - lo) / (hi - lo)
            } else {
                0.0
            };
            let right = [
                grey * 0.6 + 0.4 * heat,
                grey * 0.6,
                grey * 0.6 + 0.4 * (1.0 - heat) * 0.3,
            ];
            let row = y * width * 3;
            rgb[row + x * 3..row + x * 3 + 3].copy_from_slice(&left);
            for c in 0..3 {
                rgb[row + (s + x) * 3 + c] = to_byte(right[c]);
            }
        }
    }
    (width, g.height, rgb)
}

fn to_byte(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc.sum().to_be_bytes());
}

/// Encode 8-bit RGB pixels as a PNG file.
pub fn encode_png(width: usize, height: usize, rgb: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::with_capacity(height * (width * 3 + 1));
    for row in rgb.chunks_exact(width * 3) {
        raw.push(0); // filter: none
        raw.extend_from_slice(row);
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(&raw)?;
    let idat = z.finish()?;
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&(width as u32).to_be_bytes());
    ihdr.extend_from_slice(&(height as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit, RGB, deflate, adaptive, no interlace
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    Ok(out)
}
