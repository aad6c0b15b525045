//! Aggregation strategies: how a round's updates become a change of the global model.
//!
//! A [`Strategy`] splits the work the way Flower does, but streams: at the start of a
//! round it hands out an [`Aggregation`] that takes updates one by one as they arrive
//! and, when the round closes, yields one aggregated delta; [`Strategy::apply`] then moves
//! the global model by that delta (plain addition, momentum, or an adaptive server
//! optimizer). Pure code, no I/O and no clock.
//!
//! Deltas follow the wire convention `local - global`, so adding the aggregated delta to
//! the global model moves it towards the agents' models.
//!
//! Per round the driver does:
//! 1. `let mut agg = strategy.begin_round(round, numel);`
//! 2. for each accepted update: `agg.add(&delta, num_samples, &UpdateMeta::new(agent, loss_before))?`
//!    (or `add_owned` when it owns the buffer: the robust rules then keep it without a copy);
//! 3. when the round closes with quorum: `let delta = agg.finish()?;`
//!    then `strategy.apply(&mut global, &delta)?`. Without quorum it drops `agg` and the
//!    strategy's state stays as it was.
//!
//! # Layout
//! - [`fedavg`]: sample-weighted mean as updates arrive ([`FedAvg`], [`WeightedMean`]).
//! - [`fedprox`]: FedAvg plus the proximal μ agents add to their local loss.
//! - [`momentum`]: FedAvgM, server momentum over any inner aggregation.
//! - [`adaptive`]: FedAdam, FedYogi, FedAdagrad (Reddi et al. 2021) over any inner aggregation.
//! - [`qfedavg`]: q-FedAvg (Li et al. 2020), loss-reweighted for fairness, streaming.
//! - [`buffered`]: the all-updates buffer the robust rules share.
//! - [`median`], [`trimmed_mean`], [`krum`]: robust rules (they buffer every update).
//! - [`config`]: [`StrategyConfig`], the typed choice by name, and [`check_compatible`].
//! - `kernels`: the numeric inner loops.

pub mod adaptive;
pub mod buffered;
pub mod config;
pub mod fedavg;
pub mod fedprox;
mod kernels;
pub mod krum;
pub mod median;
pub mod momentum;
pub mod qfedavg;
pub mod trimmed_mean;

use std::fmt::Debug;

use serde::{Deserialize, Serialize};

pub use adaptive::{AdaptiveConfig, AdaptiveRule, FedOpt};
pub use buffered::Buffered;
pub use config::{StrategyConfig, check_compatible};
pub use fedavg::{FedAvg, FedAvgConfig, WeightedMean};
pub use fedprox::{FedProx, FedProxConfig};
pub use krum::{Krum, KrumConfig, MultiKrumConfig};

pub use median::Median;
pub use momentum::{FedAvgM, FedAvgMConfig};
pub use qfedavg::{QFedAvg, QFedAvgConfig};
pub use trimmed_mean::{TrimmedMean, TrimmedMeanConfig};

/// The expected share of attackers the robust rules (Krum, Multi-Krum, trimmed mean)
/// assume unless told otherwise.
pub const DEFAULT_ATTACKERS: f64 = 0.2;

/// What an aggregation may want to know about an update besides its delta and weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateMeta<'a> {
    /// Agent that sent the update.
    pub agent: &'a str,
    /// The agent's loss of the global model, measured before local training (q-FedAvg's
    /// `F_k`): on its training data when the agent reported that, else on its validation
    /// split.
    pub loss_before: f64,
}

impl<'a> UpdateMeta<'a> {
    /// Metadata of one update.
    pub fn new(agent: &'a str, loss_before: f64) -> Self {
        Self { agent, loss_before }
    }
}

/// A rule for turning a round's updates into a change of the global model.
///
/// Implementations keep whatever crosses rounds (momentum, optimizer moments) and
/// expose it through [`state`](Self::state) / [`load_state`](Self::load_state) so a
/// driver can checkpoint and resume.
pub trait Strategy: Send + Debug {
    /// Short name, as used in configuration (`fedavg`, `krum`, ...).
    fn name(&self) -> &'static str;

    /// Whether the rule must see every agent's update on its own (robust rules,
    /// q-FedAvg). Such a rule cannot run under secure aggregation, which reveals only the
    /// cohort's sum; see [`check_compatible`].
    fn needs_individual_updates(&self) -> bool;

    /// Starts aggregating round `round` over models of `numel` parameters.
    fn begin_round(&mut self, round: u64, numel: usize) -> Box<dyn Aggregation>;

    /// Moves `global` by a round's aggregated delta (from [`Aggregation::finish`]),
    /// updating the strategy's own state (momentum, moments) on the way.
    ///
    /// # Errors
    /// [`StrategyError::LengthMismatch`] when `global`, `aggregated` and the state kept
    /// from earlier rounds do not have the same length; nothing is changed then.
    fn apply(&mut self, global: &mut [f32], aggregated: &[f32]) -> Result<(), StrategyError>;

    /// The proximal coefficient μ agents should add to their local loss
    /// (`μ/2 ||w - w_global||²`), if the strategy asks for one (FedProx).
    fn proximal_mu(&self) -> Option<f64> {
        None
    }

    /// Whether agents should also measure the global model's loss on their training
    /// data (q-FedAvg's `Fₖ`); it costs them one pass over that data per round.
    fn needs_train_loss(&self) -> bool {
        false
    }

    /// The server learning rate, for strategies that have one.
    fn server_learning_rate(&self) -> Option<f64> {
        None
    }

    /// Changes the server learning rate (the aggregator's feedback loop adapts it).
    ///
    /// # Errors
    /// [`StrategyError::NoServerLearningRate`] for strategies without one, and
    /// [`StrategyError::InvalidConfig`] for a rate that is not finite and positive.
    fn set_server_learning_rate(&mut self, lr: f64) -> Result<(), StrategyError> {
        let _ = lr;
        Err(StrategyError::NoServerLearningRate { strategy: self.name() })
    }

    /// What the strategy carries from round to round, for checkpoints.
    fn state(&self) -> StrategyState {
        StrategyState::Stateless
    }

    /// Restores what [`state`](Self::state) returned.
    ///
    /// # Errors
    /// [`StrategyError::StateMismatch`] when `state` belongs to another kind of strategy.
    fn load_state(&mut self, state: StrategyState) -> Result<(), StrategyError> {
        match state {
            StrategyState::Stateless => Ok(()),
            other => Err(StrategyError::StateMismatch {
                strategy: self.name(),
                found: other.kind(),
            }),
        }
    }
}

/// One round's aggregation in progress: fed updates as they arrive, then finished once.
pub trait Aggregation: Send + Debug {
    /// Folds in one update: `delta = local - global`, `weight` its training samples.
    ///
    /// # Errors
    /// The update is refused and the aggregation is unchanged: wrong length, zero weight
    /// where the rule weights by samples, or metadata the rule cannot use (q-FedAvg
    /// needs a finite, non-negative `loss_before`).
    fn add(&mut self, delta: &[f32], weight: u64, meta: &UpdateMeta<'_>) -> Result<(), StrategyError>;

    /// Like [`add`](Self::add), for a caller that owns the buffer: rules that keep every
    /// update store it without copying.
    ///
    /// # Errors
    /// As [`add`](Self::add).
    fn add_owned(&mut self, delta: Vec<f32>, weight: u64, meta: &UpdateMeta<'_>) -> Result<(), StrategyError> {
        self.add(&delta, weight, meta)
    }

    /// Updates accepted so far.
    fn updates(&self) -> usize;

    /// Under DP-FedAvg, how many of the accepted updates were within the clip (adaptive
    /// clipping steers by it); `None` for rules that do not clip.
    fn unclipped(&self) -> Option<usize> {
        None
    }

    /// The aggregated delta, to be passed to [`Strategy::apply`].
    ///
    /// # Errors
    /// [`StrategyError::NoUpdates`] when nothing was added, and
    /// [`StrategyError::TooFewUpdates`] when the rule needs more updates than arrived
    /// (Krum needs `n > 2f + 2`).
    fn finish(self: Box<Self>) -> Result<Vec<f32>, StrategyError>;
}

/// State a strategy carries across rounds, serializable for checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StrategyState {
    /// Nothing crosses rounds.
    Stateless,
    /// FedAvgM's velocity (empty before the first applied round).
    Momentum {
        /// Server learning rate in use (the feedback loop may have changed it).
        server_learning_rate: f64,
        /// Velocity, one value per parameter.
        velocity: Vec<f32>,
    },
    /// FedAdam / FedYogi / FedAdagrad moments (empty before the first applied round).
    Adaptive {
        /// Which rule produced the moments.
        rule: AdaptiveRule,
        /// Server learning rate in use (the feedback loop may have changed it).
        server_learning_rate: f64,
        /// Rounds applied so far.
        step: u64,
        /// First moment `m`.
        m: Vec<f32>,
        /// Second moment `v`.
        v: Vec<f32>,
    },
}

impl StrategyState {
    /// The per-parameter vectors the state holds, in a fixed order, so an encoder can
    /// store them as raw bytes and put them back.
    pub fn vectors_mut(&mut self) -> Vec<&mut Vec<f32>> {
        match self {
            Self::Stateless => Vec::new(),
            Self::Momentum { velocity, .. } => vec![velocity],
            Self::Adaptive { m, v, .. } => vec![m, v],
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Stateless => "stateless",
            Self::Momentum { .. } => "momentum",
            Self::Adaptive { .. } => "adaptive",
        }
    }
}

/// Why a strategy refused an update, a configuration or a state.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StrategyError {
    /// An update, the model or the saved state has the wrong number of parameters.
    #[error("length mismatch: expected {expected} parameters, got {got}")]
    LengthMismatch {
        /// Length the aggregation or model has.
        expected: usize,
        /// Length that was passed.
        got: usize,
    },
    /// A sample-weighted rule got an update backed by no samples.
    #[error("an update with zero weight (no training samples) cannot be averaged")]
    ZeroWeight,
    /// `finish` was called with nothing added.
    #[error("{strategy}: no updates to aggregate")]
    NoUpdates {
        /// Strategy name.
        strategy: &'static str,
    },
    /// The rule needs more updates than the round produced.
    #[error("{strategy} needs at least {needed} updates ({why}), the round has {got}")]
    TooFewUpdates {
        /// Strategy name.
        strategy: &'static str,
        /// Updates needed.
        needed: usize,
        /// Updates available.
        got: usize,
        /// The rule behind the bound.
        why: &'static str,
    },
    /// q-FedAvg weights an update by the agent's loss before training, which must be a
    /// finite, non-negative number.
    #[error("q-FedAvg needs the agent's loss before training to be finite and >= 0, got {loss}")]
    InvalidLoss {
        /// The reported loss.
        loss: f64,
    },
    /// A parameter is out of range.
    #[error("{strategy}: {reason}")]
    InvalidConfig {
        /// Strategy name.
        strategy: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// A strategy name nobody knows.
    #[error("unknown strategy `{name}` (expected one of: {})", config::NAMES.join(", "))]
    UnknownStrategy {
        /// The name given.
        name: String,
    },
    /// A rule that must see individual updates was combined with secure aggregation.
    #[error(
        "strategy `{strategy}` cannot be combined with secure aggregation: it needs each agent's \
         individual update, while secure aggregation reveals only the sum of the cohort's updates; \
         turn secure aggregation off or choose fedavg, fedprox, fedavgm, fedadam, fedyogi or fedadagrad"
    )]
    IncompatibleWithSecureAggregation {
        /// Strategy name.
        strategy: &'static str,
    },
    /// The strategy has no server learning rate to change.
    #[error("strategy `{strategy}` has no server learning rate")]
    NoServerLearningRate {
        /// Strategy name.
        strategy: &'static str,
    },
    /// A saved state belongs to another kind of strategy.
    #[error("strategy `{strategy}` cannot load a `{found}` state")]
    StateMismatch {
        /// Strategy name.
        strategy: &'static str,
        /// Kind of the state offered.
        found: &'static str,
    },
}

/// Checks a positive, finite server learning rate.
fn check_lr(strategy: &'static str, lr: f64) -> Result<(), StrategyError> {
    if lr.is_finite() && lr > 0.0 {
        Ok(())
    } else {
        Err(StrategyError::InvalidConfig {
            strategy,
            reason: format!("server_learning_rate must be finite and > 0, got {lr}"),
        })
    }
}

/// Checks `got == expected`.
fn check_len(expected: usize, got: usize) -> Result<(), StrategyError> {
    if expected == got {
        Ok(())
    } else {
        Err(StrategyError::LengthMismatch { expected, got })
    }
}
