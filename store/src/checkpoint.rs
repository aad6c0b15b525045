//! The checkpoint format: a federation's state with its large vectors as raw bytes.
//!
//! ```text
//! "FTCK" | version u8 | header length u32 LE | header (JSON)
//!        | for each vector: length u64 LE (values) | values as f32 LE
//!        | CRC-32 of everything before it, u32 LE   (from version 2)
//! ```
//!
//! The header is the [`FederationState`] with its per-parameter vectors (the global
//! model, the strategy's momentum or moments) emptied; the vectors follow in the order
//! [`vectors`] gives, copied as bytes rather than encoded value by value. The checksum
//! catches a damaged blob that SQLite's page checks do not (flipped bytes inside the
//! model's values would otherwise load as a different model).

use fedtune_protocol::tensor::f32_to_le_bytes;

use fedtune_federation::FederationState;

const MAGIC: &[u8; 4] = b"FTCK";
const VERSION: u8 = 2;

/// Why a checkpoint does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// It does not start with the checkpoint magic.
    #[error("not a fedtune checkpoint (bad magic)")]
    BadMagic,
    /// It was written in a newer format.
    #[error("checkpoint format {0} is newer than this fedtune's {VERSION}")]
    NewerFormat(u8),
    /// It ends early.
    #[error("the checkpoint is truncated: {0}")]
    Truncated(&'static str),
    /// Its header does not parse.
    #[error("the checkpoint header does not parse: {0}")]
    Header(String),
    /// The bytes are not those written.
    #[error("the checkpoint is damaged (checksum {computed:#010x}, written {stored:#010x})")]
    Checksum {
        /// The checksum written with it.
        stored: u32,
        /// The checksum of what was read.
        computed: u32,
    },
    /// Bytes remain after the last vector.
    #[error("{0} bytes follow the checkpoint's last vector")]
    Trailing(usize),
}

/// The state's per-parameter vectors, in the order they are stored.
fn vectors(state: &mut FederationState) -> Vec<&mut Vec<f32>> {
    let mut out = vec![&mut state.global];
    out.extend(state.strategy.vectors_mut());
    out
}

/// Encodes `state` (consumed: its vectors move into the output, not through serde).
///
/// # Errors
/// [`CheckpointError::Header`] when the state's header does not serialize.
pub fn encode_checkpoint(mut state: FederationState) -> Result<Vec<u8>, CheckpointError> {
    let taken: Vec<Vec<f32>> = vectors(&mut state).into_iter().map(std::mem::take).collect();
    let header = serde_json::to_vec(&state).map_err(|e| CheckpointError::Header(e.to_string()))?;
    let body: usize = taken.iter().map(|v| 8 + 4 * v.len()).sum();
    let mut out = Vec::with_capacity(MAGIC.len() + 1 + 4 + header.len() + body + 4);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    let header_len = u32::try_from(header.len()).map_err(|_| CheckpointError::Header("over 4 GiB".into()))?;
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(&header);
    for v in &taken {
        out.extend_from_slice(&(v.len() as u64).to_le_bytes());
        out.extend_from_slice(&f32_to_le_bytes(v));
    }
    let checksum = crc32fast::hash(&out);
    out.extend_from_slice(&checksum.to_le_bytes());
    Ok(out)
}

/// Decodes a checkpoint written by [`encode_checkpoint`].
///
/// # Errors
/// [`CheckpointError`] naming what is wrong.
pub fn decode_checkpoint(bytes: &[u8]) -> Result<FederationState, CheckpointError> {
    let mut rest = bytes;
    let magic = take(&mut rest, 4, "magic")?;
    if magic != MAGIC {
        return Err(CheckpointError::BadMagic);
    }
    let version = take(&mut rest, 1, "version")?[0];
    if version > VERSION {
        return Err(CheckpointError::NewerFormat(version));
    }
    if version >= 2 {
        let Some(body) = bytes.len().checked_sub(4) else {
            return Err(CheckpointError::Truncated("checksum"));
        };
        let stored = u32::from_le_bytes(bytes[body..].try_into().expect("4 bytes"));
        let computed = crc32fast::hash(&bytes[..body]);
        if stored != computed {
            return Err(CheckpointError::Checksum { stored, computed });
        }
        rest = &rest[..rest.len().saturating_sub(4)];
    }
    let header_len = u32::from_le_bytes(take(&mut rest, 4, "header length")?.try_into().expect("4 bytes"));
    let header = take(&mut rest, header_len as usize, "header")?;
    let mut state: FederationState =
        serde_json::from_slice(header).map_err(|e| CheckpointError::Header(e.to_string()))?;
    for slot in vectors(&mut state) {
        let len = u64::from_le_bytes(take(&mut rest, 8, "vector length")?.try_into().expect("8 bytes"));
        let byte_len = usize::try_from(len)
            .ok()
            .and_then(|n| n.checked_mul(4))
            .ok_or(CheckpointError::Truncated("vector longer than the checkpoint"))?;
        let raw = take(&mut rest, byte_len, "vector values")?;
        *slot = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
    }
    if !rest.is_empty() {
        return Err(CheckpointError::Trailing(rest.len()));
    }
    Ok(state)
}

fn take<'a>(rest: &mut &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8], CheckpointError> {
    if rest.len() < n {
        return Err(CheckpointError::Truncated(what));
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}
