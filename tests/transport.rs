//! The aggregator's handling of hostile or broken peers, over real QUIC on 127.0.0.1.

mod common;

use std::sync::Arc;

use common::*;
use fedtune::agent::client::client_endpoint;
use fedtune::agent::tls::{client_config, client_config_without_certificate, default_transport};
use fedtune::aggregator::Hooks;
use fedtune::protocol::frame::{FramePrefix, Limits, encode_frame};
use fedtune::protocol::{
    AgentMessage, AggregatorMessage, Capabilities, ErrorCode, Hello, ManifestHash, PROTOCOL_VERSION, TrainMetrics,
    Update,
};

/// A raw QUIC connection as agent `i` (or without a certificate).
async fn connect(fed: &Federation, agent: Option<usize>) -> quinn::Connection {
    let transport = Arc::new(default_transport(false));
    let tls = match agent {
        Some(i) => {
            let identity = &fed.pki.agents[i].1;
            client_config(&fed.pki.ca_cert_pem, &identity.cert_pem, &identity.key_pem, transport).unwrap()
        }
        None => client_config_without_certificate(&fed.pki.ca_cert_pem, transport).unwrap(),
    };
    let endpoint = client_endpoint(tls, fed.addr, false).unwrap();
    endpoint.connect(fed.addr, "localhost").unwrap().await.unwrap()
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
