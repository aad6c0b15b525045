//! A whole federation over real QUIC on 127.0.0.1, on tokio's paused clock: a straggler
//! that never answers is dropped at each round's two-minute deadline, and the test takes
//! seconds, not minutes, because every wait is a timer of the driver's, not a sleep.

mod common;

use std::time::Duration;

use common::*;
use fedtune::agent::cancel::Cancel;
use fedtune::agent::client::client_endpoint;
use fedtune::agent::tls::{client_config, default_transport};
use fedtune::agent::trainer::{FitOutcome, Trainer, TrainerError};
use fedtune::aggregator::{FailureReason, Hooks};
use fedtune::protocol::frame::{Limits, decode_frame, encode_frame};
use fedtune::protocol::{
    AgentMessage, AggregatorMessage, Capabilities, Evaluate, Evaluation, Hello, PROTOCOL_VERSION, Task, TrainMetrics,
};

/// Returns a small fixed delta at once.
struct Quick;

impl Trainer for Quick {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            train_samples: 10,
            ..Capabilities::default()
        }
    }
    fn fit(&mut self, _: &Task, global: &[f32], _: &Cancel) -> Result<FitOutcome, TrainerError> {
        Ok(FitOutcome {
            delta: vec![0.01; global.len()],
            num_samples: 10,
            metrics: TrainMetrics::default(),
            proposal: None,
        })
    }
    fn evaluate(&mut self, _: &Evaluate, _: &[f32]) -> Result<Evaluation, TrainerError> {
        Err(TrainerError::Declined("no validation data".into()))
    }
}

/// An authenticated agent that says hello and then never answers a task.
async fn mute_agent(fed: &Federation, i: usize) -> quinn::Connection {
    let identity = &fed.pki.agents[i].1;
    let transport = std::sync::Arc::new(default_transport(false));
    let tls = client_config(&fed.pki.ca_cert_pem, &identity.cert_pem, &identity.key_pem, transport).unwrap();
    let endpoint = client_endpoint(tls, fed.addr, false).unwrap();
    let connection = endpoint.connect(fed.addr, "localhost").unwrap().await.unwrap();
    let hello = AgentMessage::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        name: "mute".into(),
        capabilities: Capabilities::default(),
    });
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    send.write_all(&encode_frame(&hello, &[]).unwrap()).await.unwrap();
    let _ = send.finish();
    let reply = recv.read_to_end(1 << 16).await.unwrap();
    let (welcome, _) = decode_frame::<AggregatorMessage>(&reply, &Limits::control()).unwrap();
    assert!(matches!(welcome, AggregatorMessage::Welcome(_)), "{welcome:?}");
    // Accept every task stream and hold it without a word.
    let held = connection.clone();
    tokio::spawn(async move {
        let mut streams = Vec::new();
        while let Ok(stream) = held.accept_bi().await {
            streams.push(stream);
        }
    });
    connection
}

#[tokio::test(start_paused = true)]
async fn a_mute_straggler_is_dropped_at_each_deadline_on_a_paused_clock() {
    let mut config = config(2, 2);
    config.federation.round_timeout_secs = 120.0;
    config.federation.final_evaluation = false;
    let fed = start_aggregator(2, config, Hooks::default());
    let honest = fedtune::sim::spawn_agents(&fed.pki, fed.addr, vec![Quick], false, fed.stop.subscribe()).unwrap();
    let _mute = mute_agent(&fed, 1).await;

    let (wall, virtual_start) = (std::time::Instant::now(), tokio::time::Instant::now());
    let report = fed.aggregator.await.unwrap().unwrap();
    let waited = virtual_start.elapsed();

    assert_eq!(report.rounds.len(), 2);
    for round in &report.rounds {
        assert_eq!(round.updates, 1, "{:?}", round.failures);
        assert!(round.applied);
        assert_eq!(round.failures.len(), 1);
        assert_eq!(round.failures[0].agent, "agent-1");
        assert_eq!(round.failures[0].reason, FailureReason::Straggler);
        assert!(
            round.seconds >= 120.0,
            "the round waited its deadline: {}",
            round.seconds
        );
    }
    assert!(
        waited >= Duration::from_secs(240),
        "two deadlines passed on the clock: {waited:?}"
    );
    assert!(
        wall.elapsed() < Duration::from_secs(30),
        "but not in real time: {:?}",
        wall.elapsed()
    );
    drop(honest);
}
