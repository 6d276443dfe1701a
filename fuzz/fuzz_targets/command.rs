//! The DIMSE command set parser, and the response built from what it parsed.
#![no_main]

use cxr_worker::dicom::dimse::{Command, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(command) = Command::parse(data) {
        let _ = Response::to(&command, 0xC000).with_comment("fuzz").encode();
    }
});
