//! UIDs, two ways: those we receive are taken exactly as sent, as long as they are safe to use
//! (1–64 characters, digits and dots, no empty component) — a UID such as `1.02.3` breaks PS3.5's
//! "no leading zero" rule but still names the sender's study, and our report must reference it
//! unchanged; those we make are strict (no leading zero either).

/// A received UID: 1–64 characters, digits and dots, no empty component. Leading zeros are
/// tolerated. Safe as a path component (no `/`, no `..`).
pub fn is_received_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 64
        && uid.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && !uid.split('.').any(str::is_empty)
}

/// A UID as PS3.5 9.1 requires of the ones we make: a received UID whose multi-digit components
/// do not start with 0.
pub fn is_strict_uid(uid: &str) -> bool {
    is_received_uid(uid) && uid.split('.').all(|c| c.len() == 1 || !c.starts_with('0'))
}

/// A UID parsed at the edge.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uid(String);

/// A string that is not a usable UID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a valid UID")]
pub struct InvalidUid(pub String);

impl Uid {
    /// A UID from a peer or a stored data set, trimmed of its NUL or space padding
    /// ([`is_received_uid`]).
    pub fn received(raw: &str) -> Result<Self, InvalidUid> {
        let uid = crate::dicom::text::trim_padding(raw);
        if is_received_uid(uid) {
            Ok(Self(uid.to_string()))
        } else {
            Err(InvalidUid(uid.to_string()))
        }
    }

    /// A UID we make or configure ([`is_strict_uid`]).
    pub fn strict(raw: &str) -> Result<Self, InvalidUid> {
        if is_strict_uid(raw) {
            Ok(Self(raw.to_string()))
        } else {
            Err(InvalidUid(raw.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Uid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_uids_are_lenient_ours_strict() {
        for ok in ["1.2.3", "2.25.1234567890", "0.1", "1.0.2"] {
            assert!(is_received_uid(ok) && is_strict_uid(ok), "{ok}");
        }
        // a leading zero: referenced as received, never made
        assert!(is_received_uid("1.02.3"));
        assert!(!is_strict_uid("1.02.3"));
        assert_eq!(
            Uid::received("1.02.3\0").map(|u| u.to_string()),
            Ok("1.02.3".into())
        );
        assert!(Uid::strict("1.02.3").is_err());
        for bad in [
            "",
            "1..2",
            ".1",
            "1.",
            "1.2a",
            "../etc",
            "1/2",
            &"1".repeat(65),
        ] {
            assert!(!is_received_uid(bad), "{bad}");
        }
    }
}
