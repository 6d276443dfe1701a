//! `[decode]`: the limits of the image decode helper process; the file's shape, its validation
//! and the typed form.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid, positive, seconds};

/// Decoding of received images for analysis (`[decode]`): each image is decoded in a helper
/// process with these limits, so that a codec's crash or runaway allocation costs that image only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeConfig {
    /// Largest image decoded, in pixels (rows × columns); larger ones are not analysed.
    pub max_pixels: u64,
    /// Address-space limit of the decode helper process, in bytes.
    pub memory_limit_bytes: u64,
    /// Wall-clock limit for one image; the helper is killed beyond it.
    pub timeout: Duration,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDecode {
    max_pixels: Option<i64>,
    memory_limit_mb: Option<i64>,
    timeout_secs: Option<f64>,
}

impl RawDecode {
    pub(super) fn validate(self) -> Result<DecodeConfig, ConfigError> {
        let max_pixels = positive(
            "decode.max_pixels",
            self.max_pixels.unwrap_or(50_000_000),
            1_000_000_000,
        )? as u64;
        let memory_mb = self.memory_limit_mb.unwrap_or(2048);
        if !(256..=1_048_576).contains(&memory_mb) {
            return Err(invalid(
                "decode.memory_limit_mb",
                format!("{memory_mb} is out of range 256..=1048576"),
            ));
        }
        Ok(DecodeConfig {
            max_pixels,
            memory_limit_bytes: memory_mb as u64 * 1_048_576,
            timeout: seconds("decode.timeout_secs", self.timeout_secs.unwrap_or(120.0))?,
        })
    }
}
