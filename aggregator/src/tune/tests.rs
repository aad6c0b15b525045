use std::time::Duration;

use fedtune_protocol::ClientHyperparameters;
use fedtune_protocol::TrainMetrics;
use fedtune_tuning::space::{ParamSpec, ParamValue};

use super::*;
use fedtune_federation::AgentResult;
use fedtune_federation::ClientTuner;

fn space() -> SearchSpace {
    SearchSpace::new(vec![
        ParamSpec::parse("learning_rate", "loguniform(1e-3, 1e-1)")
            .unwrap()
            .with_adaptive(true),
        ParamSpec::parse("local_epochs", "int(1, 5)").unwrap(),
    ])
    .unwrap()
}

fn tuner() -> PolicyTuner {
    let params = Params::from([
        ("learning_rate".to_string(), ParamValue::Float(1e-2)),
        ("local_epochs".to_string(), ParamValue::Int(2)),
    ]);
    PolicyTuner {
        policy: FedExPolicy::new(&space(), &params, FedExConfig::default(), 1).unwrap(),
        adaptive: vec![("learning_rate".into(), space().params[0].distribution.clone())],
        draws: HashMap::new(),
    }
}

fn result(agent: &str, used: &ClientHyperparameters, proposal: Option<f64>, drop: f64) -> AgentResult {
    AgentResult {
        agent: agent.into(),
        num_samples: 10,
        metrics: TrainMetrics {
            loss_before: 1.0,
            loss_after: 1.0 - drop,
            ..TrainMetrics::default()
        },
        arrived_after: Duration::ZERO,
        used: used.clone(),
        proposal: proposal.map(|lr| ClientHyperparameters {
            learning_rate: lr,
            ..used.clone()
        }),
        replayed: false,
    }
}

#[test]
fn agents_get_policy_draws_and_their_proposals_reach_the_policy() {
    let mut tuner = tuner();
    let base = ClientHyperparameters::default();
    let a = tuner.assign("a", &base);
    let b = tuner.assign("b", &base);
    for hp in [&a, &b] {
        assert!((1e-3..=1e-1).contains(&hp.learning_rate), "{hp:?}");
        assert_eq!(hp.local_epochs, base.local_epochs, "only adaptive parameters move");
    }
    // Agent b proposes a rate below the space: it counts as the lower bound.
    tuner.observe(&[result("a", &a, None, 0.3), result("b", &b, Some(1e-4), 0.1)]);
    let summary = tuner.policy.summary();
    assert_eq!(summary.rounds, 1);
    assert_eq!(summary.rewards_used, 2);
    let lr = &summary.params[0];
    assert_eq!(lr.proposals, 1);
    assert!(lr.arms.iter().any(|arm| arm.value == ParamValue::Float(1e-3)), "{lr:?}");
}

#[test]
fn trial_parameters_map_onto_the_run_and_bad_ones_are_named() {
    let base = AggregatorConfig::default();
    let params = Params::from([
        ("learning_rate".to_string(), ParamValue::Float(0.05)),
        ("optimizer".to_string(), ParamValue::Categorical("sgd".into())),
        ("strategy".to_string(), ParamValue::Categorical("fedadam".into())),
        ("cohort".to_string(), ParamValue::Float(0.5)),
    ]);
    let config = trial_config(&base, &params, 9, 7).unwrap();
    assert_eq!(config.client.learning_rate, 0.05);
    assert_eq!(config.client.optimizer, fedtune_protocol::Optimizer::Sgd);
    assert_eq!(config.strategy.name(), "fedadam");
    assert_eq!(
        (
            config.federation.cohort,
            config.federation.seed,
            config.federation.rounds
        ),
        (0.5, 9, 7)
    );

    // `freeze`: none, or patterns joined by `+`; a pattern that names nothing is refused.
    for (value, patterns) in [
        ("none", vec![]),
        ("layers.0", vec!["layers.0"]),
        ("layers.0+*.bias", vec!["layers.0", "*.bias"]),
    ] {
        let params = Params::from([("freeze".to_string(), ParamValue::Categorical(value.into()))]);
        assert_eq!(trial_config(&base, &params, 0, 1).unwrap().model.freeze, patterns);
    }
    let bad = Params::from([("freeze".to_string(), ParamValue::Categorical("convs.*".into()))]);
    let err = trial_config(&base, &bad, 0, 1).unwrap_err().to_string();
    assert!(err.contains("`convs.*` names no tensor"), "{err}");

    // `lora_rank`: 0 is the plain model; a rank puts adapters on every 2-D weight at
    // alpha = 2 · rank, and only they train.
    let lora = |rank: i64| Params::from([("lora_rank".to_string(), ParamValue::Int(rank))]);
    let plain = trial_config(&base, &lora(0), 0, 1).unwrap();
    assert_eq!(plain.model.spec, *base.model);
    let adapted = trial_config(&base, &lora(2), 0, 1).unwrap();
    let Some(l) = adapted.model.lora() else {
        panic!("no LoRA: {:?}", adapted.model.spec)
    };
    assert_eq!((l.rank, l.alpha), (2, Some(4.0)));
    assert_eq!(adapted.model.architecture(), &base.model.spec);
    assert!(adapted.model.trainable().unwrap().numel() < base.model.trainable().unwrap().numel());
    let err = trial_config(&base, &lora(-1), 0, 1).unwrap_err().to_string();
    assert!(err.contains("lora_rank"), "{err}");
    assert_eq!(
        baseline_params(
            &SearchSpace::new(vec![
                ParamSpec::parse("lora_rank", "int(0, 8)")
                    .unwrap()
                    .with_scope(Scope::Server)
            ])
            .unwrap(),
            &adapted
        )["lora_rank"],
        ParamValue::Int(2)
    );

    // `lora_alpha` and `lora_targets` shape the trial's adapters; a trial without
    // adapters ignores them, a model that has none and no `lora_rank` refuses them.
    let shaped = |rank: i64, alpha: f64, targets: &str| {
        let mut params = lora(rank);
        params.insert("lora_alpha".into(), ParamValue::Float(alpha));
        params.insert("lora_targets".into(), ParamValue::Categorical(targets.into()));
        trial_config(&base, &params, 0, 1)
    };
    let one_layer = shaped(4, 16.0, "layers.0").unwrap();
    let l = one_layer.model.lora().unwrap();
    assert_eq!(
        (l.rank, l.alpha, l.targets),
        (4, Some(16.0), vec!["layers.0".to_string()])
    );
    let both = shaped(4, 16.0, "layers.0+layers.1").unwrap();
    assert!(one_layer.model.trainable().unwrap().numel() < both.model.trainable().unwrap().numel());
    assert_eq!(shaped(0, 16.0, "layers.0").unwrap().model.spec, *base.model);
    let err = shaped(4, 16.0, "convs.*").unwrap_err().to_string();
    assert!(err.contains("convs.*"), "{err}");
    let err = shaped(4, -1.0, "layers.0").unwrap_err().to_string();
    assert!(err.contains("`lora_alpha` must be a positive number"), "{err}");
    let alone = Params::from([("lora_alpha".to_string(), ParamValue::Float(8.0))]);
    let err = trial_config(&base, &alone, 0, 1).unwrap_err().to_string();
    assert!(err.contains("need adapters"), "{err}");
    let alpha_on_adapted = trial_config(&adapted, &alone, 0, 1).unwrap();
    assert_eq!(alpha_on_adapted.model.lora().unwrap().alpha, Some(8.0));

    // `width` scales the hidden widths; `dropout` needs a model with dropout.
    let wide = trial_config(
        &base,
        &Params::from([("width".to_string(), ParamValue::Float(1.5))]),
        0,
        1,
    )
    .unwrap();
    let fedtune_protocol::ModelSpec::Mlp(mlp) = &wide.model.spec else {
        panic!("{:?}", wide.model.spec)
    };
    let fedtune_protocol::ModelSpec::Mlp(narrow) = &base.model.spec else {
        unreachable!()
    };
    assert_eq!(mlp.hidden, narrow.hidden.iter().map(|h| h * 3 / 2).collect::<Vec<_>>());
    let err = trial_config(
        &base,
        &Params::from([("dropout".to_string(), ParamValue::Float(0.1))]),
        0,
        1,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("has no dropout"), "{err}");
    let mut text = base.clone();
    text.model = fedtune_protocol::ModelSpec::Transformer(fedtune_protocol::TransformerSpec {
        max_len: 8,
        vocab: 100,
        d_model: 16,
        heads: 4,
        layers: 1,
        d_ff: 32,
        classes: 3,
        dropout: 0.0,
    })
    .into();
    let params = Params::from([
        ("dropout".to_string(), ParamValue::Float(0.2)),
        ("width".to_string(), ParamValue::Float(0.6)),
        ("lr_schedule".to_string(), ParamValue::Categorical("cosine".into())),
        ("label_smoothing".to_string(), ParamValue::Float(0.1)),
    ]);
    let trial = trial_config(&text, &params, 0, 1).unwrap();
    let fedtune_protocol::ModelSpec::Transformer(t) = &trial.model.spec else {
        unreachable!()
    };
    // d_model 16 · 0.6 ≈ 10, up to a multiple of the 4 heads.
    assert_eq!((t.dropout, t.d_model, t.d_ff), (0.2, 12, 19));
    assert_eq!(trial.client.lr_schedule, fedtune_protocol::LrSchedule::Cosine);
    assert_eq!(trial.client.label_smoothing, 0.1);

    let bad = Params::from([("batch_size".to_string(), ParamValue::Float(2.5))]);
    let err = trial_config(&base, &bad, 0, 1).unwrap_err().to_string();
    assert!(err.contains("batch_size"), "{err}");
    let bad = Params::from([("optimizer".to_string(), ParamValue::Categorical("lion".into()))]);
    assert!(
        trial_config(&base, &bad, 0, 1)
            .unwrap_err()
            .to_string()
            .contains("adam or sgd")
    );

    let server_adaptive = SearchSpace::new(vec![
        ParamSpec::parse("server_lr", "loguniform(1e-3, 1)")
            .unwrap()
            .with_scope(Scope::Server)
            .with_adaptive(true),
    ])
    .unwrap();
    // Every preset names only parameters a trial can set.
    let presets = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../presets");
    let mut checked = 0;
    for entry in std::fs::read_dir(&presets).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let space = fedtune_tuning::spec::parse_space_toml(&std::fs::read_to_string(&path).unwrap()).unwrap();
            check_space(&space).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            checked += 1;
        }
    }
    assert!(checked >= 5, "{checked} presets");
    assert!(
        check_space(&server_adaptive)
            .unwrap_err()
            .to_string()
            .contains("cannot be adaptive")
    );
}

#[test]
fn strategy_choices_are_checked_against_secure_aggregation() {
    let space = fedtune_tuning::spec::parse_space_toml(
        "[params]\nstrategy = { spec = \"choice(fedavg, fedadam, median)\", scope = \"server\" }\n",
    )
    .unwrap();
    check_strategies(&space, false).unwrap();
    let err = check_strategies(&space, true).unwrap_err().to_string();
    assert!(err.contains("median") && err.contains("secure aggregation"), "{err}");
    let sum_only = fedtune_tuning::spec::parse_space_toml(
        "[params]\nstrategy = { spec = \"choice(fedavg, fedadam)\", scope = \"server\" }\n",
    )
    .unwrap();
    check_strategies(&sum_only, true).unwrap();
}

#[test]
fn server_choices_that_cannot_apply_to_the_model_are_refused_before_any_trial() {
    // The shipped config's model is the digits MLP; a CNN space's `freeze = convs.*`
    // matches none of its tensors.
    let base = AggregatorConfig::default();
    let vision = fedtune_tuning::spec::parse_space_toml(
        "[params]\nlearning_rate = \"loguniform(1e-3, 1e-1)\"\n\
         freeze = { spec = \"choice(none, 'convs.*', 'convs.*+head.0')\", scope = \"server\" }\n",
    )
    .unwrap();
    let err = check_server_choices(&base, &vision).unwrap_err().to_string();
    assert!(err.contains("`freeze`") && err.contains("convs.*"), "{err}");
    let fits = fedtune_tuning::spec::parse_space_toml(
        "[params]\nlearning_rate = \"loguniform(1e-3, 1e-1)\"\n\
         lora_rank = { spec = \"choice(0, 4)\", scope = \"server\" }\n\
         strategy = { spec = \"choice(fedavg, fedadam)\", scope = \"server\" }\n",
    )
    .unwrap();
    check_server_choices(&base, &fits).unwrap();
}

#[test]
fn the_nlp_preset_fits_a_pretrained_encoder_with_lora_and_its_targets_change_the_bytes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::env::temp_dir().join(format!("fedtune-nlp-preset-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("aggregator.toml");
    std::fs::write(
        &path,
        format!(
            "[model]\npretrained = {:?}\nmax_len = 16\nlora = {{ rank = 8, targets = [\"*.attention.self.query\", \"*.attention.self.value\"] }}\n",
            root.join("tests/fixtures/bert-tiny/classifier")
        ),
    )
    .unwrap();
    let mut base = AggregatorConfig::load(&path).unwrap();
    crate::service::load_initial_model(&mut base).unwrap();
    let space =
        fedtune_tuning::spec::parse_space_toml(&std::fs::read_to_string(root.join("presets/nlp.toml")).unwrap())
            .unwrap();
    check_space(&space).unwrap();
    check_space_fits(&base, &space).unwrap();
    let Some(targets) = space.params.iter().find(|p| p.name == "lora_targets") else {
        panic!("nlp.toml searches lora_targets")
    };
    let Distribution::Categorical { choices } = &targets.distribution else {
        panic!("{:?}", targets.distribution)
    };
    let mut trainable = Vec::new();
    for choice in choices {
        let params = Params::from([("lora_targets".to_string(), ParamValue::Categorical(choice.clone()))]);
        let config = trial_config(&base, &params, 0, 1).unwrap();
        trainable.push(config.model.trainable().unwrap().numel());
    }
    assert!(
        trainable.windows(2).all(|w| w[0] < w[1]),
        "each wider choice of targets trains more: {trainable:?}"
    );
    // Another rank starts from the same pretrained weights, with adapters of its own.
    let rank4 = trial_config(
        &base,
        &Params::from([("lora_rank".to_string(), ParamValue::Int(4))]),
        0,
        1,
    )
    .unwrap();
    use fedtune_protocol::ModelSpec;
    let (ModelSpec::Lora(lora4), ModelSpec::Lora(lora8)) = (&rank4.model.spec, &base.model.spec) else {
        panic!("LoRA on both")
    };
    let initial4 = rank4.model.initial.as_ref().unwrap();
    assert_eq!(initial4.len(), rank4.model.spec.manifest().numel());
    assert_eq!(
        lora4.merged(initial4),
        lora8.merged(base.model.initial.as_ref().unwrap())
    );
    // The untuned run's own values are what the baseline trial sends.
    let baseline = baseline_params(&space, &base);
    assert_eq!(baseline["lora_rank"], ParamValue::Int(8));
    assert_eq!(baseline["lora_alpha"], ParamValue::Float(16.0));
    assert_eq!(
        baseline["lora_targets"],
        ParamValue::Categorical("*.attention.self.query+*.attention.self.value".into())
    );
    let _ = std::fs::remove_dir_all(&dir);
}
