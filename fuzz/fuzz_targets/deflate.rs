//! Deflated Explicit VR Little Endian: the fuzzed bytes are the deflated data set, inflated as
//! it streams by the guard (under its cap), then parsed and decoded.
#![no_main]

#[path = "image.rs"]
#[allow(dead_code)] // the encapsulated-image helpers serve the other targets
mod image;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    image::decode_file("1.2.840.10008.1.2.1.99", data);
});
