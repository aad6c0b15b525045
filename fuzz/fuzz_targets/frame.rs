//! A whole frame in one buffer (`decode_frame`) and its prefix on its own: never a
//! panic, and a frame that decodes re-encodes to bytes that decode to the same message
//! (compared as bytes: a NaN metric is not equal to itself).

#![no_main]

use fedtune_protocol::frame::{FramePrefix, Limits, PREFIX_LEN, decode_frame, encode_frame};
use fedtune_protocol::{AgentMessage, AggregatorMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(prefix) = data
        .get(..PREFIX_LEN)
        .and_then(|p| <&[u8; PREFIX_LEN]>::try_from(p).ok())
    {
        for limits in [Limits::default(), Limits::control()] {
            if let Ok(decoded) = FramePrefix::decode(prefix, &limits) {
                assert!(u64::from(decoded.header_len) <= u64::from(limits.max_header));
                assert!(decoded.payload_len <= limits.max_payload);
                assert_eq!(&decoded.encode(), prefix);
            }
        }
    }
    let limits = Limits::default();
    if let Ok((message, payload)) = decode_frame::<AgentMessage>(data, &limits) {
        let again = encode_frame(&message, payload).expect("a decoded message encodes");
        let (back, back_payload) = decode_frame::<AgentMessage>(&again, &limits).expect("and decodes again");
        assert_eq!(encode_frame(&back, back_payload).expect("encodes"), again);
    }
    if let Ok((message, payload)) = decode_frame::<AggregatorMessage>(data, &limits) {
        let again = encode_frame(&message, payload).expect("a decoded message encodes");
        let (back, back_payload) = decode_frame::<AggregatorMessage>(&again, &limits).expect("and decodes again");
        assert_eq!(encode_frame(&back, back_payload).expect("encodes"), again);
    }
});
