use super::*;
use crate::space::ParamSpec;

fn spec(name: &str, text: &str) -> ParamSpec {
    ParamSpec::parse(name, text).unwrap().with_adaptive(true)
}

fn space() -> SearchSpace {
    SearchSpace::new(vec![
        spec("lr", "loguniform(1e-4, 1e-1)"),
        spec("batch", "intlog(16, 512)"),
        spec("epochs", "int(1, 10)"),
        spec("opt", "choice(adam, sgd, rmsprop)"),
        spec("momentum", "uniform(0, 1)"),
        ParamSpec::parse("dropout", "uniform(0, 0.5)").unwrap(),
        spec("server_lr", "loguniform(1e-2, 10)").with_scope(Scope::Server),
    ])
    .unwrap()
}

fn trial() -> Params {
    [
        ("lr", ParamValue::Float(1e-2)),
        ("batch", ParamValue::Int(32)),
        ("epochs", ParamValue::Int(10)),
        ("opt", ParamValue::Categorical("sgd".into())),
        ("momentum", ParamValue::Float(0.5)),
        ("dropout", ParamValue::Float(0.25)),
        ("server_lr", ParamValue::Float(1.0)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn policy(seed: u64) -> FedExPolicy {
    FedExPolicy::new(&space(), &trial(), FedExConfig::default(), seed).unwrap()
}

fn arms(policy: &FedExPolicy, name: &str) -> Vec<ParamValue> {
    let summary = policy.summary();
    let p = summary.params.iter().find(|p| p.name == name).unwrap();
    p.arms.iter().map(|a| a.value.clone()).collect()
}

fn probs(policy: &FedExPolicy, name: &str) -> Vec<f64> {
    let summary = policy.summary();
    let p = summary.params.iter().find(|p| p.name == name).unwrap();
    p.arms.iter().map(|a| a.probability).collect()
}

fn floats(values: &[ParamValue]) -> Vec<f64> {
    values.iter().map(|v| v.as_f64().unwrap()).collect()
}

#[test]
fn arms_spread_around_the_trial_value() {
    let p = policy(0);
    let names: Vec<String> = p.summary().params.into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["lr", "batch", "epochs", "opt", "momentum"]);

    let lr = floats(&arms(&p, "lr"));
    let want = [-1.0, -0.5, 0.0, 0.5, 1.0].map(|e: f64| 1e-2 * e.exp2());
    assert_eq!(lr.len(), 5);
    for (got, want) in lr.iter().zip(want) {
        assert!((got - want).abs() < 1e-12 * want, "{lr:?}");
    }
    assert_eq!(arms(&p, "lr")[2], ParamValue::Float(1e-2), "the trial's value is exact");
    // Multiplicative for a log integer, rounded: 32 × 2^{-1, -½, 0, ½, 1}.
    assert_eq!(arms(&p, "batch"), [16, 23, 32, 45, 64].map(ParamValue::Int).to_vec());
    // ± steps for a linear integer, clipped at the upper bound 10 and deduplicated.
    assert_eq!(arms(&p, "epochs"), [8, 9, 10].map(ParamValue::Int).to_vec());
    assert_eq!(
        arms(&p, "opt"),
        ["adam", "sgd", "rmsprop"]
            .map(|c| ParamValue::Categorical(c.into()))
            .to_vec()
    );
    // ± 10 % of the range for a linear float.
    let m = floats(&arms(&p, "momentum"));
    for (got, want) in m.iter().zip([0.3, 0.4, 0.5, 0.6, 0.7]) {
        assert!((got - want).abs() < 1e-12, "{m:?}");
    }
    // Uniform to start, and the best arm is the trial's value.
    for name in ["lr", "batch", "epochs", "opt", "momentum"] {
        let ps = probs(&p, name);
        assert!(ps.iter().all(|&q| (q - 1.0 / ps.len() as f64).abs() < 1e-15));
    }
    assert_eq!(p.best(), trial());
}

#[test]
fn arms_clip_at_bounds() {
    let space = SearchSpace::new(vec![
        spec("lr", "loguniform(1e-4, 1e-1)"),
        spec("batch", "intlog(16, 512)"),
        spec("w", "uniform(0, 1, step=0.25)"),
    ])
    .unwrap();
    let trial: Params = [
        ("lr", ParamValue::Float(0.08)),
        ("batch", ParamValue::Int(16)),
        ("w", ParamValue::Float(0.0)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let config = FedExConfig {
        linear_spread: 0.3,
        ..FedExConfig::default()
    };
    let p = FedExPolicy::new(&space, &trial, config, 1).unwrap();
    let lr = floats(&arms(&p, "lr"));
    assert_eq!(lr.len(), 4, "0.08 × √2 and 0.08 × 2 both clip to 0.1: {lr:?}");
    assert_eq!(lr[3], 0.1);
    assert!((lr[0] - 0.04).abs() < 1e-15 && lr[2] == 0.08);
    assert_eq!(arms(&p, "batch"), [16, 23, 32].map(ParamValue::Int).to_vec());
    // 0 ± 0.3 and ± 0.6 of the range, clipped at 0 and snapped to the 0.25 grid.
    assert_eq!(arms(&p, "w"), [0.0, 0.25, 0.5].map(ParamValue::Float).to_vec());
    for name in ["lr", "batch", "w"] {
        let d = &space.get(name).unwrap().distribution;
        assert!(arms(&p, name).iter().all(|v| d.contains(v)));
    }
}

#[test]
fn fixed_and_server_params_are_untouched() {
    let mut p = policy(3);
    for _ in 0..50 {
        let d = p.draw();
        assert_eq!(d.params["dropout"], ParamValue::Float(0.25));
        assert_eq!(d.params["server_lr"], ParamValue::Float(1.0));
        assert!(!d.arms.contains_key("dropout") && !d.arms.contains_key("server_lr"));
        assert_eq!(d.arms.len(), 5);
        for (name, pick) in &d.arms {
            assert_eq!(d.params[name], arms(&p, name)[pick.index]);
        }
    }
    assert_eq!(
        p.record_proposal("server_lr", ParamValue::Float(0.5)),
        Err(FedExError::NotAdaptive("server_lr".into()))
    );
    assert_eq!(
        p.record_proposal("dropout", ParamValue::Float(0.1)),
        Err(FedExError::NotAdaptive("dropout".into()))
    );
}

#[test]
fn without_adaptive_params_the_policy_is_empty() {
    let space = SearchSpace::new(vec![ParamSpec::parse("lr", "loguniform(1e-4, 1e-1)").unwrap()]).unwrap();
    let trial: Params = [("lr".to_string(), ParamValue::Float(1e-3))].into();
    let mut p = FedExPolicy::new(&space, &trial, FedExConfig::default(), 0).unwrap();
    assert!(p.is_empty());
    let d = p.draw();
    assert_eq!(d.params, trial);
    assert!(d.arms.is_empty());
    p.observe(&[(d, 1.0)]);
    assert_eq!(p.best(), trial);
    assert!(p.summary().params.is_empty());
}

#[test]
fn same_seed_same_draws() {
    let run = |seed| {
        let mut p = policy(seed);
        let mut all = Vec::new();
        for round in 0..5 {
            let draws: Vec<Draw> = (0..8).map(|_| p.draw()).collect();
            let outcomes: Vec<(Draw, f64)> = draws
                .iter()
                .map(|d| (d.clone(), d.arms["lr"].index as f64 * 0.1 + f64::from(round)))
                .collect();
            p.observe(&outcomes);
            all.extend(draws.into_iter().map(|d| d.params));
        }
        (all, probs(&p, "lr"))
    };
    let a = run(11);
    assert_eq!(a, run(11));
    assert_ne!(a.0, run(12).0);
}

/// `rounds` rounds of `agents` agents where the `lr` arm `good` pays 1 and the
/// others 0, plus uniform noise in ±`noise` and the constant `shift`.
fn bandit(p: &mut FedExPolicy, good: usize, rounds: usize, agents: usize, noise: f64, shift: f64, seed: u64) {
    let mut rng = ChaCha12Rng::seed_from_u64(seed);
    for _ in 0..rounds {
        let outcomes: Vec<(Draw, f64)> = (0..agents)
            .map(|_| {
                let d = p.draw();
                let mean = if d.arms["lr"].index == good { 1.0 } else { 0.0 };
                let r = mean + noise * (2.0 * rng.random::<f64>() - 1.0) + shift;
                (d, r)
            })
            .collect();
        p.observe(&outcomes);
    }
}

#[test]
fn finds_the_best_arm_of_a_noisy_bandit() {
    for seed in 0..5 {
        let mut p = policy(seed);
        bandit(&mut p, 3, 50, 10, 0.5, 0.0, 100 + seed);
        let ps = probs(&p, "lr");
        assert!(ps[3] > 0.8, "seed {seed}: {ps:?}");
        assert_eq!(p.best()["lr"], arms(&p, "lr")[3]);
        let summary = p.summary();
        assert_eq!(summary.rounds, 50);
        assert_eq!(summary.rewards_used, 500);
        assert_eq!(summary.params[0].best, 3);
    }
}

#[test]
fn constant_step_size_also_learns() {
    let config = FedExConfig {
        step_size: StepSize::Constant { eta: 0.3 },
        ..FedExConfig::default()
    };
    let mut p = FedExPolicy::new(&space(), &trial(), config, 5).unwrap();
    bandit(&mut p, 1, 50, 10, 0.5, 0.0, 9);
    assert!(probs(&p, "lr")[1] > 0.8, "{:?}", probs(&p, "lr"));
}

#[test]
fn the_baseline_cancels_a_constant_shift() {
    let mut plain = policy(7);
    let mut shifted = policy(7);
    bandit(&mut plain, 3, 20, 10, 0.5, 0.0, 1);
    bandit(&mut shifted, 3, 20, 10, 0.5, 100.0, 1);
    let (a, b) = (probs(&plain, "lr"), probs(&shifted, "lr"));
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
    }
    let baseline = shifted.summary().baseline.unwrap();
    assert!((baseline - plain.summary().baseline.unwrap() - 100.0).abs() < 1e-9);
}

#[test]
fn non_finite_rewards_and_foreign_draws_are_skipped() {
    let mut p = policy(2);
    let before = probs(&p, "lr");
    let d = p.draw();
    assert_eq!(p.observe(&[]), 0);
    assert_eq!(p.observe(&[(d.clone(), f64::NAN), (d.clone(), f64::INFINITY)]), 0);
    let mut foreign = d.clone();
    foreign.arms.get_mut("lr").unwrap().index = 99;
    assert_eq!(p.observe(&[(foreign, 1.0)]), 0);
    assert_eq!(probs(&p, "lr"), before);
    let summary = p.summary();
    assert_eq!(
        (summary.rounds, summary.rewards_skipped, summary.baseline),
        (0, 3, None)
    );

    // NaNs mixed into a round change nothing about it.
    let mut q = policy(2);
    q.draw();
    let draws: Vec<Draw> = (0..6).map(|_| p.draw()).collect();
    assert_eq!(draws, (0..6).map(|_| q.draw()).collect::<Vec<_>>());
    let clean: Vec<(Draw, f64)> = draws.iter().map(|d| (d.clone(), d.arms["lr"].index as f64)).collect();
    let mut noisy = clean.clone();
    noisy.push((draws[0].clone(), f64::NAN));
    assert_eq!(p.observe(&clean), 6);
    assert_eq!(q.observe(&noisy), 6);
    assert_eq!(probs(&p, "lr"), probs(&q, "lr"));
    assert_ne!(probs(&p, "lr"), before);
}

#[test]
fn proposals_add_arms_or_are_counted() {
    let mut p = policy(4);
    let stale = p.draw();
    // A quartered learning rate: new, so it becomes arm 5 with probability 1/6.
    assert_eq!(
        p.record_proposal("lr", ParamValue::Float(1e-2 / 4.0)),
        Ok(ProposalOutcome::NewArm(5))
    );
    let ps = probs(&p, "lr");
    assert_eq!(ps.len(), 6);
    assert!(ps.iter().all(|&q| (q - 1.0 / 6.0).abs() < 1e-15), "{ps:?}");
    assert!((ps.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    assert_eq!(
        p.record_proposal("lr", ParamValue::Float(1e-2)),
        Ok(ProposalOutcome::ExistingArm(2))
    );
    assert_eq!(
        p.record_proposal("opt", ParamValue::Categorical("adam".into())),
        Ok(ProposalOutcome::ExistingArm(0))
    );
    // Arms of other parameters are independent: epochs 7 is new there.
    assert_eq!(
        p.record_proposal("epochs", ParamValue::Int(7)),
        Ok(ProposalOutcome::NewArm(3))
    );
    // The draw made before the new arm still updates the policy.
    assert_eq!(p.observe(&[(stale, 1.0)]), 1);

    // Up to max_arms (8) arms: 6 now, two more, then counted only.
    assert_eq!(
        p.record_proposal("lr", ParamValue::Float(1e-4)),
        Ok(ProposalOutcome::NewArm(6))
    );
    assert_eq!(
        p.record_proposal("lr", ParamValue::Float(1e-1)),
        Ok(ProposalOutcome::NewArm(7))
    );
    assert_eq!(
        p.record_proposal("lr", ParamValue::Float(3e-4)),
        Ok(ProposalOutcome::ArmLimit)
    );
    let summary = p.summary();
    let lr = &summary.params[0];
    assert_eq!((lr.proposals, lr.proposals_over_limit, lr.arms.len()), (5, 1, 8));
    assert_eq!(lr.arms[5].origin, ArmOrigin::Proposal);
    assert_eq!(lr.arms[2].proposals, 1);
    assert!((lr.arms.iter().map(|a| a.probability).sum::<f64>() - 1.0).abs() < 1e-12);
    // The new arms are drawn.
    let drawn: BTreeSet<usize> = (0..400).map(|_| p.draw().arms["lr"].index).collect();
    assert!(drawn.contains(&5) && drawn.contains(&7), "{drawn:?}");
    let json = serde_json::to_string(&p.summary()).unwrap();
    assert!(json.contains("\"origin\":\"proposal\""), "{json}");
}

#[test]
fn bad_proposals_are_errors() {
    let mut p = policy(0);
    assert_eq!(
        p.record_proposal("nope", ParamValue::Float(0.1)),
        Err(FedExError::UnknownParam("nope".into()))
    );
    for (name, value) in [
        ("lr", ParamValue::Float(0.5)),
        ("lr", ParamValue::Float(f64::NAN)),
        ("lr", ParamValue::Int(0)),
        ("epochs", ParamValue::Int(11)),
        ("epochs", ParamValue::Float(3.0)),
        ("opt", ParamValue::Categorical("lion".into())),
    ] {
        let err = p.record_proposal(name, value.clone()).unwrap_err();
        assert!(
            matches!(&err, FedExError::OutOfRange { param, .. } if param == name),
            "{err}"
        );
    }
    let message = p.record_proposal("lr", ParamValue::Float(0.5)).unwrap_err().to_string();
    assert_eq!(
        message,
        "parameter `lr`: 0.5 is not a possible value of loguniform(0.0001, 0.1)"
    );
    assert_eq!(p.summary().params[0].proposals, 0);
}

#[test]
fn construction_checks_config_and_trial() {
    let mut missing = trial();
    missing.remove("lr");
    assert_eq!(
        FedExPolicy::new(&space(), &missing, FedExConfig::default(), 0).unwrap_err(),
        FedExError::MissingTrialValue("lr".into())
    );
    let mut wrong = trial();
    wrong.insert("lr".into(), ParamValue::Float(2.0));
    assert!(matches!(
        FedExPolicy::new(&space(), &wrong, FedExConfig::default(), 0),
        Err(FedExError::OutOfRange { .. })
    ));
    for config in [
        FedExConfig {
            arms: 0,
            ..FedExConfig::default()
        },
        FedExConfig {
            arms: 9,
            ..FedExConfig::default()
        },
        FedExConfig {
            baseline_discount: 1.5,
            ..FedExConfig::default()
        },
        FedExConfig {
            step_size: StepSize::Constant { eta: f64::NAN },
            ..FedExConfig::default()
        },
    ] {
        assert!(matches!(
            FedExPolicy::new(&space(), &trial(), config, 0),
            Err(FedExError::Config(_))
        ));
    }
    // Server-scoped values need not be valid: the policy does not look at them.
    let mut server = trial();
    server.remove("server_lr");
    assert!(FedExPolicy::new(&space(), &server, FedExConfig::default(), 0).is_ok());
}

#[test]
fn config_reads_from_toml() {
    let config: FedExConfig = toml::from_str("arms = 3\nstep_size = { rule = \"constant\", eta = 0.5 }").unwrap();
    assert_eq!(config.arms, 3);
    assert_eq!(config.step_size, StepSize::Constant { eta: 0.5 });
    assert_eq!(config.max_arms, FedExConfig::default().max_arms);
    assert!(config.validate().is_ok());
    assert!(toml::from_str::<FedExConfig>("armz = 3").is_err());
}

#[test]
fn a_policy_resumed_from_its_json_goes_on_as_if_never_stopped() {
    let mut a = policy(5);
    bandit(&mut a, 2, 6, 8, 0.2, 0.0, 9);
    let json = serde_json::to_value(&a).unwrap();
    let mut b: FedExPolicy = serde_json::from_value(json).unwrap();
    assert_eq!(a.summary(), b.summary());
    bandit(&mut a, 2, 4, 8, 0.2, 0.0, 10);
    bandit(&mut b, 2, 4, 8, 0.2, 0.0, 10);
    assert_eq!(a.summary(), b.summary());
    assert_eq!(a.draw(), b.draw());
}
