//! What a federation produces: round records, the run report, and why agents failed.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use fedtune_protocol::{ClientHyperparameters, ErrorMessage, ModelSpec, TrainMetrics};
use serde::{Deserialize, Serialize};

use crate::fairness::FairnessReport;

/// What one agent contributed to a round.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentResult {
    /// Agent id (from its certificate).
    pub agent: String,
    /// Training samples behind the update.
    pub num_samples: u64,
    /// What the agent measured.
    pub metrics: TrainMetrics,
    /// When the update arrived, counted from the start of the round.
    pub arrived_after: Duration,
    /// The client hyperparameters the agent trained with.
    pub used: ClientHyperparameters,
    /// What the agent's local rule proposes for its next task, if anything moved.
    pub proposal: Option<ClientHyperparameters>,
    /// Whether the agent sent again an update it had already trained for this task.
    pub replayed: bool,
}

/// Loss and accuracy of a global model on a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GlobalEvaluation {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Accuracy.
    pub accuracy: f64,
    /// Samples measured.
    pub samples: u64,
}

/// Why a global model could not be evaluated on the server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvaluationError {
    /// The evaluator cannot build this kind of model.
    #[error("cannot evaluate this model: {0}")]
    UnsupportedModel(String),
    /// The parameters do not fit the model, or evaluation failed.
    #[error("evaluation failed: {0}")]
    Failed(String),
}

/// Server-side evaluation of the global model (e.g. on a held-out test set), as
/// Flower's `evaluate_fn`.
pub trait Evaluator: Send + Sync + 'static {
    /// Evaluates `params` (laid out by `model.manifest()`).
    ///
    /// # Errors
    /// [`EvaluationError`] saying why the model could not be evaluated.
    fn evaluate(&self, model: &ModelSpec, params: &[f32]) -> Result<GlobalEvaluation, EvaluationError>;
}

/// Chooses each agent's client hyperparameters for a round and learns from what the
/// agents report (the within-trial half of "bayes+rl").
pub trait ClientTuner: Send {
    /// The hyperparameters `agent` trains with this round; `base` is the trial's.
    fn assign(&mut self, agent: &str, base: &ClientHyperparameters) -> ClientHyperparameters;
    /// The round's accepted results, each with what the agent used and proposes.
    fn observe(&mut self, results: &[AgentResult]);
    /// What the tuner has learnt, for a checkpoint; `None` when it keeps nothing.
    fn state(&self) -> Option<serde_json::Value> {
        None
    }
    /// Goes on from a checkpoint's [`state`](Self::state).
    ///
    /// # Errors
    /// When `state` is not one this tuner wrote.
    fn restore(&mut self, state: serde_json::Value) -> Result<(), String> {
        let _ = state;
        Ok(())
    }
}

/// A step of a secure-aggregation round, as named in failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecureStep {
    /// The members' public keys, answered to the task.
    PublicKeys,
    /// The encrypted key shares, answered to the roster.
    KeyShares,
    /// The masked update, answered to the shares addressed to the member.
    MaskedUpdate,
    /// The shares that remove the masks, answered to the list of contributors.
    UnmaskingShares,
}

impl fmt::Display for SecureStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SecureStep::PublicKeys => "public keys",
            SecureStep::KeyShares => "key shares",
            SecureStep::MaskedUpdate => "masked update",
            SecureStep::UnmaskingShares => "unmasking shares",
        })
    }
}

/// Why a cohort member did not contribute to a round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum FailureReason {
    /// The aggregator refused the agent's update (wrong round, layout, non-finite
    /// values...); the agent was told why.
    #[error("update refused: {}", .0.message)]
    Refused(ErrorMessage),
    /// The agent declined the task.
    #[error("declined: {0}")]
    Declined(String),
    /// The agent answered with an error.
    #[error("agent error: {0}")]
    AgentError(ErrorMessage),
    /// The agent answered with a message that does not belong at this point.
    #[error("expected {expected}, got {got}")]
    Unexpected {
        /// What the aggregator waited for.
        expected: String,
        /// What came.
        got: String,
    },
    /// The stream or connection to the agent failed.
    #[error("connection failed: {0}")]
    Connection(String),
    /// The agent disconnected during the round.
    #[error("the agent disconnected")]
    Disconnected,
    /// The round closed (deadline or quorum) before the agent's update arrived.
    #[error("no update before the round closed")]
    Straggler,
    /// The agent failed one step of secure aggregation.
    #[error("secure aggregation, {step}: {cause}")]
    SecureStep {
        /// The step.
        step: SecureStep,
        /// What went wrong in it.
        cause: Box<FailureReason>,
    },
    /// The protocol refused the agent's answer to a secure-aggregation step.
    #[error("{0}")]
    Protocol(String),
    /// The agent did not answer a secure-aggregation step before its deadline.
    #[error("secure aggregation: no {0} before the deadline")]
    SecureDeadline(SecureStep),
    /// Secure aggregation could not start this round (e.g. a cohort too large).
    #[error("secure aggregation cannot run this round: {0}")]
    SecureUnavailable(String),
    /// The round's secure aggregation failed as a whole (too few members left).
    #[error("secure aggregation failed: {0}")]
    SecureFailed(String),
}

/// A cohort member that did not contribute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// Agent id.
    pub agent: String,
    /// Why.
    pub reason: FailureReason,
}

impl fmt::Display for FailureRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.agent, self.reason)
    }
}

/// What happened in one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Why the round's updates could not be aggregated or applied, when they could not
    /// (the global model is unchanged then).
    pub aggregation_error: Option<String>,
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
    /// Of `payload_bytes`, the frozen values sent whole to members that did not hold
    /// them yet (a pretrained base under adapters): once per connection, whatever the
    /// configuration, so a study's `bytes` objective leaves it out.
    #[serde(default)]
    pub base_bytes: u64,
    /// Each accepted update's part: when it arrived, what it cost the device.
    #[serde(default)]
    pub contributions: BTreeMap<String, Contribution>,
    /// Whether the round ran under secure aggregation (the aggregator saw only the sum).
    #[serde(default)]
    pub secure: bool,
    /// Updates whose claimed sample count was cut down to its bound (the agent's declared
    /// training set, or `federation.max_samples`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bounded_claims: BTreeMap<String, BoundedClaim>,
    /// ε spent after this round at `[privacy] delta`, when `[privacy]` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    /// The L2 norm updates were clipped to this round, when `[privacy]` is on (it moves
    /// under adaptive clipping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip: Option<f64>,
}

/// One accepted update of a round.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Contribution {
    /// Seconds from the round's start to the update's arrival.
    pub arrived_after_seconds: f64,
    /// Training samples behind it.
    pub samples: u64,
    /// The agent's wall time for the task.
    pub device_seconds: f64,
    /// Update bytes the agent sent.
    pub update_bytes: u64,
    /// Whether the agent sent again an update it had trained for this same task before
    /// the aggregator restarted (so the round took no training time for it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
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
    /// Whether the run stopped before its last round (shutdown, or a pruned trial).
    pub interrupted: bool,
    /// Whether the run ended before its last round because another round would have
    /// taken ε past `[privacy] max_epsilon` (a finished run, not an interrupted one).
    #[serde(default)]
    pub privacy_budget_spent: bool,
    /// Final global parameters.
    #[serde(skip)]
    pub global: Vec<f32>,
}

impl RoundRecord {
    /// The bytes the round's configuration moved: [`RoundRecord::payload_bytes`] less the
    /// frozen values sent whole ([`RoundRecord::base_bytes`]).
    #[must_use]
    pub fn configuration_bytes(&self) -> u64 {
        self.payload_bytes.saturating_sub(self.base_bytes)
    }
}

impl RunReport {
    /// A report of a run that ran no round.
    pub fn empty(interrupted: bool) -> Self {
        Self {
            rounds: Vec::new(),
            final_agent_evaluation: BTreeMap::new(),
            final_test: None,
            final_fairness: FairnessReport::default(),
            final_violations: Vec::new(),
            interrupted,
            privacy_budget_spent: false,
            global: Vec::new(),
        }
    }
}

/// A sample count an update claimed, and the one it was weighed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundedClaim {
    /// What the update said.
    pub claimed: u64,
    /// Its bound.
    pub used: u64,
}

/// Fairness of a final model: from its evaluation on the agents when there is one, else
/// the last round's; participation is the run's so far.
pub fn final_fairness(per_agent: &BTreeMap<String, GlobalEvaluation>, last: Option<&RoundRecord>) -> FairnessReport {
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
