//! An agent keeps the last update it trained: an aggregator that restarts and sends the
//! same task again (same round, seed, hyperparameters and global model) gets that update
//! back without a second training run; any other task is trained afresh. The test plays
//! the aggregator over real QUIC on 127.0.0.1, with two connections as two lives.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fedtune::agent::cancel::Cancel;
use fedtune::agent::trainer::{FitOutcome, Trainer, TrainerError};
use fedtune::protocol::frame::Limits;
use fedtune::protocol::wire::{read_frame, write_frame};
use fedtune::protocol::{
    Ack, AgentMessage, AggregatorMessage, Capabilities, ClientHyperparameters, Evaluate, Evaluation, MlpSpec,
    ModelSpec, SessionLimits, Task, TrainMetrics, Welcome,
};
use fedtune::sim::{bind_aggregator, ephemeral_pki, spawn_agents};

/// Counts its training runs; each returns a different delta.
struct Counting(Arc<AtomicUsize>);

impl Trainer for Counting {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            train_samples: 10,
            ..Capabilities::default()
        }
    }

    fn fit(&mut self, _: &Task, global: &[f32], _: &Cancel) -> Result<FitOutcome, TrainerError> {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(FitOutcome {
            delta: global.iter().map(|g| g + n as f32).collect(),
            num_samples: 10,
            metrics: TrainMetrics::default(),
            proposal: None,
        })
    }

    fn evaluate(&mut self, _: &Evaluate, _: &[f32]) -> Result<Evaluation, TrainerError> {
        Err(TrainerError::Declined("nothing to evaluate".into()))
    }
}

fn task(round: u64, seed: u64) -> Task {
    let model = ModelSpec::Mlp(MlpSpec {
        input: 4,
        hidden: Vec::new(),
        classes: 2,
    });
    Task {
        study: "replay".into(),
        trial: 0,
        round,
        manifest_hash: model.manifest().hash(),
        model,
        hyperparameters: ClientHyperparameters::default(),
        deadline_ms: 10_000,
        seed,
        measure_train_loss: false,
        secure: None,
        frozen: Vec::new(),
        base: None,
        classes: Vec::new(),
    }
}

/// Accepts the agent's next connection and its hello.
async fn accept(endpoint: &quinn::Endpoint) -> quinn::Connection {
    let connection = endpoint.accept().await.unwrap().await.unwrap();
    let (mut send, mut recv) = connection.accept_bi().await.unwrap();
    let (hello, _) = read_frame::<AgentMessage>(&mut recv, Limits::control()).await.unwrap();
    assert!(matches!(hello, AgentMessage::Hello(_)), "{hello:?}");
    let welcome = AggregatorMessage::Welcome(Welcome {
        session_id: 1,
        agent_id: "agent-0".into(),
        limits: SessionLimits {
            max_payload_bytes: 1 << 20,
        },
    });
    write_frame(&mut send, &welcome, &[]).await.unwrap();
    send.finish().unwrap();
    connection
}

/// Sends `task` with `global` and returns the agent's update payload (acknowledged) and
/// whether the agent marked it replayed.
async fn ask(connection: &quinn::Connection, task: &Task, global: &[f32]) -> (Vec<f32>, bool) {
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    write_frame(&mut send, &AggregatorMessage::Task(task.clone()), global)
        .await
        .unwrap();
    let (message, delta) = read_frame::<AgentMessage>(&mut recv, Limits::default()).await.unwrap();
    let AgentMessage::Update(update) = message else {
        panic!("expected an update, got {message:?}");
    };
    assert_eq!((update.trial, update.round), (task.trial, task.round));
    let ack = AggregatorMessage::Ack(Ack {
        trial: update.trial,
        round: update.round,
    });
    write_frame(&mut send, &ack, &[]).await.unwrap();
    send.finish().unwrap();
    (delta, update.replayed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_sent_again_after_a_restart_is_answered_without_training_again() {
    let pki = ephemeral_pki(1).unwrap();
    let endpoint = bind_aggregator(&pki, false).unwrap();
    let fits = Arc::new(AtomicUsize::new(0));
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let agents = spawn_agents(
        &pki,
        endpoint.local_addr().unwrap(),
        vec![Counting(fits.clone())],
        false,
        stop,
    )
    .unwrap();
    let agents = Arc::new(Mutex::new(agents));
    let global: Vec<f32> = (0..10).map(|i| i as f32).collect();

    // First life: round 3 is trained and acknowledged; then the aggregator dies.
    let first = accept(&endpoint).await;
    let (trained, replayed) = ask(&first, &task(3, 7), &global).await;
    assert!(!replayed);
    assert_eq!(fits.load(Ordering::SeqCst), 1);
    first.close(0u32.into(), b"crash");

    // Second life (resumed from the checkpoint before round 3): the same task again.
    let second = tokio::time::timeout(Duration::from_secs(20), accept(&endpoint))
        .await
        .expect("the agent reconnects");
    let (again, replayed) = ask(&second, &task(3, 7), &global).await;
    assert_eq!(again, trained, "the same update");
    assert!(replayed, "the agent says the update is the one it trained before");
    assert_eq!(fits.load(Ordering::SeqCst), 1, "not trained twice");

    // Another seed, another global model, the next round: each is trained.
    let (reseeded, replayed) = ask(&second, &task(3, 8), &global).await;
    assert!(!replayed);
    assert_eq!(fits.load(Ordering::SeqCst), 2);
    assert_ne!(reseeded, trained);
    let moved: Vec<f32> = global.iter().map(|g| g + 0.5).collect();
    assert!(!ask(&second, &task(3, 8), &moved).await.1);
    assert_eq!(fits.load(Ordering::SeqCst), 3);
    assert!(!ask(&second, &task(4, 8), &moved).await.1);
    assert_eq!(fits.load(Ordering::SeqCst), 4);
    second.close(0u32.into(), b"done");
    endpoint.close(0u32.into(), b"done");
    drop(agents);
}
