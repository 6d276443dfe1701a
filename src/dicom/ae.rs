//! AE titles and the calling-AE allow-list entries, parsed once at the edge (configuration, or an
//! association request).

use std::net::IpAddr;

/// A DICOM Application Entity title: 1 to 16 characters of the default repertoire, no backslash,
/// not all spaces. Stored without padding.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AeTitle(String);

impl AeTitle {
    /// Parse an AE title; leading and trailing spaces are not significant (PS3.5 6.2).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let trimmed = raw.trim_matches(' ');
        if trimmed.is_empty() {
            return Err("an AE title must have 1 to 16 non-space characters".into());
        }
        if trimmed.len() > 16 {
            return Err(format!(
                "AE title {trimmed:?} is {} characters long; the maximum is 16",
                trimmed.len()
            ));
        }
        if let Some(c) = trimmed
            .chars()
            .find(|c| !c.is_ascii() || c.is_ascii_control() || *c == '\\')
        {
            return Err(format!(
                "AE title {trimmed:?} contains {c:?}, which is not allowed"
            ));
        }
        Ok(Self(trimmed.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for AeTitle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One entry of the calling-AE allow-list: an AE title, optionally bound to a peer address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedPeer {
    pub ae_title: AeTitle,
    /// When set, the association must come from this address.
    pub host: Option<IpAddr>,
}

impl AllowedPeer {
    /// `"AE"` or `"AE@address"`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw.rsplit_once('@') {
            Some((ae, host)) => Ok(Self {
                ae_title: AeTitle::parse(ae)?,
                host: Some(
                    host.parse()
                        .map_err(|_| format!("{host:?} in {raw:?} is not an IP address"))?,
                ),
            }),
            None => Ok(Self {
                ae_title: AeTitle::parse(raw)?,
                host: None,
            }),
        }
    }

    /// Whether this entry admits `calling` connecting from `peer`.
    pub fn admits(&self, calling: &str, peer: IpAddr) -> bool {
        self.ae_title.as_str() == calling.trim_matches(' ')
            && self.host.is_none_or(|h| h == canonical_ip(peer))
    }
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}
