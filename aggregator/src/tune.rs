//! Federated studies: every trial of a [`Study`] runs as a federation over QUIC.
//!
//! A trial is one configuration trained for up to `rounds` federated rounds from a
//! fresh model. After each round the trial reports its objectives to the study, and the
//! pruner may stop it there (ASHA on rounds). With `parallel > 1` several trials run at
//! once, each on its own disjoint group of agents, and are told as they finish.
//!
//! Parameters map onto the run by name. Client parameters (sent to agents with each
//! task): `learning_rate` (or `lr`), `batch_size`, `local_epochs`, `optimizer`
//! (`adam`/`sgd`), `weight_decay`, `momentum`, `proximal_mu`. Server parameters:
//! `server_learning_rate` (or `server_lr`), `strategy` (a strategy name), `cohort`
//! (a fraction ≤ 1 or a count). Any other name is refused before the study starts.
//!
//! With the `bayes+rl` sampler, client parameters marked `adaptive` are also tuned
//! within each trial by a [`FedExPolicy`]: every agent gets a value drawn from the
//! policy each round, the drop in its validation loss is the reward, and the agents'
//! own proposals (e.g. a halved learning rate on a plateau) are fed to the policy. The
//! trial reports the policy's most probable values as its result.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use fedtune_protocol::ClientHyperparameters;
use fedtune_protocol::client_param::{ClientParam, ClientParamError};
use fedtune_protocol::space::{Distribution, ParamValue, Scope, SearchSpace};
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

pub use crate::config::TuningSection;
use crate::config::{AggregatorConfig, ConfigError};
use crate::driver::{DriveContext, FederationError, Flow, accept_agents, drive, stop_agents, wait_for_agents};
use crate::fairness::FairnessReport;
use crate::federation::{ClientTuner, Evaluator, Federation, GlobalEvaluation, final_fairness};
use crate::registry::Registry;
use crate::round::AgentResult;
use crate::strategy::StrategyConfig;
pub use crate::tuning::Metric;
use crate::tuning::{
    Draw, FedExConfig, FedExPolicy, Journal, Objective, Outcome, Params, PolicySummary, PrunerConfig, SamplerKind,
    Study, StudyError, TrialState,
};

/// How to run a federated study.
#[derive(Debug, Clone)]
pub struct TuneConfig {
    /// The searched space.
    pub space: SearchSpace,
    /// What trials are scored on; the first is the primary objective.
    pub objectives: Vec<Metric>,
    /// Optimise the weighted sum of the objectives instead of their Pareto front.
    pub weights: Option<Vec<f64>>,
    /// The strategy between trials (and, for `bayes+rl`, within them).
    pub sampler: SamplerKind,
    /// Early stopping of weak trials.
    pub pruner: PrunerConfig,
    /// The within-trial policy's settings (used by `bayes+rl`).
    pub policy: FedExConfig,
    /// Trials to run.
    pub trials: usize,
    /// Trials run at once, each on its own group of agents.
    pub parallel: usize,
    /// Rounds per trial (the budget the pruner cuts).
    pub rounds: u64,
    /// Seeds the sampler, the policies and each trial's model.
    pub seed: u64,
    /// Random trials before TPE or GP take over; by default a quarter of the trials,
    /// between 3 and 10 (federated trials are costly: Optuna's 10 would be half of a
    /// 20-trial study).
    pub startup_trials: Option<usize>,
    /// Runs the aggregator config's own hyperparameters as trial 0, a baseline the
    /// sampler then learns from (Optuna's `enqueue_trial`).
    pub baseline_first: bool,
    /// A JSON-lines journal to keep the study in and resume it from (see
    /// [`Journal`]); `trials` counts the trials it already holds.
    pub storage: Option<std::path::PathBuf>,
}

impl TuneConfig {
    /// Random trials before TPE or GP take over.
    #[must_use]
    pub fn startup(&self) -> usize {
        self.startup_trials.unwrap_or((self.trials / 4).clamp(3, 10))
    }

    /// Checks the counts and the objectives.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(format!("tuning: {m}")));
        if self.trials == 0 || self.parallel == 0 || self.rounds == 0 {
            return invalid("trials, parallel and rounds must be at least 1".into());
        }
        if self.objectives.is_empty() {
            return invalid("at least one objective is needed".into());
        }
        if let Some(w) = &self.weights
            && w.len() != self.objectives.len()
        {
            return invalid(format!(
                "{} weight(s) for {} objective(s)",
                w.len(),
                self.objectives.len()
            ));
        }
        check_space(&self.space)
    }

    /// A study of `space` scored on test accuracy with the default `bayes+rl` sampler,
    /// no pruning, one trial at a time.
    #[must_use]
    pub fn new(space: SearchSpace, trials: usize, rounds: u64) -> Self {
        Self {
            space,
            objectives: vec![Metric::Accuracy],
            weights: None,
            sampler: SamplerKind::default(),
            pruner: PrunerConfig::None,
            policy: FedExConfig::default(),
            trials,
            parallel: 1,
            rounds,
            seed: 0,
            startup_trials: None,
            baseline_first: false,
            storage: None,
        }
    }
}

impl TuningSection {
    /// The study this section describes; reads the space file.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when the space cannot be loaded or does not fit.
    pub fn study(&self, federation_rounds: u64) -> Result<TuneConfig, ConfigError> {
        let invalid = |e: String| ConfigError::Invalid(format!("tuning: {e}"));
        let space = if self.space.extension().is_some_and(|e| e == "json") {
            let objectives = crate::tuning::load_objectives(&self.space).map_err(|e| invalid(e.to_string()))?;
            let names = objectives.iter().map(|o| o.name.clone()).collect::<Vec<_>>().join(", ");
            let chosen = match &self.objective {
                Some(name) => objectives.into_iter().find(|o| &o.name == name),
                None if objectives.len() == 1 => objectives.into_iter().next(),
                None => None,
            };
            chosen
                .ok_or_else(|| invalid(format!("pick the space with `objective`, one of {names}")))?
                .space
        } else {
            crate::tuning::spec::load_space_toml(&self.space)
                .map_err(|e| invalid(format!("{}: {e}", self.space.display())))?
        };
        check_space(&space)?;
        self.pruner.validate().map_err(|e| invalid(e.to_string()))?;
        self.policy.validate().map_err(|e| invalid(e.to_string()))?;
        let config = TuneConfig {
            objectives: self.objectives.clone(),
            weights: self.weights.clone(),
            sampler: self.sampler,
            pruner: self.pruner.clone(),
            policy: self.policy.clone(),
            parallel: self.parallel,
            seed: self.seed,
            startup_trials: self.startup_trials,
            baseline_first: self.baseline_first,
            storage: self.storage.clone(),
            ..TuneConfig::new(space, self.trials, self.rounds.unwrap_or(federation_rounds))
        };
        config.validate()?;
        Ok(config)
    }
}

/// Why a federated study could not run.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// The federation could not start.
    #[error(transparent)]
    Federation(#[from] FederationError),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The study refused a call.
    #[error(transparent)]
    Study(#[from] StudyError),
}

/// What one trial did.
#[derive(Debug, Clone, Serialize)]
pub struct TrialRecord {
    /// The trial's number.
    pub number: u64,
    /// The parameters the sampler gave it.
    pub params: Params,
    /// How it ended.
    pub state: TrialState,
    /// One value per objective, for complete trials.
    pub values: Option<Vec<f64>>,
    /// Whether the final model met every fairness constraint.
    pub feasible: bool,
    /// The constraints the final model violated.
    pub violations: Vec<String>,
    /// Rounds the trial ran before it finished or was pruned.
    pub rounds: u64,
    /// The agents it could use (its group, when trials run in parallel).
    pub agents: Vec<String>,
    /// The primary objective after each round.
    pub curve: Vec<f64>,
    /// Every metric of the final model, for complete trials (whatever the objectives).
    pub metrics: BTreeMap<Metric, f64>,
    /// Server-side evaluation of the final model.
    pub final_test: Option<GlobalEvaluation>,
    /// The within-trial policy's best values (`bayes+rl`), which the trial reports as
    /// its result alongside `params`.
    pub policy_best: Option<Params>,
    /// The within-trial policy's final state.
    pub policy: Option<PolicySummary>,
    /// Wall time of the trial.
    pub seconds: f64,
}

/// The result of a federated study.
#[derive(Debug, Clone, Serialize)]
pub struct TuneReport {
    /// The objectives, primary first.
    pub objectives: Vec<Objective>,
    /// Every trial, by number.
    pub trials: Vec<TrialRecord>,
    /// The best trial's number (feasible first, then the primary objective or the
    /// weighted sum).
    pub best: Option<u64>,
    /// Numbers of the trials on the Pareto front.
    pub pareto_front: Vec<u64>,
    /// Federated rounds run across all trials.
    pub rounds_spent: u64,
    /// Whether shutdown stopped the study early.
    pub interrupted: bool,
}

impl TrialRecord {
    /// The record of a trial a resumed study already held.
    fn resumed(t: &crate::tuning::FrozenTrial) -> Self {
        Self {
            number: t.number,
            params: t.params.clone(),
            state: t.state,
            values: t.values.clone(),
            feasible: t.feasible,
            violations: Vec::new(),
            rounds: t.last_intermediate().map_or(0, |(step, _)| step),
            agents: Vec::new(),
            curve: t.intermediate.values().filter_map(|v| v.first().copied()).collect(),
            metrics: BTreeMap::new(),
            final_test: None,
            policy_best: None,
            policy: None,
            seconds: 0.0,
        }
    }
}

impl TuneReport {
    /// The best trial's record.
    #[must_use]
    pub fn best_trial(&self) -> Option<&TrialRecord> {
        self.trials.iter().find(|t| Some(t.number) == self.best)
    }
}

/// Progress of a federated study, for live reporting.
#[derive(Debug, Clone)]
pub enum TuneEvent {
    /// A trial started on `agents` agents.
    TrialStarted {
        /// The trial.
        number: u64,
        /// Its parameters.
        params: Params,
        /// Agents in its group.
        agents: usize,
    },
    /// A trial finished a round.
    Round {
        /// The trial.
        number: u64,
        /// The round, from 0.
        round: u64,
        /// The objectives measured after the round.
        values: Vec<f64>,
        /// Whether the pruner stops the trial here.
        pruned: bool,
    },
    /// A trial ended.
    TrialFinished(Box<TrialRecord>),
}

/// Progress callback of a federated study.
pub type OnTuneEvent = Box<dyn FnMut(&TuneEvent) + Send>;

/// Callbacks into a federated study.
#[derive(Default)]
pub struct TuneHooks {
    /// Evaluates each trial's global model after every round and at the end.
    pub evaluator: Option<Arc<dyn Evaluator>>,
    /// Called on every [`TuneEvent`].
    pub on_event: Option<OnTuneEvent>,
}

/// Client parameters the tuner knows how to send.
const CLIENT_PARAMS: [&str; 8] = ClientParam::NAMES;
/// Server parameters the tuner knows how to apply.
const SERVER_PARAMS: [&str; 4] = ["server_learning_rate", "server_lr", "strategy", "cohort"];

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

fn scope_name(scope: Scope) -> &'static str {
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
fn client_value(hp: &ClientHyperparameters, name: &str) -> Option<f64> {
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
    config.validate()?;
    Ok(config)
}

fn server_lr(params: &Params) -> Option<&ParamValue> {
    params.get("server_learning_rate").or_else(|| params.get("server_lr"))
}

/// Adapts a trial's adaptive client parameters with a FedEx policy.
struct PolicyTuner {
    policy: FedExPolicy,
    /// The adaptive parameters with their distributions.
    adaptive: Vec<(String, Distribution)>,
    draws: HashMap<String, Draw>,
}

/// The trial keeps a handle on its tuner to read the policy once the rounds are done.
struct SharedTuner(Arc<Mutex<PolicyTuner>>);

impl ClientTuner for SharedTuner {
    fn assign(&mut self, agent: &str, base: &ClientHyperparameters) -> ClientHyperparameters {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .assign(agent, base)
    }

    fn observe(&mut self, results: &[AgentResult]) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).observe(results);
    }
}

impl ClientTuner for PolicyTuner {
    fn assign(&mut self, agent: &str, base: &ClientHyperparameters) -> ClientHyperparameters {
        let draw = self.policy.draw();
        let mut hp = base.clone();
        if let Err(e) = apply_client(&mut hp, &draw.params) {
            warn!(%agent, "policy draw does not fit ({e}); sending the trial's values");
            hp = base.clone();
        }
        self.draws.insert(agent.to_owned(), draw);
        hp
    }

    fn observe(&mut self, results: &[AgentResult]) {
        let outcomes: Vec<(Draw, f64)> = results
            .iter()
            .filter_map(|r| {
                let draw = self.draws.remove(&r.agent)?;
                Some((draw, r.metrics.loss_before - r.metrics.loss_after))
            })
            .collect();
        self.draws.clear();
        let used = self.policy.observe(&outcomes);
        debug!(rewards = used, "policy updated");
        for r in results {
            let Some(proposal) = &r.proposal else { continue };
            for (name, distribution) in &self.adaptive {
                let (Some(proposed), Some(used)) = (client_value(proposal, name), client_value(&r.used, name)) else {
                    continue;
                };
                if proposed != used {
                    let raw = match distribution {
                        Distribution::Int { .. } => ParamValue::Int(proposed.round() as i64),
                        _ => ParamValue::Float(proposed),
                    };
                    // A proposal beyond the space (a halved rate below its lower bound)
                    // counts as the nearest value the space allows.
                    let value = distribution
                        .to_internal(&raw)
                        .map_or(raw, |internal| distribution.from_internal(internal));
                    if let Err(e) = self.policy.record_proposal(name, value) {
                        debug!(agent = %r.agent, "proposal for {name} not used: {e}");
                    }
                }
            }
        }
    }
}

/// Everything a trial needs, owned so trials can run as tasks.
struct TrialRun {
    number: u64,
    params: Params,
    config: Arc<AggregatorConfig>,
    registry: Arc<Registry>,
    buffers: Arc<Semaphore>,
    evaluator: Option<Arc<dyn Evaluator>>,
    study: Arc<Mutex<Study>>,
    pool: Option<BTreeSet<String>>,
    objectives: Vec<Metric>,
    tuner: Option<Arc<Mutex<PolicyTuner>>>,
    events: tokio::sync::mpsc::UnboundedSender<TuneEvent>,
}

fn lock(study: &Mutex<Study>) -> std::sync::MutexGuard<'_, Study> {
    study.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Every metric from an evaluation, a fairness report and the costs so far.
fn measure(
    eval: Option<GlobalEvaluation>,
    fairness: &FairnessReport,
    device: f64,
    bytes: u64,
) -> BTreeMap<Metric, f64> {
    BTreeMap::from([
        (Metric::Accuracy, eval.map_or(0.0, |e| e.accuracy)),
        (Metric::Loss, eval.map_or(f64::MAX, |e| e.loss)),
        (Metric::AccuracyVariance, fairness.accuracy_variance),
        (Metric::Worst10pctAccuracy, fairness.worst_10pct_accuracy),
        (Metric::DeviceSeconds, device),
        (Metric::Bytes, bytes as f64),
    ])
}

fn values(objectives: &[Metric], metrics: &BTreeMap<Metric, f64>) -> Vec<f64> {
    objectives.iter().map(|m| metrics[m]).collect()
}

impl TrialRun {
    async fn run(self, mut shutdown: watch::Receiver<bool>) -> TrialRecord {
        let started = Instant::now();
        let fed = &self.config.federation;
        let mut record = TrialRecord {
            number: self.number,
            params: self.params.clone(),
            state: TrialState::Failed,
            values: None,
            feasible: true,
            violations: Vec::new(),
            rounds: 0,
            agents: match &self.pool {
                Some(pool) => pool.iter().cloned().collect(),
                None => self.registry.snapshot().into_iter().map(|a| a.id).collect(),
            },
            curve: Vec::new(),
            metrics: BTreeMap::new(),
            final_test: None,
            policy_best: None,
            policy: None,
            seconds: 0.0,
        };
        let federation = Federation::new(self.config.clone(), self.number).map(|f| {
            let f = f.with_global_evaluation(self.evaluator.is_some());
            let f = match self.pool.clone() {
                Some(pool) => f.with_pool(pool),
                None => f,
            };
            match self.tuner.clone() {
                Some(tuner) => f.with_tuner(Box::new(SharedTuner(tuner))),
                None => f,
            }
        });
        let mut federation = match federation {
            Ok(federation) => federation,
            Err(e) => {
                warn!(trial = self.number, "cannot start: {e}");
                return self.finish(record, Outcome::Failed, started);
            }
        };
        if let Some(v) = server_lr(&self.params) {
            let lr = v.as_f64().unwrap_or(f64::NAN);
            if let Err(e) = federation.set_server_learning_rate(lr) {
                warn!(trial = self.number, "server learning rate not applied: {e}");
            }
        }
        let (mut device, mut bytes) = (0.0, 0);
        let mut last_round: Option<crate::federation::RoundRecord> = None;
        let mut pruned = false;
        let context = DriveContext {
            registry: &self.registry,
            buffers: self.buffers.clone(),
            evaluator: self.evaluator.clone(),
            max_payload: fed.max_payload_bytes,
        };
        let report = drive(federation, context, &mut shutdown, |r| {
            let round = r.round;
            record.rounds = round + 1;
            device += r.device_seconds;
            bytes += r.payload_bytes;
            // The round's incoming model was measured by the agents; the model after it
            // by the evaluator, when there is one.
            let federated = GlobalEvaluation {
                loss: r.federated_loss,
                accuracy: r.federated_accuracy,
                samples: 0,
            };
            let eval = r.test.or((r.updates > 0).then_some(federated));
            let values = values(&self.objectives, &measure(eval, &r.fairness, device, bytes));
            record.curve.push(values[0]);
            let prune = match lock(&self.study).report(self.number, round + 1, values.clone()) {
                Ok(prune) => prune,
                Err(e) => {
                    warn!(trial = self.number, "report refused: {e}");
                    false
                }
            };
            let _ = self.events.send(TuneEvent::Round {
                number: self.number,
                round,
                values,
                pruned: prune && round + 1 < fed.rounds,
            });
            last_round = Some(r.clone());
            if prune && round + 1 < fed.rounds {
                pruned = true;
                Flow::Stop
            } else {
                Flow::Continue
            }
        })
        .await;
        if pruned {
            record.final_test = last_round.and_then(|r| r.test);
            return self.finish(record, Outcome::Pruned, started);
        }
        if report.interrupted {
            return self.finish(record, Outcome::Failed, started);
        }
        let Some(last) = last_round else {
            return self.finish(record, Outcome::Failed, started);
        };
        // Score the final model: server test set if any, else federated evaluation.
        let per_agent = report.final_agent_evaluation;
        let fairness = final_fairness(&per_agent, Some(&last));
        let federated = (!per_agent.is_empty()).then(|| {
            let total: u64 = per_agent.values().map(|e| e.samples).sum::<u64>().max(1);
            let weighted = |f: fn(&GlobalEvaluation) -> f64| {
                per_agent.values().map(|e| f(e) * e.samples as f64).sum::<f64>() / total as f64
            };
            GlobalEvaluation {
                loss: weighted(|e| e.loss),
                accuracy: weighted(|e| e.accuracy),
                samples: total,
            }
        });
        record.final_test = last.test;
        let eval = last.test.or(federated);
        let metrics = measure(eval, &fairness, device, bytes);
        let values = values(&self.objectives, &metrics);
        record.metrics = metrics;
        record.violations = crate::fairness::violations(&self.config.fairness.constraints, &fairness);
        record.feasible = record.violations.is_empty();
        if let Some(tuner) = &self.tuner {
            let tuner = tuner.lock().unwrap_or_else(PoisonError::into_inner);
            record.policy_best = Some(tuner.policy.best());
            record.policy = Some(tuner.policy.summary());
        }
        let outcome = Outcome::Complete {
            values,
            feasible: record.feasible,
        };
        self.finish(record, outcome, started)
    }

    fn finish(&self, mut record: TrialRecord, outcome: Outcome, started: Instant) -> TrialRecord {
        record.seconds = started.elapsed().as_secs_f64();
        let mut study = lock(&self.study);
        match study.tell(self.number, outcome) {
            Ok(trial) => {
                record.state = trial.state;
                record.values = trial.values.clone();
            }
            Err(e) => warn!(trial = self.number, "tell refused: {e}"),
        }
        record
    }
}

/// Serves `endpoint` and runs the federated study `tune` describes over the agents
/// that connect; then tells every agent to stop and closes the endpoint.
///
/// # Errors
/// [`TuneError`] when the configuration or the space is invalid or too few agents
/// connect.
pub async fn tune(
    endpoint: quinn::Endpoint,
    config: AggregatorConfig,
    tune: TuneConfig,
    mut hooks: TuneHooks,
    mut shutdown: watch::Receiver<bool>,
) -> Result<TuneReport, TuneError> {
    config.validate()?;
    tune.validate()?;
    check_strategies(&tune.space, config.secure_aggregation.enabled)?;
    let objectives: Vec<Objective> = tune.objectives.iter().map(|m| m.objective()).collect();
    let mut study = Study::new(
        tune.space.clone(),
        objectives.clone(),
        tune.sampler.build_with_startup(tune.seed, Some(tune.startup())),
        tune.pruner.build(),
    )?;
    if let Some(weights) = tune.weights.clone() {
        study = study.with_weights(weights)?;
    }
    if let Some(path) = &tune.storage {
        study = study.with_storage(Box::new(Journal::new(path)))?;
    }
    let study = Arc::new(Mutex::new(study));
    let fed = &config.federation;
    let registry = accept_agents(&endpoint, fed);
    let mut federation_hooks = crate::driver::Hooks::default();
    let result = async {
        if !wait_for_agents(
            &registry,
            fed.min_agents,
            fed.wait_for_agents(),
            &mut federation_hooks,
            &mut shutdown,
        )
        .await?
        {
            return Ok(finish_report(&study, Vec::new(), true));
        }
        let buffers = Arc::new(Semaphore::new(fed.max_buffered_updates));
        let (events, mut inbox) = tokio::sync::mpsc::unbounded_channel();
        let mut running: JoinSet<TrialRecord> = JoinSet::new();
        let mut claimed: HashMap<u64, BTreeSet<String>> = HashMap::new();
        let mut records = Vec::new();
        let mut asked = lock(&study).trials().len();
        let resumed = asked;
        let mut interrupted = false;
        let evaluator = hooks.evaluator.clone();
        let mut emit = |event: &TuneEvent| {
            if let Some(on_event) = hooks.on_event.as_mut() {
                on_event(event);
            }
        };
        loop {
            // Start trials while there are slots and free agents.
            while asked < tune.trials && running.len() < tune.parallel && !*shutdown.borrow() {
                let pool = if tune.parallel == 1 {
                    None
                } else {
                    let taken: BTreeSet<&String> = claimed.values().flatten().collect();
                    let mut free: Vec<String> = registry
                        .snapshot()
                        .into_iter()
                        .map(|a| a.id)
                        .filter(|id| !taken.contains(id))
                        .collect();
                    free.sort();
                    let share = free.len() / (tune.parallel - running.len());
                    if share < fed.min_updates.max(1) {
                        break;
                    }
                    Some(free.into_iter().take(share).collect::<BTreeSet<String>>())
                };
                let asked_trial = {
                    let mut study = lock(&study);
                    if asked == 0 && tune.baseline_first {
                        study.ask_with(baseline_params(&tune.space, &config))
                    } else {
                        study.ask()
                    }
                };
                let trial = match asked_trial {
                    Ok(trial) => trial,
                    Err(StudyError::Sampler(e)) => {
                        info!("the sampler has nothing left to propose ({e}); ending the study");
                        asked = tune.trials;
                        break;
                    }
                    Err(e) => return Err(e.into()),
                };
                asked += 1;
                let seed = tune.seed.wrapping_mul(1_000_003).wrapping_add(trial.number);
                let trial_cfg = match trial_config(&config, &trial.params, seed, tune.rounds) {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(trial = trial.number, "{e}");
                        let _ = lock(&study).tell(trial.number, Outcome::Failed);
                        continue;
                    }
                };
                let tuner = if tune.sampler.adapts_within_trials() {
                    let adaptive: Vec<(String, Distribution)> = tune
                        .space
                        .params
                        .iter()
                        .filter(|p| p.adaptive && p.scope == Scope::Client)
                        .map(|p| (p.name.clone(), p.distribution.clone()))
                        .collect();
                    match FedExPolicy::new(&tune.space, &trial.params, tune.policy.clone(), seed) {
                        Ok(policy) => Some(Arc::new(Mutex::new(PolicyTuner {
                            policy,
                            adaptive,
                            draws: HashMap::new(),
                        }))),
                        Err(e) => {
                            warn!(trial = trial.number, "no within-trial policy: {e}");
                            let _ = lock(&study).tell(trial.number, Outcome::Failed);
                            continue;
                        }
                    }
                } else {
                    None
                };
                let agents = pool.as_ref().map_or_else(|| registry.len(), BTreeSet::len);
                emit(&TuneEvent::TrialStarted {
                    number: trial.number,
                    params: trial.params.clone(),
                    agents,
                });
                info!(trial = trial.number, agents, "trial started");
                if let Some(pool) = &pool {
                    claimed.insert(trial.number, pool.clone());
                }
                let run = TrialRun {
                    number: trial.number,
                    params: trial.params,
                    config: Arc::new(trial_cfg),
                    registry: registry.clone(),
                    buffers: buffers.clone(),
                    evaluator: evaluator.clone(),
                    study: study.clone(),
                    pool,
                    objectives: tune.objectives.clone(),
                    tuner,
                    events: events.clone(),
                };
                running.spawn(run.run(shutdown.clone()));
            }
            if running.is_empty() {
                if asked < tune.trials && !*shutdown.borrow() {
                    warn!(
                        asked,
                        trials = tune.trials,
                        connected = registry.len(),
                        "too few agents left for another trial (each needs federation.min_updates); ending the study"
                    );
                }
                break;
            }
            tokio::select! {
                Some(event) = inbox.recv() => emit(&event),
                joined = running.join_next() => match joined {
                    Some(Ok(record)) => {
                        while let Ok(event) = inbox.try_recv() {
                            emit(&event);
                        }
                        claimed.remove(&record.number);
                        info!(trial = record.number, state = ?record.state, values = ?record.values, "trial finished");
                        let event = TuneEvent::TrialFinished(Box::new(record.clone()));
                        emit(&event);
                        records.push(record);
                    }
                    Some(Err(e)) => warn!("a trial task failed: {e}"),
                    None => {}
                },
                _ = shutdown.changed() => {
                    interrupted = true;
                }
            }
            if *shutdown.borrow() {
                interrupted = true;
            }
        }
        // Trials of an earlier session, as the journal kept them.
        records.extend(lock(&study).trials()[..resumed].iter().map(TrialRecord::resumed));
        records.sort_by_key(|r| r.number);
        Ok(finish_report(&study, records, interrupted))
    }
    .await;
    stop_agents(&registry, &endpoint, "the study finished").await;
    result
}

/// The aggregator config's own values for the space's parameters, so the baseline
/// trial runs what the service would run untuned.
fn baseline_params(space: &SearchSpace, config: &AggregatorConfig) -> Params {
    let mut params = Params::new();
    for p in &space.params {
        let value = match p.name.as_str() {
            "optimizer" => Some(ParamValue::Categorical(
                match config.client.optimizer {
                    fedtune_protocol::Optimizer::Adam => "adam",
                    fedtune_protocol::Optimizer::Sgd => "sgd",
                }
                .into(),
            )),
            "strategy" => Some(ParamValue::Categorical(config.strategy.name().into())),
            "cohort" => Some(ParamValue::Float(config.federation.cohort)),
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

fn finish_report(study: &Mutex<Study>, trials: Vec<TrialRecord>, interrupted: bool) -> TuneReport {
    let study = lock(study);
    TuneReport {
        objectives: study.objectives().to_vec(),
        best: study.best_trial().map(|t| t.number),
        pareto_front: study.pareto_front().iter().map(|t| t.number).collect(),
        rounds_spent: trials.iter().map(|t| t.rounds).sum(),
        trials,
        interrupted,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use fedtune_protocol::TrainMetrics;
    use fedtune_protocol::space::ParamSpec;

    use super::*;

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
        assert!(
            check_space(&server_adaptive)
                .unwrap_err()
                .to_string()
                .contains("cannot be adaptive")
        );
    }

    #[test]
    fn strategy_choices_are_checked_against_secure_aggregation() {
        let space = crate::tuning::spec::parse_space_toml(
            "[params]\nstrategy = { spec = \"choice(fedavg, fedadam, median)\", scope = \"server\" }\n",
        )
        .unwrap();
        check_strategies(&space, false).unwrap();
        let err = check_strategies(&space, true).unwrap_err().to_string();
        assert!(err.contains("median") && err.contains("secure aggregation"), "{err}");
        let sum_only = crate::tuning::spec::parse_space_toml(
            "[params]\nstrategy = { spec = \"choice(fedavg, fedadam)\", scope = \"server\" }\n",
        )
        .unwrap();
        check_strategies(&sum_only, true).unwrap();
    }
}
