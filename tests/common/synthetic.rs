//! A store filled without a federation: a run of smooth rounds and a two-objective study,
//! as big as a test asks.

use std::path::Path;

use fedtune_federation::fairness::{FairnessReport, History};
use fedtune_federation::strategy::StrategyState;
use fedtune_federation::{FederationState, GlobalEvaluation, RngState, RoundRecord};
use fedtune_store::{NewRun, RunKind, SqliteStore, Storage};
use fedtune_tuning::space::{ParamSpec, ParamValue, SearchSpace};
use fedtune_tuning::{Direction, FrozenTrial, Objective, StudyHeader, TrialState};

/// A checkpoint of a 16-parameter model at `round`.
pub fn state(round: u64) -> FederationState {
    FederationState {
        trial: 0,
        round,
        global: vec![0.0; 16],
        strategy: StrategyState::Stateless,
        server_lr: None,
        history: History::default(),
        rng: RngState {
            seed: [1; 32],
            stream: 0,
            word_pos: 0,
        },
        tuner: None,
        privacy: None,
    }
}

/// Round `round` of ten agents whose accuracy rises smoothly; every 7th round has a
/// fairness violation.
pub fn record(round: u64) -> RoundRecord {
    let t = round as f64;
    let cohort: Vec<String> = (0..10).map(|i| format!("agent-{i}")).collect();
    RoundRecord {
        round,
        agent_accuracy: cohort
            .iter()
            .enumerate()
            .map(|(i, a)| (a.clone(), 0.5 + 0.04 * i as f64))
            .collect(),
        cohort,
        updates: 10,
        applied: true,
        failures: Vec::new(),
        aggregation_error: None,
        train_loss: 2.0 / (1.0 + t / 50.0),
        federated_accuracy: 1.0 - 0.9 / (1.0 + t / 50.0),
        federated_loss: 2.0 / (1.0 + t / 40.0),
        server_learning_rate: None,
        fairness: FairnessReport {
            agents: 10,
            mean_accuracy: 0.7,
            worst_accuracy: 0.5,
            worst_10pct_accuracy: 0.5,
            jain_index: 0.97,
            ..FairnessReport::default()
        },
        violations: if round % 7 == 6 {
            vec!["worst agent below 0.6".into()]
        } else {
            Vec::new()
        },
        test: Some(GlobalEvaluation {
            loss: 2.0 / (1.0 + t / 40.0),
            accuracy: 1.0 - 0.9 / (1.0 + t / 45.0),
            samples: 360,
        }),
        seconds: 0.02,
        device_seconds: 0.15,
        payload_bytes: 20 * 64 * 4,
        base_bytes: 0,
        contributions: Default::default(),
        secure: false,
        bounded_claims: Default::default(),
        epsilon: None,
        clip: None,
    }
}

/// A store with a run of `rounds` rounds and a study of `trials` trials of 20 rounds each
/// (every 4th pruned after 5), maximising accuracy and minimising bytes; returns their ids.
pub fn store(path: &Path, rounds: u64, trials: u64) -> (i64, i64) {
    let mut store = SqliteStore::open(path).unwrap();
    let new = |name: &str, kind| NewRun {
        name: name.into(),
        kind,
        rounds_planned: rounds,
        manifest_hash: String::new(),
        config: "{}".into(),
    };
    let run = store.create_run(&new("long-run", RunKind::Run)).unwrap();
    for round in 0..rounds {
        store.commit_round(run, &record(round), state(round + 1), 1).unwrap();
    }
    let study = store.create_run(&new("big-study", RunKind::Study)).unwrap();
    let header = StudyHeader {
        space: SearchSpace::new(vec![
            ParamSpec::parse("learning_rate", "loguniform(1e-4, 1)").unwrap(),
            ParamSpec::parse("batch_size", "choice(16, 32, 64)").unwrap(),
            ParamSpec::parse("local_epochs", "int(1, 5)").unwrap(),
        ])
        .unwrap(),
        objectives: vec![
            Objective::new("accuracy", Direction::Maximize),
            Objective::new("bytes", Direction::Minimize),
        ],
    };
    store.open_study(study, &header).unwrap();
    for number in 0..trials {
        let lr = 10f64.powf(-4.0 + 4.0 * ((number * 7919) % 1000) as f64 / 1000.0);
        let accuracy = 0.95 - 0.1 * (lr.log10() + 2.0).powi(2) / 4.0;
        let mut params = std::collections::BTreeMap::new();
        params.insert("learning_rate".to_owned(), ParamValue::Float(lr));
        params.insert(
            "batch_size".to_owned(),
            ParamValue::Int([16, 32, 64][number as usize % 3]),
        );
        params.insert("local_epochs".to_owned(), ParamValue::Int(1 + (number % 5) as i64));
        let pruned = number % 4 == 3;
        let trial = FrozenTrial {
            number,
            params,
            values: (!pruned).then(|| vec![accuracy, 1e6 * (1.0 + (number % 5) as f64)]),
            state: if pruned {
                TrialState::Pruned
            } else {
                TrialState::Complete
            },
            feasible: true,
            intermediate: (1..=if pruned { 5 } else { 20 })
                .map(|step| (step, vec![accuracy * (1.0 - 0.5 / step as f64), 0.0]))
                .collect(),
            fail_reason: None,
        };
        store.save_trial(study, &trial).unwrap();
    }
    (run, study)
}
