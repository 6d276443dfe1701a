//! The data-set harness, shared by the `dataset` fuzz target and tests/fuzz_regressions.rs: the
//! data set is walked fragment by fragment by the structural guard (the first byte picks the
//! transfer syntax, the second the fragment size), its header parsed and checked; then, as the
//! decode step does, the whole file is parsed and its first frame decoded.

use cxr_worker::analyse::decode::{self, DecodeLimits};
use cxr_worker::dicom::guard::{Limits, Walker};
use cxr_worker::dicom::header;

const SYNTAXES: [&str; 5] = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.70",
];

/// Run one input through the receive and decode paths; `Err` when the structural guard refused
/// it (nothing was parsed then).
pub fn run(data: &[u8]) -> Result<(), String> {
    let [ts, chunk, rest @ ..] = data else {
        return Ok(());
    };
    let ts = SYNTAXES[usize::from(*ts) % SYNTAXES.len()];
    let limits = Limits {
        max_inflated: 4 << 20,
        ..Limits::default()
    };
    let mut walker = Walker::new(ts, limits, true);
    for piece in rest.chunks(usize::from(*chunk).max(1)) {
        walker.feed(piece).map_err(|e| e.to_string())?;
    }
    let summary = walker.finish().map_err(|e| e.to_string())?;
    let head = summary.header.unwrap_or_default();
    let _ = header::read_header(&head, ts, "1.2.840.10008.5.1.4.1.1.1", "1.2.3");
    let Ok(meta) = header::file_preamble_and_meta("1.2.840.10008.5.1.4.1.1.1", "1.2.3", ts, "FUZZ")
    else {
        return Ok(());
    };
    let file = [meta.as_slice(), rest].concat();
    let limits = DecodeLimits {
        max_file_bytes: 8 << 20,
        max_pixels: 4_000_000,
    };
    if let Ok(f) = decode::open_bytes(&file, &limits)
        && let Ok(stored) = f.stored_image(&limits)
    {
        let _ = decode::to_grey(&stored);
    }
    Ok(())
}
