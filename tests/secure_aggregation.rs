//! Secure aggregation end to end over mutual-TLS QUIC on 127.0.0.1: the masked rounds
//! produce the same model as plain FedAvg, agents that drop out mid-round are unmasked
//! away, and configurations that cannot work are refused at start-up.

mod common;

use common::*;
use fedtune::agent::cancel::Cancel;
use fedtune::agent::client::Exit;
use fedtune::agent::trainer::{FitOutcome, Trainer, TrainerError};
use fedtune::aggregator::{AggregatorConfig, FailureReason, Hooks, RunReport};
use fedtune::federation::SecureStep;
use fedtune::federation::strategy::StrategyConfig;
use fedtune::protocol::{Capabilities, Evaluate, Evaluation, Task, TrainMetrics};

/// Trains nothing: sends a fixed delta of its own, so the aggregate is known exactly.
struct Fixed {
    id: usize,
    samples: u64,
    /// Declines the task of these rounds, after the key exchange has started.
    declines: Vec<u64>,
}

impl Trainer for Fixed {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            train_samples: self.samples,
            validation_samples: 1,
            ..Capabilities::default()
        }
    }
    fn fit(&mut self, task: &Task, global: &[f32], _: &Cancel) -> Result<FitOutcome, TrainerError> {
        if self.declines.contains(&task.round) {
            return Err(TrainerError::Declined("battery low".into()));
        }
        let scale = (self.id + 1) as f32 * 0.01;
        let delta = (0..global.len()).map(|j| scale * ((j % 5) as f32 - 2.0)).collect();
        Ok(FitOutcome {
            delta,
            num_samples: self.samples,
            metrics: TrainMetrics::default(),
            proposal: None,
        })
    }
    fn evaluate(&mut self, _: &Evaluate, _: &[f32]) -> Result<Evaluation, TrainerError> {
        Err(TrainerError::Declined("no validation data".into()))
    }
}

fn fixed_agents(declines: &[(usize, u64)]) -> Vec<Fixed> {
    n_fixed_agents(4, declines)
}

fn n_fixed_agents(n: usize, declines: &[(usize, u64)]) -> Vec<Fixed> {
    (0..n)
        .map(|id| Fixed {
            id,
            samples: 10 * (id as u64 + 1),
            declines: declines.iter().filter(|(a, _)| *a == id).map(|(_, r)| *r).collect(),
        })
        .collect()
}

fn fixed_config(rounds: u64, secure: bool) -> AggregatorConfig {
    let mut config = config(4, rounds);
    config.federation.final_evaluation = false;
    config.federation.min_updates = 2;
    // Fewer update buffers than agents: masked updates must be folded as they arrive.
    config.federation.max_buffered_updates = 1;
    config.secure_aggregation.enabled = secure;
    config
}

async fn run_with<T: Trainer>(config: AggregatorConfig, trainers: Vec<T>) -> RunReport {
    let fed = start_aggregator(trainers.len(), config, Hooks::default());
    let mut agents = start_agents(&fed, trainers);
    let report = fed.aggregator.await.expect("aggregator task").expect("federation runs");
    while let Some(exit) = agents.join_next().await {
        assert!(matches!(exit.expect("agent task"), Ok(Exit::Shutdown(_))));
    }
    report
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masked_rounds_give_the_same_model_as_plain_fedavg() {
    let plain = run_with(fixed_config(2, false), fixed_agents(&[])).await;
    let secure = run_with(fixed_config(2, true), fixed_agents(&[])).await;
    for round in &secure.rounds {
        assert_eq!(round.updates, 4, "round {}: {:?}", round.round, round.failures);
        assert!(round.applied);
    }
    // Each round moves every parameter by the sample-weighted mean of the deltas:
    // (1·10 + 2·20 + 3·30 + 4·40) / 100 · 0.01 · pattern = 0.03 · pattern.
    let diff = max_difference(&plain.global, &secure.global);
    assert!(diff < 1e-5, "secure and plain models differ by {diff}");
    let init = initial_model(&fixed_config(2, true));
    for (j, (g, g0)) in secure.global.iter().zip(&init).enumerate() {
        let expected = g0 + 2.0 * 0.03 * ((j % 5) as f32 - 2.0);
        assert!((g - expected).abs() < 1e-5, "parameter {j}: {g}, expected {expected}");
    }
}

/// The model a federation with `config` starts from (seeded by `federation.seed`).
fn initial_model(config: &AggregatorConfig) -> Vec<f32> {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.federation.seed);
    config.model.init_params(&mut rng)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_drops_out_after_the_key_exchange_is_unmasked_away() {
    // Agent 3 declines round 0 after it has sent its key shares: its pairwise masks are
    // in the other agents' inputs and must be removed from their sum.
    let plain = run_with(fixed_config(2, false), fixed_agents(&[(3, 0)])).await;
    let secure = run_with(fixed_config(2, true), fixed_agents(&[(3, 0)])).await;
    let first = &secure.rounds[0];
    assert!(first.applied, "{:?}", first.failures);
    assert_eq!(first.updates, 3);
    assert!(
        first.failures.iter().any(|f| matches!(
            &f.reason,
            FailureReason::SecureStep { step: SecureStep::MaskedUpdate, cause }
                if matches!(&**cause, FailureReason::Declined(why) if why.contains("battery low"))
        )),
        "{:?}",
        first.failures
    );
    assert_eq!(secure.rounds[1].updates, 4);
    let diff = max_difference(&plain.global, &secure.global);
    assert!(diff < 1e-5, "secure and plain models differ by {diff}");
}

/// SecAgg+ over QUIC: a cohort of 40 gets the sparse graph (degree 16), agents that drop
/// out after the key exchange are unmasked away through their neighbours' shares, and the
/// model equals plain FedAvg's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparse_graph_cohort_of_40_gives_the_same_model_as_plain_fedavg() {
    let sized = |secure| {
        let mut config = fixed_config(2, secure);
        config.federation.min_agents = 40;
        config
    };
    assert_eq!(sized(true).secure_aggregation.degree_for(40), Some(16));
    let declines = [(5, 0), (17, 0), (30, 1)];
    let plain = run_with(sized(false), n_fixed_agents(40, &declines)).await;
    let secure = run_with(sized(true), n_fixed_agents(40, &declines)).await;
    assert_eq!(secure.rounds[0].updates, 38, "{:?}", secure.rounds[0].failures);
    assert_eq!(secure.rounds[1].updates, 39, "{:?}", secure.rounds[1].failures);
    assert!(secure.rounds.iter().all(|r| r.applied && r.secure));
    let diff = max_difference(&plain.global, &secure.global);
    assert!(diff < 1e-4, "secure and plain models differ by {diff}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_survivors_leave_the_model_unchanged() {
    // Four agents, threshold 0.5: three must survive. Two decline round 0, so the sum
    // cannot be unmasked; round 1 goes on normally.
    let declines = [(0, 0), (1, 0)];
    let secure = run_with(fixed_config(2, true), fixed_agents(&declines)).await;
    let first = &secure.rounds[0];
    assert!(!first.applied);
    assert!(
        first
            .failures
            .iter()
            .any(|f| matches!(f.reason, FailureReason::SecureStep { .. })),
        "{:?}",
        first.failures
    );
    assert!(
        first.aggregation_error.is_some(),
        "the round says why it was not applied"
    );
    assert!(secure.rounds[1].applied);
    // Only round 1 moved the model: compare with a plain run of round 1 alone.
    let plain = run_with(fixed_config(1, false), fixed_agents(&[])).await;
    let diff = max_difference(&plain.global, &secure.global);
    assert!(diff < 1e-5, "the failed round changed the model (difference {diff})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_robust_rule_with_secure_aggregation_refuses_to_start() {
    for rule in ["median", "trimmed_mean", "krum", "qfedavg"] {
        let mut config = fixed_config(1, true);
        config.strategy = rule.parse::<StrategyConfig>().unwrap();
        let fed = start_aggregator(1, config, Hooks::default());
        let err = fed.aggregator.await.unwrap().unwrap_err().to_string();
        assert!(
            err.contains("cannot be combined with secure aggregation") && err.contains("individual"),
            "{rule}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digits_train_under_secure_aggregation() {
    let data = digits();
    let mut config = config(4, 4);
    config.secure_aggregation.enabled = true;
    config.federation.min_updates = 2;
    let hooks = Hooks {
        evaluator: Some(std::sync::Arc::new(fedtune::evaluate::TestSetEvaluator::new(
            data.global_test().expect("test"),
            fedtune::agent::model::default_device(),
        ))),
        ..Hooks::default()
    };
    let fed = start_aggregator(4, config, hooks);
    let mut agents = start_agents(&fed, digits_trainers(&data, 4));
    let report = fed.aggregator.await.unwrap().unwrap();
    while agents.join_next().await.is_some() {}
    assert!(report.rounds.iter().all(|r| r.applied && r.updates == 4));
    let last = report.final_test.expect("test evaluation").accuracy;
    assert!(last > 0.6, "test accuracy {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_that_require_secure_aggregation_decline_plain_rounds() {
    let run = |secure: bool| async move {
        let fed = start_aggregator(4, fixed_config(1, secure), Hooks::default());
        let require = |i: usize, options: &mut fedtune::agent::client::AgentOptions| {
            options.require_secure_aggregation = i < 2;
        };
        let mut agents = fedtune::sim::spawn_agents_with(
            &fed.pki,
            fed.addr,
            fixed_agents(&[]),
            false,
            fed.stop.subscribe(),
            require,
        )
        .unwrap();
        let report = fed.aggregator.await.unwrap().unwrap();
        while agents.join_next().await.is_some() {}
        report
    };
    let plain = run(false).await;
    let round = &plain.rounds[0];
    assert_eq!(round.updates, 2, "{:?}", round.failures);
    let declined = round
        .failures
        .iter()
        .filter(|f| {
            matches!(&f.reason, FailureReason::Declined(why) if why.contains("only sends its update under secure aggregation"))
        })
        .count();
    assert_eq!(declined, 2, "{:?}", round.failures);
    let secure = run(true).await;
    assert_eq!(secure.rounds[0].updates, 4, "{:?}", secure.rounds[0].failures);
}
