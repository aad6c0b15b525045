//! Length-prefixed frames: a fixed prefix, a bincode header, a raw payload.
//!
//! ```text
//! offset  size  field
//! 0       4     magic  b"FDTN"
//! 4       2     protocol version (u16 LE)
//! 6       2     reserved, zero
//! 8       4     header length (u32 LE)
//! 12      8     payload length (u64 LE)
//! 20      h     header: the message, bincode (standard config)
//! 20+h    p     payload: raw bytes (little-endian f32 parameters)
//! ```
//!
//! Readers decode the prefix first, check both lengths against their [`Limits`], then
//! read exactly that many bytes: a peer cannot make the receiver allocate more than the
//! limits allow. Payloads never pass through serde, so large tensors are not copied
//! element by element.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ProtocolError;

/// First four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"FDTN";
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Size of the fixed frame prefix.
pub const PREFIX_LEN: usize = 20;
/// Hard ceiling on a header: messages are small, tensors travel in the payload.
pub const MAX_HEADER_LEN: u32 = 1 << 20;

const BINCODE: bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<{ MAX_HEADER_LEN as usize }>,
> = bincode::config::standard().with_limit::<{ MAX_HEADER_LEN as usize }>();

/// Size limits a receiver enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest header accepted (at most [`MAX_HEADER_LEN`]).
    pub max_header: u32,
    /// Largest payload accepted.
    pub max_payload: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_header: 64 * 1024, max_payload: 1 << 30 }
    }
}

impl Limits {
    /// Limits for control messages that carry no payload.
    pub fn control() -> Self {
        Self { max_header: 64 * 1024, max_payload: 0 }
    }
}

/// The decoded fixed prefix of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramePrefix {
    /// Length of the bincode header.
    pub header_len: u32,
    /// Length of the raw payload.
    pub payload_len: u64,
}

impl FramePrefix {
    /// Encodes the prefix for the current protocol version.
    pub fn encode(&self) -> [u8; PREFIX_LEN] {
        let mut out = [0u8; PREFIX_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        out[8..12].copy_from_slice(&self.header_len.to_le_bytes());
        out[12..20].copy_from_slice(&self.payload_len.to_le_bytes());
        out
    }

    /// Decodes and checks a prefix: magic, version and both lengths against `limits`.
    ///
    /// # Errors
    /// [`ProtocolError::BadMagic`], [`ProtocolError::UnsupportedVersion`] or
    /// [`ProtocolError::TooLarge`].
    pub fn decode(bytes: &[u8; PREFIX_LEN], limits: &Limits) -> Result<Self, ProtocolError> {
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != MAGIC {
            return Err(ProtocolError::BadMagic(magic));
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != PROTOCOL_VERSION {
            return Err(ProtocolError::UnsupportedVersion { got: version, supported: PROTOCOL_VERSION });
        }
        let header_len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        let payload_len = u64::from_le_bytes([
            bytes[12], bytes[13], bytes[14], bytes[15], bytes[16], bytes[17], bytes[18], bytes[19],
        ]);
        let max_header = limits.max_header.min(MAX_HEADER_LEN);
        if header_len > max_header {
            return Err(ProtocolError::TooLarge {
                what: "frame header",
                len: header_len.into(),
                limit: max_header.into(),
            });
        }
        if payload_len > limits.max_payload {
            return Err(ProtocolError::TooLarge {
                what: "frame payload",
                len: payload_len,
                limit: limits.max_payload,
            });
        }
        Ok(Self { header_len, payload_len })
    }
}

/// Encodes a message as a frame header.
///
/// # Errors
/// [`ProtocolError::Encode`] when the message does not serialize or exceeds
/// [`MAX_HEADER_LEN`].
pub fn encode_header<M: Serialize>(message: &M) -> Result<Vec<u8>, ProtocolError> {
    bincode::serde::encode_to_vec(message, BINCODE).map_err(|e| ProtocolError::Encode(e.to_string()))
}

/// Decodes a frame header, rejecting trailing bytes.
///
/// # Errors
/// [`ProtocolError::Malformed`] or [`ProtocolError::TrailingBytes`].
pub fn decode_header<M: DeserializeOwned>(bytes: &[u8]) -> Result<M, ProtocolError> {
    let (message, read) = bincode::serde::decode_from_slice(bytes, BINCODE)
        .map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    if read != bytes.len() {
        return Err(ProtocolError::TrailingBytes(bytes.len() - read));
    }
    Ok(message)
}

/// The prefix and header of a frame whose payload is written separately (so a large
/// payload is sent straight from its buffer).
///
/// # Errors
/// As [`encode_header`].
pub fn encode_frame_head<M: Serialize>(message: &M, payload_len: u64) -> Result<Vec<u8>, ProtocolError> {
    let header = encode_header(message)?;
    let header_len = u32::try_from(header.len())
        .ok()
        .filter(|&len| len <= MAX_HEADER_LEN)
        .ok_or_else(|| ProtocolError::Encode(format!("header of {} bytes is too large", header.len())))?;
    let mut out = Vec::with_capacity(PREFIX_LEN + header.len());
    out.extend_from_slice(&FramePrefix { header_len, payload_len }.encode());
    out.extend_from_slice(&header);
    Ok(out)
}

/// A whole frame in one buffer.
///
/// # Errors
/// As [`encode_header`].
pub fn encode_frame<M: Serialize>(message: &M, payload: &[u8]) -> Result<Vec<u8>, ProtocolError> {
    let mut out = encode_frame_head(message, payload.len() as u64)?;
    out.extend_from_slice(payload);
    Ok(out)
}

/// Decodes a whole frame held in one buffer; returns the message and its payload.
///
/// # Errors
/// Any prefix or header error, [`ProtocolError::Truncated`] when bytes are missing and
/// [`ProtocolError::TrailingBytes`] when bytes are left over.
pub fn decode_frame<'a, M: DeserializeOwned>(
    bytes: &'a [u8],
    limits: &Limits,
) -> Result<(M, &'a [u8]), ProtocolError> {
    let prefix_bytes: &[u8; PREFIX_LEN] = bytes
        .get(..PREFIX_LEN)
        .and_then(|p| p.try_into().ok())
        .ok_or(ProtocolError::Truncated { expected: PREFIX_LEN as u64, got: bytes.len() as u64 })?;
    let prefix = FramePrefix::decode(prefix_bytes, limits)?;
    let rest = &bytes[PREFIX_LEN..];
    let header_len = prefix.header_len as usize;
    let expected = header_len as u64 + prefix.payload_len;
    if (rest.len() as u64) < expected {
        return Err(ProtocolError::Truncated {
            expected: PREFIX_LEN as u64 + expected,
            got: bytes.len() as u64,
        });
    }
    if rest.len() as u64 > expected {
        return Err(ProtocolError::TrailingBytes((rest.len() as u64 - expected) as usize));
    }
    let message = decode_header(&rest[..header_len])?;
    Ok((message, &rest[header_len..]))
}
