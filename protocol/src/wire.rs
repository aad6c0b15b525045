//! Frames over quinn streams: the one I/O driver around [`crate::frame`] that agents and
//! the aggregator share. Only with the `quinn` feature; the rest of the crate stays
//! sans-IO.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::frame::{FrameReader, Limits, encode_frame_head};
use crate::{ErrorMessage, ProtocolError};

/// Why a frame could not be moved over a stream.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The peer sent bytes that are not a valid frame.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The stream ended or was reset before the frame was complete.
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadExactError),
    /// The stream could not be written.
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// The stream was already finished or reset.
    #[error("stream closed: {0}")]
    Closed(#[from] quinn::ClosedStream),
}

impl WireError {
    /// The error to send back to the peer: only a frame that failed to decode is the
    /// peer's fault; a broken stream has no one left to tell.
    pub fn reply(&self) -> Option<ErrorMessage> {
        match self {
            WireError::Protocol(e) => Some(ErrorMessage::new(e.code(), e.to_string())),
            _ => None,
        }
    }
}

/// Fills `buf` from the stream. A stream the peer finished before the frame was whole is
/// the peer's malformed frame ([`ProtocolError::Truncated`], for the part being read);
/// a reset or lost stream is not.
async fn fill(recv: &mut quinn::RecvStream, buf: &mut [u8]) -> Result<(), WireError> {
    match recv.read_exact(buf).await {
        Err(quinn::ReadExactError::FinishedEarly(got)) => Err(ProtocolError::Truncated {
            expected: buf.len() as u64,
            got: got as u64,
        }
        .into()),
        other => Ok(other?),
    }
}

/// Reads one frame, its payload straight into an f32 buffer.
///
/// # Errors
/// [`WireError`] when the stream fails or the frame is invalid.
pub async fn read_frame<M: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    limits: Limits,
) -> Result<(M, Vec<f32>), WireError> {
    let (message, payload, ()) = read_frame_gated(recv, limits, async || ()).await?;
    Ok((message, payload))
}

/// Reads one frame, calling `before_body` once its prefix has arrived and before the
/// header and payload are allocated. The first read waits on the peer, so a receiver can
/// bound its memory by taking a permit there rather than before the peer speaks.
///
/// # Errors
/// [`WireError`] when the stream fails or the frame is invalid.
pub async fn read_frame_gated<M: DeserializeOwned, T>(
    recv: &mut quinn::RecvStream,
    limits: Limits,
    before_body: impl AsyncFnOnce() -> T,
) -> Result<(M, Vec<f32>, T), WireError> {
    let mut reader = FrameReader::new(limits);
    fill(recv, reader.buffer()).await?;
    let mut done = reader.advance()?;
    let guard = before_body().await;
    while !done {
        fill(recv, reader.buffer()).await?;
        done = reader.advance()?;
    }
    let (message, payload) = reader.finish()?;
    Ok((message, payload, guard))
}

/// Writes one frame; the payload goes out from its buffer without an extra copy.
///
/// # Errors
/// [`WireError`] when the stream fails or the message does not encode.
pub async fn write_frame<M: Serialize>(
    send: &mut quinn::SendStream,
    message: &M,
    payload: &[f32],
) -> Result<(), WireError> {
    let bytes = crate::tensor::f32_to_le_bytes(payload);
    send.write_all(&encode_frame_head(message, bytes.len() as u64)?).await?;
    send.write_all(&bytes).await?;
    Ok(())
}

/// Writes one frame whose payload is shared between many sends (a round's global model
/// to every member of the cohort) without copying it.
///
/// # Errors
/// [`WireError`] when the stream fails or the message does not encode.
pub async fn write_frame_shared<M: Serialize>(
    send: &mut quinn::SendStream,
    message: &M,
    payload: Bytes,
) -> Result<(), WireError> {
    send.write_all(&encode_frame_head(message, payload.len() as u64)?)
        .await?;
    if !payload.is_empty() {
        send.write_chunk(payload).await?;
    }
    Ok(())
}

/// Writes one frame with no payload.
///
/// # Errors
/// As [`write_frame_shared`].
pub async fn write_message<M: Serialize>(send: &mut quinn::SendStream, message: &M) -> Result<(), WireError> {
    write_frame_shared(send, message, Bytes::new()).await
}
