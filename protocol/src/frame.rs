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
pub const PROTOCOL_VERSION: u16 = 8;
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
        Self {
            max_header: 64 * 1024,
            max_payload: 1 << 30,
        }
    }
}

impl Limits {
    /// Limits for control messages that carry no payload. Secure-aggregation rosters,
    /// shares and reveals grow with the neighbourhood (a complete graph of 10,000 agents
    /// sends ~0.9 MB of shares), so their headers may reach [`MAX_HEADER_LEN`].
    pub fn control() -> Self {
        Self {
            max_header: MAX_HEADER_LEN,
            max_payload: 0,
        }
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

    /// Decodes and checks a prefix: magic, version, the reserved bytes (zero) and both
    /// lengths against `limits`.
    ///
    /// # Errors
    /// [`ProtocolError::BadMagic`], [`ProtocolError::UnsupportedVersion`],
    /// [`ProtocolError::Malformed`] for reserved bytes that are set, or
    /// [`ProtocolError::TooLarge`].
    pub fn decode(bytes: &[u8; PREFIX_LEN], limits: &Limits) -> Result<Self, ProtocolError> {
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != MAGIC {
            return Err(ProtocolError::BadMagic(magic));
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != PROTOCOL_VERSION {
            return Err(ProtocolError::UnsupportedVersion {
                got: version,
                supported: PROTOCOL_VERSION,
            });
        }
        if bytes[6..8] != [0, 0] {
            return Err(ProtocolError::Malformed(format!(
                "the frame prefix's reserved bytes must be zero, not {:#04x} {:#04x}",
                bytes[6], bytes[7]
            )));
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
        Ok(Self {
            header_len,
            payload_len,
        })
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
    let (message, read) =
        bincode::serde::decode_from_slice(bytes, BINCODE).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
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
    out.extend_from_slice(
        &FramePrefix {
            header_len,
            payload_len,
        }
        .encode(),
    );
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
pub fn decode_frame<'a, M: DeserializeOwned>(bytes: &'a [u8], limits: &Limits) -> Result<(M, &'a [u8]), ProtocolError> {
    let prefix_bytes: &[u8; PREFIX_LEN] =
        bytes
            .get(..PREFIX_LEN)
            .and_then(|p| p.try_into().ok())
            .ok_or(ProtocolError::Truncated {
                expected: PREFIX_LEN as u64,
                got: bytes.len() as u64,
            })?;
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

/// Incremental frame decoder for stream transports, without I/O of its own.
///
/// The driver fills [`buffer`](Self::buffer) completely (e.g. with `read_exact`) and
/// calls [`advance`](Self::advance) until it returns `true`, then takes the message with
/// [`finish`](Self::finish). Lengths are checked against the limits before anything is
/// allocated, and the payload is read straight into an f32 buffer: no second copy.
///
/// ```
/// # use fedtune_protocol::{frame::*, *};
/// let msg = AgentMessage::Error(ErrorMessage::new(ErrorCode::Internal, "x"));
/// let wire = encode_frame(&msg, &1.5f32.to_le_bytes()).unwrap();
/// let mut reader = FrameReader::new(Limits::default());
/// let mut input = &wire[..];
/// loop {
///     let buf = reader.buffer();
///     let n = buf.len();
///     buf.copy_from_slice(&input[..n]);
///     input = &input[n..];
///     if reader.advance().unwrap() { break; }
/// }
/// let (back, payload) = reader.finish::<AgentMessage>().unwrap();
/// assert_eq!((back, payload), (msg, vec![1.5]));
/// ```
#[derive(Debug)]
pub struct FrameReader {
    limits: Limits,
    state: ReadState,
}

#[derive(Debug)]
enum ReadState {
    Prefix([u8; PREFIX_LEN]),
    Header { header: Vec<u8>, payload_len: usize },
    Payload { header: Vec<u8>, payload: Vec<f32> },
    Done { header: Vec<u8>, payload: Vec<f32> },
}

impl FrameReader {
    /// A reader that enforces `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            state: ReadState::Prefix([0; PREFIX_LEN]),
        }
    }

    /// The bytes to read next; fill all of them, then call [`advance`](Self::advance).
    /// Empty once the frame is complete.
    pub fn buffer(&mut self) -> &mut [u8] {
        match &mut self.state {
            ReadState::Prefix(prefix) => prefix,
            ReadState::Header { header, .. } => header,
            ReadState::Payload { payload, .. } => bytemuck::cast_slice_mut(payload),
            ReadState::Done { .. } => &mut [],
        }
    }

    /// Moves past the buffer just filled; `true` when the frame is complete.
    ///
    /// # Errors
    /// Prefix errors ([`FramePrefix::decode`]), or [`ProtocolError::Malformed`] when the
    /// payload is not a whole number of f32s.
    pub fn advance(&mut self) -> Result<bool, ProtocolError> {
        let state = std::mem::replace(&mut self.state, ReadState::Prefix([0; PREFIX_LEN]));
        self.state = match state {
            ReadState::Prefix(bytes) => {
                let prefix = FramePrefix::decode(&bytes, &self.limits)?;
                if !prefix.payload_len.is_multiple_of(4) {
                    return Err(ProtocolError::Malformed(format!(
                        "payload of {} bytes is not a whole number of f32s",
                        prefix.payload_len
                    )));
                }
                let payload_len = usize::try_from(prefix.payload_len / 4).map_err(|_| ProtocolError::TooLarge {
                    what: "frame payload",
                    len: prefix.payload_len,
                    limit: usize::MAX as u64,
                })?;
                ReadState::Header {
                    header: vec![0; prefix.header_len as usize],
                    payload_len,
                }
            }
            ReadState::Header { header, payload_len } => ReadState::Payload {
                header,
                payload: vec![0.0; payload_len],
            },
            ReadState::Payload { header, mut payload } => {
                crate::tensor::le_in_place(&mut payload);
                ReadState::Done { header, payload }
            }
            done @ ReadState::Done { .. } => done,
        };
        // Empty sections need no read: step over them.
        match &self.state {
            ReadState::Done { .. } => Ok(true),
            ReadState::Header { header, .. } if header.is_empty() => self.advance(),
            ReadState::Payload { payload, .. } if payload.is_empty() => self.advance(),
            _ => Ok(false),
        }
    }

    /// Decodes the completed frame into its message and payload.
    ///
    /// # Errors
    /// [`ProtocolError::Truncated`] when called before the frame is complete, or any
    /// header decoding error.
    pub fn finish<M: DeserializeOwned>(self) -> Result<(M, Vec<f32>), ProtocolError> {
        match self.state {
            ReadState::Done { header, payload } => Ok((decode_header(&header)?, payload)),
            _ => Err(ProtocolError::Truncated {
                expected: PREFIX_LEN as u64,
                got: 0,
            }),
        }
    }
}
