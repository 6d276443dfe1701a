//! Tracing set-up: one subscriber for the process, text or JSON lines on stderr, with a filter
//! that SIGHUP can replace ([`set_level`]).
//!
//! Identifiers (UIDs, AE titles, job ids) are logged as fields; patient names, IDs and birth
//! dates never are.
//!
//! Values logged may come from peers (AE titles, UIDs, parser messages quoting their bytes): the
//! text format escapes every control character in messages and fields ([`EscapedFields`]), so no
//! peer can forge a log line or drive a terminal; the JSON format escapes them by construction.

use std::fmt::{self as stdfmt, Write as _};
use std::sync::OnceLock;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

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
            Some(
                fmt::layer()
                    .fmt_fields(EscapedFields)
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr),
            ),
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

/// Formats event and span fields like the default text format (`message` first, then
/// `name=value`), with every control character escaped (`\n`, `\r`, `\t`, `\u{1b}`...), so a
/// value can never start a new log line.
#[derive(Debug, Clone, Copy, Default)]
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> stdfmt::Result {
        let mut visitor = EscapingVisitor {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'a, 'w> {
    writer: &'a mut Writer<'w>,
    first: bool,
    result: stdfmt::Result,
}

impl EscapingVisitor<'_, '_> {
    fn write(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        if name.starts_with("log.") {
            return;
        }
        let separator = if self.first { "" } else { " " };
        self.first = false;
        self.result = if name == "message" {
            write!(self.writer, "{separator}{}", escape(value))
        } else {
            write!(self.writer, "{separator}{name}={}", escape(value))
        };
    }
}

impl Visit for EscapingVisitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn stdfmt::Debug) {
        self.write(field, &format!("{value:?}"));
    }
}

/// `text` with control characters (and Unicode line and paragraph separators) escaped.
pub fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}');
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn peer_values_cannot_forge_log_lines() {
        let buf = Buffer::default();
        let sink = buf.clone();
        let subscriber = Registry::default().with(
            fmt::layer()
                .fmt_fields(EscapedFields)
                .with_ansi(false)
                .with_writer(move || sink.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            let forged = "EVIL\n2026-12-01T00:00:00Z  INFO cxr_worker: stored\u{1b}[2J";
            tracing::info!(calling_ae = %forged, other = ?forged, "association {}", forged);
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("calling_ae=EVIL\\n2026"), "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
    }
}
