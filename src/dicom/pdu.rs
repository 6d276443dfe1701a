//! PDUs on the wire, over any byte stream (TCP today, TLS later): read one PDU with its declared
//! length checked against a cap for its type before any byte of its body is buffered, and write
//! one PDU. Each read and write has its own time limit.
//!
//! The PDU bodies are decoded by dicom-ul's PDU codec (`dicom_ul::pdu::read_pdu`) on a buffer
//! that holds exactly one PDU, so that codec never sees more than the cap; P-DATA-TF, the PDU
//! that carries the data sets, is decoded here ([`decode_pdata`]) into reused buffers: each value
//! is copied once, into a buffer that its consumer gives back ([`recycle`]) once it is written.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// Bytes of a PDU header: type, reserved, 4-byte length.
pub const PDU_HEADER_BYTES: usize = 6;
/// Largest A-ASSOCIATE-RQ accepted (a real one with 128 presentation contexts is about 25 KB).
pub const MAX_ASSOCIATE_RQ_BYTES: u32 = 64 * 1024;
/// Largest body of any other PDU but P-DATA (release and abort PDUs have 4 bytes).
const MAX_CONTROL_PDU_BYTES: u32 = 1024;

/// PDU types (PS3.8 9.3.1).
pub mod pdu_type {
    pub const ASSOCIATE_RQ: u8 = 0x01;
    pub const P_DATA: u8 = 0x04;
}

/// Why no PDU was read or written.
#[derive(Debug, thiserror::Error)]
pub enum PduError {
    #[error("connection closed by the peer")]
    Closed,
    #[error("nothing received for {0:?}")]
    ReadTimeout(Duration),
    #[error("could not send within {0:?}")]
    WriteTimeout(Duration),
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("PDU of type {pdu_type:#04x} declares {length} bytes, over the {limit}-byte limit")]
    TooLarge {
        pdu_type: u8,
        length: u32,
        limit: u32,
    },
    #[error("malformed PDU of type {pdu_type:#04x}: {message}")]
    Malformed { pdu_type: u8, message: String },
    #[error("cannot encode a PDU: {0}")]
    Encode(String),
}

/// A byte stream carrying PDUs.
#[derive(Debug)]
pub struct PduStream<S> {
    stream: BufReader<S>,
    /// One PDU, header included; reused from PDU to PDU.
    buf: Vec<u8>,
    out: Vec<u8>,
    read_timeout: Duration,
    write_timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> PduStream<S> {
    pub fn new(stream: S, read_timeout: Duration, write_timeout: Duration) -> Self {
        Self {
            stream: BufReader::with_capacity(16 * 1024, stream),
            buf: Vec::new(),
            out: Vec::new(),
            read_timeout,
            write_timeout,
        }
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        self.stream.get_ref()
    }

    /// Change the time limit of each read (the A-ASSOCIATE-RQ has a shorter one).
    pub fn set_read_timeout(&mut self, timeout: Duration) {
        self.read_timeout = timeout;
    }

    /// Read the next PDU. A P-DATA-TF PDU may be at most `max_pdata` bytes long (the maximum
    /// length we announced), an A-ASSOCIATE-RQ [`MAX_ASSOCIATE_RQ_BYTES`], any other 1 KiB.
    pub async fn read(&mut self, max_pdata: u32) -> Result<Pdu, PduError> {
        let mut head = [0u8; PDU_HEADER_BYTES];
        self.read_exact_timed(&mut head, true).await?;
        let (pdu_type, length) = check_header(&head, max_pdata)?;
        let total = PDU_HEADER_BYTES + length as usize;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.extend_from_slice(&head);
        buf.resize(total, 0);
        let body = self
            .read_exact_timed(&mut buf[PDU_HEADER_BYTES..], false)
            .await;
        let decoded = body.and_then(|()| match pdu_type {
            pdu_type::P_DATA => decode_pdata(&buf[PDU_HEADER_BYTES..]),
            _ => decode(&buf, pdu_type),
        });
        self.buf = buf;
        decoded
    }

    async fn read_exact_timed(&mut self, buf: &mut [u8], at_start: bool) -> Result<(), PduError> {
        match tokio::time::timeout(self.read_timeout, self.stream.read_exact(buf)).await {
            Err(_) => Err(PduError::ReadTimeout(self.read_timeout)),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof && at_start => {
                Err(PduError::Closed)
            }
            Ok(Err(e)) => Err(PduError::Io(e)),
        }
    }

    /// Write one PDU.
    pub async fn write(&mut self, pdu: &Pdu) -> Result<(), PduError> {
        self.out.clear();
        dicom_ul::pdu::write_pdu(&mut self.out, pdu)
            .map_err(|e| PduError::Encode(e.to_string()))?;
        let stream = self.stream.get_mut();
        let write = async {
            stream.write_all(&self.out).await?;
            stream.flush().await
        };
        match tokio::time::timeout(self.write_timeout, write).await {
            Err(_) => Err(PduError::WriteTimeout(self.write_timeout)),
            Ok(r) => r.map_err(PduError::Io),
        }
    }

    /// Close the sending side.
    pub async fn shutdown(&mut self) {
        let _ = tokio::time::timeout(self.write_timeout, self.stream.get_mut().shutdown()).await;
    }
}

/// A PDU header's type and body length, refused when the length exceeds the cap of its type: a
/// P-DATA-TF `max_pdata` bytes (the maximum length we announced), an A-ASSOCIATE-RQ
/// [`MAX_ASSOCIATE_RQ_BYTES`], any other 1 KiB.
pub fn check_header(head: &[u8; PDU_HEADER_BYTES], max_pdata: u32) -> Result<(u8, u32), PduError> {
    let pdu_type = head[0];
    let length = u32::from_be_bytes([head[2], head[3], head[4], head[5]]);
    let limit = match pdu_type {
        pdu_type::P_DATA => max_pdata,
        pdu_type::ASSOCIATE_RQ => MAX_ASSOCIATE_RQ_BYTES,
        _ => MAX_CONTROL_PDU_BYTES,
    };
    if length > limit {
        return Err(PduError::TooLarge {
            pdu_type,
            length,
            limit,
        });
    }
    Ok((pdu_type, length))
}

/// Check and decode one PDU held whole in `buf` (header included), as [`PduStream::read`] does
/// with what it reads; bytes after the PDU are left alone. For tests and fuzzing.
pub fn decode_checked(buf: &[u8], max_pdata: u32) -> Result<Pdu, PduError> {
    let Some(head) = buf.first_chunk::<PDU_HEADER_BYTES>() else {
        return Err(PduError::Closed);
    };
    let (pdu_type, length) = check_header(head, max_pdata)?;
    let Some(pdu) = buf.get(..PDU_HEADER_BYTES + length as usize) else {
        return Err(PduError::Closed);
    };
    match pdu_type {
        pdu_type::P_DATA => decode_pdata(&pdu[PDU_HEADER_BYTES..]),
        _ => decode(pdu, pdu_type),
    }
}

/// Buffers of P-DATA values given back by their consumers, reused for the next values.
static FRAGMENT_BUFFERS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
/// Buffers kept for reuse at most, each at most [`MAX_POOLED_BYTES`] large: what idles in the
/// pool stays under 8 MiB.
const POOLED_BUFFERS: usize = 32;
const MAX_POOLED_BYTES: usize = 256 * 1024;

/// A buffer holding a copy of `data`: a reused one when there is one.
fn fragment_buffer(data: &[u8]) -> Vec<u8> {
    let pooled = FRAGMENT_BUFFERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop();
    let mut buffer = pooled.unwrap_or_default();
    buffer.extend_from_slice(data);
    buffer
}

/// Give back the buffer of a P-DATA value once its bytes are used, for a later value to reuse
/// (no allocation, no fresh pages to fault in). Dropping it instead is always correct.
pub fn recycle(mut buffer: Vec<u8>) {
    if buffer.capacity() == 0 || buffer.capacity() > MAX_POOLED_BYTES {
        return;
    }
    buffer.clear();
    let mut free = FRAGMENT_BUFFERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if free.len() < POOLED_BUFFERS {
        free.push(buffer);
    }
}

/// Decode a P-DATA-TF body (PS3.8 9.3.5) into its presentation data values, each copied into a
/// reused buffer ([`recycle`]); the same checks as dicom-ul's codec: every item has its 4-byte
/// length, context ID and message control header, a length of at least 2, and its value whole.
pub fn decode_pdata(mut body: &[u8]) -> Result<Pdu, PduError> {
    let malformed = |message: &str| PduError::Malformed {
        pdu_type: pdu_type::P_DATA,
        message: message.to_string(),
    };
    let mut data = Vec::with_capacity(1);
    while !body.is_empty() {
        let Some((&[l0, l1, l2, l3, pc_id, header], rest)) = body.split_first_chunk::<6>() else {
            return Err(malformed("invalid PDU field length"));
        };
        let length = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
        if length < 2 {
            return Err(malformed("invalid presentation data value item length"));
        }
        let Some((value, rest)) = rest.split_at_checked(length - 2) else {
            return Err(malformed("invalid PDU field length"));
        };
        data.push(PDataValue {
            presentation_context_id: pc_id,
            value_type: if header & 0x01 != 0 {
                PDataValueType::Command
            } else {
                PDataValueType::Data
            },
            is_last: header & 0x02 != 0,
            data: fragment_buffer(value),
        });
        body = rest;
    }
    Ok(Pdu::PData { data })
}

/// Decode one whole PDU (header included) with dicom-ul's codec.
pub fn decode(buf: &[u8], pdu_type: u8) -> Result<Pdu, PduError> {
    let malformed = |message: String| PduError::Malformed { pdu_type, message };
    match dicom_ul::pdu::read_pdu(buf, dicom_ul::pdu::MAXIMUM_PDU_SIZE, false) {
        Ok(Some(pdu)) => Ok(pdu),
        Ok(None) => Err(malformed("shorter than its declared length".into())),
        Err(e) => Err(malformed(e.to_string())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn pdata_decodes_as_dicom_ul_does_into_reused_buffers() {
        let value = |pc: u8, header: u8, data: &[u8]| {
            let mut v = ((data.len() + 2) as u32).to_be_bytes().to_vec();
            v.extend_from_slice(&[pc, header]);
            v.extend_from_slice(data);
            v
        };
        let mut body = value(1, 0x03, b"command");
        body.extend(value(3, 0x00, &[7u8; 1000]));
        body.extend(value(3, 0x02, b""));
        let mut pdu = vec![0x04, 0];
        pdu.extend_from_slice(&(body.len() as u32).to_be_bytes());
        pdu.extend_from_slice(&body);
        let ours = decode_checked(&pdu, 1 << 20).unwrap();
        assert_eq!(ours, decode(&pdu, pdu_type::P_DATA).unwrap());
        let Pdu::PData { data } = ours else {
            panic!("not P-DATA")
        };
        let (ptr, capacity) = (data[1].data.as_ptr(), data[1].data.capacity());
        data.into_iter().for_each(|v| recycle(v.data));
        // a buffer given back is reused (the pool is shared by the tests: look for it in a few)
        let again: Vec<Vec<u8>> = (0..POOLED_BUFFERS).map(|_| fragment_buffer(b"x")).collect();
        assert!(
            again
                .iter()
                .any(|b| b.as_ptr() == ptr && b.capacity() == capacity)
        );
        // the malformed ones are refused, as dicom-ul refuses them
        for bad in [&body[..3], &body[..body.len() - 1], &[0, 0, 0, 1, 1, 0][..]] {
            assert!(decode_pdata(bad).is_err(), "{bad:?}");
            let mut pdu = vec![0x04, 0];
            pdu.extend_from_slice(&(bad.len() as u32).to_be_bytes());
            pdu.extend_from_slice(bad);
            assert!(decode(&pdu, pdu_type::P_DATA).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn lengths_are_capped_by_type_before_reading_the_body() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut pdus = PduStream::new(server, Duration::from_secs(2), Duration::from_secs(2));
        // a P-DATA-TF declaring 4 GB: refused from its header alone
        client
            .write_all(&[0x04, 0, 0xFF, 0xFF, 0xFF, 0xF0])
            .await
            .unwrap();
        let err = pdus.read(16_384).await.unwrap_err();
        assert!(
            matches!(
                err,
                PduError::TooLarge {
                    length: 0xFFFF_FFF0,
                    ..
                }
            ),
            "{err}"
        );

        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut pdus = PduStream::new(server, Duration::from_secs(2), Duration::from_secs(2));
        // an A-ASSOCIATE-RQ over 64 KiB
        client.write_all(&[0x01, 0, 0, 0x01, 0, 1]).await.unwrap();
        assert!(matches!(
            pdus.read(16_384).await,
            Err(PduError::TooLarge { .. })
        ));

        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut pdus = PduStream::new(server, Duration::from_secs(2), Duration::from_secs(2));
        // a release request, then nothing: the next read times out... or ends cleanly on close
        client
            .write_all(&[0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0])
            .await
            .unwrap();
        assert!(matches!(pdus.read(16_384).await.unwrap(), Pdu::ReleaseRQ));
        drop(client);
        assert!(matches!(pdus.read(16_384).await, Err(PduError::Closed)));
    }

    #[tokio::test]
    async fn a_silent_peer_times_out() {
        let (_client, server) = tokio::io::duplex(64);
        let mut pdus = PduStream::new(server, Duration::from_millis(50), Duration::from_secs(1));
        assert!(matches!(
            pdus.read(16_384).await,
            Err(PduError::ReadTimeout(_))
        ));
    }
}
