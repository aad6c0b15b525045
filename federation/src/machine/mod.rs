//! The federation as one sans-IO state machine, shaped like `quinn-proto`.
//!
//! A [`Federation`] owns everything a run (or one trial of a study) decides: cohort
//! selection (seeded), task building, the secure-aggregation steps and their deadlines,
//! stragglers, applying the round through the [`Strategy`], fairness, the server
//! learning-rate loop, the round records and the final evaluation. It never reads a
//! clock, spawns or does I/O:
//!
//! - **inputs**: [`handle_event`](Federation::handle_event) with an [`Event`] (an agent
//!   connected or went away, an answer arrived on an exchange, an exchange failed, the
//!   server-side evaluation finished) and [`handle_timeout`](Federation::handle_timeout),
//!   each with the current time; [`interrupt`](Federation::interrupt) to stop early;
//! - **outputs**: [`poll_action`](Federation::poll_action) yields [`Action`]s (open an
//!   exchange with a task or an evaluation request, ask the next secure-aggregation step,
//!   close or abandon an exchange, evaluate the global model, a round committed, the run
//!   finished), and [`poll_timeout`](Federation::poll_timeout) says when to call
//!   `handle_timeout` next.
//!
//! An *exchange* is one stream with one agent: it opens with a message (a task, an
//! evaluation request), and each answer the agent sends on it comes back as
//! [`Event::Received`]. The tokio driver in `fedtune-aggregator` only moves frames between
//! connections and this machine and sleeps until `poll_timeout()`; `serve`, the
//! simulation and every trial of `tune` drive it the same way.
//!
//! # State
//! What carries from round to round is one serializable value, [`FederationState`]
//! (from [`Federation::state`], loaded by [`Federation::resume`]): the trial number, the
//! next round, the global parameters, the strategy's own state (momentum, optimizer
//! moments, server learning rate), the server-LR controller, the fairness history
//! (per-agent participation counts and last accuracies) and the position of the seeded
//! random stream that picks cohorts and task seeds. The rest — the configuration, the
//! connected agents, the round in progress — is either given again or rebuilt.

mod close;
mod io;
mod open;
mod record;
pub mod round;
mod secure;
mod state;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use fedtune_protocol::{Ack, AgentMessage, AggregatorMessage, Capabilities, ErrorCode, ErrorMessage, Evaluation};
use rand::SeedableRng;
use rand::rngs::ChaCha12Rng;
use tracing::warn;

use crate::fairness::History;
use crate::server_lr::ServerLrController;
use crate::settings::{Settings, SettingsError};
use crate::strategy::{Strategy, StrategyError};
use fedtune_protocol::freeze::Trainable;
use round::{Round, RoundStatus};

pub use io::{Action, Answer, Event, ExchangeId};
pub use record::final_fairness;
pub use record::{
    AgentResult, BoundedClaim, ClientTuner, Contribution, EvaluationError, Evaluator, FailureReason, FailureRecord,
    GlobalEvaluation, RoundRecord, RunReport, SecureStep,
};
use secure::{SecurePhase, Step, StepOutcome};
pub use state::{FederationState, RngState};

/// Why a federation could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The settings are invalid.
    #[error("invalid config: {0}")]
    Settings(#[from] SettingsError),
    /// The strategy refused the state or setting it was given.
    #[error("strategy: {0}")]
    Strategy(#[from] StrategyError),
    /// The state's global model does not fit the configured model.
    #[error("the saved global model has {saved} parameters, the configured model has {expected}")]
    ModelMismatch {
        /// Parameters in the state.
        saved: usize,
        /// Parameters of `config.model`.
        expected: usize,
    },
    /// The client tuner refused the state the checkpoint holds for it.
    #[error("the within-trial tuner cannot resume from the checkpoint: {0}")]
    TunerState(String),
}

/// A round in progress.
struct OpenRound {
    started: Instant,
    round: Round,
    /// Open exchanges and their agents.
    exchanges: BTreeMap<ExchangeId, String>,
    /// The secure-aggregation steps, when the round runs under secure aggregation.
    secure: Option<SecurePhase>,
    /// The agents known when the round started (for participation fairness).
    known: Vec<String>,
    /// Bytes of global model sent to the cohort.
    downlink_bytes: u64,
    /// Of those, the frozen values sent whole to members that did not hold them.
    base_bytes: u64,
    /// Under `[privacy]`: the round's sampling rate and clip.
    dp: Option<DpRound>,
    /// Sample counts cut down to their bound: agent → (claimed, used).
    bounded_claims: BTreeMap<String, BoundedClaim>,
}

/// What a round under `[privacy]` is charged by and clipped at.
#[derive(Debug, Clone, Copy)]
struct DpRound {
    /// The chance an agent was in this round: cohort / connected.
    sample_rate: f64,
    /// The L2 clip the updates got.
    clip: f64,
    /// The cohort's size (distributed noise is shared among it).
    cohort: usize,
}

/// A closed round whose record waits for the server-side evaluation.
struct Evaluating {
    started: Instant,
    record: RoundRecord,
}

/// The final evaluation of the model on every agent's validation split.
struct FinalEvaluation {
    deadline: Instant,
    exchanges: BTreeMap<ExchangeId, String>,
    results: BTreeMap<String, GlobalEvaluation>,
}

enum Phase {
    /// The next round starts at the next input.
    Ready,
    Round(Box<OpenRound>),
    Evaluating(Box<Evaluating>),
    Final(FinalEvaluation),
    Done,
}

/// The federation state machine (see the module docs).
pub struct Federation {
    config: Arc<Settings>,
    strategy: Box<dyn Strategy>,
    tuner: Option<Box<dyn ClientTuner>>,
    /// The tuner state of the checkpoint this federation resumed from, for
    /// [`with_tuner`](Self::with_tuner).
    resumed_tuner: Option<serde_json::Value>,
    pool: Option<BTreeSet<String>>,
    evaluate_globally: bool,
    trial: u64,
    round: u64,
    global: Vec<f32>,
    /// The part of `global` that trains (all of it unless `[model] freeze` says otherwise).
    trainable: Trainable,
    /// With frozen tensors: the checksum of their values (they never change in a run),
    /// and the agents that hold them, which are sent only the trainable values. An agent
    /// is added once it answered a task that carried the whole model, and dropped when it
    /// reconnects, goes away or fails a task.
    base: Option<(u32, BTreeSet<String>)>,
    server_lr: Option<ServerLrController>,
    history: History,
    /// The seeded stream of cohorts, task seeds and initial weights.
    rng: ChaCha12Rng,
    /// Differential-privacy noise: from the operating system, never from `rng`, and
    /// never checkpointed.
    noise: crate::privacy::NoiseRng,
    agents: BTreeMap<String, Capabilities>,
    phase: Phase,
    actions: VecDeque<Action>,
    records: Vec<RoundRecord>,
    next_exchange: u64,
    now: Option<Instant>,
    interrupted: bool,
    /// Whether the run ended early because `[privacy] max_epsilon` was reached.
    budget_spent: bool,
    /// The privacy spent so far (composed only while `[privacy]` is on).
    ledger: crate::privacy::Ledger,
}

impl Federation {
    /// A federation for `config` (trial `trial` of a study, 0 for a run), starting from
    /// the model's initial parameters when `[model] init` gave some, else from a freshly
    /// initialised model seeded by `federation.seed`.
    ///
    /// # Errors
    /// [`SetupError`] when the configuration or its strategy is invalid.
    pub fn new(config: Arc<Settings>, trial: u64) -> Result<Self, SetupError> {
        config.validate()?;
        let mut rng = ChaCha12Rng::seed_from_u64(config.federation.seed);
        let strategy = config.strategy.build()?;
        let server_lr = config
            .server_lr
            .active_for(config.strategy.name())
            .then(|| ServerLrController::new(config.server_lr));
        // Drawn either way, so cohorts and seeds do not depend on where the model started.
        let fresh = config.model.init_params(&mut rng);
        let global = match &config.model.initial {
            Some(initial) => initial.to_vec(),
            None => fresh,
        };
        let trainable = config.model.trainable()?;
        let base = (!trainable.is_all()).then(|| (trainable.frozen_checksum(&global), BTreeSet::new()));
        Ok(Self {
            strategy,
            tuner: None,
            resumed_tuner: None,
            pool: None,
            evaluate_globally: false,
            trial,
            round: 0,
            global,
            trainable,
            base,
            server_lr,
            history: History::default(),
            rng,
            noise: crate::privacy::NoiseRng::from_os(),
            agents: BTreeMap::new(),
            phase: Phase::Ready,
            actions: VecDeque::new(),
            records: Vec::new(),
            next_exchange: 0,
            now: None,
            interrupted: false,
            budget_spent: false,
            ledger: crate::privacy::Ledger::default(),
            config,
        })
    }

    /// A federation for `config` that goes on from `state` (a checkpoint).
    ///
    /// # Errors
    /// [`SetupError`] when the configuration is invalid or `state` does not fit it.
    pub fn resume(config: Arc<Settings>, state: FederationState) -> Result<Self, SetupError> {
        let mut fed = Self::new(config, state.trial)?;
        if state.global.len() != fed.global.len() {
            return Err(SetupError::ModelMismatch {
                saved: state.global.len(),
                expected: fed.global.len(),
            });
        }
        fed.strategy.load_state(state.strategy)?;
        fed.round = state.round;
        fed.global = state.global;
        // The frozen values are the checkpoint's, whatever the configuration starts from.
        if let Some((checksum, _)) = fed.base.as_mut() {
            *checksum = fed.trainable.frozen_checksum(&fed.global);
        }
        fed.server_lr = state.server_lr;
        fed.history = state.history;
        fed.rng = state.rng.rng();
        fed.resumed_tuner = state.tuner;
        if let Some(ledger) = state.privacy {
            fed.ledger = ledger;
        }
        Ok(fed)
    }

    /// What carries to the next round, as of the last committed one.
    pub fn state(&self) -> FederationState {
        FederationState {
            trial: self.trial,
            round: self.round,
            global: self.global.clone(),
            strategy: self.strategy.state(),
            server_lr: self.server_lr.clone(),
            history: self.history.clone(),
            rng: RngState::of(&self.rng),
            tuner: self.tuner.as_ref().and_then(|t| t.state()),
            privacy: self.config.privacy.enabled().then(|| self.ledger.clone()),
        }
    }

    /// Limits the federation to the agents in `pool` (a trial's share of a study).
    pub fn with_pool(mut self, pool: BTreeSet<String>) -> Self {
        self.pool = Some(pool);
        self
    }

    /// Draws this federation's differential-privacy noise from a generator seeded by
    /// `seed`: reproducible noise, for this crate's tests only.
    #[cfg(test)]
    pub(crate) fn with_noise_seed(mut self, seed: u64) -> Self {
        self.noise = crate::privacy::NoiseRng::seeded(seed);
        self
    }

    /// Lets `tuner` choose each agent's client hyperparameters. A resumed federation
    /// hands it the state its checkpoint holds.
    ///
    /// # Errors
    /// [`SetupError::TunerState`] when the tuner refuses that state.
    pub fn with_tuner(mut self, mut tuner: Box<dyn ClientTuner>) -> Result<Self, SetupError> {
        if let Some(state) = self.resumed_tuner.take() {
            tuner.restore(state).map_err(SetupError::TunerState)?;
        }
        self.tuner = Some(tuner);
        Ok(self)
    }

    /// Asks for a server-side evaluation after each round ([`Action::EvaluateGlobal`]).
    pub fn with_global_evaluation(mut self, on: bool) -> Self {
        self.evaluate_globally = on;
        self
    }

    /// Sets the strategy's server learning rate (for strategies that have one).
    ///
    /// # Errors
    /// As [`Strategy::set_server_learning_rate`].
    pub fn set_server_learning_rate(&mut self, lr: f64) -> Result<(), StrategyError> {
        self.strategy.set_server_learning_rate(lr)
    }

    /// The configuration the federation runs.
    pub fn config(&self) -> &Arc<Settings> {
        &self.config
    }

    /// The next round to run (the rounds before it are committed).
    pub fn round(&self) -> u64 {
        self.round
    }

    /// The model being trained.
    pub fn model(&self) -> &fedtune_protocol::ModelSpec {
        &self.config.model
    }

    /// The global parameters as of the last committed round.
    pub fn global(&self) -> &[f32] {
        &self.global
    }

    /// The rounds committed so far by this machine.
    pub fn records(&self) -> &[RoundRecord] {
        &self.records
    }

    /// Whether the run is over.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// The next thing the driver must do, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next: a deadline of the
    /// round in progress, or the time of the last input when the next round is ready to
    /// start (the driver calls it at once), or `None` while waiting on other inputs.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Ready => Some(self.now?),
            Phase::Round(open) => Some(match &open.secure {
                Some(secure) => secure.deadline(),
                None => open.round.deadline(),
            }),
            Phase::Final(f) => Some(f.deadline),
            Phase::Evaluating(_) | Phase::Done => None,
        }
    }

    /// Deadlines that passed by `now` take effect; a ready round starts.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = Some(now);
        match &mut self.phase {
            Phase::Ready => self.start_round(now),
            Phase::Round(open) => {
                if let Some(secure) = open.secure.as_mut() {
                    if now >= secure.deadline() {
                        let outcome = secure.on_deadline(Step {
                            round: &mut open.round,
                            exchanges: &mut open.exchanges,
                            now,
                            actions: &mut self.actions,
                        });
                        self.after_secure_step(outcome, now);
                    }
                } else if open.round.poll(now) == RoundStatus::Closed {
                    self.close_round(now, None);
                }
            }
            Phase::Final(f) if now >= f.deadline => {
                warn!(
                    "final evaluation timed out after {:?}; stragglers dropped",
                    self.config.federation.round_timeout()
                );
                self.finish(now);
            }
            Phase::Final(_) | Phase::Evaluating(_) | Phase::Done => {}
        }
    }

    /// Feeds one input.
    pub fn handle_event(&mut self, now: Instant, event: Event) {
        self.now = Some(now);
        match event {
            Event::AgentConnected {
                agent,
                capabilities,
                holds_base,
            } => {
                self.forget_base(&agent);
                if let Some((checksum, holders)) = self.base.as_mut()
                    && holds_base == Some(*checksum)
                {
                    holders.insert(agent.clone());
                }
                self.agents.insert(agent, capabilities);
            }
            Event::AgentGone { agent } => {
                self.forget_base(&agent);
                self.agents.remove(&agent);
                self.on_agent_gone(&agent, now);
            }
            Event::Received {
                exchange,
                message,
                payload,
            } => self.on_received(exchange, *message, payload, now),
            Event::ExchangeFailed { exchange, error } => self.on_exchange_failed(exchange, error, now),
            Event::GlobalEvaluated { round, result } => self.on_global_evaluated(round, result, now),
        }
    }

    /// With frozen tensors: the checksum of their values and the agents known to hold
    /// them (sent only the trainable values).
    #[must_use]
    pub fn base_holders(&self) -> Option<(u32, Vec<String>)> {
        self.base
            .as_ref()
            .map(|(checksum, holders)| (*checksum, holders.iter().cloned().collect()))
    }

    /// `agent` no longer counts as holding the frozen values: it gets the whole model next.
    fn forget_base(&mut self, agent: &str) {
        if let Some((_, holders)) = self.base.as_mut() {
            holders.remove(agent);
        }
    }

    /// Stops the run at `now`: the round in progress is abandoned (nothing of it is
    /// applied), no final evaluation runs, and the run finishes as interrupted.
    pub fn interrupt(&mut self, now: Instant) {
        self.now = Some(now);
        if matches!(self.phase, Phase::Done) {
            return;
        }
        self.interrupted = true;
        match std::mem::replace(&mut self.phase, Phase::Ready) {
            Phase::Round(open) => {
                for exchange in open.exchanges.into_keys() {
                    self.actions.push_back(Action::Abandon { exchange });
                }
            }
            Phase::Final(f) => {
                for exchange in f.exchanges.into_keys() {
                    self.actions.push_back(Action::Abandon { exchange });
                }
            }
            Phase::Ready | Phase::Evaluating(_) | Phase::Done => {}
        }
        self.finish(now);
    }

    fn exchange_id(&mut self) -> ExchangeId {
        self.next_exchange += 1;
        ExchangeId(self.next_exchange)
    }

    fn on_received(&mut self, exchange: ExchangeId, message: AgentMessage, payload: Vec<f32>, now: Instant) {
        match &mut self.phase {
            Phase::Round(open) => {
                let Some(agent) = open.exchanges.get(&exchange).cloned() else {
                    return self.actions.push_back(Action::Close {
                        exchange,
                        message: Some(too_late()),
                    });
                };
                if let Some(secure) = open.secure.as_mut() {
                    let step = Step {
                        round: &mut open.round,
                        exchanges: &mut open.exchanges,
                        now,
                        actions: &mut self.actions,
                    };
                    let outcome = secure.on_answer(&agent, message, payload, step);
                    return self.after_secure_step(outcome, now);
                }
                open.exchanges.remove(&exchange);
                let reply = match message {
                    AgentMessage::Update(mut update) => {
                        // A sample count weighs no more than the agent's declared
                        // training set, nor the configured cap.
                        let declared = self.agents.get(&agent).map(|c| c.train_samples).filter(|&n| n > 0);
                        let bound = declared.into_iter().chain(self.config.federation.max_samples).min();
                        if let Some(bound) = bound
                            && update.num_samples > bound
                        {
                            warn!(%agent, claimed = update.num_samples, used = bound, "sample count bounded");
                            open.bounded_claims.insert(
                                agent.clone(),
                                BoundedClaim {
                                    claimed: update.num_samples,
                                    used: bound,
                                },
                            );
                            update.num_samples = bound;
                        }
                        let verdict = open.round.on_update(&agent, &update, payload, now);
                        match verdict {
                            Ok(()) => Some(AggregatorMessage::Ack(Ack {
                                trial: update.trial,
                                round: update.round,
                            })),
                            Err(error) => {
                                warn!(%agent, "update refused: {}", error.message);
                                Some(AggregatorMessage::Error(error))
                            }
                        }
                    }
                    AgentMessage::Decline(d) => {
                        warn!(%agent, "no update: declined: {}", d.reason);
                        open.round.on_failure(&agent, FailureReason::Declined(d.reason));
                        None
                    }
                    AgentMessage::Error(e) => {
                        warn!(%agent, "no update: agent error: {e}");
                        open.round.on_failure(&agent, FailureReason::AgentError(e));
                        None
                    }
                    other => {
                        let reason = FailureReason::Unexpected {
                            expected: "Update".into(),
                            got: other.name().to_owned(),
                        };
                        warn!(%agent, "no update: {reason}");
                        let error = ErrorMessage::new(ErrorCode::Unexpected, reason.to_string());
                        open.round.on_failure(&agent, reason);
                        Some(AggregatorMessage::Error(error))
                    }
                };
                self.actions.push_back(Action::Close {
                    exchange,
                    message: reply,
                });
                if open.round.poll(now) == RoundStatus::Closed {
                    self.close_round(now, None);
                }
            }
            Phase::Final(f) => {
                let Some(agent) = f.exchanges.remove(&exchange) else {
                    return self.actions.push_back(Action::Close {
                        exchange,
                        message: None,
                    });
                };
                self.actions.push_back(Action::Close {
                    exchange,
                    message: None,
                });
                match message {
                    AgentMessage::Evaluation(e) if e.accuracy.is_finite() && e.loss.is_finite() => {
                        f.results.insert(agent, evaluation(&e));
                    }
                    AgentMessage::Evaluation(_) => warn!(%agent, "evaluation refused: non-finite metrics"),
                    other => warn!(%agent, "evaluation failed: expected Evaluation, got {}", other.name()),
                }
                if f.exchanges.is_empty() {
                    self.finish(now);
                }
            }
            Phase::Ready | Phase::Evaluating(_) | Phase::Done => {
                // An answer for a round that is already closed.
                self.actions.push_back(Action::Close {
                    exchange,
                    message: Some(too_late()),
                });
            }
        }
    }

    fn on_exchange_failed(&mut self, exchange: ExchangeId, error: String, now: Instant) {
        match &mut self.phase {
            Phase::Round(open) => {
                let Some(agent) = open.exchanges.remove(&exchange) else {
                    return;
                };
                self.member_lost(&agent, FailureReason::Connection(error), now);
            }
            Phase::Final(f) => {
                if let Some(agent) = f.exchanges.remove(&exchange) {
                    warn!(%agent, "evaluation failed: {error}");
                }
                if f.exchanges.is_empty() {
                    self.finish(now);
                }
            }
            Phase::Ready | Phase::Evaluating(_) | Phase::Done => {}
        }
    }

    fn on_agent_gone(&mut self, agent: &str, now: Instant) {
        match &mut self.phase {
            Phase::Round(open) => {
                let gone: Vec<ExchangeId> = exchanges_of(&open.exchanges, agent);
                if gone.is_empty() {
                    return;
                }
                for exchange in gone {
                    open.exchanges.remove(&exchange);
                    self.actions.push_back(Action::Abandon { exchange });
                }
                self.member_lost(agent, FailureReason::Disconnected, now);
            }
            Phase::Final(f) => {
                for exchange in exchanges_of(&f.exchanges, agent) {
                    f.exchanges.remove(&exchange);
                    self.actions.push_back(Action::Abandon { exchange });
                }
                if f.exchanges.is_empty() {
                    self.finish(now);
                }
            }
            Phase::Ready | Phase::Evaluating(_) | Phase::Done => {}
        }
    }

    /// A cohort member of the round in progress will not answer: its exchange is gone.
    fn member_lost(&mut self, agent: &str, reason: FailureReason, now: Instant) {
        let Phase::Round(open) = &mut self.phase else {
            return;
        };
        if let Some(secure) = open.secure.as_mut() {
            let step = Step {
                round: &mut open.round,
                exchanges: &mut open.exchanges,
                now,
                actions: &mut self.actions,
            };
            let outcome = secure.on_lost(agent, reason, step);
            return self.after_secure_step(outcome, now);
        }
        warn!(%agent, "no update: {reason}");
        open.round.on_failure(agent, reason);
        if open.round.poll(now) == RoundStatus::Closed {
            self.close_round(now, None);
        }
    }

    /// Moves the round on after a secure-aggregation step changed.
    fn after_secure_step(&mut self, outcome: StepOutcome, now: Instant) {
        if let StepOutcome::Done(result) = outcome {
            self.close_round(now, Some(result));
        }
    }
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation")
            .field("trial", &self.trial)
            .field("round", &self.round)
            .field("agents", &self.agents.len())
            .field("interrupted", &self.interrupted)
            .finish_non_exhaustive()
    }
}

fn exchanges_of(exchanges: &BTreeMap<ExchangeId, String>, agent: &str) -> Vec<ExchangeId> {
    exchanges
        .iter()
        .filter(|(_, a)| a.as_str() == agent)
        .map(|(e, _)| *e)
        .collect()
}

fn too_late() -> AggregatorMessage {
    AggregatorMessage::Error(ErrorMessage::new(ErrorCode::TooLate, "the round closed"))
}

fn evaluation(e: &Evaluation) -> GlobalEvaluation {
    GlobalEvaluation {
        loss: e.loss,
        accuracy: e.accuracy,
        samples: e.samples,
    }
}

#[cfg(test)]
mod tests;

/// The noise multiplier a distributed-noise round delivered with `contributors` of its
/// `cohort` agents' shares in the sum: `σ · √(contributors / cohort)`.
fn distributed_sigma(sigma: f64, contributors: usize, cohort: usize) -> f64 {
    sigma * (contributors as f64 / cohort.max(1) as f64).sqrt()
}
