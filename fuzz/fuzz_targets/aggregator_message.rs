//! Every message the aggregator can send, as an agent decodes a header: never a panic,
//! and what decodes re-encodes to a header that decodes to the same message. Tasks are
//! then checked as an agent checks them (model, freeze patterns, secure parameters).

#![no_main]

use fedtune_protocol::AggregatorMessage;
use fedtune_protocol::frame::{decode_header, encode_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = decode_header::<AggregatorMessage>(data) {
        let _ = message.name();
        let again = encode_header(&message).expect("a decoded message encodes");
        let back = decode_header::<AggregatorMessage>(&again).expect("and decodes");
        // As bytes: a NaN metric is not equal to itself.
        assert_eq!(encode_header(&back).expect("encodes"), again);
        if let AggregatorMessage::Task(task) = &message {
            if task.model.validate().is_ok() {
                let _ = task.trainable();
            }
            if let Some(secure) = &task.secure {
                let _ = secure.validate();
            }
            let _ = task.hyperparameters.validate();
        }
    }
});
