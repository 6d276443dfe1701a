//! `[log]`: the log filter and format; the file's shape, its validation and the typed form.

use serde::Deserialize;

use super::{ConfigError, invalid};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A `tracing` filter directive such as `info` or `cxr_worker=debug,info`.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    level: Option<String>,
    format: Option<String>,
}

impl RawLog {
    pub(super) fn validate(self) -> Result<LogConfig, ConfigError> {
        let level = self.level.unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            return Err(invalid(
                "log.level",
                format!("{level:?} is not a valid filter"),
            ));
        }
        let format = match self.format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "log.format",
                    format!("{other:?}: expected \"text\" or \"json\""),
                ));
            }
        };
        Ok(LogConfig { level, format })
    }
}
