//! DIMSE messages: parsing the command sets the SCP receives and encoding its responses.
//! Command sets are always Implicit VR Little Endian (PS3.7 6.3.1).

use dicom_core::{DataElement, PrimitiveValue, Tag, VR, dicom_value};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;

use crate::dicom::text::trim_padding;

/// Command Field values (PS3.7 E.1).
pub mod command_field {
    pub const C_STORE_RQ: u16 = 0x0001;
    pub const C_STORE_RSP: u16 = 0x8001;
    pub const C_ECHO_RQ: u16 = 0x0030;
    pub const C_ECHO_RSP: u16 = 0x8030;
}

/// The value of Command Data Set Type meaning "no data set follows".
pub const NO_DATA_SET: u16 = 0x0101;

/// DIMSE status codes used by this SCP (PS3.4 Annex B, PS3.7 Annex C).
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    /// Refused: SOP Class not supported.
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
    /// Unrecognized operation.
    pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
    /// Refused: Out of Resources (disk, database, or a data set larger than allowed).
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    /// Error: Data Set does not match SOP Class.
    pub const DATA_SET_MISMATCH: u16 = 0xA900;
    /// Error: Cannot understand.
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
}

/// A failure to read a command set.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("command set is not valid Implicit VR Little Endian: {0}")]
    Parse(String),
    #[error("command set lacks {0}")]
    Missing(&'static str),
}

/// The fields of a request command set that the SCP acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub field: u16,
    pub message_id: u16,
    pub affected_sop_class_uid: Option<String>,
    pub affected_sop_instance_uid: Option<String>,
    /// Whether a data set follows this command.
    pub has_data_set: bool,
}

/// Largest command set accepted (real ones are a few hundred bytes).
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;

impl Command {
    /// Parse a complete command set: a flat list of group 0000 elements in Implicit VR Little
    /// Endian. Command sets hold no sequences, so none is read; every length is checked against
    /// what remains before anything is read, and nothing is allocated beyond the bytes given.
    pub fn parse(bytes: &[u8]) -> Result<Self, CommandError> {
        if bytes.len() > MAX_COMMAND_BYTES {
            return Err(CommandError::Parse(format!(
                "command set of {} bytes exceeds {MAX_COMMAND_BYTES}",
                bytes.len()
            )));
        }
        let (mut field, mut message_id, mut data_set_type) = (None, None, None);
        let (mut sop_class, mut sop_instance) = (None, None);
        let mut pos = 0usize;
        while pos < bytes.len() {
            let Some(head) = bytes.get(pos..pos + 8) else {
                return Err(CommandError::Parse(format!(
                    "element header cut short at byte {pos}"
                )));
            };
            let group = u16::from_le_bytes([head[0], head[1]]);
            let element = u16::from_le_bytes([head[2], head[3]]);
            let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
            if group != 0x0000 {
                return Err(CommandError::Parse(format!(
                    "element ({group:04X},{element:04X}) at byte {pos} is not in the command group"
                )));
            }
            let start = pos + 8;
            let Some(value) = usize::try_from(len)
                .ok()
                .and_then(|l| bytes.get(start..start.checked_add(l)?))
            else {
                return Err(CommandError::Parse(format!(
                    "element (0000,{element:04X}) declares {len} bytes but {} remain",
                    bytes.len() - start
                )));
            };
            let us = || -> Result<u16, CommandError> {
                match value {
                    [a, b] => Ok(u16::from_le_bytes([*a, *b])),
                    _ => Err(CommandError::Parse(format!(
                        "(0000,{element:04X}) has {} bytes, not 2",
                        value.len()
                    ))),
                }
            };
            let ui = || trim_padding(&String::from_utf8_lossy(value)).to_string();
            match Tag(group, element) {
                tags::COMMAND_FIELD => field = Some(us()?),
                tags::MESSAGE_ID => message_id = Some(us()?),
                tags::COMMAND_DATA_SET_TYPE => data_set_type = Some(us()?),
                tags::AFFECTED_SOP_CLASS_UID => sop_class = Some(ui()),
                tags::AFFECTED_SOP_INSTANCE_UID => sop_instance = Some(ui()),
                _ => {}
            }
            pos = start + value.len();
        }
        Ok(Self {
            field: field.ok_or(CommandError::Missing("Command Field"))?,
            message_id: message_id.ok_or(CommandError::Missing("Message ID"))?,
            affected_sop_class_uid: sop_class,
            affected_sop_instance_uid: sop_instance,
            has_data_set: data_set_type.ok_or(CommandError::Missing("Command Data Set Type"))?
                != NO_DATA_SET,
        })
    }
}

/// A response to send: status, and an optional Error Comment (never patient data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub field: u16,
    pub message_id: u16,
    pub status: u16,
    pub affected_sop_class_uid: Option<String>,
    pub affected_sop_instance_uid: Option<String>,
    pub error_comment: Option<String>,
}

impl Response {
    /// The response to `command` with `status`.
    pub fn to(command: &Command, status: u16) -> Self {
        Self {
            field: command.field | 0x8000,
            message_id: command.message_id,
            status,
            affected_sop_class_uid: command.affected_sop_class_uid.clone(),
            affected_sop_instance_uid: command.affected_sop_instance_uid.clone(),
            error_comment: None,
        }
    }

    /// Attach an Error Comment: at most 64 characters of printable ASCII without backslash, as
    /// the LO VR allows (anything else, e.g. from a peer's data, becomes `?`).
    pub fn with_comment(mut self, comment: &str) -> Self {
        self.error_comment = Some(
            comment
                .chars()
                .map(|c| {
                    if c.is_ascii_graphic() && c != '\\' || c == ' ' {
                        c
                    } else {
                        '?'
                    }
                })
                .take(64)
                .collect(),
        );
        self
    }

    /// Encode as an Implicit VR Little Endian command set with its group length.
    pub fn encode(&self) -> Result<Vec<u8>, CommandError> {
        let mut elements = vec![
            DataElement::new(tags::COMMAND_FIELD, VR::US, dicom_value!(U16, [self.field])),
            DataElement::new(
                tags::MESSAGE_ID_BEING_RESPONDED_TO,
                VR::US,
                dicom_value!(U16, [self.message_id]),
            ),
            DataElement::new(
                tags::COMMAND_DATA_SET_TYPE,
                VR::US,
                dicom_value!(U16, [NO_DATA_SET]),
            ),
            DataElement::new(tags::STATUS, VR::US, dicom_value!(U16, [self.status])),
        ];
        if let Some(uid) = &self.affected_sop_class_uid {
            elements.push(DataElement::new(
                tags::AFFECTED_SOP_CLASS_UID,
                VR::UI,
                PrimitiveValue::from(uid.as_str()),
            ));
        }
        if let Some(uid) = &self.affected_sop_instance_uid {
            elements.push(DataElement::new(
                tags::AFFECTED_SOP_INSTANCE_UID,
                VR::UI,
                PrimitiveValue::from(uid.as_str()),
            ));
        }
        if let Some(comment) = &self.error_comment {
            elements.push(DataElement::new(
                tags::ERROR_COMMENT,
                VR::LO,
                PrimitiveValue::from(comment.as_str()),
            ));
        }
        let obj = InMemDicomObject::command_from_element_iter(elements);
        let mut out = Vec::with_capacity(256);
        obj.write_dataset_with_ts(&mut out, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
            .map_err(|e| CommandError::Parse(e.to_string()))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(e: u16, value: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0];
        v.extend_from_slice(&e.to_le_bytes());
        v.extend_from_slice(&(value.len() as u32).to_le_bytes());
        v.extend_from_slice(value);
        v
    }

    #[test]
    fn hostile_command_sets_are_refused_without_allocating() {
        let echo = [
            element(0x0100, &0x0030u16.to_le_bytes()),
            element(0x0110, &1u16.to_le_bytes()),
            element(0x0800, &0x0101u16.to_le_bytes()),
        ]
        .concat();
        let ok = Command::parse(&echo).unwrap();
        assert_eq!(
            (ok.field, ok.message_id, ok.has_data_set),
            (0x0030, 1, false)
        );
        // an element declaring 0xFFFFFFF0 bytes
        let mut huge = echo.clone();
        huge.extend_from_slice(&[0, 0, 0x02, 0, 0xF0, 0xFF, 0xFF, 0xFF, b'1', b'.']);
        assert!(matches!(Command::parse(&huge), Err(CommandError::Parse(_))));
        // 3000 nested undefined-length sequences
        let mut nested = echo.clone();
        for _ in 0..3000 {
            nested.extend_from_slice(&[0, 0, 0x00, 0x09, 0xFF, 0xFF, 0xFF, 0xFF]);
            nested.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        }
        assert!(Command::parse(&nested).is_err());
        // an element outside the command group, a header cut short, a missing field
        assert!(Command::parse(&[echo.clone(), vec![8, 0, 0x16, 0, 0, 0, 0, 0]].concat()).is_err());
        assert!(Command::parse(&echo[..echo.len() - 3]).is_err());
        assert!(matches!(
            Command::parse(&echo[10..]),
            Err(CommandError::Missing("Command Field"))
        ));
        assert!(Command::parse(&vec![0u8; MAX_COMMAND_BYTES + 8]).is_err());
    }

    #[test]
    fn response_round_trips_through_the_parser() {
        let rq = Command {
            field: command_field::C_STORE_RQ,
            message_id: 7,
            affected_sop_class_uid: Some("1.2.840.10008.5.1.4.1.1.1".into()),
            affected_sop_instance_uid: Some("1.2.3".into()),
            has_data_set: true,
        };
        let rsp = Response::to(&rq, status::OUT_OF_RESOURCES).with_comment("disk full");
        let bytes = rsp.encode().unwrap();
        let obj =
            InMemDicomObject::read_dataset_with_ts(&bytes[..], &IMPLICIT_VR_LITTLE_ENDIAN.erased())
                .unwrap();
        assert_eq!(
            obj.element(tags::STATUS).unwrap().to_int::<u16>().unwrap(),
            0xA700
        );
        assert_eq!(
            obj.element(tags::COMMAND_FIELD)
                .unwrap()
                .to_int::<u16>()
                .unwrap(),
            command_field::C_STORE_RSP
        );
        assert_eq!(
            obj.element(tags::MESSAGE_ID_BEING_RESPONDED_TO)
                .unwrap()
                .to_int::<u16>()
                .unwrap(),
            7
        );
        let group_length = obj
            .element(tags::COMMAND_GROUP_LENGTH)
            .unwrap()
            .to_int::<u32>()
            .unwrap();
        assert_eq!(group_length as usize, bytes.len() - 12);
    }
}
