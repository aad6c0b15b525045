//! The aggregator's error replies on a stream; frames themselves move through
//! [`fedtune_protocol::wire`].

use std::time::Duration;

use fedtune_protocol::wire::write_message;
use fedtune_protocol::{AggregatorMessage, ErrorMessage};

/// How long a reply before a connection closes waits for the peer to have its bytes.
const LINGER: Duration = Duration::from_secs(2);

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
    let _ = tokio::time::timeout(LINGER, send.stopped()).await;
}
