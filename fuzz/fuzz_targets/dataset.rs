//! The structural guard and the parser behind it, as the receiver uses them, then the decode
//! step (see dataset_harness.rs).
#![no_main]

#[path = "dataset_harness.rs"]
mod dataset_harness;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dataset_harness::run(data);
});
