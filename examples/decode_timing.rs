//! Times each decode step on one file (development aid): `cargo run --release --example decode_timing FILE`.
use std::time::Instant;

use cxr_worker::analyse::{decode, preprocess};
use cxr_worker::dicom::guard;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: decode_timing FILE")?;
    let limits = decode::DecodeLimits::default();
    for _ in 0..3 {
        let t = Instant::now();
        let bytes = std::fs::read(&path)?;
        let read = t.elapsed();
        let t = Instant::now();
        guard::check(
            &bytes,
            guard::Limits::with_max_inflated(limits.max_file_bytes),
        )?;
        let g = t.elapsed();
        let t = Instant::now();
        let file = decode::open_bytes(&bytes, &limits)?;
        let open = t.elapsed();
        let t = Instant::now();
        let stored = file.stored_image(&limits)?;
        let pixels = t.elapsed();
        let t = Instant::now();
        let (grey, _) = decode::to_grey(&stored);
        let voi = t.elapsed();
        let t = Instant::now();
        let _ = preprocess::resize(&grey, 512, 512);
        let resize = t.elapsed();
        println!(
            "read {read:?} guard {g:?} open(incl. guard) {open:?} pixels {pixels:?} voi {voi:?} resize {resize:?}"
        );
    }
    Ok(())
}
