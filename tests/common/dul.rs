//! A raw DICOM upper-layer client for hostile tests: PDUs and command sets built byte by byte,
//! so that a test can send what no well-behaved peer would. Well-formed PDUs are encoded with
//! dicom-ul's PDU writer; everything else is written by hand.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use dicom_ul::pdu::{
    AssociationRQ, Pdu, PresentationContextProposed, UserVariableItem, read_pdu, write_pdu,
};

pub const VERIFICATION: &str = "1.2.840.10008.1.1";
pub const CR: &str = "1.2.840.10008.5.1.4.1.1.1";
pub const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
pub const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
pub const DEFLATED: &str = "1.2.840.10008.1.2.1.99";
pub const RLE: &str = "1.2.840.10008.1.2.5";
pub const JPEG_LS: &str = "1.2.840.10008.1.2.4.80";

/// A connection with short timeouts.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// The bytes of an A-ASSOCIATE-RQ from `calling` to `called` proposing `(id, abstract syntax,
/// transfer syntax)` contexts.
pub fn associate_rq(calling: &str, called: &str, contexts: &[(u8, &str, &str)]) -> Vec<u8> {
    let rq = AssociationRQ {
        protocol_version: 1,
        calling_ae_title: calling.into(),
        called_ae_title: called.into(),
        application_context_name: "1.2.840.10008.3.1.1.1".into(),
        presentation_contexts: contexts
            .iter()
            .map(|(id, a, t)| PresentationContextProposed {
                id: *id,
                abstract_syntax: (*a).into(),
                transfer_syntaxes: vec![(*t).into()],
            })
            .collect(),
        user_variables: vec![UserVariableItem::MaxLength(65_536)],
    };
    let mut out = Vec::new();
    write_pdu(&mut out, &Pdu::AssociationRQ(rq)).unwrap();
    out
}

/// Read one PDU (at most 16 MiB).
pub fn read_one(s: &mut TcpStream) -> std::io::Result<Pdu> {
    let mut head = [0u8; 6];
    s.read_exact(&mut head)?;
    let len = u32::from_be_bytes([head[2], head[3], head[4], head[5]]) as usize;
    assert!(len <= 16 << 20, "PDU of {len} bytes");
    let mut buf = head.to_vec();
    buf.resize(6 + len, 0);
    s.read_exact(&mut buf[6..])?;
    read_pdu(&buf[..], dicom_ul::pdu::MAXIMUM_PDU_SIZE, false)
        .map_err(std::io::Error::other)?
        .ok_or_else(|| std::io::Error::other("short PDU"))
}

/// Associate; `Err` carries what came back instead of an A-ASSOCIATE-AC.
pub fn associate(
    addr: SocketAddr,
    calling: &str,
    called: &str,
    contexts: &[(u8, &str, &str)],
) -> Result<TcpStream, String> {
    let mut s = connect(addr);
    s.write_all(&associate_rq(calling, called, contexts))
        .map_err(|e| e.to_string())?;
    match read_one(&mut s) {
        Ok(Pdu::AssociationAC(_)) => Ok(s),
        Ok(other) => Err(format!("{other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// A P-DATA-TF PDU with one PDV.
pub fn pdata(pc_id: u8, command: bool, last: bool, data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x04, 0];
    out.extend_from_slice(&((data.len() + 6) as u32).to_be_bytes());
    out.extend_from_slice(&((data.len() + 2) as u32).to_be_bytes());
    out.push(pc_id);
    out.push(u8::from(command) | (u8::from(last) << 1));
    out.extend_from_slice(data);
    out
}

/// One implicit VR little endian element.
pub fn element(group: u16, elem: u16, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + value.len());
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
    out
}

/// An even-length UID value.
pub fn uid(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(0);
    }
    v
}

/// A command set (group 0000, implicit VR LE) with its group length.
pub fn command_set(elements: &[Vec<u8>]) -> Vec<u8> {
    let body: Vec<u8> = elements.concat();
    let mut out = element(0, 0, &(body.len() as u32).to_le_bytes());
    out.extend(body);
    out
}

pub fn c_echo_rq(message_id: u16) -> Vec<u8> {
    command_set(&[
        element(0, 0x0002, &uid(VERIFICATION)),
        element(0, 0x0100, &0x0030u16.to_le_bytes()),
        element(0, 0x0110, &message_id.to_le_bytes()),
        element(0, 0x0800, &0x0101u16.to_le_bytes()),
    ])
}

pub fn c_store_rq(message_id: u16, sop_class: &str, sop_instance: &str) -> Vec<u8> {
    command_set(&[
        element(0, 0x0002, &uid(sop_class)),
        element(0, 0x0100, &0x0001u16.to_le_bytes()),
        element(0, 0x0110, &message_id.to_le_bytes()),
        element(0, 0x0700, &0u16.to_le_bytes()),
        element(0, 0x0800, &0x0000u16.to_le_bytes()),
        element(0, 0x1000, &uid(sop_instance)),
    ])
}

/// The Status (0000,0900) of a response PDU, if it is one.
pub fn status_of(pdu: &Pdu) -> Option<u16> {
    let Pdu::PData { data } = pdu else {
        return None;
    };
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.data.clone()).collect();
    let mut pos = 0;
    while pos + 8 <= bytes.len() {
        let g = u16::from_le_bytes([bytes[pos], bytes[pos + 1]]);
        let e = u16::from_le_bytes([bytes[pos + 2], bytes[pos + 3]]);
        let len = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap()) as usize;
        if (g, e) == (0, 0x0900) && len == 2 {
            return Some(u16::from_le_bytes([bytes[pos + 8], bytes[pos + 9]]));
        }
        pos += 8 + len;
    }
    None
}

/// Send a C-STORE of `dataset` (already encoded in the context's transfer syntax) in PDVs of at
/// most 60 KiB; the response's status, or what happened instead.
pub fn store(
    s: &mut TcpStream,
    pc_id: u8,
    sop_class: &str,
    sop: &str,
    dataset: &[u8],
) -> Result<u16, String> {
    s.write_all(&pdata(pc_id, true, true, &c_store_rq(7, sop_class, sop)))
        .map_err(|e| e.to_string())?;
    let chunks: Vec<&[u8]> = dataset.chunks(60 * 1024).collect();
    for (i, c) in chunks.iter().enumerate() {
        s.write_all(&pdata(pc_id, false, i + 1 == chunks.len(), c))
            .map_err(|e| e.to_string())?;
    }
    let pdu = read_one(s).map_err(|e| e.to_string())?;
    status_of(&pdu).ok_or_else(|| format!("{pdu:?}"))
}

/// A-RELEASE-RQ, then wait for the reply.
pub fn release(mut s: TcpStream) {
    let _ = s.write_all(&[0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0]);
    let _ = read_one(&mut s);
}

/// A whole C-ECHO association; how long it took, or why it failed.
pub fn echo(addr: SocketAddr, called: &str) -> Result<Duration, String> {
    let started = Instant::now();
    let mut s = associate(addr, "ECHOSCU", called, &[(1, VERIFICATION, IMPLICIT_LE)])?;
    s.write_all(&pdata(1, true, true, &c_echo_rq(1)))
        .map_err(|e| e.to_string())?;
    let pdu = read_one(&mut s).map_err(|e| e.to_string())?;
    match status_of(&pdu) {
        Some(0) => {}
        other => return Err(format!("echo status {other:?}")),
    }
    release(s);
    Ok(started.elapsed())
}

/// Explicit VR little endian element with a short (2-byte) length.
pub fn ex(group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(vr);
    out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    out.extend_from_slice(value);
    out
}

/// Explicit VR little endian element with a long (4-byte) length field.
pub fn ex_long(group: u16, elem: u16, vr: &[u8; 2], len: u32) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(vr);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&len.to_le_bytes());
    out
}

/// The identifying header of a CR chest PA image (explicit VR LE), in tag order up to (0028,xxxx).
pub fn cr_header(sop: &str, study: &str, series: &str) -> Vec<u8> {
    [
        ex(0x0008, 0x0016, b"UI", &uid(CR)),
        ex(0x0008, 0x0018, b"UI", &uid(sop)),
        ex(0x0008, 0x0060, b"CS", b"CR"),
        ex(0x0010, 0x0010, b"PN", b"HOSTILE^TEST"),
        ex(0x0010, 0x0020, b"LO", b"HOSTILE1"),
        ex(0x0018, 0x0015, b"CS", b"CHEST "),
        ex(0x0018, 0x5101, b"CS", b"PA"),
        ex(0x0020, 0x000D, b"UI", &uid(study)),
        ex(0x0020, 0x000E, b"UI", &uid(series)),
    ]
    .concat()
}

/// Image pixel module attributes for a monochrome image.
pub fn pixel_module(rows: u16, cols: u16, bits_allocated: u16, bits_stored: u16) -> Vec<u8> {
    [
        ex(0x0028, 0x0002, b"US", &1u16.to_le_bytes()),
        ex(0x0028, 0x0004, b"CS", b"MONOCHROME2 "),
        ex(0x0028, 0x0010, b"US", &rows.to_le_bytes()),
        ex(0x0028, 0x0011, b"US", &cols.to_le_bytes()),
        ex(0x0028, 0x0100, b"US", &bits_allocated.to_le_bytes()),
        ex(0x0028, 0x0101, b"US", &bits_stored.to_le_bytes()),
        ex(0x0028, 0x0102, b"US", &(bits_stored - 1).to_le_bytes()),
        ex(0x0028, 0x0103, b"US", &0u16.to_le_bytes()),
    ]
    .concat()
}

/// Encapsulated pixel data: an empty offset table, then `fragments`.
pub fn encapsulated(fragments: &[Vec<u8>]) -> Vec<u8> {
    let mut out = ex_long(0x7FE0, 0x0010, b"OB", 0xFFFF_FFFF);
    out.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]);
    for f in fragments {
        let mut f = f.clone();
        if f.len() % 2 == 1 {
            f.push(0);
        }
        out.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(&f);
    }
    out.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    out
}

/// A fresh UID under 2.25.
pub fn new_uid() -> String {
    format!("2.25.{}", uuid::Uuid::new_v4().as_u128())
}
