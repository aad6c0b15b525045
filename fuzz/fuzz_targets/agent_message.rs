//! Every message an agent can send, as the aggregator decodes a header: never a panic,
//! and what decodes re-encodes to a header that decodes to the same message.

#![no_main]

use fedtune_protocol::AgentMessage;
use fedtune_protocol::frame::{decode_header, encode_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = decode_header::<AgentMessage>(data) {
        let _ = message.name();
        let again = encode_header(&message).expect("a decoded message encodes");
        let back = decode_header::<AgentMessage>(&again).expect("and decodes");
        // As bytes: a NaN metric is not equal to itself.
        assert_eq!(encode_header(&back).expect("encodes"), again);
    }
});
