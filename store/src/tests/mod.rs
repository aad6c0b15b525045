//! The store's tests. The contract every [`Storage`] keeps is written once, by topic
//! ([`runs`]: runs, rounds and checkpoints; [`studies`]: trials, and trials shared by
//! several aggregators), and run against each database by its own module ([`sqlite`],
//! [`postgres`]), beside the tests of what only that database has: opening and migrating
//! its schema, refusing a damaged or foreign store.

mod checkpoint;
mod postgres;
mod runs;
mod sqlite;
mod studies;

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::*;
use fedtune_federation::fairness::{FairnessReport, History};
use fedtune_federation::strategy::StrategyState;
use fedtune_federation::{FailureReason, FailureRecord, GlobalEvaluation, RngState};

/// A fresh path for a store file, removed with its WAL files when dropped.
struct TempDb(PathBuf);

impl TempDb {
    fn new(name: &str) -> Self {
        let n: u64 = rand::random();
        Self(std::env::temp_dir().join(format!("fedtune-store-{name}-{}-{n:x}.db", std::process::id())))
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

fn new_run(name: &str) -> NewRun {
    NewRun {
        name: name.into(),
        kind: RunKind::Run,
        rounds_planned: 5,
        manifest_hash: "ab".repeat(32),
        config: "{}".into(),
    }
}

fn record(round: u64, test: Option<f64>) -> RoundRecord {
    RoundRecord {
        round,
        cohort: vec!["a".into(), "b".into(), "c".into()],
        updates: 2,
        applied: true,
        failures: vec![FailureRecord {
            agent: "c".into(),
            reason: FailureReason::Straggler,
        }],
        aggregation_error: None,
        train_loss: 0.5 / (round + 1) as f64,
        federated_accuracy: 0.5 + round as f64 / 100.0,
        federated_loss: 1.0,
        agent_accuracy: BTreeMap::from([("a".into(), 0.6), ("b".into(), 0.4)]),
        server_learning_rate: Some(1.0),
        fairness: FairnessReport::default(),
        violations: vec!["min_accuracy".into()],
        test: test.map(|accuracy| GlobalEvaluation {
            loss: 1.0 - accuracy,
            accuracy,
            samples: 100,
        }),
        seconds: 0.25,
        device_seconds: 0.5,
        payload_bytes: 1 << 20,
        base_bytes: 0,
        contributions: Default::default(),
        secure: false,
        bounded_claims: Default::default(),
        epsilon: None,
        clip: None,
    }
}

fn state(round: u64, numel: usize) -> FederationState {
    FederationState {
        trial: 0,
        round,
        global: (0..numel).map(|i| i as f32 * 0.5 + round as f32).collect(),
        strategy: StrategyState::Momentum {
            server_learning_rate: 0.7,
            velocity: (0..numel).map(|i| -(i as f32)).collect(),
        },
        server_lr: None,
        history: History::default(),
        rng: RngState {
            seed: [7; 32],
            stream: 3,
            word_pos: u128::from(round) * 1000 + 17,
        },
        tuner: None,
        privacy: None,
    }
}

fn header(objective: &str) -> StudyHeader {
    use fedtune_tuning::space::{ParamSpec, SearchSpace};
    use fedtune_tuning::{Direction, Objective};
    StudyHeader {
        space: SearchSpace::new(vec![
            ParamSpec::parse("learning_rate", "loguniform(1e-4, 1)").unwrap(),
            ParamSpec::parse("optimizer", "choice(adam, sgd)").unwrap(),
        ])
        .unwrap(),
        objectives: vec![Objective::new(objective, Direction::Maximize)],
    }
}

fn trial(number: u64, state: fedtune_tuning::TrialState, rounds: u64) -> FrozenTrial {
    use fedtune_tuning::space::ParamValue;
    FrozenTrial {
        number,
        params: BTreeMap::from([
            (
                "learning_rate".to_owned(),
                ParamValue::Float(0.01 * (number + 1) as f64),
            ),
            ("optimizer".to_owned(), ParamValue::Categorical("sgd".into())),
        ]),
        values: (state == fedtune_tuning::TrialState::Complete).then(|| vec![0.9 - number as f64 / 100.0]),
        state,
        feasible: number.is_multiple_of(2),
        intermediate: (1..=rounds).map(|step| (step, vec![0.1 * step as f64])).collect(),
        fail_reason: (state == fedtune_tuning::TrialState::Failed)
            .then(|| format!("trial parameters: trial {number}'s `dropout` does not fit the model")),
    }
}
