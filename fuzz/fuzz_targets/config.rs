//! The configuration parser and validator (TOML text, environment overrides aside).
#![no_main]

use cxr_worker::config::Config;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::from_toml_str(
            text,
            Path::new("/etc/cxr-worker/cxr-worker.toml"),
            std::iter::empty(),
        );
    }
});
