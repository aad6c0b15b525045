//! Property and edge-case tests for every encoder/decoder in the protocol.

use fedtune_protocol::frame::{
    FramePrefix, Limits, MAX_HEADER_LEN, PREFIX_LEN, decode_frame, decode_header, encode_frame, encode_header,
};
use fedtune_protocol::tensor::{check_finite, f32_from_le_bytes, f32_to_le_bytes};
use fedtune_protocol::*;
use proptest::prelude::*;

fn task(trial: u64, round: u64, hidden: Vec<usize>, lr: f64) -> AggregatorMessage {
    let model = ModelSpec::Mlp(MlpSpec {
        input: 64,
        hidden,
        classes: 10,
    });
    AggregatorMessage::Task(Task {
        study: "digits".into(),
        trial,
        round,
        manifest_hash: model.manifest().hash(),
        model,
        hyperparameters: ClientHyperparameters {
            learning_rate: lr,
            ..Default::default()
        },
        deadline_ms: 60_000,
        seed: 7,
        measure_train_loss: round.is_multiple_of(2),
        secure: None,
        frozen: vec!["convs.*".into()],
        base: Some(7),
        classes: vec!["cat".into(), "dog".into()],
    })
}

fn update(samples: u64, loss: f64, name_len: usize) -> AgentMessage {
    AgentMessage::Update(Update {
        trial: 1,
        round: 2,
        manifest_hash: ManifestHash([3; 32]),
        num_samples: samples,
        metrics: TrainMetrics {
            loss_before: loss,
            train_loss_before: name_len.is_multiple_of(3).then_some(loss / 2.0),
            accuracy_after: 0.5,
            ..Default::default()
        },
        used: ClientHyperparameters::default(),
        proposal: name_len.is_multiple_of(2).then(ClientHyperparameters::default),
        replayed: false,
    })
}

proptest! {
    #[test]
    fn task_frames_round_trip(trial in any::<u64>(), round in any::<u64>(),
                              hidden in prop::collection::vec(1usize..512, 0..4),
                              lr in 1e-6f64..1.0,
                              payload in prop::collection::vec(any::<u8>(), 0..2048)) {
        let msg = task(trial, round, hidden, lr);
        let bytes = encode_frame(&msg, &payload).unwrap();
        let (back, body) = decode_frame::<AggregatorMessage>(&bytes, &Limits::default()).unwrap();
        prop_assert_eq!(back, msg);
        prop_assert_eq!(body, &payload[..]);
    }

    #[test]
    fn update_frames_round_trip(samples in any::<u64>(), loss in -1e6f64..1e6, n in 0usize..10,
                                params in prop::collection::vec(-1e3f32..1e3, 0..512)) {
        let msg = update(samples, loss, n);
        let bytes = encode_frame(&msg, &f32_to_le_bytes(&params)).unwrap();
        let (back, body) = decode_frame::<AgentMessage>(&bytes, &Limits::default()).unwrap();
        prop_assert_eq!(back, msg);
        prop_assert_eq!(f32_from_le_bytes(body).unwrap(), params);
    }

    #[test]
    fn every_truncation_is_an_error(cut in 0usize..200, payload in prop::collection::vec(any::<u8>(), 0..64)) {
        let bytes = encode_frame(&update(5, 0.1, 1), &payload).unwrap();
        let cut = cut.min(bytes.len() - 1);
        prop_assert!(decode_frame::<AgentMessage>(&bytes[..cut], &Limits::default()).is_err());
    }

    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_frame::<AgentMessage>(&bytes, &Limits::default());
        let _ = decode_frame::<AggregatorMessage>(&bytes, &Limits::default());
        let _ = decode_header::<AgentMessage>(&bytes);
        let _ = decode_header::<AggregatorMessage>(&bytes);
    }

    #[test]
    fn garbage_after_a_valid_prefix_never_panics(header in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut bytes = FramePrefix { header_len: header.len() as u32, payload_len: 0 }.encode().to_vec();
        bytes.extend_from_slice(&header);
        let _ = decode_frame::<AgentMessage>(&bytes, &Limits::default());
        let _ = decode_frame::<AggregatorMessage>(&bytes, &Limits::default());
    }

    #[test]
    fn f32_bytes_round_trip(values in prop::collection::vec(any::<f32>(), 0..256)) {
        let back = f32_from_le_bytes(&f32_to_le_bytes(&values)).unwrap();
        prop_assert_eq!(back.len(), values.len());
        for (a, b) in back.iter().zip(&values) {
            prop_assert_eq!(a.to_bits(), b.to_bits());
        }
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    let mut bytes = encode_frame(&update(1, 0.0, 0), &[1, 2, 3, 4]).unwrap();
    bytes.push(0);
    assert!(matches!(
        decode_frame::<AgentMessage>(&bytes, &Limits::default()),
        Err(ProtocolError::TrailingBytes(1))
    ));

    let mut header = encode_header(&update(1, 0.0, 0)).unwrap();
    header.extend_from_slice(&[9, 9]);
    assert!(matches!(
        decode_header::<AgentMessage>(&header),
        Err(ProtocolError::TrailingBytes(2))
    ));
}

#[test]
fn oversized_length_prefixes_are_rejected_before_reading() {
    let limits = Limits {
        max_header: 1024,
        max_payload: 4096,
    };
    let prefix = FramePrefix {
        header_len: 10,
        payload_len: u64::MAX,
    }
    .encode();
    assert!(matches!(
        FramePrefix::decode(&prefix, &limits),
        Err(ProtocolError::TooLarge {
            what: "frame payload",
            len: u64::MAX,
            limit: 4096
        })
    ));
    let prefix = FramePrefix {
        header_len: u32::MAX,
        payload_len: 0,
    }
    .encode();
    assert!(matches!(
        FramePrefix::decode(&prefix, &limits),
        Err(ProtocolError::TooLarge {
            what: "frame header",
            ..
        })
    ));
    // Even a receiver that asks for more never accepts a header above the hard ceiling.
    let generous = Limits {
        max_header: u32::MAX,
        max_payload: 0,
    };
    let prefix = FramePrefix {
        header_len: MAX_HEADER_LEN + 1,
        payload_len: 0,
    }
    .encode();
    assert!(FramePrefix::decode(&prefix, &generous).is_err());
}

#[test]
fn wrong_magic_and_version_are_rejected() {
    let mut prefix = FramePrefix {
        header_len: 1,
        payload_len: 0,
    }
    .encode();
    prefix[0] = b'X';
    assert!(matches!(
        FramePrefix::decode(&prefix, &Limits::default()),
        Err(ProtocolError::BadMagic(_))
    ));

    let mut prefix = FramePrefix {
        header_len: 1,
        payload_len: 0,
    }
    .encode();
    prefix[4..6].copy_from_slice(&99u16.to_le_bytes());
    assert_eq!(
        FramePrefix::decode(&prefix, &Limits::default()),
        Err(ProtocolError::UnsupportedVersion {
            got: 99,
            supported: PROTOCOL_VERSION
        })
    );
    assert_eq!(PREFIX_LEN, prefix.len());
}

#[test]
fn a_message_of_the_other_direction_does_not_decode_silently_as_a_valid_one() {
    let bytes = encode_header(&AggregatorMessage::Shutdown(Shutdown { reason: "bye".into() })).unwrap();
    // Variant 4 does not exist in AgentMessage: decoding must fail, not guess.
    assert!(decode_header::<AgentMessage>(&bytes).is_err());
}

#[test]
fn interrupted_is_appended_and_leaves_the_shutdown_encoding_as_older_agents_read_it() {
    // Shutdown is variant 8, its reason a length-prefixed string: the bytes every agent of
    // this protocol version decodes. Interrupted comes after it, as variant 9.
    let shutdown = encode_header(&AggregatorMessage::Shutdown(Shutdown { reason: "bye".into() })).unwrap();
    assert_eq!(shutdown, [8, 3, b'b', b'y', b'e']);
    let interrupted = AggregatorMessage::Interrupted(Interrupted {
        reason: "SIGTERM".into(),
    });
    let bytes = encode_header(&interrupted).unwrap();
    assert_eq!(bytes[..2], [9, 7]);
    assert_eq!(decode_header::<AggregatorMessage>(&bytes).unwrap(), interrupted);
    assert_eq!(interrupted.name(), "Interrupted");
    // A variant past the last is refused, not mistaken for one.
    assert!(decode_header::<AggregatorMessage>(&[10, 0]).is_err());
}

#[test]
fn manifest_hash_identifies_architecture() {
    let a = ModelSpec::Mlp(MlpSpec {
        input: 64,
        hidden: vec![32],
        classes: 10,
    });
    let b = ModelSpec::Mlp(MlpSpec {
        input: 64,
        hidden: vec![33],
        classes: 10,
    });
    let c = ModelSpec::Mlp(MlpSpec {
        input: 64,
        hidden: vec![32],
        classes: 10,
    });
    assert_eq!(a.manifest().hash(), c.manifest().hash());
    assert_ne!(a.manifest().hash(), b.manifest().hash());
    assert_eq!(a.manifest().numel(), 64 * 32 + 32 + 32 * 10 + 10);
}

#[test]
fn model_specs_are_validated() {
    let bad = ModelSpec::Mlp(MlpSpec {
        input: 64,
        hidden: vec![0],
        classes: 10,
    });
    assert!(matches!(bad.validate(), Err(ProtocolError::InvalidModel(_))));
    let dup = ModelSpec::Custom(CustomSpec {
        name: "x".into(),
        manifest: Manifest {
            tensors: vec![TensorSpec::new("w", vec![2]), TensorSpec::new("w", vec![3])],
        },
    });
    assert!(dup.validate().is_err());
    let huge = ModelSpec::Custom(CustomSpec {
        name: "x".into(),
        manifest: Manifest {
            tensors: vec![TensorSpec::new("w", vec![usize::MAX, 2])],
        },
    });
    assert!(huge.validate().is_err());
}

#[test]
fn init_params_are_seeded_and_bounded() {
    use rand::SeedableRng;
    let spec = ModelSpec::Mlp(MlpSpec {
        input: 16,
        hidden: vec![8],
        classes: 4,
    });
    let a = spec.init_params(&mut rand::rngs::StdRng::seed_from_u64(1));
    let b = spec.init_params(&mut rand::rngs::StdRng::seed_from_u64(1));
    assert_eq!(a, b);
    assert_eq!(a.len(), spec.manifest().numel());
    assert!(a[..16 * 8 + 8].iter().all(|v| v.abs() <= 0.25));
}

#[test]
fn non_finite_values_are_located() {
    let mut v = vec![0.5f32; 10_000];
    assert_eq!(check_finite(&v), Ok(()));
    v[7777] = f32::NAN;
    assert_eq!(check_finite(&v), Err(ProtocolError::NonFinite { index: 7777 }));
    v[7777] = 0.0;
    v[3] = f32::NEG_INFINITY;
    assert_eq!(check_finite(&v), Err(ProtocolError::NonFinite { index: 3 }));
    assert!(f32_from_le_bytes(&[0, 0, 0]).is_err());
}

#[test]
fn hyperparameters_are_validated() {
    assert!(ClientHyperparameters::default().validate().is_ok());
    let bad = ClientHyperparameters {
        learning_rate: f64::NAN,
        ..Default::default()
    };
    assert_eq!(bad.validate().unwrap_err().name, "learning_rate");
    let bad = ClientHyperparameters {
        batch_size: 0,
        ..Default::default()
    };
    assert_eq!(bad.validate().unwrap_err().name, "batch_size");
}

/// Feeds `wire` to a [`FrameReader`] the way a stream driver does.
fn read_incrementally<M: serde::de::DeserializeOwned>(
    wire: &[u8],
    limits: Limits,
) -> Result<(M, Vec<f32>), ProtocolError> {
    let mut reader = FrameReader::new(limits);
    let mut input = wire;
    loop {
        let buf = reader.buffer();
        let n = buf.len();
        if input.len() < n {
            return Err(ProtocolError::Truncated {
                expected: n as u64,
                got: input.len() as u64,
            });
        }
        buf.copy_from_slice(&input[..n]);
        input = &input[n..];
        if reader.advance()? {
            break;
        }
    }
    reader.finish()
}

proptest! {
    #[test]
    fn frame_reader_matches_whole_frame_decoding(samples in any::<u64>(),
                                                 params in prop::collection::vec(-1e3f32..1e3, 0..300)) {
        let msg = update(samples, 0.5, 3);
        let wire = encode_frame(&msg, &f32_to_le_bytes(&params)).unwrap();
        let (back, payload) = read_incrementally::<AgentMessage>(&wire, Limits::default()).unwrap();
        prop_assert_eq!(back, msg);
        prop_assert_eq!(payload, params);
    }

    #[test]
    fn frame_reader_survives_garbage(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = read_incrementally::<AgentMessage>(&bytes, Limits { max_header: 1024, max_payload: 1 << 16 });
    }
}

#[test]
fn frame_reader_refuses_oversized_payload_before_allocating() {
    let wire = FramePrefix {
        header_len: 4,
        payload_len: 1 << 40,
    }
    .encode();
    let err = read_incrementally::<AgentMessage>(
        &wire,
        Limits {
            max_header: 1024,
            max_payload: 1 << 20,
        },
    );
    assert!(matches!(
        err,
        Err(ProtocolError::TooLarge {
            what: "frame payload",
            ..
        })
    ));
    let wire = FramePrefix {
        header_len: 4,
        payload_len: 6,
    }
    .encode();
    assert!(matches!(
        read_incrementally::<AgentMessage>(&wire, Limits::default()),
        Err(ProtocolError::Malformed(_))
    ));
}

/// Found by the `frame` fuzz target: a prefix with its reserved bytes set decoded as if
/// they were zero, so a frame from a peer that meant something by them was read silently.
/// Now such a prefix is refused.
#[test]
fn fuzz_regression_reserved_prefix_bytes_are_refused() {
    let mut crash: [u8; 37] = [
        70, 68, 84, 78, 6, 0, 87, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 248, 248, 248, 10, 248, 248, 6, 0, 0, 0, 0,
        0, 0, 0, 6, 248,
    ];
    // Found at protocol version 6; the version field follows the protocol.
    crash[4..6].copy_from_slice(&fedtune_protocol::PROTOCOL_VERSION.to_le_bytes());
    let prefix: &[u8; PREFIX_LEN] = crash[..PREFIX_LEN].try_into().unwrap();
    let err = FramePrefix::decode(prefix, &Limits::default()).unwrap_err();
    assert!(
        matches!(&err, ProtocolError::Malformed(why) if why.contains("reserved")),
        "{err}"
    );
    // The same prefix with the reserved bytes cleared is read.
    let mut cleared = *prefix;
    cleared[6] = 0;
    assert!(FramePrefix::decode(&cleared, &Limits::default()).is_ok());
}

/// Found by the `aggregator_message` fuzz target at protocol version 6: a 115-byte task
/// whose transformer asked for billions of layers (4,294,967,292) made the agent build a
/// manifest until it ran out of memory, while validating it. The layer count is now
/// bounded before the manifest is built. The task is built here with the crash's model,
/// since the wire layout of tasks has grown since.
#[test]
fn fuzz_regression_a_task_cannot_ask_for_billions_of_layers() {
    let AggregatorMessage::Task(mut task) = task(1, 0, vec![], 0.1) else {
        panic!("a task")
    };
    task.model = ModelSpec::Transformer(TransformerSpec {
        max_len: 3,
        vocab: 49,
        d_model: 3,
        heads: 3,
        layers: 4_294_967_292,
        d_ff: 3,
        classes: 3,
        dropout: 0.0,
    });
    let bytes = encode_header(&AggregatorMessage::Task(task)).unwrap();
    let AggregatorMessage::Task(task) = decode_header::<AggregatorMessage>(&bytes).unwrap() else {
        panic!("the input is a task")
    };
    let err = task.model.validate().unwrap_err();
    assert!(err.to_string().contains("transformer layers must be at most"), "{err}");
}
