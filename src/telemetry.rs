//! Tracing set-up: one subscriber for the process, text or JSON lines on stderr, with a filter
//! that SIGHUP can replace ([`set_level`]).
//!
//! Identifiers (UIDs, AE titles, job ids) are logged as fields; patient names, IDs and birth
//! dates never are.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

use crate::config::LogFormat;

/// The handle of the installed filter, and whether `RUST_LOG` chose it.
struct Installed {
    filter: reload::Handle<EnvFilter, Registry>,
    from_env: bool,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// A log level that could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum LevelError {
    #[error("{level:?} is not a valid filter: {message}")]
    Invalid { level: String, message: String },
    #[error("cannot replace the log filter: {0}")]
    Reload(String),
}

/// What [`set_level`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LevelChange {
    /// The new filter is in force.
    Applied,
    /// `RUST_LOG` is set and wins over the configuration: nothing changed.
    OverriddenByEnv,
    /// No subscriber was installed by [`init`] in this process.
    NotInstalled,
}

/// Install the global subscriber. `RUST_LOG`, when set, wins over the configured level.
pub fn init(level: &str, format: LogFormat) {
    let from_env = EnvFilter::try_from_default_env().ok();
    let is_env = from_env.is_some();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (text, json) = match format {
        LogFormat::Text => (
            Some(fmt::layer().with_ansi(ansi).with_writer(std::io::stderr)),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            ),
        ),
    };
    // A second call (tests) keeps the first subscriber.
    let installed = Registry::default()
        .with(filter)
        .with(text)
        .with(json)
        .try_init()
        .is_ok();
    if installed {
        let _ = INSTALLED.set(Installed {
            filter: handle,
            from_env: is_env,
        });
    }
}

/// Replace the filter of the subscriber installed by [`init`] (SIGHUP with a new `log.level`).
pub fn set_level(level: &str) -> Result<LevelChange, LevelError> {
    let filter = EnvFilter::try_new(level).map_err(|e| LevelError::Invalid {
        level: level.to_string(),
        message: e.to_string(),
    })?;
    let Some(installed) = INSTALLED.get() else {
        return Ok(LevelChange::NotInstalled);
    };
    if installed.from_env {
        return Ok(LevelChange::OverriddenByEnv);
    }
    installed
        .filter
        .reload(filter)
        .map_err(|e| LevelError::Reload(e.to_string()))?;
    Ok(LevelChange::Applied)
}
