//! The federation driver: waits for agents, runs rounds, evaluates, shuts down.
//!
//! This is the thin async shell around [`Round`]: it sends tasks over QUIC, feeds what
//! comes back into the state machine and applies the average when the round closes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fedtune_protocol::{
    Ack, AgentMessage, AggregatorMessage, ClientHyperparameters, ErrorCode, ErrorMessage, Evaluate, Evaluation, Limits,
    ModelSpec, Shutdown, Task, Update,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, info, info_span, warn};

use crate::adapt::ServerLrController;
use crate::config::{AggregatorConfig, ConfigError, Selection};
use crate::fairness::{FairnessReport, History, violations};
use crate::registry::{AgentHandle, Registry, accept_loop};
use crate::round::{AgentFailure, AgentResult, Round, RoundSpec, RoundStatus};
use crate::strategy::Strategy;
use crate::wire::{params_to_bytes, read_agent_frame, reply_error, write_frame_shared, write_message};

/// Loss and accuracy of a global model on a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GlobalEvaluation {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Accuracy.
    pub accuracy: f64,
    /// Samples measured.
    pub samples: u64,
}

/// Server-side evaluation of the global model (e.g. on a held-out test set), as
/// Flower's `evaluate_fn`.
pub trait Evaluator: Send + Sync + 'static {
    /// Evaluates `params` (laid out by `model.manifest()`).
    ///
    /// # Errors
    /// A message saying why the model could not be evaluated.
    fn evaluate(&self, model: &ModelSpec, params: &[f32]) -> Result<GlobalEvaluation, String>;
}

/// What happened in one round.
#[derive(Debug, Clone, Serialize)]
pub struct RoundRecord {
    /// Round number (0-based).
    pub round: u64,
    /// Agents asked.
    pub cohort: Vec<String>,
    /// Accepted updates.
    pub updates: usize,
    /// Whether the average was applied (quorum met).
    pub applied: bool,
    /// Agents that did not contribute, and why.
    pub failures: Vec<FailureRecord>,
    /// Sample-weighted mean of the agents' training loss.
    pub train_loss: f64,
    /// Sample-weighted validation accuracy of the round's incoming global model, as the
    /// agents measured it before training (federated evaluation).
    pub federated_accuracy: f64,
    /// Sample-weighted validation loss of the round's incoming global model.
    pub federated_loss: f64,
    /// Per-agent validation accuracy of the incoming global model.
    pub agent_accuracy: BTreeMap<String, f64>,
    /// The server learning rate used this round, for strategies that have one.
    pub server_learning_rate: Option<f64>,
    /// Fairness of the incoming global model across the agents that measured it.
    pub fairness: FairnessReport,
    /// Fairness constraints this round violated.
    pub violations: Vec<String>,
    /// Server-side evaluation of the global model after the round.
    pub test: Option<GlobalEvaluation>,
    /// Wall time of the round, from the first task sent to the model updated.
    pub seconds: f64,
    /// Device time the round cost: the agents' task wall times, summed.
    pub device_seconds: f64,
    /// Model bytes the round moved: the global model to each cohort member plus each
    /// accepted update.
    pub payload_bytes: u64,
}

/// Chooses each agent's client hyperparameters for a round and learns from what the
/// agents report (the within-trial half of "bayes+rl").
pub trait ClientTuner: Send {
    /// The hyperparameters `agent` trains with this round; `base` is the trial's.
    fn assign(&mut self, agent: &str, base: &ClientHyperparameters) -> ClientHyperparameters;
    /// The round's accepted results, each with what the agent used and proposes.
    fn observe(&mut self, results: &[AgentResult]);
}

/// A cohort member that did not contribute.
#[derive(Debug, Clone, Serialize)]
pub struct FailureRecord {
    /// Agent id.
    pub agent: String,
    /// Why.
    pub reason: String,
}

impl From<AgentFailure> for FailureRecord {
    fn from(f: AgentFailure) -> Self {
        Self {
            agent: f.agent,
            reason: f.reason,
        }
    }
}

/// The result of a whole run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Every round, in order.
    pub rounds: Vec<RoundRecord>,
    /// Federated evaluation of the final model on each agent's validation split.
    pub final_agent_evaluation: BTreeMap<String, GlobalEvaluation>,
    /// Server-side evaluation of the final model.
    pub final_test: Option<GlobalEvaluation>,
    /// Fairness of the final model (from the final evaluation, else the last round).
    pub final_fairness: FairnessReport,
    /// Fairness constraints the final model violates; a run that ends in violation is
    /// infeasible for tuning.
    pub final_violations: Vec<String>,
    /// Whether the run stopped early because shutdown was requested.
    pub interrupted: bool,
    /// Final global parameters.
    #[serde(skip)]
    pub global: Vec<f32>,
}

/// Why a federation could not run.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// Not enough agents connected in time.
    #[error("only {connected} of the {needed} required agents connected within {waited:?}")]
    NotEnoughAgents {
        /// Agents connected when the wait ended.
        connected: usize,
        /// `federation.min_agents`.
        needed: usize,
        /// How long the aggregator waited.
        waited: Duration,
    },
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// Progress callback, called after each round.
pub type OnRound = Box<dyn FnMut(&RoundRecord) + Send>;
/// Progress callback while waiting for agents, with (connected, needed).
pub type OnWaiting = Box<dyn FnMut(usize, usize) + Send>;

/// Callbacks into the run: server-side evaluation and progress reporting.
#[derive(Default)]
pub struct Hooks {
    /// Evaluates the global model after each round and at the end.
    pub evaluator: Option<Arc<dyn Evaluator>>,
    /// Called after each round.
    pub on_round: Option<OnRound>,
    /// Called while waiting for agents, with (connected, needed).
    pub on_waiting: Option<OnWaiting>,
}

/// A finished exchange with one agent, sent to the round loop.
enum Event {
    Update {
        agent: String,
        update: Box<Update>,
        delta: Vec<f32>,
        verdict: oneshot::Sender<Result<(), ErrorMessage>>,
    },
    Failed {
        agent: String,
        reason: String,
    },
}

/// Serves `endpoint` and runs the federation `config` describes until the last round or
/// until `shutdown` becomes `true`; then tells every agent to stop and closes the
/// endpoint.
///
/// # Errors
/// [`FederationError`] when the configuration is invalid or too few agents connect.
pub async fn run(
    endpoint: quinn::Endpoint,
    config: AggregatorConfig,
    mut hooks: Hooks,
    mut shutdown: watch::Receiver<bool>,
) -> Result<RunReport, FederationError> {
    config.validate()?;
    let config = Arc::new(config);
    let fed = &config.federation;
    let registry = accept_agents(&endpoint, fed);

    let result = async {
        if !wait_for_agents(
            &registry,
            fed.min_agents,
            fed.wait_for_agents(),
            &mut hooks,
            &mut shutdown,
        )
        .await?
        {
            return Ok(empty_report(Vec::new(), true));
        }
        let buffers = Arc::new(Semaphore::new(fed.max_buffered_updates));
        let mut driver = Driver::new(config.clone(), registry.clone(), buffers, hooks.evaluator.clone(), 0)?;
        let mut rounds = Vec::new();
        for round in 0..fed.rounds {
            if *shutdown.borrow() {
                break;
            }
            let span = info_span!("round", round);
            let Some(record) = driver.run_round(round, &mut shutdown).instrument(span).await else {
                break;
            };
            if let Some(on_round) = hooks.on_round.as_mut() {
                on_round(&record);
            }
            rounds.push(record);
        }
        let interrupted = *shutdown.borrow() || rounds.len() < fed.rounds as usize;
        let final_agent_evaluation = if fed.final_evaluation && !interrupted {
            driver.evaluate_on_agents(fed.rounds).await
        } else {
            BTreeMap::new()
        };
        let global = driver.global;
        let final_fairness = final_fairness(&final_agent_evaluation, rounds.last());
        let final_violations = violations(&config.fairness.constraints, &final_fairness);
        for violation in &final_violations {
            warn!("final model: {violation}");
        }
        Ok(RunReport {
            final_test: rounds.last().and_then(|r| r.test),
            rounds,
            final_agent_evaluation,
            final_fairness,
            final_violations,
            interrupted,
            global,
        })
    }
    .await;

    stop_agents(&registry, &endpoint, "the federation finished").await;
    result
}

/// Fairness of a final model: from its evaluation on the agents when there is one, else
/// the last round's; participation is the run's so far.
pub(crate) fn final_fairness(
    per_agent: &BTreeMap<String, GlobalEvaluation>,
    last: Option<&RoundRecord>,
) -> FairnessReport {
    let last_fairness = last.map(|r| r.fairness).unwrap_or_default();
    if per_agent.is_empty() {
        return last_fairness;
    }
    let pairs: Vec<(f64, f64)> = per_agent.values().map(|e| (e.accuracy, e.loss)).collect();
    FairnessReport {
        participation_jain: last_fairness.participation_jain,
        ..FairnessReport::measure(&pairs, &[])
    }
}

/// Starts accepting agents on `endpoint` into a new registry.
pub(crate) fn accept_agents(endpoint: &quinn::Endpoint, fed: &crate::config::FederationConfig) -> Arc<Registry> {
    let registry = Arc::new(Registry::default());
    tokio::spawn(accept_loop(
        endpoint.clone(),
        registry.clone(),
        fed.max_agents,
        fed.max_payload_bytes,
    ));
    registry
}

fn empty_report(rounds: Vec<RoundRecord>, interrupted: bool) -> RunReport {
    RunReport {
        rounds,
        final_agent_evaluation: BTreeMap::new(),
        final_test: None,
        final_fairness: FairnessReport::default(),
        final_violations: Vec::new(),
        interrupted,
        global: Vec::new(),
    }
}

/// Waits for `needed` agents; `Ok(false)` when shutdown was requested meanwhile.
pub(crate) async fn wait_for_agents(
    registry: &Registry,
    needed: usize,
    limit: Duration,
    hooks: &mut Hooks,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<bool, FederationError> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + limit;
    let mut last_report = None;
    loop {
        let connected = registry.len();
        if connected >= needed {
            return Ok(true);
        }
        if last_report != Some(connected) {
            info!("waiting for agents: {connected}/{needed} connected (giving up after {limit:?})");
            if let Some(on_waiting) = hooks.on_waiting.as_mut() {
                on_waiting(connected, needed);
            }
            last_report = Some(connected);
        }
        tokio::select! {
            _ = registry.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = tokio::time::sleep_until(deadline) => {
                return Err(FederationError::NotEnoughAgents {
                    connected: registry.len(), needed, waited: started.elapsed(),
                });
            }
            _ = shutdown.changed() => return Ok(false),
        }
    }
}

/// The state a run (or one trial of a study) carries from round to round.
pub(crate) struct Driver {
    config: Arc<AggregatorConfig>,
    registry: Arc<Registry>,
    /// The trial the tasks belong to (0 outside a study).
    trial: u64,
    /// The agents this run may use; all connected agents when `None`.
    pub(crate) pool: Option<BTreeSet<String>>,
    /// Per-agent client hyperparameters; the config's for everyone when `None`.
    pub(crate) tuner: Option<Box<dyn ClientTuner>>,
    pub(crate) global: Vec<f32>,
    rng: StdRng,
    buffers: Arc<Semaphore>,
    evaluator: Option<Arc<dyn Evaluator>>,
    history: History,
    strategy: Box<dyn Strategy>,
    server_lr: Option<ServerLrController>,
}

impl Driver {
    /// A driver for `config`, starting from a freshly initialised model (seeded by
    /// `federation.seed`). `buffers` bounds the updates held in memory, shared by every
    /// driver of the aggregator.
    pub(crate) fn new(
        config: Arc<AggregatorConfig>,
        registry: Arc<Registry>,
        buffers: Arc<Semaphore>,
        evaluator: Option<Arc<dyn Evaluator>>,
        trial: u64,
    ) -> Result<Self, ConfigError> {
        let mut rng = StdRng::seed_from_u64(config.federation.seed);
        let strategy = config
            .strategy
            .build()
            .map_err(|e| ConfigError::Invalid(format!("strategy: {e}")))?;
        let server_lr = config
            .server_lr
            .active_for(config.strategy.name())
            .then(|| ServerLrController::new(config.server_lr));
        Ok(Self {
            global: config.model.init_params(&mut rng),
            rng,
            trial,
            pool: None,
            tuner: None,
            config,
            registry,
            buffers,
            evaluator,
            history: History::default(),
            strategy,
            server_lr,
        })
    }

    /// Sets the strategy's server learning rate (for strategies that have one).
    pub(crate) fn set_server_learning_rate(&mut self, lr: f64) -> Result<(), crate::strategy::StrategyError> {
        self.strategy.set_server_learning_rate(lr)
    }

    /// The connected agents this driver may use.
    pub(crate) fn agents(&self) -> Vec<AgentHandle> {
        let mut agents = self.registry.snapshot();
        if let Some(pool) = &self.pool {
            agents.retain(|a| pool.contains(&a.id));
        }
        agents
    }

    /// Picks the round's cohort among the connected agents (seeded).
    fn select_cohort(&mut self, connected: &[AgentHandle]) -> Vec<AgentHandle> {
        let size = self.config.federation.cohort_size(connected.len());
        let chosen: Vec<AgentHandle> = match self.config.fairness.selection {
            Selection::Uniform => connected.sample(&mut self.rng, size).cloned().collect(),
            Selection::Fairness => {
                let history = &self.history;
                match connected.sample_weighted(&mut self.rng, size, |a| history.weight(&a.id)) {
                    Ok(chosen) => chosen.cloned().collect(),
                    Err(e) => {
                        warn!("fairness-aware selection failed ({e}); selecting uniformly");
                        connected.sample(&mut self.rng, size).cloned().collect()
                    }
                }
            }
        };
        self.history.record_selection(chosen.iter().map(|a| &a.id));
        chosen
    }

    /// Runs one round; `None` when shutdown was requested meanwhile.
    pub(crate) async fn run_round(&mut self, round: u64, shutdown: &mut watch::Receiver<bool>) -> Option<RoundRecord> {
        let config = self.config.clone();
        let fed = &config.federation;
        let started = Instant::now();
        let connected = self.agents();
        let cohort = self.select_cohort(&connected);
        let manifest = config.model.manifest();
        let spec = RoundSpec {
            trial: self.trial,
            round,
            cohort: cohort.iter().map(|a| a.id.clone()).collect(),
            manifest_hash: manifest.hash(),
            numel: manifest.numel(),
            target_updates: cohort.len(),
            min_updates: fed.min_updates,
            timeout: fed.round_timeout(),
        };
        info!(cohort = cohort.len(), connected = connected.len(), "round started");

        let payload = params_to_bytes(&self.global);
        let limits = Limits {
            max_payload: fed.max_payload_bytes,
            ..Limits::default()
        };
        let base = ClientHyperparameters {
            proximal_mu: self.strategy.proximal_mu().unwrap_or(config.client.proximal_mu),
            ..config.client.clone()
        };
        let mut tasks = Vec::with_capacity(cohort.len());
        for agent in &cohort {
            let hyperparameters = match self.tuner.as_mut() {
                Some(tuner) => tuner.assign(&agent.id, &base),
                None => base.clone(),
            };
            tasks.push(Task {
                study: fed.study.clone(),
                trial: self.trial,
                round,
                model: config.model.clone(),
                manifest_hash: spec.manifest_hash,
                hyperparameters,
                deadline_ms: spec.timeout.as_millis() as u64,
                seed: rand::RngExt::random(&mut self.rng),
                measure_train_loss: self.strategy.needs_train_loss(),
                secure: None,
            });
        }

        let aggregation = self.strategy.begin_round(round, spec.numel);
        let mut state = Round::new(spec, aggregation, Instant::now());
        let unmasked = if config.secure_aggregation.enabled {
            let setup = crate::secure::SecureRoundSetup {
                config: &config.secure_aggregation,
                limits,
                buffers: self.buffers.clone(),
            };
            Some(crate::secure::run(setup, &cohort, tasks, payload, &mut state, shutdown).await?)
        } else {
            let buffers = self.buffers.clone();
            collect_updates(&cohort, tasks, payload, limits, buffers, &mut state, shutdown).await?;
            None
        };
        let outcome = state.finish();
        let (spec, results, quorum_met) = (outcome.spec, outcome.results, outcome.quorum_met);
        let mut failures: Vec<FailureRecord> = outcome.failures.into_iter().map(Into::into).collect();
        let applied = quorum_met && {
            let delta = match unmasked {
                Some(unmasked) => unmasked,
                None => outcome.aggregation.finish().map_err(|e| e.to_string()),
            };
            let applied =
                delta.and_then(|delta| self.strategy.apply(&mut self.global, &delta).map_err(|e| e.to_string()));
            if let Err(e) = &applied {
                warn!(
                    "{} could not aggregate this round: {e}; global model unchanged",
                    self.strategy.name()
                );
                failures.push(FailureRecord {
                    agent: "*".into(),
                    reason: format!("aggregation failed: {e}"),
                });
            }
            applied.is_ok()
        };
        if !quorum_met {
            warn!(
                updates = results.len(),
                needed = fed.min_updates,
                "quorum not met: global model unchanged"
            );
        }
        if let Some(tuner) = self.tuner.as_mut() {
            tuner.observe(&results);
        }
        let test = match self.evaluator.clone() {
            Some(evaluator) => evaluate_global(evaluator, &config.model, &self.global).await,
            None => None,
        };
        for r in &results {
            self.history.record_accuracy(&r.agent, r.metrics.accuracy_before);
        }
        let per_agent: Vec<(f64, f64)> = results
            .iter()
            .map(|r| (r.metrics.accuracy_before, r.metrics.loss_before))
            .collect();
        let known: Vec<String> = connected.iter().map(|a| a.id.clone()).collect();
        let fairness = FairnessReport::measure(&per_agent, &self.history.participation(&known));
        let violations = violations(&config.fairness.constraints, &fairness);
        for violation in &violations {
            warn!("fairness: {violation}");
        }
        // The feedback loop: the loss the agents measured on this round's incoming model
        // judges the server step that produced it.
        let validation_loss = weighted_mean(&results, |m| m.metrics.loss_before);
        let server_learning_rate = self.strategy.server_learning_rate();
        if let (Some(controller), Some(lr)) = (self.server_lr.as_mut(), server_learning_rate)
            && !results.is_empty()
        {
            let next = controller.observe(validation_loss, lr);
            if next != lr
                && let Err(e) = self.strategy.set_server_learning_rate(next)
            {
                warn!("cannot adapt the server learning rate: {e}");
            }
        }
        let payload_bytes = (spec.cohort.len() + results.len()) as u64 * spec.numel as u64 * 4;
        let record = RoundRecord {
            round,
            cohort: spec.cohort,
            updates: results.len(),
            applied,
            train_loss: weighted_mean(&results, |m| m.metrics.train_loss),
            federated_accuracy: weighted_mean(&results, |m| m.metrics.accuracy_before),
            federated_loss: validation_loss,
            agent_accuracy: results
                .iter()
                .map(|r| (r.agent.clone(), r.metrics.accuracy_before))
                .collect(),
            failures,
            fairness,
            violations,
            server_learning_rate,
            test,
            seconds: started.elapsed().as_secs_f64(),
            device_seconds: results.iter().map(|r| r.metrics.wall_seconds).sum(),
            payload_bytes,
        };
        info!(
            updates = record.updates,
            failures = record.failures.len(),
            train_loss = record.train_loss,
            federated_accuracy = record.federated_accuracy,
            test_accuracy = record.test.map(|t| t.accuracy),
            seconds = record.seconds,
            "round finished"
        );
        Some(record)
    }
}

/// Sends the round's tasks and folds the updates into `state` until it closes; `None`
/// when shutdown was requested meanwhile.
async fn collect_updates(
    cohort: &[AgentHandle],
    tasks: Vec<Task>,
    payload: Bytes,
    limits: Limits,
    buffers: Arc<Semaphore>,
    state: &mut Round,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<()> {
    let (events, mut inbox) = mpsc::channel(cohort.len().max(1));
    let mut exchanges = JoinSet::new();
    for (agent, task) in cohort.iter().zip(tasks) {
        exchanges.spawn(fit_exchange(
            agent.clone(),
            task,
            payload.clone(),
            limits,
            buffers.clone(),
            events.clone(),
        ));
    }
    drop(events);
    while let RoundStatus::Collecting { deadline } = state.poll(Instant::now()) {
        tokio::select! {
            event = inbox.recv() => match event {
                Some(Event::Update { agent, update, delta, verdict }) => {
                    let result = state.on_update(&agent, &update, delta, Instant::now());
                    if let Err(e) = &result {
                        warn!(%agent, "update refused: {}", e.message);
                    }
                    let _ = verdict.send(result);
                }
                Some(Event::Failed { agent, reason }) => {
                    warn!(%agent, "no update: {reason}");
                    state.on_failure(&agent, reason);
                }
                None => break,
            },
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = shutdown.changed() => {
                exchanges.abort_all();
                return None;
            }
        }
    }
    // Stragglers are dropped, not waited on: their streams are reset.
    exchanges.abort_all();
    Some(())
}

fn weighted_mean(results: &[AgentResult], value: impl Fn(&AgentResult) -> f64) -> f64 {
    let total: u64 = results.iter().map(|r| r.num_samples).sum();
    if total == 0 {
        return 0.0;
    }
    results.iter().map(|r| value(r) * r.num_samples as f64).sum::<f64>() / total as f64
}

async fn evaluate_global(evaluator: Arc<dyn Evaluator>, model: &ModelSpec, global: &[f32]) -> Option<GlobalEvaluation> {
    let (model, params) = (model.clone(), global.to_vec());
    match tokio::task::spawn_blocking(move || evaluator.evaluate(&model, &params)).await {
        Ok(Ok(evaluation)) => Some(evaluation),
        Ok(Err(e)) => {
            warn!("server-side evaluation failed: {e}");
            None
        }
        Err(e) => {
            warn!("server-side evaluation panicked: {e}");
            None
        }
    }
}

/// One task/update exchange with one agent.
async fn fit_exchange(
    agent: AgentHandle,
    task: Task,
    payload: Bytes,
    limits: Limits,
    buffers: Arc<Semaphore>,
    events: mpsc::Sender<Event>,
) {
    let id = agent.id.clone();
    let (trial, round) = (task.trial, task.round);
    let result: anyhow::Result<()> = async {
        let (mut send, mut recv) = agent.connection.open_bi().await?;
        write_frame_shared(&mut send, &AggregatorMessage::Task(task), payload).await?;
        // Only `max_buffered_updates` updates sit in memory at once; the others wait in
        // QUIC flow control until a buffer frees up.
        let read = read_agent_frame(&mut recv, limits, async || buffers.acquire().await.ok()).await;
        let (message, delta, _buffer) = match read {
            Ok(frame) => frame,
            Err(e) => {
                if let Some(error) = crate::wire::error_for(&e) {
                    reply_error(&mut send, error).await;
                }
                return Err(e.into());
            }
        };
        match message {
            AgentMessage::Update(update) => {
                let (verdict, answer) = oneshot::channel();
                let event = Event::Update {
                    agent: id.clone(),
                    update: Box::new(update),
                    delta,
                    verdict,
                };
                events
                    .send(event)
                    .await
                    .map_err(|_| anyhow::anyhow!("round already closed"))?;
                let reply = match answer.await {
                    Ok(Ok(())) => AggregatorMessage::Ack(Ack { trial, round }),
                    Ok(Err(error)) => AggregatorMessage::Error(error),
                    Err(_) => AggregatorMessage::Error(ErrorMessage::new(ErrorCode::TooLate, "the round closed")),
                };
                write_message(&mut send, &reply).await?;
                send.finish()?;
                Ok(())
            }
            AgentMessage::Decline(d) => anyhow::bail!("declined: {}", d.reason),
            AgentMessage::Error(e) => anyhow::bail!("agent error: {e}"),
            other => {
                let msg = format!("expected Update, got {}", other.name());
                reply_error(&mut send, ErrorMessage::new(ErrorCode::Unexpected, msg.clone())).await;
                anyhow::bail!(msg)
            }
        }
    }
    .await;
    if let Err(e) = result {
        let _ = events
            .send(Event::Failed {
                agent: id,
                reason: e.to_string(),
            })
            .await;
    }
}

impl Driver {
    /// Federated evaluation of the global model on every agent's validation split.
    pub(crate) fn evaluate_on_agents(
        &self,
        round: u64,
    ) -> impl Future<Output = BTreeMap<String, GlobalEvaluation>> + Send + 'static {
        let (config, agents, trial) = (self.config.clone(), self.agents(), self.trial);
        let global = self.global.clone();
        async move { evaluate_on_agents(&config, agents, trial, round, &global).await }
    }
}

/// Federated evaluation of `global` on each of `agents`' validation split.
async fn evaluate_on_agents(
    config: &AggregatorConfig,
    agents: Vec<AgentHandle>,
    trial: u64,
    round: u64,
    global: &[f32],
) -> BTreeMap<String, GlobalEvaluation> {
    let payload = params_to_bytes(global);
    let model = config.model.clone();
    let request = Evaluate {
        study: config.federation.study.clone(),
        trial,
        round,
        manifest_hash: model.manifest().hash(),
        model,
    };
    let mut exchanges = JoinSet::new();
    for agent in agents {
        let (request, payload) = (request.clone(), payload.clone());
        exchanges.spawn(async move {
            let result: anyhow::Result<Evaluation> = async {
                let (mut send, mut recv) = agent.connection.open_bi().await?;
                write_frame_shared(&mut send, &AggregatorMessage::Evaluate(request), payload).await?;
                send.finish()?;
                match read_agent_frame(&mut recv, Limits::control(), async || ()).await? {
                    (AgentMessage::Evaluation(e), _, ()) => Ok(e),
                    (other, _, ()) => anyhow::bail!("expected Evaluation, got {}", other.name()),
                }
            }
            .await;
            (agent.id, result)
        });
    }
    let timeout = config.federation.round_timeout();
    let mut results = BTreeMap::new();
    let collect = async {
        while let Some(joined) = exchanges.join_next().await {
            match joined {
                Ok((agent, Ok(e))) if e.accuracy.is_finite() && e.loss.is_finite() => {
                    results.insert(
                        agent,
                        GlobalEvaluation {
                            loss: e.loss,
                            accuracy: e.accuracy,
                            samples: e.samples,
                        },
                    );
                }
                Ok((agent, Ok(_))) => warn!(%agent, "evaluation refused: non-finite metrics"),
                Ok((agent, Err(e))) => warn!(%agent, "evaluation failed: {e}"),
                Err(e) => warn!("evaluation task failed: {e}"),
            }
        }
    };
    if tokio::time::timeout(timeout, collect).await.is_err() {
        warn!("final evaluation timed out after {timeout:?}; stragglers dropped");
    }
    results
}

/// Tells every agent to stop, then closes the endpoint.
pub(crate) async fn stop_agents(registry: &Registry, endpoint: &quinn::Endpoint, reason: &str) {
    let mut goodbyes = JoinSet::new();
    for agent in registry.snapshot() {
        let reason = reason.to_owned();
        goodbyes.spawn(async move {
            if let Ok((mut send, _recv)) = agent.connection.open_bi().await {
                let _ = write_message(&mut send, &AggregatorMessage::Shutdown(Shutdown { reason })).await;
                let _ = send.finish();
                // Give the agent a moment to read it and close from its side.
                let _ = tokio::time::timeout(Duration::from_secs(2), agent.connection.closed()).await;
            }
            agent.connection.close(0u32.into(), b"shutdown");
        });
    }
    while goodbyes.join_next().await.is_some() {}
    endpoint.close(0u32.into(), b"shutdown");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
}
