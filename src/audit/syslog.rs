//! RFC 5424 syslog messages for audit records, as IHE ATNA (ITI-20, Record Audit Event) shapes
//! them, and the RFC 5425 octet-counting frame of the TLS transport.
//!
//! `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - BOM XML`:
//! - PRI = facility 10 (security/authorization) × 8 + severity: 5 (notice) for a success,
//!   4 (warning) for a failure, so `<85>` or `<84>` (ITI TF-2 3.20: "Facility value of 10";
//!   "severity values of 5 … or 4 … should be used");
//! - TIMESTAMP: the event time, UTC, milliseconds; HOSTNAME and PROCID: the recording process;
//!   APP-NAME `cxr-worker`;
//! - MSGID `IHE+RFC-3881` (ITI TF-2 3.20: "The MSGID field in the HEADER of the SYSLOG-MSG
//!   shall be set to IHE+RFC-3881"; IHE uses the DICOM PS3.15 schema for that content since
//!   2014);
//! - no structured data (`-`), then the XML, UTF-8, after a byte order mark (RFC 5424 6.4).

use chrono::{DateTime, SecondsFormat, Utc};

/// Syslog facility of every audit message: 10, security/authorization (`authpriv`).
pub const FACILITY: u8 = 10;
/// APP-NAME of every message.
pub const APP_NAME: &str = "cxr-worker";
/// MSGID of every message (IHE ITI-20).
pub const MSG_ID: &str = "IHE+RFC-3881";
/// The UTF-8 byte order mark that starts MSG.
const BOM: &str = "\u{FEFF}";

/// The PRI value of a message with `severity` (0..=7): `FACILITY * 8 + severity`.
pub fn pri(severity: u8) -> u8 {
    FACILITY * 8 + severity.min(7)
}

/// One audit record as a syslog message.
#[derive(Debug, Clone, Copy)]
pub struct SyslogMessage<'a> {
    /// RFC 5424 severity.
    pub severity: u8,
    /// The event time.
    pub time: DateTime<Utc>,
    /// HOSTNAME of the recording machine.
    pub hostname: &'a str,
    /// PROCID of the recording process.
    pub procid: &'a str,
    /// The XML `AuditMessage`.
    pub xml: &'a str,
}

impl SyslogMessage<'_> {
    /// The header, up to and including the space before MSG.
    pub fn header(&self) -> String {
        format!(
            "<{}>1 {} {} {} {} {} - ",
            pri(self.severity),
            self.time.to_rfc3339_opts(SecondsFormat::Millis, true),
            header_field(self.hostname, 255),
            APP_NAME,
            header_field(self.procid, 128),
            MSG_ID,
        )
    }

    /// The whole message as sent: header, BOM, XML.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.header().into_bytes();
        out.extend_from_slice(BOM.as_bytes());
        out.extend_from_slice(self.xml.as_bytes());
        out
    }

    /// One line of the audit file: header and XML (no BOM), ending in a newline.
    pub fn to_line(&self) -> String {
        format!("{}{}\n", self.header(), self.xml)
    }
}

/// A header field: printable US-ASCII only (others become `?`), at most `max` characters,
/// `-` when empty (RFC 5424 6.2).
fn header_field(value: &str, max: usize) -> String {
    let v: String = value
        .chars()
        .take(max)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    if v.is_empty() { "-".to_string() } else { v }
}

/// RFC 5425 octet counting: `MSG-LEN SP SYSLOG-MSG`.
pub fn octet_frame(message: &[u8]) -> Vec<u8> {
    let mut out = format!("{} ", message.len()).into_bytes();
    out.extend_from_slice(message);
    out
}

/// The largest UDP payload (IPv4: 65535 − 8 − 20).
pub const MAX_DATAGRAM: usize = 65_507;

/// `message` cut to fit one datagram (RFC 5426 3.2 lets a sender truncate), at a UTF-8
/// character boundary. Audit messages are a few KiB; only absurd inputs get here.
pub fn fit_datagram(message: &[u8]) -> &[u8] {
    if message.len() <= MAX_DATAGRAM {
        return message;
    }
    let mut end = MAX_DATAGRAM;
    // back up over UTF-8 continuation bytes (10xxxxxx)
    while end > 0 && message.get(end).is_some_and(|b| b & 0xC0 == 0x80) {
        end -= 1;
    }
    message.get(..end).unwrap_or(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pri_is_facility_ten() {
        assert_eq!(pri(5), 85);
        assert_eq!(pri(4), 84);
        assert_eq!(pri(0), 80);
        assert_eq!(pri(99), 87);
    }

    #[test]
    fn formats_the_header_and_frames_by_octets() {
        let time = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.6Z")
            .unwrap()
            .with_timezone(&Utc);
        let m = SyslogMessage {
            severity: 5,
            time,
            hostname: "host one",
            procid: "",
            xml: "<A>é</A>",
        };
        assert_eq!(
            m.header(),
            "<85>1 2026-01-02T03:04:05.600Z host?one cxr-worker - IHE+RFC-3881 - "
        );
        let bytes = m.to_bytes();
        assert!(bytes.ends_with("\u{FEFF}<A>é</A>".as_bytes()));
        let framed = octet_frame(&bytes);
        assert_eq!(
            framed,
            [format!("{} ", bytes.len()).as_bytes(), &bytes].concat()
        );
        assert!(m.to_line().ends_with("- <A>é</A>\n"));
    }

    #[test]
    fn datagrams_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_DATAGRAM);
        let cut = fit_datagram(long.as_bytes());
        assert!(cut.len() <= MAX_DATAGRAM);
        assert!(std::str::from_utf8(cut).is_ok());
        assert_eq!(fit_datagram(b"short"), b"short");
    }
}
