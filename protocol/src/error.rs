//! Errors of the protocol layer.

use crate::message::ErrorCode;

/// Why a frame, message or parameter buffer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A length exceeds the receiver's limit.
    #[error("{what} of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Which part was too large.
        what: &'static str,
        /// Announced length.
        len: u64,
        /// Limit in force.
        limit: u64,
    },
    /// Fewer bytes than announced.
    #[error("truncated frame: expected {expected} bytes, got {got}")]
    Truncated {
        /// Bytes the frame announced.
        expected: u64,
        /// Bytes present.
        got: u64,
    },
    /// The frame does not start with the fedtune magic.
    #[error("not a fedtune frame (magic {0:02x?})")]
    BadMagic([u8; 4]),
    /// The peer speaks another protocol version.
    #[error("protocol version {got} is not supported (this side speaks {supported})")]
    UnsupportedVersion {
        /// Version in the frame.
        got: u16,
        /// Version this build speaks.
        supported: u16,
    },
    /// Bytes left over after a complete message.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// The bytes do not decode to a message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// A parameter buffer holds NaN or infinity.
    #[error("parameter {index} is not finite")]
    NonFinite {
        /// Index of the first non-finite value.
        index: usize,
    },
    /// A model specification or manifest is inconsistent.
    #[error("invalid model: {0}")]
    InvalidModel(String),
}

impl ProtocolError {
    /// The wire error code that reports this failure to the peer.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TooLarge { .. } => ErrorCode::TooLarge,
            Self::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            Self::NonFinite { .. } => ErrorCode::NonFinite,
            Self::InvalidModel(_) => ErrorCode::InvalidTask,
            Self::Encode(_) => ErrorCode::Internal,
            Self::Truncated { .. } | Self::BadMagic(_) | Self::TrailingBytes(_) | Self::Malformed(_) => {
                ErrorCode::Malformed
            }
        }
    }
}
