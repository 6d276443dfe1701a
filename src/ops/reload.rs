//! SIGHUP (`systemctl reload`, the unit's `ExecReload=`): re-read the configuration file and
//! apply what can change safely while running; keep everything else.
//!
//! Applied at once: `dicom.allowed_calling_ae_titles` and `dicom.allow_any_calling_ae` (the next
//! association; an empty list needs the explicit key, as at start-up), `[dicom.tls]` but its
//! `listen` (the certificate, key and CA files are read again, so a renewed certificate is served
//! from the next handshake; `certificate_names`), `[[destinations]]` (with their TLS files)
//! (the next SR queued and the next send; a queued row whose destination was removed fails),
//! `log.level` (unless `RUST_LOG` is set), `spool.max_used_percent`, `spool.retention_days` and
//! `spool.retention_interval_secs`. Other changed keys are logged as needing a restart and are
//! not applied. A file that does not load or validate changes nothing: the error, naming the
//! key, is logged and the running configuration stays. systemd hears `RELOADING=1` before and
//! `READY=1` after, either way.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::signal::unix::Signal;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Destination};
use crate::ingest::diskspace::SpoolSpace;
use crate::ops::certificates::{Certificates, unix_now};
use crate::ops::retention::RetentionSettings;
use crate::ops::systemd::Notifier;
use crate::ops::telemetry::{self, LevelChange};
use crate::receive::ScpSettings;
use crate::send::outbox::OutboxSettings;

/// The live values a reload may replace; each running task holds a receiver.
#[derive(Debug)]
pub struct Live {
    pub scp: watch::Sender<Arc<ScpSettings>>,
    pub outbox: watch::Sender<Arc<OutboxSettings>>,
    pub destinations: watch::Sender<Arc<Vec<Destination>>>,
    pub retention: watch::Sender<RetentionSettings>,
    pub space: Arc<SpoolSpace>,
    /// The TLS certificates in use (expiry metric and readiness), replaced after a reload.
    pub certificates: Arc<Certificates>,
}

/// What a reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Keys whose new values are in force.
    pub changed: Vec<&'static str>,
    /// Sections or keys that changed in the file but need a restart; not applied.
    pub restart_needed: Vec<&'static str>,
}

/// The retention settings of a configuration.
pub fn retention_settings(config: &Config) -> RetentionSettings {
    RetentionSettings {
        keep: config.spool.retention,
        interval: config.spool.retention_interval,
    }
}

impl Live {
    /// Live values built from the start-up configuration.
    pub fn new(config: &Config, space: Arc<SpoolSpace>) -> Self {
        Self {
            scp: watch::Sender::new(Arc::new(ScpSettings::from(&config.dicom))),
            outbox: watch::Sender::new(Arc::new(OutboxSettings::from_config(config))),
            destinations: watch::Sender::new(Arc::new(config.destinations.clone())),
            retention: watch::Sender::new(retention_settings(config)),
            space,
            certificates: Arc::new(Certificates::of(config)),
        }
    }

    /// Apply the reloadable keys of `new` that differ from `running`, and record them in
    /// `running`, which stays the configuration in force.
    pub async fn apply(&self, running: &mut Config, new: &Config) -> Applied {
        let mut applied = Applied {
            restart_needed: restart_needed(running, new),
            ..Applied::default()
        };
        if running.dicom.allowed_calling_ae_titles != new.dicom.allowed_calling_ae_titles {
            let allowed = new.dicom.allowed_calling_ae_titles.clone();
            self.scp.send_modify(|s| {
                let mut next = (**s).clone();
                next.allowed = allowed.clone();
                *s = Arc::new(next);
            });
            running.dicom.allowed_calling_ae_titles = allowed;
            applied.changed.push("dicom.allowed_calling_ae_titles");
        }
        if let (Some(old), Some(next)) = (&running.dicom.tls, &new.dicom.tls)
            && old.listen == next.listen
            && old != next
        {
            let (server, names) = (next.server.clone(), next.certificate_names.clone());
            self.scp.send_modify(|s| {
                let mut settings = (**s).clone();
                settings.tls = Some(server.clone());
                settings.certificate_names = names.clone();
                *s = Arc::new(settings);
            });
            tracing::info!(
                certificate = %next.identity.info.subject,
                sha256 = %next.identity.info.sha256,
                "DICOM TLS certificate and trust reloaded"
            );
            running.dicom.tls = Some(next.clone());
            applied.changed.push("dicom.tls");
        }
        if running.dicom.allow_any_calling_ae != new.dicom.allow_any_calling_ae {
            running.dicom.allow_any_calling_ae = new.dicom.allow_any_calling_ae;
            applied.changed.push("dicom.allow_any_calling_ae");
        }
        if running.destinations != new.destinations {
            let destinations = new.destinations.clone();
            self.destinations
                .send_replace(Arc::new(destinations.clone()));
            self.outbox.send_modify(|s| {
                let mut next = (**s).clone();
                next.destinations = destinations.clone();
                *s = Arc::new(next);
            });
            running.destinations = destinations;
            applied.changed.push("destinations");
        }
        if running.log.level != new.log.level {
            match telemetry::set_level(&new.log.level) {
                Ok(LevelChange::Applied | LevelChange::NotInstalled) => {
                    running.log.level = new.log.level.clone();
                    applied.changed.push("log.level");
                }
                Ok(LevelChange::OverriddenByEnv) => {
                    tracing::warn!("log.level not reloaded: RUST_LOG is set and wins");
                }
                Err(e) => tracing::warn!(error = %e, "log.level not reloaded"),
            }
        }
        if running.spool.max_used_percent != new.spool.max_used_percent {
            self.space.set_max_used_percent(new.spool.max_used_percent);
            let space = self.space.clone();
            // decide admission with the new watermark now, not at the next sample
            let _ = tokio::task::spawn_blocking(move || space.refresh()).await;
            running.spool.max_used_percent = new.spool.max_used_percent;
            applied.changed.push("spool.max_used_percent");
        }
        if retention_settings(running) != retention_settings(new) {
            self.retention.send_replace(retention_settings(new));
            if running.spool.retention != new.spool.retention {
                applied.changed.push("spool.retention_days");
            }
            if running.spool.retention_interval != new.spool.retention_interval {
                applied.changed.push("spool.retention_interval_secs");
            }
            running.spool.retention = new.spool.retention;
            running.spool.retention_interval = new.spool.retention_interval;
        }
        if applied
            .changed
            .iter()
            .any(|k| *k == "dicom.tls" || *k == "destinations")
        {
            self.certificates.update(running);
            self.certificates.warn_if_expiring(unix_now());
        }
        applied
    }
}

/// The sections (or keys) of `new` that differ from `running` and cannot change while running.
fn restart_needed(running: &Config, new: &Config) -> Vec<&'static str> {
    let same =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") == format!("{b:?}");
    let mut dicom = new.dicom.clone();
    dicom.allowed_calling_ae_titles = running.dicom.allowed_calling_ae_titles.clone();
    dicom.allow_any_calling_ae = running.dicom.allow_any_calling_ae;
    if let (Some(old), Some(next)) = (&running.dicom.tls, &new.dicom.tls)
        && old.listen == next.listen
    {
        // only a listener added, removed or moved needs a restart
        dicom.tls = Some(old.clone());
    }
    let mut spool = new.spool.clone();
    spool.max_used_percent = running.spool.max_used_percent;
    spool.retention = running.spool.retention;
    spool.retention_interval = running.spool.retention_interval;
    let mut out = Vec::new();
    let sections: [(&'static str, bool); 11] = [
        ("dicom", same(&running.dicom, &dicom)),
        ("audit", same(&running.audit, &new.audit)),
        ("database", same(&running.database, &new.database)),
        ("spool.dir", same(&running.spool, &spool)),
        ("models", same(&running.models, &new.models)),
        ("log.format", running.log.format == new.log.format),
        ("study", same(&running.study, &new.study)),
        ("report", same(&running.report, &new.report)),
        ("http", running.http == new.http),
        ("decode", running.decode == new.decode),
        ("process", running.process == new.process),
    ];
    for (name, unchanged) in sections {
        if !unchanged {
            out.push(name);
        }
    }
    out
}

/// Reload on every SIGHUP until `shutdown`. `source` is the file to re-read (`None`: the
/// configuration was not read from a file, and SIGHUP only logs that).
pub async fn run(
    mut hangup: Signal,
    source: Option<PathBuf>,
    mut running: Config,
    live: Live,
    notifier: Notifier,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            received = hangup.recv() => {
                if received.is_none() {
                    return;
                }
            }
        }
        if let Err(e) = notifier.reloading() {
            tracing::warn!(error = %e, "cannot notify RELOADING");
        }
        match &source {
            None => tracing::warn!("SIGHUP: no configuration file to reload"),
            Some(path) => reload_from(path, &mut running, &live).await,
        }
        if let Err(e) = notifier.ready() {
            tracing::warn!(error = %e, "cannot notify READY after the reload");
        }
    }
}

async fn reload_from(path: &std::path::Path, running: &mut Config, live: &Live) {
    let new = match Config::load_to_serve(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(
                path = %path.display(),
                error = %e,
                "configuration reload refused: keeping the running configuration"
            );
            return;
        }
    };
    let applied = live.apply(running, &new).await;
    if !applied.restart_needed.is_empty() {
        tracing::warn!(
            sections = %applied.restart_needed.join(","),
            "configuration changes that need a restart were not applied"
        );
    }
    tracing::info!(
        path = %path.display(),
        changed = %applied.changed.join(","),
        "configuration reloaded"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(dicom: &str, spool: &str, rest: &str) -> Config {
        Config::from_toml_str(
            &format!(
                "[database]\nurl = \"postgres://u@127.0.0.1/db\"\n\
                 [spool]\ndir = \"/tmp/spool\"\n{spool}\n[dicom]\n{dicom}\n{rest}"
            ),
            Path::new("/etc/cxr-worker/cxr-worker.toml"),
            Vec::new(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn applies_reloadable_keys_and_names_the_others() {
        let mut running = config("allowed_calling_ae_titles = [\"OLD\"]", "", "");
        let space = Arc::new(SpoolSpace::new(Path::new("/tmp"), 90.0));
        let live = Live::new(&running, space.clone());
        let scp = live.scp.subscribe();
        let dests = live.destinations.subscribe();
        let retention = live.retention.subscribe();
        let new = config(
            "allowed_calling_ae_titles = [\"NEW\"]\nlisten = \"0.0.0.0:104\"",
            "max_used_percent = 50\nretention_days = 1",
            "[[destinations]]\nae_title = \"PACS\"\nhost = \"h\"\nport = 104\n",
        );
        let applied = live.apply(&mut running, &new).await;
        assert_eq!(
            applied.changed,
            vec![
                "dicom.allowed_calling_ae_titles",
                "destinations",
                "spool.max_used_percent",
                "spool.retention_days"
            ]
        );
        assert_eq!(applied.restart_needed, vec!["dicom"]);
        assert_eq!(scp.borrow().allowed[0].ae_title.as_str(), "NEW");
        assert_eq!(dests.borrow().len(), 1);
        assert_eq!(live.outbox.borrow().destinations.len(), 1);
        assert_eq!(space.max_used_percent(), 50.0);
        assert_eq!(
            retention.borrow().keep,
            Some(std::time::Duration::from_secs(86_400))
        );
        // the listen address is not applied: the running config keeps the old one
        assert_eq!(running.dicom.listen.unwrap().port(), 11112);
        // applying the same file again changes nothing
        let again = live.apply(&mut running, &new).await;
        assert!(again.changed.is_empty(), "{again:?}");
        assert_eq!(again.restart_needed, vec!["dicom"]);
    }
}
