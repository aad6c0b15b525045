//! The messages agents and the aggregator exchange, one enum per direction.
//!
//! A message travels as the bincode header of a [`frame`](crate::frame); tensor data
//! (global parameters in a [`Task`], the delta in an [`Update`]) travels as the frame's
//! raw payload, never through serde.

use serde::{Deserialize, Serialize};

use crate::model::ModelSpec;
use crate::secagg::{EncryptedShare, PeerKeys, PublicKeys, Reveal, SecureRound};
use crate::tensor::ManifestHash;

/// Messages an agent sends to the aggregator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentMessage {
    /// First message on a new connection.
    Hello(Hello),
    /// Result of a [`Task`]; the frame payload holds the parameter delta, or under
    /// secure aggregation the masked fixed-point update (little-endian `u32` words).
    Update(Update),
    /// Secure aggregation, first step: the agent's public keys for this round.
    SecAggKeys(PublicKeys),
    /// Secure aggregation, second step: the agent's key shares, each encrypted for one
    /// other member of the roster.
    SecAggShares(Vec<EncryptedShare>),
    /// Secure aggregation, last step: the shares that let the aggregator remove the
    /// masks of the agents that contributed and of those that dropped out.
    SecAggReveal(Vec<Reveal>),
    /// Result of an [`Evaluate`] request.
    Evaluation(Evaluation),
    /// The agent will not run a task.
    Decline(Decline),
    /// The agent could not handle what it received.
    Error(ErrorMessage),
}

/// Messages the aggregator sends to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AggregatorMessage {
    /// Answer to [`Hello`]: the session is open.
    Welcome(Welcome),
    /// Train for one round; the frame payload holds the global parameters.
    Task(Task),
    /// Evaluate the global parameters in the payload on the local validation split.
    Evaluate(Evaluate),
    /// The update was accepted into the round.
    Ack(Ack),
    /// Secure aggregation: the public keys of every agent that answered the task.
    SecAggRoster(Vec<PeerKeys>),
    /// Secure aggregation: the encrypted shares other agents addressed to this one.
    SecAggShares(Vec<EncryptedShare>),
    /// Secure aggregation: the agents whose masked updates are in the sum; the agent
    /// answers with [`AgentMessage::SecAggReveal`].
    SecAggUnmask(Vec<u32>),
    /// The aggregator refused what it received.
    Error(ErrorMessage),
    /// The federation is over; the agent should disconnect and exit.
    Shutdown(Shutdown),
    /// The aggregator is stopping before the federation is over (Ctrl-C, SIGTERM) and
    /// resumes it when it is served again; the agent should disconnect, keep what it holds
    /// and reconnect, as after a crash.
    ///
    /// Appended after every other variant, and without a [`crate::PROTOCOL_VERSION`] bump:
    /// bincode numbers variants by position, so every message an older peer knows keeps
    /// its encoding. An older agent cannot decode this one; it answers an error, the
    /// aggregator closes the connection, and that agent reconnects — what this message
    /// asks of it anyway. A version bump would instead shut every older agent out.
    Interrupted(Interrupted),
}

impl AgentMessage {
    /// The variant's name, for logs and error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello(_) => "Hello",
            Self::Update(_) => "Update",
            Self::SecAggKeys(_) => "SecAggKeys",
            Self::SecAggShares(_) => "SecAggShares",
            Self::SecAggReveal(_) => "SecAggReveal",
            Self::Evaluation(_) => "Evaluation",
            Self::Decline(_) => "Decline",
            Self::Error(_) => "Error",
        }
    }
}

impl AggregatorMessage {
    /// The variant's name, for logs and error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Welcome(_) => "Welcome",
            Self::Task(_) => "Task",
            Self::Evaluate(_) => "Evaluate",
            Self::Ack(_) => "Ack",
            Self::SecAggRoster(_) => "SecAggRoster",
            Self::SecAggShares(_) => "SecAggShares",
            Self::SecAggUnmask(_) => "SecAggUnmask",
            Self::Error(_) => "Error",
            Self::Shutdown(_) => "Shutdown",
            Self::Interrupted(_) => "Interrupted",
        }
    }
}

/// What a device can do; the aggregator uses it to pick cohorts and size tasks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// CPU cores available for training.
    pub cores: u32,
    /// Memory available for training, in bytes (0 when unknown).
    pub memory_bytes: u64,
    /// Compute backend, e.g. `burn-flex-cpu`.
    pub backend: String,
    /// Local training samples.
    pub train_samples: u64,
    /// Local validation samples.
    pub validation_samples: u64,
}

/// Opens a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the agent speaks.
    pub protocol_version: u16,
    /// Name the agent calls itself; informational only — identity comes from its
    /// certificate.
    pub name: String,
    /// What the device offers.
    pub capabilities: Capabilities,
}

/// Limits the aggregator enforces on a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionLimits {
    /// Largest frame payload the aggregator accepts, in bytes.
    pub max_payload_bytes: u64,
}

/// Accepts a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Identifier of this session, unique per aggregator run.
    pub session_id: u64,
    /// The agent's identity as read from its certificate.
    pub agent_id: String,
    /// Limits for the session.
    pub limits: SessionLimits,
}

/// Local optimizer an agent trains with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// Stochastic gradient descent (with optional momentum).
    Sgd,
    /// Adam.
    #[default]
    Adam,
}

impl std::str::FromStr for Optimizer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sgd" => Ok(Self::Sgd),
            "adam" => Ok(Self::Adam),
            other => Err(format!("unknown optimizer `{other}` (expected `sgd` or `adam`)")),
        }
    }
}

impl std::fmt::Display for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Sgd => "sgd",
            Self::Adam => "adam",
        })
    }
}

/// Hyperparameters an agent applies while training locally.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientHyperparameters {
    /// Learning rate.
    pub learning_rate: f64,
    /// Minibatch size.
    pub batch_size: u32,
    /// Passes over the local training split.
    pub local_epochs: u32,
    /// At most this many minibatch steps per round, however many `local_epochs` would
    /// take (0: no bound). Bounds a round's work on devices with much data.
    pub local_steps: u32,
    /// Optimizer.
    pub optimizer: Optimizer,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// Momentum (SGD only).
    pub momentum: f64,
    /// FedProx proximal coefficient μ: local loss gains `μ/2 · ‖w − w_global‖²` (0: off).
    pub proximal_mu: f64,
    /// Label smoothing ε: the loss's target puts `1 − ε` on the label and spreads `ε`
    /// evenly over every class (0: plain cross-entropy).
    pub label_smoothing: f64,
    /// Share of a round's local steps over which the learning rate rises linearly from
    /// `learning_rate / steps` to `learning_rate` (0: none).
    pub warmup: f64,
    /// How the learning rate moves over a round's local steps after the warm-up.
    pub lr_schedule: LrSchedule,
}

/// The learning rate over a round's local steps, after any warm-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// `learning_rate` throughout.
    #[default]
    Constant,
    /// Half a cosine from `learning_rate` down to 0 at the round's last step.
    Cosine,
}

impl LrSchedule {
    /// The learning-rate factor at `step` (from 0) of `steps`, with the first `warmup`
    /// steps warming up linearly.
    #[must_use]
    pub fn factor(self, step: usize, steps: usize, warmup: usize) -> f64 {
        if step < warmup {
            return (step + 1) as f64 / warmup as f64;
        }
        match self {
            LrSchedule::Constant => 1.0,
            LrSchedule::Cosine => {
                let span = steps.saturating_sub(warmup).max(1);
                let progress = (step - warmup) as f64 / span as f64;
                0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

impl std::fmt::Display for LrSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Constant => "constant",
            Self::Cosine => "cosine",
        })
    }
}

impl Default for ClientHyperparameters {
    fn default() -> Self {
        Self {
            learning_rate: 0.01,
            batch_size: 32,
            local_epochs: 2,
            local_steps: 0,
            optimizer: Optimizer::Adam,
            weight_decay: 0.0,
            momentum: 0.0,
            proximal_mu: 0.0,
            label_smoothing: 0.0,
            warmup: 0.0,
            lr_schedule: LrSchedule::Constant,
        }
    }
}

/// A value that does not fit the parameter it is meant for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{name}` {expected}, got {got}")]
pub struct ClientParamError {
    /// The parameter's name.
    pub name: &'static str,
    /// What it takes.
    pub expected: &'static str,
    /// What it was given.
    pub got: String,
}

impl ClientHyperparameters {
    /// Checks every value is in its valid range.
    ///
    /// # Errors
    /// [`ClientParamError`] naming the first hyperparameter out of range.
    pub fn validate(&self) -> Result<(), ClientParamError> {
        let check = |ok: bool, name: &'static str, expected: &'static str, got: &dyn std::fmt::Display| {
            if ok {
                Ok(())
            } else {
                Err(ClientParamError {
                    name,
                    expected,
                    got: got.to_string(),
                })
            }
        };
        let lr = self.learning_rate;
        check(lr.is_finite() && lr > 0.0, "learning_rate", "must be positive", &lr)?;
        check(
            self.batch_size > 0,
            "batch_size",
            "must be at least 1",
            &self.batch_size,
        )?;
        check(
            self.local_epochs > 0,
            "local_epochs",
            "must be at least 1",
            &self.local_epochs,
        )?;
        let wd = self.weight_decay;
        check(wd.is_finite() && wd >= 0.0, "weight_decay", "must be >= 0", &wd)?;
        let mu = self.proximal_mu;
        check(mu.is_finite() && mu >= 0.0, "proximal_mu", "must be >= 0", &mu)?;
        let m = self.momentum;
        check(
            m.is_finite() && (0.0..1.0).contains(&m),
            "momentum",
            "must be in [0, 1)",
            &m,
        )?;
        let ls = self.label_smoothing;
        check(
            ls.is_finite() && (0.0..1.0).contains(&ls),
            "label_smoothing",
            "must be in [0, 1)",
            &ls,
        )?;
        let w = self.warmup;
        check(
            w.is_finite() && (0.0..1.0).contains(&w),
            "warmup",
            "must be in [0, 1)",
            &w,
        )?;
        Ok(())
    }
}

/// One round of local training for one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Study the trial belongs to.
    pub study: String,
    /// Trial number within the study.
    pub trial: u64,
    /// Round number within the trial (0-based).
    pub round: u64,
    /// Architecture to build.
    pub model: ModelSpec,
    /// Hash of `model.manifest()`; the payload is laid out by it.
    pub manifest_hash: ManifestHash,
    /// Hyperparameters for local training.
    pub hyperparameters: ClientHyperparameters,
    /// Time budget for the task in milliseconds; the aggregator drops later updates.
    pub deadline_ms: u64,
    /// Seed for the agent's local shuffling, so a round is reproducible.
    pub seed: u64,
    /// Also measure the received model's loss on the local training data, before
    /// training (q-FedAvg weighs updates by it); costs one pass over that data.
    pub measure_train_loss: bool,
    /// Set when the round runs under secure aggregation: the agent takes part in the
    /// key exchange on the task's stream and sends its update masked.
    pub secure: Option<SecureRound>,
    /// Freeze patterns ([`crate::freeze`]): the tensors they name are not trained, and the
    /// update carries only the others' values, in manifest order.
    pub frozen: Vec<String>,
    /// Set when the payload carries only the trainable values: the frozen ones are those
    /// the agent received in full before, whose checksum
    /// ([`crate::freeze::Trainable::frozen_checksum`]) this is. An agent that does not hold
    /// them answers [`crate::ErrorCode::MissingBase`], and gets the whole model next time.
    pub base: Option<u32>,
    /// Class names in id order: an agent whose own rows are labelled by name maps them
    /// to ids through this list (empty: labels are class ids).
    pub classes: Vec<String>,
}

impl Task {
    /// The part of the model this task trains.
    ///
    /// # Errors
    /// [`crate::ProtocolError::InvalidModel`] when a freeze pattern names no tensor or
    /// every tensor is frozen.
    pub fn trainable(&self) -> Result<crate::freeze::Trainable, crate::ProtocolError> {
        crate::freeze::Trainable::new(&self.model.manifest(), &self.frozen)
    }
}

/// Federated evaluation: measure the global parameters in the frame payload on the
/// agent's local validation split, without training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluate {
    /// Study the trial belongs to.
    pub study: String,
    /// Trial number within the study.
    pub trial: u64,
    /// Round whose global model is evaluated.
    pub round: u64,
    /// Architecture to build.
    pub model: ModelSpec,
    /// Hash of `model.manifest()`; the payload is laid out by it.
    pub manifest_hash: ManifestHash,
    /// Class names in id order, as in [`Task::classes`].
    pub classes: Vec<String>,
}

/// Result of an [`Evaluate`] request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Trial of the request.
    pub trial: u64,
    /// Round of the request.
    pub round: u64,
    /// Mean cross-entropy on the local validation split.
    pub loss: f64,
    /// Accuracy on the local validation split.
    pub accuracy: f64,
    /// Validation samples measured.
    pub samples: u64,
}

/// Metrics an agent reports with an update.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainMetrics {
    /// Validation loss of the received global model, before training.
    pub loss_before: f64,
    /// Training-data loss of the received global model, before training, when the task
    /// asked for it.
    pub train_loss_before: Option<f64>,
    /// Validation accuracy of the received global model, before training.
    pub accuracy_before: f64,
    /// Validation loss after local training.
    pub loss_after: f64,
    /// Validation accuracy after local training.
    pub accuracy_after: f64,
    /// Mean training loss over the last local epoch.
    pub train_loss: f64,
    /// Local validation samples the accuracies were measured on.
    pub validation_samples: u64,
    /// Wall time of the task on the device, in seconds.
    pub wall_seconds: f64,
    /// Peak resident memory of the agent process, in bytes (0 when unknown).
    pub peak_memory_bytes: u64,
}

/// Result of a [`Task`]. The frame payload holds `local - global`, laid out by the
/// task's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Update {
    /// Trial of the task.
    pub trial: u64,
    /// Round of the task.
    pub round: u64,
    /// Manifest the delta is laid out by.
    pub manifest_hash: ManifestHash,
    /// Training samples the update was computed from (FedAvg weight).
    pub num_samples: u64,
    /// What the agent measured.
    pub metrics: TrainMetrics,
    /// Hyperparameters the agent used.
    pub used: ClientHyperparameters,
    /// Hyperparameters the agent proposes for its next task, if its local rule moved any.
    pub proposal: Option<ClientHyperparameters>,
    /// Whether this is an update the agent had already trained for the same task and
    /// sends again (an aggregator that restarted before committing the round asked for
    /// it once more), not a fresh training run: its metrics are the first run's.
    pub replayed: bool,
}

/// The agent declines a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decline {
    /// Trial of the task.
    pub trial: u64,
    /// Round of the task.
    pub round: u64,
    /// Why, in words.
    pub reason: String,
}

/// The aggregator accepted an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Trial of the update.
    pub trial: u64,
    /// Round of the update.
    pub round: u64,
}

/// The federation is over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shutdown {
    /// Why, in words.
    pub reason: String,
}

/// The aggregator stops serving before the federation is over, and resumes it when it is
/// served again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interrupted {
    /// Why, in words (e.g. `SIGTERM`).
    pub reason: String,
}

/// What kind of failure an [`ErrorMessage`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// A frame or message could not be decoded.
    Malformed,
    /// A frame exceeded a size limit.
    TooLarge,
    /// The peer speaks another protocol version.
    UnsupportedVersion,
    /// A message arrived that the receiver did not expect now.
    Unexpected,
    /// An update came from an agent that is not in the round, or for another round.
    NotInRound,
    /// An update is laid out by another manifest.
    ManifestMismatch,
    /// An update holds NaN or infinity.
    NonFinite,
    /// The update arrived after the round's deadline.
    TooLate,
    /// The task could not be run (bad hyperparameters, unsupported model).
    InvalidTask,
    /// Something failed on the sender's side.
    Internal,
    /// The task sent only the trainable values, and the agent does not hold the frozen
    /// ones it names ([`Task::base`]).
    MissingBase,
}

/// A failure reported to the peer, in words it can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMessage {
    /// Failure kind.
    pub code: ErrorCode,
    /// Explanation.
    pub message: String,
}

impl ErrorMessage {
    /// An error of kind `code` saying `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ErrorMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_learning_rate_warms_up_then_follows_its_schedule() {
        // 10 steps, 2 of warm-up.
        let factors = |s: LrSchedule| (0..10).map(|t| s.factor(t, 10, 2)).collect::<Vec<f64>>();
        let constant = factors(LrSchedule::Constant);
        assert_eq!(&constant[..3], &[0.5, 1.0, 1.0]);
        assert!(constant[2..].iter().all(|&f| f == 1.0));
        let cosine = factors(LrSchedule::Cosine);
        assert_eq!(&cosine[..3], &[0.5, 1.0, 1.0]);
        assert!(cosine.windows(2).skip(2).all(|w| w[1] < w[0]), "{cosine:?}");
        assert!(
            (cosine[6] - 0.5).abs() < 1e-12,
            "half way down at the middle of the decay"
        );
        // Without warm-up the first step runs at the full rate.
        assert_eq!(LrSchedule::Cosine.factor(0, 10, 0), 1.0);
        let bad = ClientHyperparameters {
            label_smoothing: 1.0,
            ..ClientHyperparameters::default()
        };
        assert_eq!(bad.validate().unwrap_err().name, "label_smoothing");
    }
}
