//! A seeded ChaCha12 stream that serializes as its position, so a sequence of draws
//! (a federation's cohorts, a policy's samples) resumes exactly where it stopped.
//!
//! For learning randomness only: secrets and privacy noise never come from a seeded
//! stream.

use rand::SeedableRng;
use rand::rngs::ChaCha12Rng;
use serde::{Deserialize, Serialize};

/// The position of a seeded ChaCha12 stream.
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
    /// Where `rng` stands.
    #[must_use]
    pub fn of(rng: &ChaCha12Rng) -> Self {
        Self {
            seed: rng.get_seed(),
            stream: rng.get_stream(),
            word_pos: rng.get_word_pos(),
        }
    }

    /// A generator that goes on from this position.
    #[must_use]
    pub fn rng(&self) -> ChaCha12Rng {
        let mut rng = ChaCha12Rng::from_seed(self.seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(self.word_pos);
        rng
    }
}

/// Serializes a [`ChaCha12Rng`] as its [`RngState`] (`#[serde(with = "...")]`), so a
/// seeded stream resumes where it stopped.
pub mod rng_serde {
    use rand::rngs::ChaCha12Rng;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::RngState;

    /// Writes `rng`'s position.
    ///
    /// # Errors
    /// The serializer's.
    pub fn serialize<S: Serializer>(rng: &ChaCha12Rng, s: S) -> Result<S::Ok, S::Error> {
        RngState::of(rng).serialize(s)
    }

    /// A generator at the position read.
    ///
    /// # Errors
    /// The deserializer's.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ChaCha12Rng, D::Error> {
        RngState::deserialize(d).map(|state| state.rng())
    }
}
