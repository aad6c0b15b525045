//! Frames over QUIC streams: the thin I/O driver around [`fedtune_protocol::frame`].

use bytes::Bytes;
use fedtune_protocol::frame::{FrameReader, encode_frame_head};
use fedtune_protocol::tensor::f32_to_le_bytes;
use fedtune_protocol::{AgentMessage, AggregatorMessage, ErrorMessage, Limits, ProtocolError};

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

/// Reads one agent frame; the first `read_exact` waits for the agent, so a caller can
/// bound memory by taking a permit in `before_body` once the prefix arrived.
///
/// # Errors
/// [`WireError`] when the stream fails or the frame is invalid.
pub async fn read_agent_frame<T>(
    recv: &mut quinn::RecvStream,
    limits: Limits,
    before_body: impl AsyncFnOnce() -> T,
) -> Result<(AgentMessage, Vec<f32>, T), WireError> {
    let mut reader = FrameReader::new(limits);
    recv.read_exact(reader.buffer()).await?;
    let mut done = reader.advance()?;
    let guard = before_body().await;
    while !done {
        recv.read_exact(reader.buffer()).await?;
        done = reader.advance()?;
    }
    let (message, payload) = reader.finish()?;
    Ok((message, payload, guard))
}

/// Writes one frame whose payload is shared between many sends without copying.
///
/// # Errors
/// [`WireError`] when the stream fails or the message does not encode.
pub async fn write_frame_shared(
    send: &mut quinn::SendStream,
    message: &AggregatorMessage,
    payload: Bytes,
) -> Result<(), WireError> {
    let head = encode_frame_head(message, payload.len() as u64)?;
    send.write_all(&head).await?;
    if !payload.is_empty() {
        send.write_chunk(payload).await?;
    }
    Ok(())
}

/// Writes one frame with no payload.
///
/// # Errors
/// As [`write_frame_shared`].
pub async fn write_message(send: &mut quinn::SendStream, message: &AggregatorMessage) -> Result<(), WireError> {
    write_frame_shared(send, message, Bytes::new()).await
}

/// Answers a stream with an error and finishes it. Failures to deliver are ignored:
/// the peer may already be gone.
pub async fn reply_error(send: &mut quinn::SendStream, error: ErrorMessage) {
    let _ = write_message(send, &AggregatorMessage::Error(error)).await;
    let _ = send.finish();
}

/// Answers a stream with an error, then waits (briefly) until the peer has the bytes,
/// for when the connection is about to be closed and would otherwise drop the reply.
pub async fn reply_error_and_linger(send: &mut quinn::SendStream, error: ErrorMessage) {
    reply_error(send, error).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), send.stopped()).await;
}

/// Packs parameters as shareable wire bytes (one copy per round, not per agent).
pub fn params_to_bytes(params: &[f32]) -> Bytes {
    Bytes::from(f32_to_le_bytes(params).into_owned())
}

/// The error to send back for a frame that failed to decode.
pub fn error_for(err: &WireError) -> Option<ErrorMessage> {
    match err {
        WireError::Protocol(e) => Some(ErrorMessage::new(e.code(), e.to_string())),
        _ => None,
    }
}
