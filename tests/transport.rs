//! The aggregator's handling of hostile or broken peers, over real QUIC on 127.0.0.1.

mod common;

use std::sync::Arc;

use common::*;
use fedtune::agent::client::client_endpoint;
use fedtune::agent::tls::{client_config, client_config_without_certificate, default_transport};
use fedtune::aggregator::Hooks;
use fedtune::federation::FailureReason;
use fedtune::protocol::frame::{FramePrefix, Limits, encode_frame};
use fedtune::protocol::wire::read_frame;
use fedtune::protocol::{
    Ack, AgentMessage, AggregatorMessage, Capabilities, ErrorCode, ErrorMessage, Hello, ManifestHash, PROTOCOL_VERSION,
    TrainMetrics, Update,
};

/// A raw QUIC connection as agent `i` (or without a certificate).
async fn connect(fed: &Federation, agent: Option<usize>) -> quinn::Connection {
    match agent {
        Some(i) => {
            let identity = &fed.pki.agents[i].1;
            connect_as(fed, &identity.cert_pem, &identity.key_pem).await.unwrap()
        }
        None => {
            let transport = Arc::new(default_transport(false));
            let tls = client_config_without_certificate(&fed.pki.ca_cert_pem, transport).unwrap();
            let endpoint = client_endpoint(tls, fed.addr, false).unwrap();
            endpoint.connect(fed.addr, "localhost").unwrap().await.unwrap()
        }
    }
}

/// A raw QUIC connection presenting this certificate, trusting the federation's CA.
async fn connect_as(
    fed: &Federation,
    cert_pem: &str,
    key_pem: &str,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let transport = Arc::new(default_transport(false));
    let tls = client_config(&fed.pki.ca_cert_pem, cert_pem, key_pem, transport).unwrap();
    let endpoint = client_endpoint(tls, fed.addr, false).unwrap();
    endpoint.connect(fed.addr, "localhost").unwrap().await
}

/// Whether the aggregator serves this connection: TLS 1.3 lets the client finish its
/// handshake first, so a refused certificate shows on the first stream.
async fn served(connection: &quinn::Connection) -> bool {
    matches!(
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            let (mut send, mut recv) = connection.open_bi().await?;
            let hello = AgentMessage::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                name: "probe".into(),
                capabilities: Capabilities::default(),
            });
            send.write_all(&encode_frame(&hello, &[]).unwrap()).await?;
            send.finish()?;
            recv.read_to_end(1 << 20).await?;
            anyhow::Ok(())
        })
        .await,
        Ok(Ok(()))
    )
}

/// Sends `bytes` on a new stream and reads the aggregator's answer frame.
async fn exchange(connection: &quinn::Connection, bytes: &[u8]) -> AggregatorMessage {
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    let _ = send.finish();
    let reply = recv.read_to_end(1 << 20).await.unwrap();
    let (message, _) = fedtune::protocol::frame::decode_frame::<AggregatorMessage>(&reply, &Limits::default()).unwrap();
    message
}

async fn hello(connection: &quinn::Connection) -> AggregatorMessage {
    let hello = AgentMessage::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        name: "raw".into(),
        capabilities: Capabilities::default(),
    });
    exchange(connection, &encode_frame(&hello, &[]).unwrap()).await
}

fn error_code(message: AggregatorMessage) -> ErrorCode {
    match message {
        AggregatorMessage::Error(e) => e.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_frames_get_an_error_and_the_service_goes_on() {
    let fed = start_aggregator(3, config(2, 1), Hooks::default());
    let connection = connect(&fed, Some(0)).await;
    match hello(&connection).await {
        AggregatorMessage::Welcome(w) => assert_eq!(w.agent_id, "agent-0"),
        other => panic!("expected Welcome, got {other:?}"),
    }

    // Garbage.
    assert_eq!(
        error_code(exchange(&connection, b"GET / HTTP/1.1\r\n\r\nxxxxxxxxxxxxxxxx").await),
        ErrorCode::Malformed
    );
    // A length prefix announcing a terabyte.
    let huge = FramePrefix {
        header_len: 16,
        payload_len: 1 << 40,
    }
    .encode();
    assert_eq!(error_code(exchange(&connection, &huge).await), ErrorCode::TooLarge);
    // A header that is not a message.
    let mut bad_header = FramePrefix {
        header_len: 4,
        payload_len: 0,
    }
    .encode()
    .to_vec();
    bad_header.extend_from_slice(&[0xff; 4]);
    assert_eq!(
        error_code(exchange(&connection, &bad_header).await),
        ErrorCode::Malformed
    );
    // Another protocol version.
    let mut other_version = encode_frame(
        &AgentMessage::Error(fedtune::protocol::ErrorMessage::new(ErrorCode::Internal, "x")),
        &[],
    )
    .unwrap();
    other_version[4] = 9;
    assert_eq!(
        error_code(exchange(&connection, &other_version).await),
        ErrorCode::UnsupportedVersion
    );
    // An update nobody asked for.
    let update = AgentMessage::Update(Update {
        trial: 0,
        round: 7,
        manifest_hash: ManifestHash([0; 32]),
        num_samples: 10,
        metrics: TrainMetrics::default(),
        used: Default::default(),
        proposal: None,
        replayed: false,
    });
    let frame = encode_frame(&update, &[0u8; 16]).unwrap();
    assert_eq!(error_code(exchange(&connection, &frame).await), ErrorCode::NotInRound);

    // The service is unharmed: a real federation still runs to the end on it.
    let data = digits();
    let mut agents = start_agents(&fed, digits_trainers(&data, 2));
    let report = fed.aggregator.await.unwrap().unwrap();
    assert_eq!(report.rounds.len(), 1);
    assert!(report.rounds[0].updates >= 1);
    while agents.join_next().await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_hello_is_answered_and_the_connection_dropped() {
    let fed = start_aggregator(2, config(1, 1), Hooks::default());
    let connection = connect(&fed, Some(1)).await;
    let mut bad_magic = encode_frame(
        &AgentMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            name: "x".into(),
            capabilities: Capabilities::default(),
        }),
        &[],
    )
    .unwrap();
    bad_magic[0] = b'Z';
    assert_eq!(
        error_code(exchange(&connection, &bad_magic).await),
        ErrorCode::Malformed
    );
    let hello_next = AgentMessage::Hello(Hello {
        protocol_version: PROTOCOL_VERSION + 1,
        name: "x".into(),
        capabilities: Capabilities::default(),
    });
    let connection = connect(&fed, Some(1)).await;
    assert_eq!(
        error_code(exchange(&connection, &encode_frame(&hello_next, &[]).unwrap()).await),
        ErrorCode::UnsupportedVersion
    );
    let _ = fed.stop.send(true);
    let report = fed.aggregator.await.unwrap().unwrap();
    assert!(report.interrupted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_a_certificate_is_refused() {
    let fed = start_aggregator(1, config(1, 1), Hooks::default());
    let connection = connect(&fed, None).await;
    // TLS 1.3 lets the client finish first; the refusal shows on the first stream.
    let refused = async {
        let (mut send, mut recv) = connection.open_bi().await?;
        send.write_all(b"hello?").await?;
        send.finish()?;
        recv.read_to_end(1024).await?;
        anyhow::Ok(())
    }
    .await;
    // Depending on timing the client sees the TLS alert or the closed connection.
    refused.expect_err("a client without a certificate must not be served");
    let _ = fed.stop.send(true);
    let report = fed.aggregator.await.unwrap().unwrap();
    assert!(
        report.interrupted && report.rounds.is_empty(),
        "no round ran without an authenticated agent"
    );
}

/// Certificates from a foreign CA, expired or not yet valid are refused at the TLS
/// handshake; the federation's own certificate is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_expired_and_future_certificates_are_refused_at_the_handshake() {
    use fedtune::aggregator::identity::issue_agent_dated;
    let fed = start_aggregator(1, config(1, 1), Hooks::default());
    let today = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400) as i64;
    let (ca, key) = (&fed.pki.ca_cert_pem, fed.pki.ca_key_pem.as_str());
    let expired = issue_agent_dated(ca, key, "agent-0", today - 6 * 365).unwrap();
    let future = issue_agent_dated(ca, key, "agent-0", today + 30).unwrap();
    let foreign = fedtune::sim::ephemeral_pki(1).unwrap();
    let (_, stranger) = &foreign.agents[0];
    for (what, cert, key) in [
        ("expired", &expired.cert_pem, &expired.key_pem),
        ("not yet valid", &future.cert_pem, &future.key_pem),
        ("foreign CA", &stranger.cert_pem, &stranger.key_pem),
    ] {
        let refused = match connect_as(&fed, cert, key).await {
            Ok(connection) => !served(&connection).await,
            Err(_) => true,
        };
        assert!(refused, "a {what} certificate was served");
    }
    let (_, own) = &fed.pki.agents[0];
    let connection = connect_as(&fed, &own.cert_pem, &own.key_pem).await.unwrap();
    assert!(served(&connection).await, "the federation's own certificate is served");
    let _ = fed.stop.send(true);
    let _ = fed.aggregator.await.unwrap().unwrap();
}

/// An agent that opens streams and never finishes them is disconnected once past its
/// allowance, with the reason in the close frame; the round then completes from the
/// honest agents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_opens_streams_and_never_finishes_them_is_disconnected() {
    use fedtune::aggregator::registry::CLOSE_MISBEHAVING;
    let fed = start_aggregator(3, config(2, 1), Hooks::default());
    let rogue = connect(&fed, Some(2)).await;
    assert!(matches!(hello(&rogue).await, AggregatorMessage::Welcome(_)));
    let mut open = Vec::new();
    for _ in 0..9 {
        let Ok((mut send, recv)) = rogue.open_bi().await else {
            break;
        };
        // The first bytes of a frame prefix, and then nothing.
        if send.write_all(b"FDTN").await.is_err() {
            break;
        }
        open.push((send, recv));
    }
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), rogue.closed())
        .await
        .expect("the aggregator closes the connection");
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, CLOSE_MISBEHAVING.into());
            let reason = String::from_utf8_lossy(&close.reason);
            assert!(reason.contains("unsolicited streams"), "{reason}");
        }
        other => panic!("expected the aggregator to close the connection, got {other}"),
    }
    // The allowance is the agent's, not the connection's: back at once, it is welcomed,
    // and its first stream of its own ends the new connection too.
    let again = connect(&fed, Some(2)).await;
    assert!(matches!(hello(&again).await, AggregatorMessage::Welcome(_)));
    let (mut send, _recv) = again.open_bi().await.unwrap();
    let _ = send.write_all(b"FDTN").await;
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), again.closed())
        .await
        .expect("the aggregator closes the new connection");
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == CLOSE_MISBEHAVING.into()),
        "{closed}"
    );
    let data = digits();
    let mut agents = start_agents(&fed, digits_trainers(&data, 2));
    let report = fed.aggregator.await.unwrap().unwrap();
    assert!(report.rounds[0].applied && report.rounds[0].updates == 2);
    while agents.join_next().await.is_some() {}
}

/// A burst of connections past `max_agents` is refused; the connections that took the
/// slots but never say hello are dropped after the hello timeout, and the round then
/// completes from the honest agents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_connections_past_the_limit_is_refused_and_the_round_completes() {
    let mut cfg = config(2, 1);
    cfg.federation.max_agents = 3;
    let fed = start_aggregator(3, cfg, Hooks::default());
    let (_, identity) = &fed.pki.agents[2];
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..8 {
        match connect_as(&fed, &identity.cert_pem, &identity.key_pem).await {
            Ok(connection) => held.push(connection),
            Err(_) => refused += 1,
        }
    }
    assert_eq!((held.len(), refused), (3, 5), "three slots, five refused");
    // Honest agents keep retrying (backing off up to 5 s) until the slots free up.
    let data = digits();
    let keep_trying = |_: usize, options: &mut fedtune::agent::client::AgentOptions| {
        options.reconnect.max_attempts = None;
    };
    let trainers = digits_trainers(&data, 2);
    let mut agents =
        fedtune::sim::spawn_agents_with(&fed.pki, fed.addr, trainers, false, fed.stop.subscribe(), keep_trying)
            .unwrap();
    let report = fed.aggregator.await.unwrap().unwrap();
    assert!(report.rounds[0].applied && report.rounds[0].updates == 2);
    while agents.join_next().await.is_some() {}
    drop(held);
}

/// Truncated and tampered frames are answered with a clear error and count against the
/// sender's allowance; the service goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_tampered_frames_are_clear_errors() {
    let fed = start_aggregator(3, config(2, 1), Hooks::default());
    let connection = connect(&fed, Some(2)).await;
    assert!(matches!(hello(&connection).await, AggregatorMessage::Welcome(_)));
    let update = AgentMessage::Update(Update {
        trial: 0,
        round: 0,
        manifest_hash: ManifestHash([0; 32]),
        num_samples: 10,
        metrics: TrainMetrics::default(),
        used: Default::default(),
        proposal: None,
        replayed: false,
    });
    let frame = encode_frame(&update, &[0u8; 64]).unwrap();
    // Cut short: the stream ends inside the payload.
    let truncated = &frame[..frame.len() - 10];
    let AggregatorMessage::Error(e) = exchange(&connection, truncated).await else {
        panic!("a truncated frame must be an error")
    };
    assert_eq!(e.code, ErrorCode::Malformed, "{}", e.message);
    // One bit flipped in the header.
    let mut tampered = frame.clone();
    tampered[fedtune::protocol::frame::PREFIX_LEN + 3] ^= 0x40;
    let AggregatorMessage::Error(e) = exchange(&connection, &tampered).await else {
        panic!("a tampered frame must be an error")
    };
    assert!(matches!(e.code, ErrorCode::Malformed | ErrorCode::NotInRound), "{e:?}");
    let _ = fed.stop.send(true);
    let _ = fed.aggregator.await.unwrap().unwrap();
}

/// What the hostile agent sent in one round, and what the aggregator answered.
struct Answered {
    round: u64,
    sent: Update,
    reply: AggregatorMessage,
}

/// Agent 2 answers the tasks of three rounds by hand: round 0 with a valid (zero) update,
/// which it then replays on a stream of its own; round 1 with round 0's frame replayed
/// verbatim; round 2 with an update for another trial. Each replay and misaddressed update
/// is refused with `NotInRound`, and every round completes from the two honest agents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_and_misaddressed_updates_are_refused_and_the_rounds_complete() {
    let fed = start_aggregator(3, config(3, 3), Hooks::default());
    let data = digits();
    let mut honest = start_agents(&fed, digits_trainers(&data, 2));
    let connection = connect(&fed, Some(2)).await;
    let hello = AgentMessage::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        name: "hostile".into(),
        capabilities: Capabilities {
            train_samples: 100,
            ..Capabilities::default()
        },
    });
    assert!(matches!(
        exchange(&connection, &encode_frame(&hello, &[]).unwrap()).await,
        AggregatorMessage::Welcome(_)
    ));

    let mut answered = Vec::new();
    let mut first: Option<(Update, Vec<u8>)> = None;
    let mut replayed_alone = None;
    // Served until the aggregator says it is shutting down.
    loop {
        let Ok((mut send, mut recv)) = connection.accept_bi().await else {
            break;
        };
        let (message, payload) = read_frame::<AggregatorMessage>(&mut recv, Limits::default())
            .await
            .unwrap();
        let task = match message {
            AggregatorMessage::Task(task) => task,
            AggregatorMessage::Evaluate(_) => {
                let no = AgentMessage::Error(ErrorMessage::new(ErrorCode::Unexpected, "not evaluating"));
                send.write_all(&encode_frame(&no, &[]).unwrap()).await.unwrap();
                let _ = send.finish();
                continue;
            }
            AggregatorMessage::Shutdown(_) => {
                connection.close(0u32.into(), b"bye");
                break;
            }
            other => panic!("unexpected {other:?}"),
        };
        // A zero delta, laid out as the task's model.
        let zeros = vec![0u8; payload.len() * 4];
        let (update, frame) = match (task.round, &first) {
            (0, _) => {
                let update = Update {
                    trial: task.trial,
                    round: task.round,
                    manifest_hash: task.manifest_hash,
                    num_samples: 100,
                    metrics: TrainMetrics::default(),
                    used: task.hyperparameters.clone(),
                    proposal: None,
                    replayed: false,
                };
                let frame = encode_frame(&AgentMessage::Update(update.clone()), &zeros).unwrap();
                first = Some((update.clone(), frame.clone()));
                (update, frame)
            }
            (1, Some((update, frame))) => (update.clone(), frame.clone()),
            (_, Some((update, _))) => {
                let other_trial = Update {
                    trial: task.trial + 7,
                    round: task.round,
                    ..update.clone()
                };
                let frame = encode_frame(&AgentMessage::Update(other_trial.clone()), &zeros).unwrap();
                (other_trial, frame)
            }
            (_, None) => panic!("round {} came before round 0", task.round),
        };
        send.write_all(&frame).await.unwrap();
        let (reply, _) = read_frame::<AggregatorMessage>(&mut recv, Limits::default())
            .await
            .unwrap();
        if task.round == 0 {
            // The accepted update, sent again on a stream the agent opens itself.
            replayed_alone = Some(exchange(&connection, &frame).await);
        }
        let _ = send.finish();
        answered.push(Answered {
            round: task.round,
            sent: update,
            reply,
        });
    }
    let report = fed.aggregator.await.unwrap().unwrap();
    while honest.join_next().await.is_some() {}

    assert!(matches!(
        answered[0].reply,
        AggregatorMessage::Ack(Ack { trial: 0, round: 0 })
    ));
    let AggregatorMessage::Error(alone) = replayed_alone.unwrap() else {
        panic!("a replay outside an exchange must be refused")
    };
    assert_eq!(alone.code, ErrorCode::NotInRound, "{}", alone.message);
    for a in &answered[1..] {
        let AggregatorMessage::Error(e) = &a.reply else {
            panic!("round {}: {:?} must be refused, got {:?}", a.round, a.sent, a.reply)
        };
        assert_eq!(e.code, ErrorCode::NotInRound, "{}", e.message);
        assert!(
            e.message
                .contains(&format!("trial {} round {}", a.sent.trial, a.sent.round)),
            "{}",
            e.message
        );
    }
    assert_eq!(answered.len(), 3);
    assert_eq!(report.rounds.len(), 3);
    for (round, record) in report.rounds.iter().enumerate() {
        assert!(record.applied, "round {round} completes");
        let hostile_refused = record
            .failures
            .iter()
            .any(|f| matches!(&f.reason, FailureReason::Refused(e) if e.code == ErrorCode::NotInRound));
        assert_eq!(record.updates, if round == 0 { 3 } else { 2 }, "round {round}");
        assert_eq!(hostile_refused, round > 0, "round {round}: {:?}", record.failures);
    }
}
