//! The incremental reader that drives every QUIC stream: the input is cut at points the
//! fuzzer picks, as a network would deliver it. Never a panic, never an allocation past
//! the limits, and the same answer as decoding the frame in one piece.

#![no_main]

use fedtune_protocol::frame::{FrameReader, Limits, decode_frame};
use fedtune_protocol::{AgentMessage, AggregatorMessage};
use libfuzzer_sys::fuzz_target;

/// Small enough that the fuzzer does not spend its time filling gigabyte buffers.
const LIMITS: Limits = Limits {
    max_header: 1 << 16,
    max_payload: 1 << 20,
};

/// Feeds `input` to a reader; `None` when the input runs out before the frame is whole.
fn read<M: serde::de::DeserializeOwned>(
    mut input: &[u8],
) -> Option<(Result<(M, Vec<f32>), fedtune_protocol::ProtocolError>, usize)> {
    let mut reader = FrameReader::new(LIMITS);
    let mut used = 0;
    loop {
        let buffer = reader.buffer();
        let n = buffer.len();
        assert!(n as u64 <= u64::from(LIMITS.max_header).max(LIMITS.max_payload).max(32));
        let chunk = input.get(..n)?;
        buffer.copy_from_slice(chunk);
        input = &input[n..];
        used += n;
        match reader.advance() {
            Ok(true) => return Some((reader.finish::<M>(), used)),
            Ok(false) => {}
            Err(e) => return Some((Err(e), used)),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some((Ok((message, payload)), used)) = read::<AgentMessage>(data) {
        // The one-piece decoder agrees on the frame the reader consumed.
        let (whole, raw) = decode_frame::<AgentMessage>(&data[..used], &LIMITS).expect("the same frame decodes whole");
        let bytes = |m: &AgentMessage| fedtune_protocol::frame::encode_header(m).expect("encodes");
        assert_eq!(bytes(&whole), bytes(&message));
        assert_eq!(raw.len(), payload.len() * 4);
    }
    let _ = read::<AggregatorMessage>(data);
});
