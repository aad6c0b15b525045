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

pub mod client_param;
mod params;
mod trial;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use fedtune_tuning::space::{Distribution, Scope, SearchSpace};
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

pub use crate::config::TuningSection;
use crate::config::{AggregatorConfig, ConfigError};
use crate::driver::{FederationError, Goodbye, accept_agents, stop_agents, wait_for_agents};
pub use crate::trial_metric::TrialMetric;
use fedtune_federation::{Evaluator, GlobalEvaluation};
use fedtune_store::RunStatus;
use fedtune_tuning::{
    AskedTrial, FedExConfig, FedExPolicy, Journal, Objective, Outcome, Params, PolicySummary, PrunerConfig,
    SamplerKind, Study, StudyError, TrialState,
};
use params::baseline_params;
pub use params::{apply_client, check_server_choices, check_space, check_space_fits, check_strategies, trial_config};
pub(crate) use trial::Resumed;
use trial::{PolicyTuner, TrialRun, lock};

/// How to run a federated study.
#[derive(Debug, Clone)]
pub struct TuneConfig {
    /// The searched space.
    pub space: SearchSpace,
    /// What trials are scored on; the first is the primary objective.
    pub objectives: Vec<TrialMetric>,
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
            objectives: vec![TrialMetric::Accuracy],
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
            let objectives = fedtune_tuning::load_objectives(&self.space).map_err(|e| invalid(e.to_string()))?;
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
            fedtune_tuning::spec::load_space_toml(&self.space).map_err(|e| match e {
                // The I/O error names the file already.
                fedtune_tuning::SpecError::Io { .. } => ConfigError::Invalid(format!("[tuning] space: {e}")),
                e => ConfigError::Invalid(format!("[tuning] space: {}: {e}", self.space.display())),
            })?
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
    pub metrics: BTreeMap<TrialMetric, f64>,
    /// Server-side evaluation of the final model.
    pub final_test: Option<GlobalEvaluation>,
    /// The within-trial policy's best values (`bayes+rl`), which the trial reports as
    /// its result alongside `params`.
    pub policy_best: Option<Params>,
    /// The within-trial policy's final state.
    pub policy: Option<PolicySummary>,
    /// Wall time of the trial.
    pub seconds: f64,
    /// Why a failed trial failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail_reason: Option<String>,
    /// Where this trial's final model was written, when it became the study's best
    /// (`[model] save`, or next to the report); a later best overwrites the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<std::path::PathBuf>,
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
    /// The record of a trial as the study holds it: one a resumed study already held, or
    /// one that failed before it started.
    fn from_trial(t: &fedtune_tuning::FrozenTrial) -> Self {
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
            model: None,
            policy_best: None,
            policy: None,
            seconds: 0.0,
            fail_reason: t.fail_reason.clone(),
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
    /// Counts trials, rounds, updates, bytes and connected agents for `/metrics`.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
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
    hooks: TuneHooks,
    shutdown: watch::Receiver<bool>,
) -> Result<TuneReport, TuneError> {
    let mut study = new_study(&config, &tune)?;
    if let Some(path) = &tune.storage {
        study = study.with_storage(Box::new(Journal::new(path)))?;
        study = reseed_for_resume(study, &tune, None);
    }
    run_study(endpoint, config, tune, study, None, hooks, shutdown).await
}

/// The study `tune` describes, with no storage yet.
///
/// # Errors
/// [`TuneError`] when the configuration, the space or the objectives are invalid.
pub(crate) fn new_study(config: &AggregatorConfig, tune: &TuneConfig) -> Result<Study, TuneError> {
    config.validate()?;
    tune.validate()?;
    check_space_fits(config, &tune.space)?;
    let objectives: Vec<Objective> = tune.objectives.iter().map(|m| m.objective()).collect();
    let mut study = Study::new(
        tune.space.clone(),
        objectives,
        tune.sampler.build_with_startup(tune.seed, Some(tune.startup())),
        tune.pruner.build(),
    )?;
    if let Some(weights) = tune.weights.clone() {
        study = study.with_weights(weights)?;
    }
    Ok(study)
}

/// A resumed study's sampler, seeded by [`fedtune_tuning::resume_seed`] from the seed,
/// the trials the study already holds and (when given) the aggregator's owner name.
pub(crate) fn reseed_for_resume(study: Study, tune: &TuneConfig, owner: Option<&str>) -> Study {
    let held = study.trials().len() as u64;
    if held == 0 && owner.is_none() {
        return study;
    }
    study.with_sampler(tune.sampler.build_resumed(tune.seed, held, owner, Some(tune.startup())))
}

/// What a study kept in a run's store brings: its writer, and how it takes over running
/// trials (its own from an earlier session, or those whose owner went silent).
pub(crate) struct Durable {
    pub(crate) run: fedtune_store::RunId,
    pub(crate) writer: Arc<fedtune_store::StoreWriter>,
    /// The name this aggregator writes trials as.
    pub(crate) owner: String,
    /// How long a silent owner keeps its trials.
    pub(crate) stale_after: std::time::Duration,
}

/// Where a study that ended with `result` is; `store_failed` when a write to its store
/// failed.
pub(crate) fn study_status(result: &Result<TuneReport, TuneError>, store_failed: bool) -> RunStatus {
    match result {
        _ if store_failed => RunStatus::Failed,
        Ok(report) if !report.interrupted && report.trials.iter().all(|t| t.state != TrialState::Running) => {
            RunStatus::Finished
        }
        Ok(_) => RunStatus::Interrupted,
        Err(_) => RunStatus::Failed,
    }
}

impl Durable {
    /// A running trial this aggregator may run now, with the checkpoint it resumes from
    /// (`None` when it committed no round yet); the study then knows it.
    fn claim(&self, study: &Mutex<Study>, busy: &[u64]) -> Result<Option<(AskedTrial, Option<Resumed>)>, TuneError> {
        let store_error = |e: fedtune_store::StoreError| TuneError::Federation(FederationError::Store(e));
        let (run, stale, busy) = (self.run, self.stale_after, busy.to_vec());
        let Some(trial) = self
            .writer
            .call(move |store| store.claim_trial(run, stale, &busy))
            .map_err(store_error)?
        else {
            return Ok(None);
        };
        lock(study).sync()?;
        let number = trial.number;
        let state = self
            .writer
            .call(move |store| store.latest_checkpoint(run, number))
            .map_err(store_error)?;
        let rounds: Vec<fedtune_federation::RoundRecord> = self
            .writer
            .call(move |store| store.rounds(run, Some(number)))
            .map_err(store_error)?
            .into_iter()
            .map(|r| r.record)
            .collect();
        let checkpoint = state.as_ref().map_or(0, |s| s.round);
        if checkpoint != rounds.len() as u64 {
            return Err(store_error(fedtune_store::StoreError::Corrupt(format!(
                "trial {number}: {} rounds are committed but the last checkpoint is at round {checkpoint}",
                rounds.len()
            ))));
        }
        info!(
            run,
            trial = number,
            round = checkpoint,
            "taking up trial {number} at round {checkpoint}"
        );
        let asked = AskedTrial {
            number,
            params: trial.params,
        };
        Ok(Some((asked, state.map(|state| Resumed { state, rounds }))))
    }

    /// Whether other aggregators run trials of the study.
    fn others_running(&self) -> Result<bool, TuneError> {
        let (run, owner) = (self.run, self.owner.clone());
        self.writer
            .call(move |store| {
                Ok(store
                    .trials(run)?
                    .into_iter()
                    .any(|t| t.trial.state == TrialState::Running && t.owner.as_deref() != Some(owner.as_str())))
            })
            .map_err(|e| TuneError::Federation(FederationError::Store(e)))
    }

    /// Commits the study's end (before its agents are told to stop, so a crash after it
    /// does not leave the study waiting at restart for agents that are gone). While other
    /// aggregators still run trials of a shared study, it stays `running`, however this
    /// one ended: a study is served by all its aggregators, and one that failed (its agents
    /// never came, its store broke) says so in its own exit, not by marking the study
    /// failed under the others.
    fn record_end(&self, result: &Result<TuneReport, TuneError>) {
        let (run, status) = (self.run, study_status(result, self.writer.error().is_some()));
        if self.others_running().unwrap_or(false) {
            info!(
                run,
                status = status.as_str(),
                "other aggregators still run trials of the study; it stays running"
            );
            return;
        }
        if let Err(e) = self.writer.call(move |store| store.set_status(run, status, None)) {
            warn!(run, "the study's end is not recorded: {e}");
        }
    }
}

/// Runs `study` over the agents that connect to `endpoint`; see [`tune`].
pub(crate) async fn run_study(
    endpoint: quinn::Endpoint,
    config: AggregatorConfig,
    tune: TuneConfig,
    study: Study,
    durable: Option<Durable>,
    mut hooks: TuneHooks,
    mut shutdown: watch::Receiver<bool>,
) -> Result<TuneReport, TuneError> {
    let study = Arc::new(Mutex::new(study));
    let fed = &config.federation;
    let registry = accept_agents(&endpoint, fed);
    if let Some(metrics) = &hooks.metrics {
        metrics.watch_agents(&registry);
    }
    let metrics = hooks.metrics.clone();
    let mut federation_hooks = crate::driver::Hooks::default();
    let result = async {
        let nothing_left = {
            let study = lock(&study);
            study.trials().len() >= tune.trials && study.trials().iter().all(|t| t.state != TrialState::Running)
        };
        if nothing_left {
            info!("every trial of the study is done");
            let records = lock(&study).trials().iter().map(TrialRecord::from_trial).collect();
            return Ok(finish_report(&study, records, false));
        }
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
        let mut active: BTreeSet<u64> = BTreeSet::new();
        let mut claimed: HashMap<u64, BTreeSet<String>> = HashMap::new();
        let mut records = Vec::new();
        // Trials asked in this process; a store counts the study's trials itself.
        let mut asked = lock(&study).trials().len();
        let mut exhausted = false;
        let mut interrupted = false;
        let evaluator = hooks.evaluator.clone();
        let mut emit = |event: &TuneEvent| {
            if let Some(metrics) = &metrics {
                match event {
                    TuneEvent::TrialStarted { .. } => metrics.trial_reached(TrialState::Running),
                    TuneEvent::TrialFinished(t) => metrics.trial_reached(t.state),
                    TuneEvent::Round { .. } => {}
                }
            }
            if let Some(on_event) = hooks.on_event.as_mut() {
                on_event(event);
            }
        };
        loop {
            let more_to_ask = |asked: usize, exhausted: bool| !exhausted && (durable.is_some() || asked < tune.trials);
            // Start trials while there are slots and free agents.
            while running.len() < tune.parallel && !*shutdown.borrow() {
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
                let busy: Vec<u64> = active.iter().copied().collect();
                let taken_up = match &durable {
                    Some(durable) => durable.claim(&study, &busy)?,
                    None => None,
                };
                let (trial, resume) = match taken_up {
                    Some(taken_up) => taken_up,
                    None if !more_to_ask(asked, exhausted) => break,
                    None => match ask(&study, &tune, &config) {
                        Ok(trial) => {
                            asked += 1;
                            (trial, None)
                        }
                        Err(StudyError::Sampler(e)) => {
                            info!("the sampler has nothing left to propose ({e}); ending the study");
                            exhausted = true;
                            break;
                        }
                        Err(StudyError::Full) => {
                            exhausted = true;
                            break;
                        }
                        Err(e) => return Err(e.into()),
                    },
                };
                let seed = tune.seed.wrapping_mul(1_000_003).wrapping_add(trial.number);
                let trial_cfg = match trial_config(&config, &trial.params, seed, tune.rounds) {
                    Ok(c) => c,
                    Err(e) => {
                        if let Some(record) = failed_before_start(&study, trial.number, e.to_string()) {
                            emit(&TuneEvent::TrialFinished(Box::new(record.clone())));
                            records.push(record);
                        }
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
                            let reason = format!("no within-trial policy: {e}");
                            if let Some(record) = failed_before_start(&study, trial.number, reason) {
                                emit(&TuneEvent::TrialFinished(Box::new(record.clone())));
                                records.push(record);
                            }
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
                active.insert(trial.number);
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
                    resume,
                    writer: durable.as_ref().map(|d| d.writer.clone()),
                    metrics: metrics.clone(),
                };
                running.spawn(run.run(shutdown.clone()));
            }
            if running.is_empty()
                && !more_to_ask(asked, exhausted)
                && !*shutdown.borrow()
                && let Some(durable) = &durable
                && durable.others_running()?
            {
                // A shared study is done when its last trial is: wait for the other
                // aggregators' trials to end, or to go silent and be taken over here.
                tokio::select! {
                    () = tokio::time::sleep(durable.stale_after / 4) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            if running.is_empty() {
                if more_to_ask(asked, exhausted) && !*shutdown.borrow() {
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
                        active.remove(&record.number);
                        match (&record.values, &record.fail_reason) {
                            (Some(values), _) => {
                                let values: Vec<String> = values.iter().map(|v| format!("{v:.4}")).collect();
                                info!(trial = record.number, state = %record.state, values = %values.join(", "), "trial finished");
                            }
                            (None, Some(reason)) => info!(trial = record.number, state = %record.state, reason = %reason, "trial finished"),
                            (None, None) => info!(trial = record.number, state = %record.state, "trial finished"),
                        }
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
        // Every trial of the study, as this session ran it or as the storage holds it
        // (earlier sessions', other aggregators', and those handed over to another).
        lock(&study).sync()?;
        let mut ran: HashMap<u64, TrialRecord> = records.into_iter().map(|r| (r.number, r)).collect();
        let records = lock(&study)
            .trials()
            .iter()
            .map(|t| match ran.remove(&t.number) {
                Some(record) if record.state != TrialState::Running || t.state == TrialState::Running => record,
                _ => TrialRecord::from_trial(t),
            })
            .collect();
        Ok(finish_report(&study, records, interrupted))
    }
    .await;
    if let Some(durable) = &durable {
        durable.record_end(&result);
    }
    let goodbye = Goodbye::after(&result, |report| report.interrupted, "the study");
    stop_agents(&registry, &endpoint, goodbye).await;
    result
}

/// Tells the study that trial `number` failed before it started (its parameters do not
/// apply), for `reason`; returns its record, which the study's progress and report list
/// like any other finished trial.
fn failed_before_start(study: &Mutex<Study>, number: u64, reason: String) -> Option<TrialRecord> {
    warn!(trial = number, "cannot start: {reason}");
    match lock(study).tell(number, Outcome::failed(reason)) {
        Ok(trial) => Some(TrialRecord::from_trial(trial)),
        Err(e) => {
            warn!(trial = number, "not told: {e}");
            None
        }
    }
}

/// The next trial of the study: the baseline first when asked for (unless a process
/// sharing the study asked it already), then the sampler's.
fn ask(study: &Mutex<Study>, tune: &TuneConfig, config: &AggregatorConfig) -> Result<AskedTrial, StudyError> {
    let mut study = lock(study);
    if tune.baseline_first {
        study.sync()?;
        if study.trials().is_empty() {
            match study.ask_unique(baseline_params(&tune.space, config)) {
                Err(StudyError::Duplicate) => {}
                asked => return asked,
            }
        }
    }
    study.ask()
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
