//! Federated studies end to end: trials as federations over loopback QUIC.

mod common;

use std::collections::BTreeSet;

use fedtune::aggregator::tune::{TrialMetric, TuneConfig, TuneHooks, tune};
use fedtune::sim::{bind_aggregator, ephemeral_pki, spawn_agents};
use fedtune::tuning::space::{ParamSpec, SearchSpace};
use fedtune::tuning::{PrunerConfig, SamplerKind, SuccessiveHalvingPruner, TrialState};

fn space(adaptive: bool) -> SearchSpace {
    SearchSpace::new(vec![
        ParamSpec::parse("learning_rate", "loguniform(1e-3, 1e-1)")
            .unwrap()
            .with_adaptive(adaptive),
        ParamSpec::parse("local_epochs", "int(1, 2)").unwrap(),
    ])
    .unwrap()
}

/// Runs a study over `agents` digits agents on 127.0.0.1.
async fn study(agents: usize, study: TuneConfig) -> fedtune::aggregator::tune::TuneReport {
    study_with(agents, study, common::config(agents, 1)).await
}

/// Runs a study over `agents` digits agents on 127.0.0.1 with the aggregator's `config`.
async fn study_with(
    agents: usize,
    study: TuneConfig,
    config: fedtune::aggregator::AggregatorConfig,
) -> fedtune::aggregator::tune::TuneReport {
    study_with_hooks(agents, study, config, TuneHooks::default()).await
}

/// As [`study_with`], with `hooks`.
async fn study_with_hooks(
    agents: usize,
    study: TuneConfig,
    mut config: fedtune::aggregator::AggregatorConfig,
    hooks: TuneHooks,
) -> fedtune::aggregator::tune::TuneReport {
    let data = common::digits();
    let pki = ephemeral_pki(agents).unwrap();
    let endpoint = bind_aggregator(&pki, false).unwrap();
    config.listen = endpoint.local_addr().unwrap();
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let mut running = spawn_agents(
        &pki,
        config.listen,
        common::digits_trainers(&data, agents),
        false,
        stopped.clone(),
    )
    .unwrap();
    let report = tune(endpoint, config, study, hooks, stopped).await.unwrap();
    while let Some(exit) = running.join_next().await {
        exit.unwrap().unwrap();
    }
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_trials_run_on_disjoint_agent_groups() {
    let config = TuneConfig {
        sampler: SamplerKind::Random,
        parallel: 2,
        objectives: vec![TrialMetric::Accuracy, TrialMetric::Bytes],
        ..TuneConfig::new(space(false), 4, 2)
    };
    let report = study(4, config).await;
    assert_eq!(report.trials.len(), 4);
    assert_eq!(report.rounds_spent, 8);
    for t in &report.trials {
        assert_eq!(t.state, TrialState::Complete, "trial {}", t.number);
        assert_eq!(t.agents.len(), 2, "each of two parallel trials gets half the agents");
        let values = t.values.as_ref().unwrap();
        assert!(values[0] > 0.0 && values[0] <= 1.0, "accuracy {values:?}");
        assert!(values[1] > 0.0, "bytes {values:?}");
        assert_eq!(t.metrics.len(), 7);
    }
    // The first two trials started together, so their groups are disjoint.
    let groups: Vec<BTreeSet<&String>> = report.trials[..2].iter().map(|t| t.agents.iter().collect()).collect();
    assert!(groups[0].is_disjoint(&groups[1]), "{groups:?}");
    assert!(!report.pareto_front.is_empty());
    assert!(report.best.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asha_stops_weak_trials_and_bayes_rl_adapts_within_them() {
    let config = TuneConfig {
        sampler: SamplerKind::BayesRl,
        pruner: PrunerConfig::Asha(SuccessiveHalvingPruner {
            min_resource: 1,
            reduction_factor: 2,
            min_early_stopping_rate: 0,
        }),
        seed: 3,
        ..TuneConfig::new(space(true), 5, 4)
    };
    let report = study(3, config).await;
    assert_eq!(report.trials.len(), 5);
    let pruned = report.trials.iter().filter(|t| t.state == TrialState::Pruned).count();
    assert!(pruned > 0, "with η = 2 some trial falls in the bottom half of a rung");
    assert!(
        report.rounds_spent < 5 * 4,
        "pruning saves rounds: {}",
        report.rounds_spent
    );
    for t in report.trials.iter().filter(|t| t.state == TrialState::Complete) {
        let policy = t.policy.as_ref().expect("bayes+rl keeps a policy per trial");
        assert_eq!(policy.rounds, 4, "the policy learns every round");
        let best = t.policy_best.as_ref().unwrap();
        assert!(best.contains_key("learning_rate"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_parameter_is_refused_before_anything_runs() {
    let pki = ephemeral_pki(1).unwrap();
    let endpoint = bind_aggregator(&pki, false).unwrap();
    let space = SearchSpace::new(vec![ParamSpec::parse("dropout", "uniform(0, 0.5)").unwrap()]).unwrap();
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let err = tune(
        endpoint,
        common::config(1, 1),
        TuneConfig::new(space, 1, 1),
        TuneHooks::default(),
        stopped,
    )
    .await
    .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("dropout") && message.contains("learning_rate"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trial_ending_in_a_fairness_violation_is_infeasible() {
    let mut config = common::config(3, 1);
    // A bound no model can meet: a variance is never negative.
    config.fairness.constraints = vec!["accuracy_variance <= -1".parse().unwrap()];
    let study = TuneConfig {
        sampler: SamplerKind::Random,
        ..TuneConfig::new(space(false), 2, 2)
    };
    let report = study_with(3, study, config).await;
    for t in &report.trials {
        assert_eq!(t.state, TrialState::Complete);
        assert!(!t.feasible, "trial {} should be infeasible", t.number);
        assert_eq!(t.violations.len(), 1, "{:?}", t.violations);
        assert!(t.violations[0].contains("accuracy_variance"), "{:?}", t.violations);
    }
    assert!(report.pareto_front.is_empty(), "infeasible trials are not on the front");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federated_study_resumes_from_its_journal() {
    let dir = common::scratch_dir("tune-journal");
    let journal = dir.join("study.jsonl");
    let config = |trials| TuneConfig {
        sampler: SamplerKind::Tpe,
        storage: Some(journal.clone()),
        ..TuneConfig::new(space(false), trials, 2)
    };
    let first = study(2, config(2)).await;
    assert_eq!(first.trials.len(), 2);
    let second = study(2, config(3)).await;
    assert_eq!(second.trials.len(), 3, "two kept, one new");
    assert_eq!(second.trials[0].params, first.trials[0].params);
    assert_eq!(second.trials[1].values, first.trials[1].values);
    assert_eq!(second.trials[2].state, TrialState::Complete);
    assert_eq!(
        second.trials[2].agents.len(),
        2,
        "only the new trial ran in this session"
    );
    assert_eq!(
        second.rounds_spent, 6,
        "the journal remembers the rounds of earlier trials"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_best_trial_writes_its_model_and_lora_rank_trades_bytes() {
    use fedtune::agent::model::default_device;
    use fedtune::agent::weights::WeightsSource;
    use fedtune::tuning::space::Scope;
    let dir = common::scratch_dir("tuning-best-model");
    let agents = 3;
    let mut config = common::config(agents, 1);
    config.report = Some(dir.join("study.json"));
    let space = SearchSpace::new(vec![
        ParamSpec::parse("lora_rank", "choice(0, 2, 8)")
            .unwrap()
            .with_scope(Scope::Server),
    ])
    .unwrap();
    let study = TuneConfig {
        sampler: SamplerKind::Grid,
        objectives: vec![TrialMetric::Accuracy, TrialMetric::Bytes],
        ..TuneConfig::new(space, 3, 2)
    };
    let test = common::digits().global_test().unwrap();
    let hooks = TuneHooks {
        evaluator: Some(std::sync::Arc::new(fedtune::evaluate::TestSetEvaluator::new(
            test.clone(),
            default_device(),
        ))),
        ..TuneHooks::default()
    };
    let architecture = config.model.architecture().clone();
    let report = study_with_hooks(agents, study, config, hooks).await;
    assert!(report.trials.iter().all(|t| t.state == TrialState::Complete));
    // Adapters of rank 0 (none), 2 and 8 move different bytes.
    let bytes: BTreeSet<u64> = report
        .trials
        .iter()
        .map(|t| t.metrics[&TrialMetric::Bytes] as u64)
        .collect();
    assert_eq!(bytes.len(), 3, "{bytes:?}");

    let best = report.best_trial().unwrap();
    let path = dir.join("study.safetensors");
    assert_eq!(best.model.as_deref(), Some(path.as_path()));
    // The file on disk is the best trial's final model (merged, if it had adapters).
    let params = fedtune::agent::weights::import(&architecture, &WeightsSource::new(&path), &default_device()).unwrap();
    let accuracy = fedtune::agent::train::evaluate(&architecture, &params, &test, &default_device())
        .unwrap()
        .accuracy;
    assert!(
        (accuracy - best.final_test.unwrap().accuracy).abs() < 1e-9,
        "file {accuracy} vs best trial {:?}",
        best.final_test
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_is_searchable_and_epsilon_is_an_objective() {
    use fedtune::tuning::space::Scope;
    let space = SearchSpace::new(vec![
        ParamSpec::parse("noise_multiplier", "choice(0.7, 3.0)")
            .unwrap()
            .with_scope(Scope::Server),
        ParamSpec::parse("clip", "choice(2.0)")
            .unwrap()
            .with_scope(Scope::Server),
    ])
    .unwrap();
    let study = TuneConfig {
        sampler: SamplerKind::Grid,
        objectives: vec![TrialMetric::Accuracy, TrialMetric::Epsilon],
        ..TuneConfig::new(space, 2, 2)
    };
    let report = study_with(3, study, common::config(3, 1)).await;
    assert_eq!(report.trials.len(), 2);
    for t in &report.trials {
        assert_eq!(t.state, TrialState::Complete, "trial {}", t.number);
        let sigma = t.params["noise_multiplier"].as_f64().unwrap();
        // All three agents every round (q = 1), two rounds.
        let want = fedtune::federation::privacy::epsilon(sigma, 1.0, 2, 1e-5)
            .unwrap()
            .epsilon;
        let got = t.metrics[&TrialMetric::Epsilon];
        assert!((got - want).abs() < 1e-9, "σ {sigma}: ε {got} vs {want}");
        assert_eq!(t.values.as_ref().unwrap()[1], got);
    }
}

/// A study over a pretrained model's adapters sends each agent the frozen base once: the
/// next trials, whatever their rank, send only what trains, and their bytes say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_trials_do_not_send_the_frozen_base_again() {
    use fedtune::aggregator::config::LoraConfig;
    use fedtune::protocol::ModelSpec;
    use fedtune::tuning::space::Scope;
    use rand::SeedableRng;
    let agents = 3;
    let rounds = 2;
    // Adapters of `rank` on every 2-D weight, alpha twice the rank.
    let lora = |rank| {
        Some(LoraConfig {
            rank,
            alpha: None,
            targets: Vec::new(),
            train: Vec::new(),
        })
    };
    let mut config = common::config(agents, 1);
    let plain = config.model.architecture().clone();
    // Starting weights as `[model] init` gives them, under adapters of rank 2.
    let pretrained = plain.init_params(&mut rand::rngs::StdRng::seed_from_u64(9));
    config.model.set_lora(lora(2));
    let ModelSpec::Lora(adapted) = &config.model.spec else {
        unreachable!()
    };
    config.model.initial = Some(std::sync::Arc::new(
        adapted.with_adapters(&pretrained, &mut rand::rngs::StdRng::seed_from_u64(1)),
    ));
    config.federation.cohort = 1.0;
    let space = SearchSpace::new(vec![
        ParamSpec::parse("lora_rank", "choice(2, 4, 8)")
            .unwrap()
            .with_scope(Scope::Server),
    ])
    .unwrap();
    let study = TuneConfig {
        sampler: SamplerKind::Grid,
        pruner: PrunerConfig::None,
        baseline_first: false,
        ..TuneConfig::new(space, 3, rounds)
    };
    // What went down to the agents, round by round, from `/metrics`' byte counter.
    let metrics = std::sync::Arc::new(fedtune::aggregator::metrics::Metrics::new());
    let hooks = TuneHooks {
        metrics: Some(metrics.clone()),
        ..TuneHooks::default()
    };
    let report = study_with_hooks(agents, study, config, hooks).await;
    let whole = plain.manifest().numel() as u64 * 4;
    let mut moved = 0;
    for trial in &report.trials {
        assert_eq!(trial.state, TrialState::Complete, "trial {}", trial.number);
        let rank = trial.params["lora_rank"].as_f64().unwrap() as usize;
        let mut adapted: fedtune::aggregator::config::ModelConfig = plain.clone().into();
        adapted.set_lora(lora(rank));
        let trainable = adapted.trainable().unwrap().numel() as u64 * 4;
        // Every round: the trainable values down and back, for every agent; the frozen
        // base, sent once, is no configuration's cost.
        let light = rounds * agents as u64 * trainable * 2;
        assert_eq!(
            trial.metrics[&TrialMetric::Bytes] as u64,
            light,
            "trial {}",
            trial.number
        );
        moved += light;
    }
    // The base went down once per agent in the whole study, not once per trial.
    let exposition = metrics.encode();
    let counted: u64 = exposition
        .lines()
        .filter(|l| l.starts_with("fedtune_update_bytes_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(counted, moved + agents as u64 * whole, "{exposition}");
}
