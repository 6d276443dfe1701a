//! `[database]`: the PostgreSQL URL and pool limits; the file's shape, its validation and the
//! typed form.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid, positive, seconds};

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatabase {
    url: Option<String>,
    max_connections: Option<i64>,
    acquire_timeout_secs: Option<f64>,
}

impl RawDatabase {
    pub(super) fn validate(self) -> Result<DatabaseConfig, ConfigError> {
        let url = self
            .url
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| invalid("database.url", "missing"))?;
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(invalid(
                "database.url",
                "must be a postgres:// or postgresql:// URL",
            ));
        }
        Ok(DatabaseConfig {
            url,
            max_connections: positive(
                "database.max_connections",
                self.max_connections.unwrap_or(16),
                1000,
            )? as u32,
            acquire_timeout: seconds(
                "database.acquire_timeout_secs",
                self.acquire_timeout_secs.unwrap_or(5.0),
            )?,
        })
    }
}
