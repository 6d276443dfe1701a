//! `[database]`: the PostgreSQL URL (in the file, or read from `url_file`, e.g. a systemd
//! credential) and pool limits; the file's shape, its validation and the typed form.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid, positive, resolve, seconds};

/// `$CREDENTIALS_DIRECTORY` at the start of `url_file` is the directory systemd gives a unit's
/// `LoadCredential=` files.
const CREDENTIALS: &str = "$CREDENTIALS_DIRECTORY";

/// The database settings. `Debug` hides the password of the URL.
#[derive(Clone)]
pub struct DatabaseConfig {
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &super::secrets::without_password(&self.url))
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish()
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatabase {
    url: Option<String>,
    url_file: Option<PathBuf>,
    max_connections: Option<i64>,
    acquire_timeout_secs: Option<f64>,
}

impl RawDatabase {
    /// `credentials`: the value of `$CREDENTIALS_DIRECTORY`, if set.
    pub(super) fn validate(
        self,
        base: &Path,
        credentials: Option<&str>,
    ) -> Result<DatabaseConfig, ConfigError> {
        let url = match (self.url.filter(|u| !u.trim().is_empty()), self.url_file) {
            (Some(url), None) => url,
            (None, Some(file)) => read_url_file(base, &file, credentials)?,
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "database.url_file",
                    "is set together with database.url: keep one of the two",
                ));
            }
            (None, None) => {
                return Err(invalid(
                    "database.url",
                    "missing (or set database.url_file to a file holding it)",
                ));
            }
        };
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

/// The URL in `file`: its first line, trimmed. Errors name the file, never its content.
fn read_url_file(
    base: &Path,
    file: &Path,
    credentials: Option<&str>,
) -> Result<String, ConfigError> {
    let key = "database.url_file";
    let path = match file.to_str().and_then(|f| f.strip_prefix(CREDENTIALS)) {
        Some(rest) => {
            let dir = credentials.ok_or_else(|| {
                invalid(
                    key,
                    "names $CREDENTIALS_DIRECTORY, which is not set (systemd sets it for a unit \
                     with LoadCredential=)",
                )
            })?;
            Path::new(dir).join(rest.trim_start_matches('/'))
        }
        None => resolve(base, file.to_path_buf()),
    };
    let meta = std::fs::metadata(&path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    if meta.len() > 64 * 1024 {
        return Err(invalid(
            key,
            format!(
                "{} is {} bytes: not a database URL",
                path.display(),
                meta.len()
            ),
        ));
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    let url = text.lines().next().unwrap_or("").trim().to_string();
    if url.is_empty() {
        return Err(invalid(key, format!("{} is empty", path.display())));
    }
    Ok(url)
}
