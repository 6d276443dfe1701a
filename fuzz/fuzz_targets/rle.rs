//! The rle decoder behind our codestream checks: one fuzzed fragment in a chest CR data set
//! (transfer syntax 1.2.840.10008.1.2.5), decoded as the decode helper does.
#![no_main]

#[path = "image.rs"]
mod image;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    image::decode_encapsulated("1.2.840.10008.1.2.5", data);
});
