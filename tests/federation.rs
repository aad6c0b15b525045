//! End-to-end federated rounds over real mutual-TLS QUIC on 127.0.0.1.

mod common;

use common::*;
use fedtune::agent::cancel::Cancel;
use fedtune::agent::client::Exit;
use fedtune::agent::trainer::{BurnTrainer, FitOutcome, Trainer, TrainerError};
use std::sync::Arc;

use fedtune::aggregator::{FailureReason, Hooks};
use fedtune::protocol::{Capabilities, ErrorCode, Evaluate, Evaluation, Task};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federation_trains_digits_over_quic() {
    let report = run_digits(4, 5, true).await;
    assert_eq!(report.rounds.len(), 5);
    assert!(!report.interrupted);
    for round in &report.rounds {
        assert_eq!(round.updates, 4, "round {}: {:?}", round.round, round.failures);
        assert!(round.applied);
    }
    let first = report.rounds[0].test.expect("test evaluation").accuracy;
    let last = report.final_test.expect("test evaluation").accuracy;
    assert!(last > first + 0.2, "test accuracy went from {first} to {last}");
    assert!(last > 0.6, "test accuracy {last}");
    // The final model was evaluated on every agent's own validation split.
    assert_eq!(report.final_agent_evaluation.len(), 4);
    assert!(
        report
            .final_agent_evaluation
            .values()
            .all(|e| e.samples > 0 && e.accuracy > 0.3)
    );
    // The agents measured the incoming global model before training, so accuracy rises.
    assert!(report.rounds[4].federated_accuracy > report.rounds[0].federated_accuracy);
}

/// An agent whose update is corrupted after honest training.
struct Corrupt {
    inner: BurnTrainer,
    how: fn(&mut Vec<f32>),
}

impl Corrupt {
    /// An agent that trains and answers honestly.
    fn honest(inner: BurnTrainer) -> Self {
        Self { inner, how: |_| {} }
    }
}

impl Trainer for Corrupt {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn fit(&mut self, task: &Task, global: &[f32], cancel: &Cancel) -> Result<FitOutcome, TrainerError> {
        let mut outcome = self.inner.fit(task, global, cancel)?;
        (self.how)(&mut outcome.delta);
        Ok(outcome)
    }
    fn evaluate(&mut self, request: &Evaluate, params: &[f32]) -> Result<Evaluation, TrainerError> {
        self.inner.evaluate(request, params)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nan_and_wrong_manifest_updates_are_refused_while_the_round_completes() {
    let data = digits();
    let fed = start_aggregator(4, config(4, 2), Hooks::default());
    let mut trainers = digits_trainers(&data, 4).into_iter();
    let honest: Vec<Corrupt> = trainers.by_ref().take(2).map(Corrupt::honest).collect();
    let nan = Corrupt {
        inner: trainers.next().unwrap(),
        how: |d| d[5] = f32::NAN,
    };
    let truncated = Corrupt {
        inner: trainers.next().unwrap(),
        how: |d| d.truncate(d.len() - 1),
    };
    let mut agents = start_agents(&fed, honest.into_iter().chain([nan, truncated]).collect());

    let report = fed.aggregator.await.unwrap().unwrap();
    assert_eq!(report.rounds.len(), 2);
    for round in &report.rounds {
        assert_eq!(round.updates, 2, "only the honest updates count");
        assert!(round.applied);
        let refused = |agent: &str| {
            round
                .failures
                .iter()
                .find(|f| f.agent == agent)
                .and_then(|f| match &f.reason {
                    FailureReason::Refused(error) => Some(error.code),
                    _ => None,
                })
        };
        assert_eq!(refused("agent-2"), Some(ErrorCode::NonFinite), "{:?}", round.failures);
        assert_eq!(
            refused("agent-3"),
            Some(ErrorCode::ManifestMismatch),
            "{:?}",
            round.failures
        );
    }
    assert!(report.global.iter().all(|v| v.is_finite()));
    // Refused agents stay connected and are told to stop like everyone else.
    while let Some(exit) = agents.join_next().await {
        assert!(matches!(exit.unwrap(), Ok(Exit::Shutdown(_))));
    }
}

/// An agent that never answers in time.
struct Sleepy;

impl Trainer for Sleepy {
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    fn fit(&mut self, _: &Task, _: &[f32], _: &Cancel) -> Result<FitOutcome, TrainerError> {
        std::thread::sleep(std::time::Duration::from_secs(3));
        Err(TrainerError::Declined("too slow anyway".into()))
    }
    fn evaluate(&mut self, _: &Evaluate, _: &[f32]) -> Result<Evaluation, TrainerError> {
        Err(TrainerError::Declined("no data".into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stragglers_are_dropped_at_the_deadline() {
    let data = digits();
    let mut config = config(2, 1);
    config.federation.round_timeout_secs = 1.0;
    config.federation.final_evaluation = false;
    let fed = start_aggregator(2, config, Hooks::default());
    let honest = digits_trainers(&data, 1).remove(0);
    let mut agents = fedtune::sim::spawn_agents(
        &fed.pki,
        fed.addr,
        vec![Box::new(honest) as Box<dyn Trainer>, Box::new(Sleepy)],
        false,
        fed.stop.subscribe(),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let report = fed.aggregator.await.unwrap().unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let round = &report.rounds[0];
    assert_eq!(round.updates, 1);
    assert!(
        round
            .failures
            .iter()
            .any(|f| f.agent == "agent-1" && f.reason == FailureReason::Straggler)
    );
    while agents.join_next().await.is_some() {}
}

/// Slow in round 0 (it trains until its task is abandoned), then an honest trainer.
struct SlowOnce {
    inner: BurnTrainer,
}

impl Trainer for SlowOnce {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn fit(&mut self, task: &Task, global: &[f32], cancel: &Cancel) -> Result<FitOutcome, TrainerError> {
        if task.round == 0 {
            // Far longer than the round: only the task's cancellation ends it in time.
            let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while std::time::Instant::now() < give_up {
                cancel.check()?;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            return Err(TrainerError::Declined("still training".into()));
        }
        self.inner.fit(task, global, cancel)
    }
    fn evaluate(&mut self, request: &Evaluate, params: &[f32]) -> Result<Evaluation, TrainerError> {
        self.inner.evaluate(request, params)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_straggler_abandons_its_task_and_answers_the_next_round_on_time() {
    let data = digits();
    let mut config = config(2, 3);
    config.federation.round_timeout_secs = 1.0;
    config.federation.final_evaluation = false;
    let fed = start_aggregator(2, config, Hooks::default());
    let mut trainers = digits_trainers(&data, 2).into_iter();
    let honest = trainers.next().unwrap();
    let slow = SlowOnce {
        inner: trainers.next().unwrap(),
    };
    let mut agents = fedtune::sim::spawn_agents(
        &fed.pki,
        fed.addr,
        vec![Box::new(honest) as Box<dyn Trainer>, Box::new(slow)],
        false,
        fed.stop.subscribe(),
    )
    .unwrap();
    let report = fed.aggregator.await.unwrap().unwrap();
    let first = &report.rounds[0];
    assert_eq!(first.updates, 1, "{:?}", first.failures);
    assert!(
        first
            .failures
            .iter()
            .any(|f| f.agent == "agent-1" && f.reason == FailureReason::Straggler)
    );
    for round in &report.rounds[1..] {
        assert_eq!(round.updates, 2, "round {}: {:?}", round.round, round.failures);
    }
    while agents.join_next().await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_agents_is_a_clear_error_not_a_hang() {
    let mut config = config(3, 1);
    config.federation.wait_for_agents_secs = 0.5;
    let fed = start_aggregator(3, config, Hooks::default());
    let err = fed.aggregator.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("only 0 of the 3 required agents"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fairness_is_checked_every_round_and_violations_are_reported() {
    let data = digits();
    let mut config = config(3, 2);
    config.fairness.constraints = vec![
        "worst_accuracy >= 0.99".parse().unwrap(),
        "jain_index >= 0".parse().unwrap(),
    ];
    config.fairness.selection = fedtune::aggregator::config::Selection::Fairness;
    config.federation.cohort = 2.0;
    let fed = start_aggregator(3, config, Hooks::default());
    let mut agents = start_agents(&fed, digits_trainers(&data, 3));
    let report = fed.aggregator.await.unwrap().unwrap();
    for round in &report.rounds {
        assert_eq!(round.fairness.agents, round.updates);
        assert!(round.fairness.jain_index > 0.0 && round.fairness.jain_index <= 1.0);
        assert_eq!(round.violations.len(), 1, "{:?}", round.violations);
        assert!(round.violations[0].starts_with("worst_accuracy >= 0.99 violated"));
    }
    // The final model was measured on all three agents.
    assert_eq!(report.final_fairness.agents, 3);
    assert_eq!(report.final_violations.len(), 1);
    // Fairness-aware selection favours the agent left out of round 0.
    let left_out: Vec<_> = ["agent-0", "agent-1", "agent-2"]
        .into_iter()
        .filter(|a| !report.rounds[0].cohort.iter().any(|c| c == a))
        .collect();
    assert_eq!(left_out.len(), 1);
    assert!(
        report.rounds[1].cohort.iter().any(|c| c == left_out[0]),
        "{:?}",
        report.rounds[1].cohort
    );
    while agents.join_next().await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_robust_rule_trains_through_a_sign_flipping_agent() {
    let data = digits();
    let mut config = config(5, 5);
    config.strategy = "median".parse().unwrap();
    config.federation.final_evaluation = false;
    let evaluator = Arc::new(fedtune::evaluate::TestSetEvaluator::new(
        data.global_test().unwrap(),
        fedtune::agent::model::default_device(),
    ));
    let hooks = Hooks {
        evaluator: Some(evaluator),
        ..Hooks::default()
    };
    let fed = start_aggregator(5, config, hooks);
    let mut trainers = digits_trainers(&data, 5).into_iter();
    let attacker = Corrupt {
        inner: trainers.next().unwrap(),
        how: |d| d.iter_mut().for_each(|x| *x *= -10.0),
    };
    let honest = trainers.map(Corrupt::honest);
    let mut agents = start_agents(&fed, std::iter::once(attacker).chain(honest).collect());
    let report = fed.aggregator.await.unwrap().unwrap();
    let first = report.rounds[0].test.unwrap().accuracy;
    let last = report.final_test.unwrap().accuracy;
    assert!(report.rounds.iter().all(|r| r.applied && r.updates == 5));
    assert!(
        last > first + 0.2 && last > 0.6,
        "median under attack: {first} -> {last}"
    );
    while agents.join_next().await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dp_fedavg_records_epsilon_every_round_and_stops_at_the_budget() {
    use fedtune::federation::privacy::{Ledger, PrivacyConfig, epsilon};
    let data = digits();
    let mut config = config(3, 20);
    let privacy = PrivacyConfig {
        noise_multiplier: 2.0,
        clip: 1.0,
        delta: 1e-5,
        ..PrivacyConfig::default()
    };
    // All three agents every round: q = 1. The budget fits four rounds and not five.
    let mut ledger = Ledger::default();
    for _ in 0..4 {
        ledger.record(1.0, privacy.noise_multiplier);
    }
    let budget = (ledger.epsilon(1e-5) + ledger.epsilon_after(1.0, 2.0, 1e-5)) / 2.0;
    config.privacy = PrivacyConfig {
        max_epsilon: Some(budget),
        ..privacy
    };
    let fed = start_aggregator(3, config, Hooks::default());
    let mut agents = start_agents(&fed, digits_trainers(&data, 3));
    let report = fed.aggregator.await.unwrap().unwrap();
    while let Some(exit) = agents.join_next().await {
        assert!(matches!(exit.unwrap(), Ok(Exit::Shutdown(_))));
    }
    assert_eq!(report.rounds.len(), 4, "the fifth round would spend past {budget}");
    assert!(report.privacy_budget_spent && !report.interrupted);
    for (i, round) in report.rounds.iter().enumerate() {
        assert!(round.applied);
        let want = epsilon(2.0, 1.0, i as u64 + 1, 1e-5).unwrap().epsilon;
        let got = round.epsilon.unwrap();
        assert!((got - want).abs() < 1e-9, "round {i}: ε {got} vs {want}");
    }
    assert!(report.rounds[3].epsilon.unwrap() <= budget);
    // The final evaluation still ran on the last released model.
    assert_eq!(report.final_agent_evaluation.len(), 3);

    // Central noise and secure aggregation, or a rule that does not average, are refused.
    let mut secure = fedtune::aggregator::AggregatorConfig {
        privacy: PrivacyConfig {
            noise_multiplier: 1.0,
            ..PrivacyConfig::default()
        },
        ..Default::default()
    };
    secure.secure_aggregation.enabled = true;
    assert!(
        secure
            .validate()
            .unwrap_err()
            .to_string()
            .contains("secure aggregation")
    );
    secure.secure_aggregation.enabled = false;
    secure.strategy = "median".parse().unwrap();
    assert!(
        secure
            .validate()
            .unwrap_err()
            .to_string()
            .contains("averages the clipped updates")
    );
}

/// Distributed DP over real QUIC agents: each agent clips and noises its own update before
/// secure aggregation masks it, the aggregator never sees an un-noised sum, and every
/// round is charged at σ (all shares arrived). The model still learns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_noise_under_secure_aggregation_learns_and_is_charged_per_round() {
    use fedtune::federation::privacy::{NoisePlacement, PrivacyConfig, epsilon};
    let data = digits();
    let mut config = config(4, 5);
    config.secure_aggregation.enabled = true;
    config.privacy = PrivacyConfig {
        noise_multiplier: 0.01,
        clip: 2.0,
        noise: NoisePlacement::Distributed,
        ..PrivacyConfig::default()
    };
    let hooks = Hooks {
        evaluator: Some(Arc::new(fedtune::evaluate::TestSetEvaluator::new(
            data.global_test().unwrap(),
            fedtune::agent::model::default_device(),
        ))),
        ..Hooks::default()
    };
    let fed = start_aggregator(4, config, hooks);
    let mut agents = start_agents(&fed, digits_trainers(&data, 4));
    let report = fed.aggregator.await.unwrap().unwrap();
    while let Some(exit) = agents.join_next().await {
        assert!(matches!(exit.unwrap(), Ok(Exit::Shutdown(_))));
    }
    assert_eq!(report.rounds.len(), 5);
    for (i, round) in report.rounds.iter().enumerate() {
        assert!(round.applied && round.secure, "round {i}: {:?}", round.failures);
        assert_eq!((round.updates, round.clip), (4, Some(2.0)), "round {i}");
        let want = epsilon(0.01, 1.0, i as u64 + 1, 1e-5).unwrap().epsilon;
        let got = round.epsilon.unwrap();
        assert!((got - want).abs() < 1e-9, "round {i}: ε {got} vs {want}");
    }
    let accuracy = report.final_test.as_ref().unwrap().accuracy;
    // With four agents only a tiny σ leaves a usable model (the privacy example
    // shows the trade-off over 100 agents).
    assert!(
        accuracy > 0.6,
        "digits accuracy {accuracy} under small distributed noise"
    );
}

/// An agent that sends its update sign-flipped and claims 50 times its samples.
struct Inflate(BurnTrainer);

impl Trainer for Inflate {
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    fn fit(&mut self, task: &Task, global: &[f32], cancel: &Cancel) -> Result<FitOutcome, TrainerError> {
        let mut outcome = self.0.fit(task, global, cancel)?;
        outcome.delta.iter_mut().for_each(|x| *x = -*x);
        outcome.num_samples *= 50;
        Ok(outcome)
    }
    fn evaluate(&mut self, request: &Evaluate, params: &[f32]) -> Result<Evaluation, TrainerError> {
        self.0.evaluate(request, params)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_sample_count_weighs_no_more_than_the_declared_data() {
    let data = digits();
    let mut config = config(5, 5);
    config.federation.final_evaluation = false;
    let hooks = Hooks {
        evaluator: Some(Arc::new(fedtune::evaluate::TestSetEvaluator::new(
            data.global_test().unwrap(),
            fedtune::agent::model::default_device(),
        ))),
        ..Hooks::default()
    };
    let fed = start_aggregator(5, config, hooks);
    let mut trainers = digits_trainers(&data, 5).into_iter();
    let attacker = Inflate(trainers.next().unwrap());
    let declared = attacker.capabilities().train_samples;
    let honest = trainers.map(Corrupt::honest);
    let all: Vec<Box<dyn Trainer>> = std::iter::once(Box::new(attacker) as Box<dyn Trainer>)
        .chain(honest.map(|c| Box::new(c) as Box<dyn Trainer>))
        .collect();
    let mut agents = start_agents(&fed, all);
    let report = fed.aggregator.await.unwrap().unwrap();
    while agents.join_next().await.is_some() {}
    for round in &report.rounds {
        assert_eq!(round.updates, 5);
        let claim = round.bounded_claims["agent-0"];
        assert_eq!(
            (claim.claimed, claim.used),
            (declared * 50, declared),
            "round {}",
            round.round
        );
        assert_eq!(round.bounded_claims.len(), 1, "honest claims stand");
    }
    // Weighed by its real share, one sign-flipper among five slows FedAvg, no more.
    let first = report.rounds[0].test.unwrap().accuracy;
    let last = report.final_test.unwrap().accuracy;
    assert!(last > 0.6 && last > first + 0.2, "{first} -> {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_larger_than_the_model_is_refused_before_it_is_read() {
    let data = digits();
    let fed = start_aggregator(3, config(3, 2), Hooks::default());
    let mut trainers = digits_trainers(&data, 3).into_iter();
    let honest: Vec<Corrupt> = trainers.by_ref().take(2).map(Corrupt::honest).collect();
    // 4 MB more than the model's 4,810 values: the frame's announced payload is over the
    // round's limit, so the aggregator refuses it from the prefix.
    let bloated = Corrupt {
        inner: trainers.next().unwrap(),
        how: |d| d.extend(std::iter::repeat_n(0.0, 1 << 20)),
    };
    let mut agents = start_agents(&fed, honest.into_iter().chain([bloated]).collect());
    let report = fed.aggregator.await.unwrap().unwrap();
    while agents.join_next().await.is_some() {}
    for round in &report.rounds {
        assert_eq!(round.updates, 2, "round {}: {:?}", round.round, round.failures);
        let failure = round
            .failures
            .iter()
            .find(|f| f.agent == "agent-2")
            .expect("the bloated update failed");
        let reason = format!("{:?}", failure.reason);
        // 4,810 values of 4 bytes: the most this round's update can carry.
        assert!(reason.contains("exceeds the limit of 19240 bytes"), "{reason}");
        assert!(round.applied);
    }
}
