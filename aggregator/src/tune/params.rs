//! Trial parameters: which names a trial can set, and how they map onto the run.

use std::str::FromStr;

use crate::tune::client_param::{ClientParam, ClientParamError};
use fedtune_protocol::ClientHyperparameters;
use fedtune_tuning::space::{Distribution, ParamValue, Scope, SearchSpace};

use crate::config::{AggregatorConfig, ConfigError};
use fedtune_federation::strategy::StrategyConfig;
use fedtune_tuning::Params;

/// Client parameters the tuner knows how to send.
pub(super) const CLIENT_PARAMS: [&str; 12] = ClientParam::NAMES;
/// Server parameters the tuner knows how to apply.
pub(super) const SERVER_PARAMS: [&str; 12] = [
    "server_learning_rate",
    "server_lr",
    "strategy",
    "cohort",
    "freeze",
    "lora_rank",
    "lora_alpha",
    "lora_targets",
    "width",
    "dropout",
    "noise_multiplier",
    "clip",
];

/// The `freeze` parameter's value for "nothing frozen".
const NO_FREEZE: &str = "none";

/// The freeze patterns a `freeze` value names: `none`, or patterns joined by `+`
/// (`'convs.*'`, `'convs.0+head.0'`).
fn freeze_patterns(value: &str) -> Vec<String> {
    if value == NO_FREEZE || value.is_empty() {
        return Vec::new();
    }
    patterns(value)
}

/// Patterns joined by `+` (`'*.query+*.value'`).
fn patterns(value: &str) -> Vec<String> {
    value.split('+').map(|p| p.trim().to_owned()).collect()
}

/// Checks every parameter of `space` names something a trial can set, in its scope.
///
/// # Errors
/// [`ConfigError::Invalid`] naming the first unknown or misplaced parameter.
pub fn check_space(space: &SearchSpace) -> Result<(), ConfigError> {
    for p in &space.params {
        let known = match p.scope {
            Scope::Client => CLIENT_PARAMS.as_slice(),
            Scope::Server => SERVER_PARAMS.as_slice(),
        };
        if !known.contains(&p.name.as_str()) {
            return Err(ConfigError::Invalid(format!(
                "search space: `{}` is not a {} parameter fedtune can set; {} parameters are {}",
                p.name,
                scope_name(p.scope),
                scope_name(p.scope),
                known.join(", ")
            )));
        }
        if p.adaptive && p.scope == Scope::Server {
            return Err(ConfigError::Invalid(format!(
                "search space: `{}` is a server parameter and cannot be adaptive",
                p.name
            )));
        }
    }
    Ok(())
}

/// Refuses a space whose `strategy` choices include one that cannot run with the
/// federation's secure-aggregation setting, before any trial starts.
///
/// # Errors
/// [`ConfigError::Invalid`] naming the strategy and why.
pub fn check_strategies(space: &SearchSpace, secure_aggregation: bool) -> Result<(), ConfigError> {
    let Some(param) = space.params.iter().find(|p| p.name == "strategy") else {
        return Ok(());
    };
    if let Distribution::Categorical { choices } = &param.distribution {
        for choice in choices {
            let strategy = StrategyConfig::from_str(&choice.to_string())
                .map_err(|e| ConfigError::Invalid(format!("search space: `strategy`: {e}")))?;
            strategy
                .check(secure_aggregation)
                .map_err(|e| ConfigError::Invalid(format!("search space: `strategy`: {e}")))?;
        }
    }
    Ok(())
}

/// Refuses a space that cannot run with `base` before any trial starts: a strategy
/// secure aggregation cannot run ([`check_strategies`]), or any other server-scope value
/// that does not fit the model or the federation ([`check_server_choices`]).
///
/// # Errors
/// [`ConfigError::Invalid`] naming the parameter, the value and why.
pub fn check_space_fits(base: &AggregatorConfig, space: &SearchSpace) -> Result<(), ConfigError> {
    check_strategies(space, base.secure_aggregation.enabled)?;
    check_server_choices(base, space)
}

/// Refuses a space one of whose server-scope values cannot apply to `base`'s model and
/// federation — a `freeze` pattern that matches none of the model's tensors, a `width`
/// the starting weights cannot take, a strategy secure aggregation cannot run — before
/// any trial starts, instead of failing those trials one by one. Each value a trial
/// could draw (every choice; a range's two ends) is applied alone, as a trial applies
/// it, and the result validated.
///
/// # Errors
/// [`ConfigError::Invalid`] naming the parameter, the value and why.
pub fn check_server_choices(base: &AggregatorConfig, space: &SearchSpace) -> Result<(), ConfigError> {
    for p in space.params.iter().filter(|p| p.scope == Scope::Server) {
        let values = match &p.distribution {
            Distribution::Categorical { choices } => choices.iter().cloned().map(ParamValue::Categorical).collect(),
            Distribution::Int { low, high, .. } => vec![ParamValue::Int(*low), ParamValue::Int(*high)],
            Distribution::Float { low, high, .. } => vec![ParamValue::Float(*low), ParamValue::Float(*high)],
        };
        for value in values {
            let params = Params::from([(p.name.clone(), value.clone())]);
            if let Err(e) = trial_config(base, &params, base.federation.seed, base.federation.rounds.max(1)) {
                let why = match e {
                    ConfigError::Invalid(m) => m.trim_start_matches("trial parameters: ").to_owned(),
                    other => other.to_string(),
                };
                return Err(ConfigError::Invalid(format!(
                    "search space: `{}` = {value} cannot run with this configuration ({why}); \
                     remove that value from the space or change the [model] it is tried on",
                    p.name
                )));
            }
        }
    }
    Ok(())
}

pub(super) fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Client => "client",
        Scope::Server => "server",
    }
}

/// Sets the client hyperparameters `params` names on `hp`; other names are skipped.
///
/// # Errors
/// [`ClientParamError`] naming a parameter whose value does not fit.
pub fn apply_client(hp: &mut ClientHyperparameters, params: &Params) -> Result<(), ClientParamError> {
    for (name, value) in params {
        if let Some(param) = ClientParam::from_name(name) {
            param.set(hp, value)?;
        }
    }
    hp.validate()
}

/// The value of the client parameter `name` in `hp`, as the space would write it.
pub(super) fn client_value(hp: &ClientHyperparameters, name: &str) -> Option<f64> {
    ClientParam::from_name(name)?.get(hp)
}

/// The aggregator configuration a trial runs with: `base` with the trial's parameters
/// applied and its own seed.
///
/// # Errors
/// [`ConfigError::Invalid`] naming a parameter whose value does not fit.
pub fn trial_config(
    base: &AggregatorConfig,
    params: &Params,
    seed: u64,
    rounds: u64,
) -> Result<AggregatorConfig, ConfigError> {
    let invalid = |e: String| ConfigError::Invalid(format!("trial parameters: {e}"));
    let mut config = base.clone();
    config.federation.seed = seed;
    config.federation.rounds = rounds;
    apply_client(&mut config.client, params).map_err(|e| invalid(e.to_string()))?;
    if let Some(v) = params.get("strategy") {
        config.strategy = StrategyConfig::from_str(&v.to_string()).map_err(|e| invalid(e.to_string()))?;
    }
    if let Some(v) = params.get("cohort") {
        config.federation.cohort = v
            .as_f64()
            .ok_or_else(|| invalid(format!("`cohort` must be numeric, got {v}")))?;
    }
    if let Some(v) = params.get("freeze") {
        config.model.freeze = match v {
            ParamValue::Categorical(fedtune_tuning::space::Choice::Str(s)) => freeze_patterns(s),
            other => return Err(invalid(format!("`freeze` takes `none` or patterns, got {other}"))),
        };
    }
    // The architecture's own knobs come before LoRA, which wraps the result.
    if let Some(v) = params.get("width") {
        let width = v
            .as_f64()
            .ok_or_else(|| invalid(format!("`width` must be numeric, got {v}")))?;
        if base.model.init.is_some() && width != 1.0 {
            return Err(invalid(format!(
                "`width` {width} would change the shape of the model [model] init starts from"
            )));
        }
        let lora = config.model.lora();
        config.model.spec = config
            .model
            .architecture()
            .scaled(width)
            .map_err(|e| invalid(e.to_string()))?;
        config.model.set_lora(lora);
    }
    if let Some(v) = params.get("dropout") {
        let p = v
            .as_f64()
            .ok_or_else(|| invalid(format!("`dropout` must be numeric, got {v}")))?;
        config.model.spec = config.model.spec.with_dropout(p).map_err(|e| invalid(e.to_string()))?;
    }
    for (name, field) in [
        ("noise_multiplier", &mut config.privacy.noise_multiplier),
        ("clip", &mut config.privacy.clip),
    ] {
        if let Some(v) = params.get(name) {
            *field = v
                .as_f64()
                .ok_or_else(|| invalid(format!("`{name}` must be numeric, got {v}")))?;
        }
    }
    if let Some(v) = params.get("lora_rank") {
        let rank = v
            .as_f64()
            .filter(|r| *r >= 0.0 && r.fract() == 0.0)
            .ok_or_else(|| invalid(format!("`lora_rank` must be a whole number ≥ 0 (0: no LoRA), got {v}")))?;
        config.model.set_lora(lora_with_rank(&base.model, rank as usize));
    }
    set_lora_alpha_and_targets(&mut config, params).map_err(invalid)?;
    refit_initial(&mut config, base, seed);
    config.validate()?;
    Ok(config)
}

/// `model`'s LoRA at `rank` (0: none): its targets and its `alpha / rank` ratio, or
/// every 2-D weight at ratio 2 when `model` has no LoRA.
fn lora_with_rank(model: &crate::config::ModelConfig, rank: usize) -> Option<crate::config::LoraConfig> {
    if rank == 0 {
        return None;
    }
    let (ratio, targets, train) = match model.lora() {
        Some(lora) => (
            lora.alpha.unwrap_or(2.0 * lora.rank as f64) / lora.rank as f64,
            lora.targets,
            lora.train,
        ),
        None => (2.0, Vec::new(), Vec::new()),
    };
    Some(crate::config::LoraConfig {
        rank,
        alpha: Some(ratio * rank as f64),
        targets,
        train,
    })
}

/// Fits the starting weights `[model] init` gave `base` to the trial's layout when its
/// adapters differ: the plain model's weights (adapters merged in) with fresh adapters
/// for the trial's rank and targets, drawn from the trial's seed.
fn refit_initial(config: &mut AggregatorConfig, base: &AggregatorConfig, seed: u64) {
    use fedtune_protocol::ModelSpec;
    use rand::SeedableRng;
    let Some(initial) = &base.model.initial else {
        return;
    };
    if config.model.spec.manifest() == base.model.spec.manifest() {
        return;
    }
    let plain = match &base.model.spec {
        ModelSpec::Lora(lora) => lora.merged(initial),
        _ => initial.to_vec(),
    };
    if plain.len() != config.model.architecture().manifest().numel() {
        // Another architecture (a `width`): validation names the mismatch.
        return;
    }
    let params = match &config.model.spec {
        ModelSpec::Lora(lora) => lora.with_adapters(&plain, &mut rand::rngs::StdRng::seed_from_u64(seed)),
        _ => plain,
    };
    config.model.initial = Some(std::sync::Arc::new(params));
}

/// Applies `lora_alpha` (PEFT's `lora_alpha`: adapters scale by alpha / rank) and
/// `lora_targets` (patterns joined by `+`, `'*.query+*.value'`) to the trial's LoRA. A
/// trial whose `lora_rank` is 0 has no adapters and ignores them; without `lora_rank`
/// in the trial the model must have LoRA.
fn set_lora_alpha_and_targets(config: &mut AggregatorConfig, params: &Params) -> Result<(), String> {
    let alpha = params.get("lora_alpha");
    let targets = params.get("lora_targets");
    if alpha.is_none() && targets.is_none() {
        return Ok(());
    }
    let Some(mut lora) = config.model.lora() else {
        if params.contains_key("lora_rank") {
            return Ok(());
        }
        return Err("`lora_alpha` and `lora_targets` need adapters: [model.lora] or a `lora_rank` parameter".into());
    };
    if let Some(v) = alpha {
        let alpha = v
            .as_f64()
            .filter(|a| a.is_finite() && *a > 0.0)
            .ok_or_else(|| format!("`lora_alpha` must be a positive number, got {v}"))?;
        lora.alpha = Some(alpha);
    }
    if let Some(v) = targets {
        lora.targets = match v {
            ParamValue::Categorical(fedtune_tuning::space::Choice::Str(s)) if !s.trim().is_empty() => patterns(s),
            other => return Err(format!("`lora_targets` takes patterns joined by `+`, got {other}")),
        };
    }
    config.model.set_lora(Some(lora));
    Ok(())
}

pub(super) fn server_lr(params: &Params) -> Option<&ParamValue> {
    params.get("server_learning_rate").or_else(|| params.get("server_lr"))
}

/// The aggregator config's own values for the space's parameters, so the baseline
/// trial runs what the service would run untuned.
pub(super) fn baseline_params(space: &SearchSpace, config: &AggregatorConfig) -> Params {
    let mut params = Params::new();
    for p in &space.params {
        let value = match p.name.as_str() {
            name if ClientParam::from_name(name)
                .and_then(|c| c.choice(&config.client))
                .is_some() =>
            {
                ClientParam::from_name(name)
                    .and_then(|c| c.choice(&config.client))
                    .map(|v| ParamValue::Categorical(v.as_str().into()))
            }
            "strategy" => Some(ParamValue::Categorical(config.strategy.name().into())),
            "cohort" => Some(ParamValue::Float(config.federation.cohort)),
            "freeze" => Some(ParamValue::Categorical(if config.model.freeze.is_empty() {
                NO_FREEZE.into()
            } else {
                fedtune_tuning::space::Choice::Str(config.model.freeze.join("+"))
            })),
            "lora_rank" => Some(ParamValue::Int(config.model.lora().map_or(0, |l| l.rank as i64))),
            "lora_alpha" => config
                .model
                .lora()
                .map(|l| ParamValue::Float(l.alpha.unwrap_or(2.0 * l.rank as f64))),
            "lora_targets" => config
                .model
                .lora()
                .filter(|l| !l.targets.is_empty())
                .map(|l| ParamValue::Categorical(fedtune_tuning::space::Choice::Str(l.targets.join("+")))),
            "width" => Some(ParamValue::Float(1.0)),
            "noise_multiplier" => Some(ParamValue::Float(config.privacy.noise_multiplier)),
            "clip" => Some(ParamValue::Float(config.privacy.clip)),
            "dropout" => match config.model.architecture() {
                fedtune_protocol::ModelSpec::Transformer(t) => Some(ParamValue::Float(t.dropout)),
                _ => None,
            },
            name => client_value(&config.client, name).map(|v| match p.distribution {
                Distribution::Int { .. } => ParamValue::Int(v as i64),
                _ => ParamValue::Float(v),
            }),
        };
        if let Some(v) = value {
            params.insert(p.name.clone(), v);
        }
    }
    params
}
