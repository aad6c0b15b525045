//! Frames over QUIC streams: the thin I/O driver around [`fedtune_protocol::frame`].

use fedtune_protocol::frame::{FrameReader, encode_frame_head};
use fedtune_protocol::tensor::f32_to_le_bytes;
use fedtune_protocol::{AgentMessage, AggregatorMessage, Limits, ProtocolError};

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

/// Reads one aggregator frame, its payload straight into an f32 buffer.
///
/// # Errors
/// [`WireError`] when the stream fails or the frame is invalid.
pub async fn read_frame(
    recv: &mut quinn::RecvStream,
    limits: Limits,
) -> Result<(AggregatorMessage, Vec<f32>), WireError> {
    let mut reader = FrameReader::new(limits);
    loop {
        recv.read_exact(reader.buffer()).await?;
        if reader.advance()? {
            break;
        }
    }
    Ok(reader.finish()?)
}

/// Writes one frame; the payload goes out from its buffer without an extra copy.
///
/// # Errors
/// [`WireError`] when the stream fails or the message does not encode.
pub async fn write_frame(
    send: &mut quinn::SendStream,
    message: &AgentMessage,
    payload: &[f32],
) -> Result<(), WireError> {
    let bytes = f32_to_le_bytes(payload);
    send.write_all(&encode_frame_head(message, bytes.len() as u64)?).await?;
    send.write_all(&bytes).await?;
    Ok(())
}
