//! `[process]`: what this process does (its roles), so that receivers, GPU workers and the sender
//! can run as separate processes on separate machines sharing one database and one spool; the
//! file's shape, its validation and the typed form.

use serde::Deserialize;

use super::{ConfigError, invalid};

/// One thing a process can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The DICOM listeners (plain and TLS): receive, spool, record, queue the study's job.
    Receive,
    /// The analysis workers (`study.workers` of them): take jobs, run the models, queue outputs.
    Analyse,
    /// The outbox sender, and retention of what has been delivered.
    Send,
}

impl Role {
    /// Every role, in the order the configuration file lists them.
    pub const ALL: [Role; 3] = [Role::Receive, Role::Analyse, Role::Send];

    /// The name the configuration file uses.
    pub fn name(self) -> &'static str {
        match self {
            Role::Receive => "receive",
            Role::Analyse => "analyse",
            Role::Send => "send",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// The roles of this process (`[process] roles`); at least one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub receive: bool,
    pub analyse: bool,
    pub send: bool,
}

impl Roles {
    /// Whether this process has `role`.
    pub fn has(&self, role: Role) -> bool {
        match role {
            Role::Receive => self.receive,
            Role::Analyse => self.analyse,
            Role::Send => self.send,
        }
    }

    /// The names of the roles held, comma-separated ("receive,analyse,send").
    pub fn names(&self) -> String {
        Role::ALL
            .into_iter()
            .filter(|r| self.has(*r))
            .map(Role::name)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// What this process does (`[process]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessConfig {
    pub roles: Roles,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProcess {
    roles: Option<Vec<String>>,
}

impl RawProcess {
    /// `workers`: `study.workers`, already validated. Without `roles` a process does everything,
    /// analysing only when it has workers (the behaviour before roles existed: `workers = 0` was
    /// "receive only"); a process told to analyse needs at least one worker.
    pub(super) fn validate(self, workers: usize) -> Result<ProcessConfig, ConfigError> {
        let Some(names) = self.roles else {
            return Ok(ProcessConfig {
                roles: Roles {
                    receive: true,
                    analyse: workers > 0,
                    send: true,
                },
            });
        };
        if names.is_empty() {
            return Err(invalid(
                "process.roles",
                "is empty: list at least one of \"receive\", \"analyse\", \"send\"",
            ));
        }
        let mut roles = Roles {
            receive: false,
            analyse: false,
            send: false,
        };
        for name in &names {
            let role = Role::parse(name).ok_or_else(|| {
                invalid(
                    "process.roles",
                    format!("unknown role {name:?}: expected \"receive\", \"analyse\" or \"send\""),
                )
            })?;
            if roles.has(role) {
                return Err(invalid(
                    "process.roles",
                    format!("{name:?} is listed twice"),
                ));
            }
            match role {
                Role::Receive => roles.receive = true,
                Role::Analyse => roles.analyse = true,
                Role::Send => roles.send = true,
            }
        }
        if roles.analyse && workers == 0 {
            return Err(invalid(
                "study.workers",
                "is 0, but process.roles includes \"analyse\": give it at least 1 worker",
            ));
        }
        Ok(ProcessConfig { roles })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(names: &[&str], workers: usize) -> Result<Roles, ConfigError> {
        RawProcess {
            roles: Some(names.iter().map(|s| s.to_string()).collect()),
        }
        .validate(workers)
        .map(|p| p.roles)
    }

    #[test]
    fn without_roles_a_process_does_everything_and_analyses_when_it_has_workers() {
        let all = RawProcess::default().validate(1).unwrap().roles;
        assert_eq!(all.names(), "receive,analyse,send");
        let receive_only = RawProcess::default().validate(0).unwrap().roles;
        assert_eq!(receive_only.names(), "receive,send");
    }

    #[test]
    fn roles_are_taken_as_listed() {
        assert_eq!(roles(&["analyse"], 2).unwrap().names(), "analyse");
        assert_eq!(
            roles(&["send", "receive"], 0).unwrap().names(),
            "receive,send"
        );
    }

    #[test]
    fn bad_roles_name_their_key() {
        for (names, workers, key, says) in [
            (&[][..], 1, "process.roles", "empty"),
            (
                &["recieve"][..],
                1,
                "process.roles",
                "unknown role \"recieve\"",
            ),
            (&["send", "send"][..], 1, "process.roles", "listed twice"),
            (&["analyse"][..], 0, "study.workers", "includes \"analyse\""),
        ] {
            let e = roles(names, workers).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(says), "{names:?}: {e}");
        }
    }
}
