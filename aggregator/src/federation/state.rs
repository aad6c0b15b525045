//! What a federation carries from round to round, as one serializable value.

use rand::SeedableRng;
use rand::rngs::ChaCha12Rng;
use serde::{Deserialize, Serialize};

use crate::adapt::ServerLrController;
use crate::fairness::History;
use crate::strategy::StrategyState;

/// The position of the seeded stream that picks cohorts and task seeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// ChaCha12 key.
    pub seed: [u8; 32],
    /// Stream number.
    pub stream: u64,
    /// Words consumed.
    pub word_pos: u128,
}

impl RngState {
    pub(crate) fn of(rng: &ChaCha12Rng) -> Self {
        Self {
            seed: rng.get_seed(),
            stream: rng.get_stream(),
            word_pos: rng.get_word_pos(),
        }
    }

    pub(crate) fn rng(&self) -> ChaCha12Rng {
        let mut rng = ChaCha12Rng::from_seed(self.seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(self.word_pos);
        rng
    }
}

/// Serializes a [`ChaCha12Rng`] as its [`RngState`] (`#[serde(with = "...")]`), so a
/// seeded stream resumes where it stopped.
pub(crate) mod rng_serde {
    use rand::rngs::ChaCha12Rng;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::RngState;

    pub(crate) fn serialize<S: Serializer>(rng: &ChaCha12Rng, s: S) -> Result<S::Ok, S::Error> {
        RngState::of(rng).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ChaCha12Rng, D::Error> {
        RngState::deserialize(d).map(|state| state.rng())
    }
}

/// Everything a federation carries from one round to the next, as one serializable
/// value (see the module docs).
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
