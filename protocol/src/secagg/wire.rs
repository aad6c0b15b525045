//! The values of a secure round that travel between agents and the aggregator.

use serde::{Deserialize, Serialize};

use super::error::SecAggError;
use super::shamir::Share;

/// The largest cohort: Shamir shares over GF(2^16) are evaluated at x = index + 1 ∈ 1..=65535.
pub const MAX_COHORT: u32 = 65_535;

/// Per-agent parameters of a secure round, sent in the agent's task.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SecureRound {
    /// This agent's position in the cohort, 0-based.
    pub index: u32,
    /// Cohort size n, 2..=65535.
    pub cohort: u32,
    /// SecAgg+: each agent masks against and shares its secrets with this many neighbours
    /// (even, at least 2) on a random ring (SecAgg+, Bell et al. 2020); `None`, or a degree
    /// of n - 1 or more, is the complete graph of the original protocol.
    pub degree: Option<u32>,
    /// Shares needed to reconstruct a secret, 2 <= t <= the neighbourhood (an agent and
    /// its neighbours: n on the complete graph, degree + 1 on a sparse one): each
    /// neighbourhood survives all but t of its members dropping out, and fewer than t
    /// colluding members of it learn nothing from the aggregator's view.
    pub threshold: u32,
    /// Each update coordinate is clipped to [-clip, clip] before encoding (finite, > 0).
    pub clip: f32,
    /// Fixed-point scale: a coordinate encodes as round(weight · clipped · scale), as a
    /// wrapping u32 (finite, > 0). See [`scale_for`](super::scale_for).
    pub scale: f64,
    /// Set when the round adds distributed differential-privacy noise: the agent clips its
    /// update in L2 norm and adds its share of the Gaussian noise before masking, and
    /// its input has weight 1.
    pub noise: Option<DistributedNoise>,
}

/// Each agent's part of distributed DP noise (client-level DP-FedAvg under secure
/// aggregation): the update is scaled down to L2 norm `clip` if longer, then every
/// coordinate gets independent Gaussian noise of standard deviation `std`. With `n`
/// agents' inputs in the sum and `std = σ · clip / √cohort`, the sum carries noise of
/// standard deviation `σ · clip · √(n / cohort)`: the full σ when every agent of the
/// cohort contributes, less when some drop out.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DistributedNoise {
    /// L2 norm every update is clipped to (finite, > 0).
    pub clip: f32,
    /// Standard deviation of this agent's noise per coordinate (finite, ≥ 0).
    pub std: f32,
}

impl DistributedNoise {
    /// How many noise standard deviations past `clip` the coordinate range reaches: a
    /// Gaussian draw lands beyond 10 σ with probability below 10^-22, so the fixed-point
    /// range practically never truncates noise.
    pub const RANGE_IN_STDS: f32 = 10.0;

    /// The coordinate range [-r, r] a noised, clipped update fits in.
    #[must_use]
    pub fn coordinate_range(&self) -> f32 {
        self.clip + Self::RANGE_IN_STDS * self.std
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`SecAggError::InvalidParams`] for a clip that is not finite and positive or a
    /// standard deviation that is not finite and non-negative.
    pub fn validate(&self) -> Result<(), SecAggError> {
        if !(self.clip.is_finite() && self.clip > 0.0 && self.std.is_finite() && self.std >= 0.0) {
            return Err(SecAggError::InvalidParams(format!(
                "distributed noise needs a finite positive clip and a finite non-negative std, not {} and {}",
                self.clip, self.std
            )));
        }
        Ok(())
    }

    /// Clips `update` to L2 norm `clip` and adds this agent's noise, drawn from `rng`
    /// (a cryptographically secure generator: the noise is what hides the update).
    /// Returns whether the update was clipped.
    pub fn apply(&self, update: &mut [f32], rng: &mut impl rand::CryptoRng) -> bool {
        let clipped = clip_l2(update, f64::from(self.clip));
        if self.std > 0.0 {
            let std = f64::from(self.std);
            for v in update.iter_mut() {
                let noise: f64 = rand::RngExt::sample(rng, rand_distr::StandardNormal);
                *v += (noise * std) as f32;
            }
        }
        clipped
    }
}

/// Scales `update` down to L2 norm `clip` if it is longer; returns whether it was. The
/// clip of DP-FedAvg, wherever the noise is added.
pub fn clip_l2(update: &mut [f32], clip: f64) -> bool {
    let norm = update.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt();
    let longer = norm > clip;
    if longer {
        let scale = (clip / norm) as f32;
        update.iter_mut().for_each(|v| *v *= scale);
    }
    longer
}

impl SecureRound {
    /// Checks that the parameters describe a round that can run.
    ///
    /// # Errors
    /// [`SecAggError::InvalidParams`] for a cohort outside 2..=255, a threshold outside
    /// 2..=cohort, a clip or scale that is not finite and positive;
    /// [`SecAggError::IndexOutOfRange`] for an index at or above the cohort size.
    pub fn validate(&self) -> Result<(), SecAggError> {
        validate_shape(self.cohort, self.degree, self.threshold, self.clip)?;
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(SecAggError::InvalidParams(format!(
                "the fixed-point scale must be finite and positive, not {}",
                self.scale
            )));
        }
        if let Some(noise) = &self.noise {
            noise.validate()?;
        }
        if self.index >= self.cohort {
            return Err(SecAggError::IndexOutOfRange {
                index: self.index,
                cohort: self.cohort,
            });
        }
        Ok(())
    }
}

/// The size of an agent's neighbourhood (itself and its neighbours) in a cohort of
/// `cohort` with graph degree `degree`.
pub(crate) fn neighbourhood(cohort: u32, degree: Option<u32>) -> u32 {
    degree.map_or(cohort, |d| d.saturating_add(1).min(cohort))
}

/// The checks both sides share: cohort size, degree, threshold and clip.
pub(crate) fn validate_shape(cohort: u32, degree: Option<u32>, threshold: u32, clip: f32) -> Result<(), SecAggError> {
    if !(2..=MAX_COHORT).contains(&cohort) {
        return Err(SecAggError::InvalidParams(format!(
            "the cohort must have 2 to {MAX_COHORT} agents, not {cohort}"
        )));
    }
    if let Some(degree) = degree
        && (degree < 2 || degree % 2 == 1)
    {
        return Err(SecAggError::InvalidParams(format!(
            "the graph degree must be even and at least 2, not {degree}"
        )));
    }
    let largest = neighbourhood(cohort, degree);
    if !(2..=largest).contains(&threshold) {
        return Err(SecAggError::InvalidParams(format!(
            "the threshold must be between 2 and the neighbourhood size {largest}, not {threshold}"
        )));
    }
    if !(clip.is_finite() && clip > 0.0) {
        return Err(SecAggError::InvalidParams(format!(
            "the clip must be finite and positive, not {clip}"
        )));
    }
    Ok(())
}

/// An agent's two X25519 public keys for one round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeys {
    /// c^PK: agrees the keys that encrypt the shares sent to and from this agent.
    pub cipher: [u8; 32],
    /// s^PK: agrees the pairwise mask seeds with every other agent.
    pub mask: [u8; 32],
}

/// One member of the roster U1: an agent's index and the keys it published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerKeys {
    /// The agent's position in the cohort.
    pub index: u32,
    /// Its public keys.
    pub keys: PublicKeys,
}

/// One agent's shares of its two secrets, sealed for one other agent.
///
/// The aggregator forwards these without being able to read them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedShare {
    /// The agent that made the shares.
    pub from: u32,
    /// The agent that can open them.
    pub to: u32,
    /// ChaCha20-Poly1305 ciphertext and tag of the two shares.
    pub ciphertext: Vec<u8>,
}

/// A share an agent reveals in the unmasking step.
///
/// For one agent, the aggregator receives shares of exactly one of its two secrets: the
/// self-mask seed of an agent whose input is in the sum, the mask key of one whose is not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reveal {
    /// A share of the self-mask seed b of an agent in U3.
    SelfMask {
        /// The agent the seed belongs to.
        of: u32,
        /// The revealer's share of it.
        share: Share,
    },
    /// A share of the mask key s^SK of an agent in U2 that dropped before its input arrived.
    MaskKey {
        /// The agent the key belongs to.
        of: u32,
        /// The revealer's share of it.
        share: Share,
    },
}

impl Reveal {
    /// The agent whose secret this is a share of.
    pub fn of(&self) -> u32 {
        match self {
            Self::SelfMask { of, .. } | Self::MaskKey { of, .. } => *of,
        }
    }

    /// The share itself.
    pub fn share(&self) -> &Share {
        match self {
            Self::SelfMask { share, .. } | Self::MaskKey { share, .. } => share,
        }
    }

    /// The kind of share, in words, for error messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::SelfMask { .. } => SELF_MASK,
            Self::MaskKey { .. } => MASK_KEY,
        }
    }
}

/// How error messages name the two kinds of reveal.
pub(crate) const SELF_MASK: &str = "self-mask";
/// See [`SELF_MASK`].
pub(crate) const MASK_KEY: &str = "mask-key";

/// Binds every derived key and every ciphertext to one round, so nothing from one round can
/// be replayed into another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundContext {
    /// The study's name.
    pub study: String,
    /// The trial number.
    pub trial: u64,
    /// The round number within the trial.
    pub round: u64,
}

impl RoundContext {
    /// An unambiguous byte encoding: the study's length prefixes it, so no two contexts
    /// encode alike.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.study.len());
        out.extend_from_slice(&(self.study.len() as u64).to_le_bytes());
        out.extend_from_slice(self.study.as_bytes());
        out.extend_from_slice(&self.trial.to_le_bytes());
        out.extend_from_slice(&self.round.to_le_bytes());
        out
    }
}
