//! What a federation carries from round to round, as one serializable value.

use serde::{Deserialize, Serialize};

use crate::fairness::History;
use crate::server_lr::ServerLrController;
use crate::strategy::StrategyState;
pub use fedtune_tuning::rng::RngState;

/// Everything a federation carries from one round to the next, as one serializable
/// value (see the module docs).
///
/// It holds nothing from which differential-privacy noise can be derived: the seeded
/// stream ([`RngState`]) picks cohorts, task seeds and initial weights only, and the
/// noise (central noise on the aggregate, the noise on adaptive clipping's count) comes
/// from the operating system's CSPRNG each time a federation is made or resumed. A
/// checkpoint, like the configuration, is therefore no help in subtracting the noise
/// from a released model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FederationState {
    /// The trial the tasks belong to (0 outside a study).
    pub trial: u64,
    /// The next round to run (rounds before it are committed).
    pub round: u64,
    /// Global model parameters, in manifest order.
    pub global: Vec<f32>,
    /// What the strategy carries across rounds.
    pub strategy: StrategyState,
    /// The server learning rate's feedback loop, when it is active.
    pub server_lr: Option<ServerLrController>,
    /// Participation counts and last accuracies per agent.
    pub history: History,
    /// The cohort and seed stream.
    pub rng: RngState,
    /// The client tuner's state (a study's within-trial policy), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuner: Option<serde_json::Value>,
    /// The privacy spent so far, when `[privacy]` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<crate::privacy::Ledger>,
}
