//! The aggregator's side of a secure round.

use std::collections::{BTreeMap, BTreeSet};

use x25519_dalek::StaticSecret;

use super::error::SecAggError;
use super::graph::Graph;
use super::keys::{self, SEALED_LEN};
use super::mask::{self, Sign, scale_for};
use super::shamir::{self, Share};
use super::wire::{
    DistributedNoise, EncryptedShare, MASK_KEY, PeerKeys, PublicKeys, Reveal, RoundContext, SELF_MASK, SecureRound,
    validate_shape,
};

/// The aggregator's part in one secure round: it collects keys, forwards sealed shares, sums
/// masked inputs, and with the survivors' reveals removes the masks from the sum.
///
/// Driven through the steps in order: [`add_keys`](Self::add_keys) then
/// [`roster`](Self::roster) (U1); [`add_shares`](Self::add_shares) then
/// [`close_shares`](Self::close_shares) (U2) and [`shares_for`](Self::shares_for);
/// [`add_masked`](Self::add_masked) then [`close_inputs`](Self::close_inputs) (U3);
/// [`add_reveal`](Self::add_reveal) then [`finish`](Self::finish). A refused call leaves the
/// state as it was, so the driver can drop the offending agent and go on.
#[derive(Clone)]
pub struct ServerRound {
    context: Vec<u8>,
    cohort: u32,
    /// The SecAgg+ graph degree; `None` for the complete graph.
    degree: Option<u32>,
    graph: Graph,
    threshold: u32,
    clip: f32,
    scale: f64,
    numel: usize,
    max_total_weight: u64,
    phase: Phase,
    /// Public keys received; U1 once the roster is frozen.
    keys: BTreeMap<u32, PublicKeys>,
    /// Sealed shares accepted, by sender; its senders are U2 once closed.
    shares: BTreeMap<u32, Vec<EncryptedShare>>,
    /// Weights of the masked inputs folded into `sum`; its agents are U3 once closed.
    weights: BTreeMap<u32, u64>,
    total_weight: u64,
    /// Running wrapping sum of the masked inputs.
    sum: Vec<u32>,
    /// Revealed shares, by the agent whose secret they share: of b for U3, of s^SK for U2 \ U3.
    revealed: BTreeMap<u32, Vec<Share>>,
    /// Agents whose reveals were accepted.
    revealers: BTreeSet<u32>,
    /// Distributed DP noise the agents add, when set.
    noise: Option<DistributedNoise>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Collecting public keys.
    Keys,
    /// U1 frozen; collecting sealed shares.
    Shares,
    /// U2 frozen; collecting masked inputs.
    Inputs,
    /// U3 frozen; collecting reveals.
    Reveals,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Self::Keys => "public keys",
            Self::Shares => "share keys",
            Self::Inputs => "masked input",
            Self::Reveals => "unmasking",
        }
    }
}

impl std::fmt::Debug for ServerRound {
    /// Where the round is and how many agents are in each set; not the sum or the shares.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerRound")
            .field("phase", &self.phase.name())
            .field("cohort", &self.cohort)
            .field("threshold", &self.threshold)
            .field("numel", &self.numel)
            .field("keys", &self.keys.len())
            .field("shares", &self.shares.len())
            .field("inputs", &self.weights.len())
            .field("total_weight", &self.total_weight)
            .field("revealers", &self.revealers.len())
            .finish_non_exhaustive()
    }
}

/// What a finished secure round yields.
#[derive(Debug, Clone, PartialEq)]
pub struct Unmasked {
    /// The weighted mean of the contributors' clipped updates: their sum / `total_weight`.
    pub mean: Vec<f32>,
    /// The sum of the contributors' weights.
    pub total_weight: u64,
    /// The agents whose inputs are in the mean (U3), sorted.
    pub contributors: Vec<u32>,
    /// Every other agent of the cohort, sorted: those that never sent keys or shares, and
    /// those whose masks were removed because their input never arrived.
    pub dropped: Vec<u32>,
}

impl ServerRound {
    /// A round for a cohort of `cohort` agents, any `threshold` of which can unmask the sum,
    /// with updates of `numel` coordinates clipped to [-clip, clip].
    ///
    /// `max_total_weight` bounds the sum of the weights of the inputs: the fixed-point scale
    /// is chosen from it ([`scale_for`]), and inputs that would exceed it are refused.
    ///
    /// # Errors
    /// [`SecAggError::InvalidParams`] for a cohort outside 2..=255, a threshold outside
    /// 2..=cohort, a clip that is not finite and positive, an empty update or a zero weight bound.
    pub fn new(
        context: RoundContext,
        cohort: u32,
        threshold: u32,
        clip: f32,
        numel: usize,
        max_total_weight: u64,
    ) -> Result<Self, SecAggError> {
        validate_shape(cohort, None, threshold, clip)?;
        if numel == 0 {
            return Err(SecAggError::InvalidParams(
                "the update must have at least one coordinate".into(),
            ));
        }
        if max_total_weight == 0 {
            return Err(SecAggError::InvalidParams(
                "the bound on the total weight must be at least 1".into(),
            ));
        }
        let scale = scale_for(clip, max_total_weight);
        if !(scale.is_finite() && scale > 0.0) {
            return Err(SecAggError::InvalidParams(format!(
                "clip {clip} and total weight bound {max_total_weight} give no usable fixed-point scale ({scale})"
            )));
        }
        Ok(Self {
            context: context.encode(),
            cohort,
            degree: None,
            graph: Graph::new(&[], cohort, None),
            threshold,
            clip,
            scale,
            numel,
            max_total_weight,
            phase: Phase::Keys,
            keys: BTreeMap::new(),
            shares: BTreeMap::new(),
            weights: BTreeMap::new(),
            total_weight: 0,
            sum: vec![0; numel],
            revealed: BTreeMap::new(),
            revealers: BTreeSet::new(),
            noise: None,
        })
    }

    /// The parameters to send to the agent at `index`: the same threshold, clip and scale
    /// for every agent.
    pub fn params_for(&self, index: u32) -> SecureRound {
        SecureRound {
            index,
            cohort: self.cohort,
            degree: self.degree,
            threshold: self.threshold,
            clip: self.clip,
            scale: self.scale,
            noise: self.noise,
        }
    }

    /// Makes this a SecAgg+ round: each agent masks against and shares its secrets with
    /// `degree` neighbours (even, at least 2) instead of the whole cohort, and the
    /// threshold applies to each neighbourhood. A degree of cohort - 1 or more is the
    /// complete graph.
    ///
    /// # Errors
    /// [`SecAggError::InvalidParams`] for an odd or too small degree, or a threshold above
    /// the neighbourhood's size.
    pub fn with_degree(mut self, degree: u32) -> Result<Self, SecAggError> {
        validate_shape(self.cohort, Some(degree), self.threshold, self.clip)?;
        self.degree = Some(degree);
        self.graph = Graph::new(&self.context, self.cohort, self.degree);
        Ok(self)
    }

    /// Whether this round runs on the complete graph.
    pub fn is_complete_graph(&self) -> bool {
        self.graph.is_complete()
    }

    /// Makes this a distributed-noise round: every agent clips its update to
    /// `noise.clip` in L2 norm and adds its share of the noise before masking, and every
    /// input must have weight 1. The coordinate range must hold a noised update
    /// ([`DistributedNoise::coordinate_range`]).
    ///
    /// # Errors
    /// [`SecAggError::InvalidParams`] for invalid noise or a coordinate clip below its range.
    pub fn with_noise(mut self, noise: DistributedNoise) -> Result<Self, SecAggError> {
        noise.validate()?;
        if self.clip < noise.coordinate_range() {
            return Err(SecAggError::InvalidParams(format!(
                "the coordinate clip {} is below the noised update's range {}",
                self.clip,
                noise.coordinate_range()
            )));
        }
        self.noise = Some(noise);
        Ok(self)
    }

    /// The fixed-point scale of this round.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// An agent's public keys.
    ///
    /// # Errors
    /// [`SecAggError::OutOfOrder`] after [`roster`](Self::roster),
    /// [`SecAggError::IndexOutOfRange`], [`SecAggError::Duplicate`] for a second set of keys,
    /// [`SecAggError::WeakKey`] for a low-order key.
    pub fn add_keys(&mut self, index: u32, keys: PublicKeys) -> Result<(), SecAggError> {
        self.expect(Phase::Keys, "add_keys")?;
        self.in_cohort(index)?;
        if self.keys.contains_key(&index) {
            return Err(SecAggError::Duplicate {
                index,
                list: "the public keys received",
            });
        }
        if keys::is_low_order(&keys.cipher) || keys::is_low_order(&keys.mask) {
            return Err(SecAggError::WeakKey { index });
        }
        self.keys.insert(index, keys);
        Ok(())
    }

    /// Freezes U1, the agents whose keys arrived, and returns it sorted by index: the roster
    /// every member needs for [`ClientRound::share_keys`](super::ClientRound::share_keys).
    ///
    /// # Errors
    /// [`SecAggError::OutOfOrder`] if already frozen, [`SecAggError::TooFew`] if fewer keys
    /// than the threshold arrived (the round stays open for more).
    pub fn roster(&mut self) -> Result<Vec<PeerKeys>, SecAggError> {
        self.expect(Phase::Keys, "roster")?;
        self.enough("U1 (agents that sent keys)", self.keys.len())?;
        self.phase = Phase::Shares;
        Ok(self
            .keys
            .iter()
            .map(|(&index, keys)| PeerKeys {
                index,
                keys: keys.clone(),
            })
            .collect())
    }

    /// What member `index` needs of the frozen roster: itself and its neighbours in U1 (all
    /// of U1 on the complete graph), sorted by index. Empty before
    /// [`roster`](Self::roster) froze it.
    pub fn roster_for(&self, index: u32) -> Vec<PeerKeys> {
        if self.phase == Phase::Keys {
            return Vec::new();
        }
        self.keys
            .iter()
            .filter(|&(&v, _)| v == index || self.graph.adjacent(index, v))
            .map(|(&v, keys)| PeerKeys {
                index: v,
                keys: keys.clone(),
            })
            .collect()
    }

    /// The sealed shares a member of U1 produced: exactly one for each of its neighbours in
    /// U1 (every other member on the complete graph), all from `index`.
    ///
    /// # Errors
    /// [`SecAggError::OutOfOrder`] outside the share-keys step; [`SecAggError::NotMember`] if
    /// `index` is not in U1; [`SecAggError::Duplicate`] for a second batch or two shares to one
    /// agent; [`SecAggError::ShareCount`], [`SecAggError::WrongSender`],
    /// [`SecAggError::NotMember`] (addressee outside U1, or `index` itself) or
    /// [`SecAggError::CiphertextLength`] for a malformed batch.
    pub fn add_shares(&mut self, index: u32, shares: Vec<EncryptedShare>) -> Result<(), SecAggError> {
        self.expect(Phase::Shares, "add_shares")?;
        if !self.keys.contains_key(&index) {
            return Err(SecAggError::NotMember {
                index,
                set: "U1 (the roster)",
            });
        }
        if self.shares.contains_key(&index) {
            return Err(SecAggError::Duplicate {
                index,
                list: "the senders of shares",
            });
        }
        let expected = self.keys.keys().filter(|&&v| self.graph.adjacent(index, v)).count();
        if shares.len() != expected {
            return Err(SecAggError::ShareCount {
                index,
                got: shares.len(),
                expected,
            });
        }
        let mut recipients = BTreeSet::new();
        for share in &shares {
            if share.from != index {
                return Err(SecAggError::WrongSender {
                    index,
                    from: share.from,
                });
            }
            if !self.graph.adjacent(index, share.to) || !self.keys.contains_key(&share.to) {
                return Err(SecAggError::NotMember {
                    index: share.to,
                    set: "the sender's neighbours in U1",
                });
            }
            if !recipients.insert(share.to) {
                return Err(SecAggError::Duplicate {
                    index: share.to,
                    list: "the recipients of one agent's shares",
                });
            }
            if share.ciphertext.len() != SEALED_LEN {
                return Err(SecAggError::CiphertextLength {
                    from: index,
                    to: share.to,
                    got: share.ciphertext.len(),
                    expected: SEALED_LEN,
                });
            }
        }
        self.shares.insert(index, shares);
        Ok(())
    }

    /// Freezes U2, the agents whose shares were accepted, and returns it sorted.
    ///
    /// # Errors
    /// [`SecAggError::OutOfOrder`] outside the share-keys step, [`SecAggError::TooFew`] if
    /// fewer agents than the threshold sent shares (the step stays open for more).
    pub fn close_shares(&mut self) -> Result<Vec<u32>, SecAggError> {
        self.expect(Phase::Shares, "close_shares")?;
        self.enough("U2 (agents that sent shares)", self.shares.len())?;
        self.phase = Phase::Inputs;
        Ok(self.shares.keys().copied().collect())
    }

    /// The shares to forward to `index`: those its neighbours in U2 sealed for it.
    ///
    /// Empty before [`close_shares`](Self::close_shares) and for an agent outside U2.
    pub fn shares_for(&self, index: u32) -> Vec<EncryptedShare> {
        if matches!(self.phase, Phase::Keys | Phase::Shares) || !self.shares.contains_key(&index) {
            return Vec::new();
        }
        self.shares
            .values()
            .flatten()
            .filter(|share| share.to == index)
            .cloned()
            .collect()
    }

    /// A masked input from a member of U2, with its weight (the agent's sample count), folded
    /// into the running sum so memory does not grow with the cohort.
    ///
    /// # Errors
    /// [`SecAggError::OutOfOrder`] outside the masked-input step; [`SecAggError::NotMember`]
    /// for an agent outside U2; [`SecAggError::Duplicate`] for a second input;
    /// [`SecAggError::WrongLength`]; [`SecAggError::ZeroWeight`];
    /// [`SecAggError::WeightOverBound`] if the total weight would exceed the round's bound.
    /// The sum is unchanged when an input is refused.
    pub fn add_masked(&mut self, index: u32, masked: &[u32], weight: u64) -> Result<(), SecAggError> {
        self.expect(Phase::Inputs, "add_masked")?;
        if !self.shares.contains_key(&index) {
            return Err(SecAggError::NotMember {
                index,
                set: "U2 (agents that sent shares)",
            });
        }
        if self.weights.contains_key(&index) {
            return Err(SecAggError::Duplicate {
                index,
                list: "the masked inputs",
            });
        }
        if masked.len() != self.numel {
            return Err(SecAggError::WrongLength {
                index,
                got: masked.len(),
                expected: self.numel,
            });
        }
        if weight == 0 {
            return Err(SecAggError::ZeroWeight);
        }
        if self.noise.is_some() && weight != 1 {
            return Err(SecAggError::NoisedWeight { weight });
        }
        let total = self.total_weight.saturating_add(weight);
        if total > self.max_total_weight {
            return Err(SecAggError::WeightOverBound {
                index,
                weight,
                total,
                max: self.max_total_weight,
            });
        }
        for (acc, &word) in self.sum.iter_mut().zip(masked) {
            *acc = acc.wrapping_add(word);
        }
        self.weights.insert(index, weight);
        self.total_weight = total;
        Ok(())
    }

    /// Freezes U3, the agents whose masked inputs were accepted, and returns it sorted: the
    /// survivors every member needs for [`ClientRound::reveal`](super::ClientRound::reveal).
    ///
    /// # Errors
    /// [`SecAggError::OutOfOrder`] outside the masked-input step, [`SecAggError::TooFew`] if
    /// fewer inputs than the threshold arrived (the step stays open for more).
    pub fn close_inputs(&mut self) -> Result<Vec<u32>, SecAggError> {
        self.expect(Phase::Inputs, "close_inputs")?;
        self.enough("U3 (agents whose masked input arrived)", self.weights.len())?;
        self.phase = Phase::Reveals;
        Ok(self.weights.keys().copied().collect())
    }

    /// The shares a member of U3 reveals: one for every member u of U2 in its neighbourhood
    /// (itself and its neighbours), of u's self-mask seed if u is in U3 and of u's mask key
    /// if not, each at the revealer's point (index + 1).
    /// Refused as a whole, leaving the state unchanged, if any share is out of place.
    ///
    /// # Errors
    /// [`SecAggError::OutOfOrder`] outside the unmasking step; [`SecAggError::NotMember`] for
    /// a revealer outside U3 or a share of an agent outside U2 or the revealer's
    /// neighbourhood; [`SecAggError::Duplicate`] for
    /// a second reveal or two shares of one agent; [`SecAggError::WrongRevealKind`];
    /// [`SecAggError::WrongShareX`]; [`SecAggError::IncompleteReveal`].
    pub fn add_reveal(&mut self, index: u32, reveals: Vec<Reveal>) -> Result<(), SecAggError> {
        self.expect(Phase::Reveals, "add_reveal")?;
        if !self.weights.contains_key(&index) {
            return Err(SecAggError::NotMember {
                index,
                set: "U3 (agents whose masked input arrived)",
            });
        }
        if self.revealers.contains(&index) {
            return Err(SecAggError::Duplicate {
                index,
                list: "the agents that revealed",
            });
        }
        let mut seen = BTreeSet::new();
        for reveal in &reveals {
            let of = reveal.of();
            if !self.shares.contains_key(&of) || !(of == index || self.graph.adjacent(index, of)) {
                return Err(SecAggError::NotMember {
                    index: of,
                    set: "the revealer's neighbourhood in U2",
                });
            }
            if !seen.insert(of) {
                return Err(SecAggError::Duplicate {
                    index: of,
                    list: "one agent's reveal",
                });
            }
            let expected = if self.weights.contains_key(&of) {
                SELF_MASK
            } else {
                MASK_KEY
            };
            if reveal.kind() != expected {
                return Err(SecAggError::WrongRevealKind {
                    from: index,
                    of,
                    got: reveal.kind(),
                    expected,
                });
            }
            let x = reveal.share().x;
            if u32::from(x) != index + 1 {
                return Err(SecAggError::WrongShareX {
                    from: index,
                    of,
                    x,
                    expected: index + 1,
                });
            }
        }
        let owed = |of: &&u32| **of == index || self.graph.adjacent(index, **of);
        if let Some(&missing) = self.shares.keys().filter(owed).find(|of| !seen.contains(of)) {
            return Err(SecAggError::IncompleteReveal { from: index, missing });
        }
        for reveal in reveals {
            let (Reveal::SelfMask { of, share } | Reveal::MaskKey { of, share }) = reveal;
            self.revealed.entry(of).or_default().push(share);
        }
        self.revealers.insert(index);
        Ok(())
    }

    /// Whether enough agents revealed for [`finish`](Self::finish) to unmask the sum:
    /// `threshold` shares of every secret it needs.
    pub fn can_finish(&self) -> bool {
        let threshold = self.threshold as usize;
        self.phase == Phase::Reveals
            && self
                .needed()
                .all(|of| self.revealed.get(&of).is_some_and(|shares| shares.len() >= threshold))
    }

    /// The agents whose secret the unmasking needs: every member of U3 (its self mask),
    /// and every member of U2 \ U3 with a neighbour in U3 (its mask key).
    fn needed(&self) -> impl Iterator<Item = u32> + '_ {
        self.shares
            .keys()
            .copied()
            .filter(|&u| self.weights.contains_key(&u) || self.weights.keys().any(|&v| self.graph.adjacent(u, v)))
    }

    /// Reconstructs b_u for every u in U3 and s_u^SK for every u in U2 \ U3 with a neighbour
    /// in U3 from `threshold` shares each, removes their masks from the sum (splitting it
    /// across the machine's cores) and decodes it into the weighted mean.
    ///
    /// # Errors
    /// [`SecAggError::OutOfOrder`] before [`close_inputs`](Self::close_inputs);
    /// [`SecAggError::TooFew`] if some secret has fewer revealed shares than the threshold
    /// (check [`can_finish`](Self::can_finish) first); [`SecAggError::KeyMismatch`] if a reconstructed
    /// mask key does not match its published public key (inconsistent shares);
    /// [`SecAggError::WeakKey`] if a key agreement with it degenerates.
    pub fn finish(mut self) -> Result<Unmasked, SecAggError> {
        self.expect(Phase::Reveals, "finish")?;
        self.enough("the agents that revealed their shares", self.revealers.len())?;
        let needed: Vec<u32> = self.needed().collect();
        let mut sum = std::mem::take(&mut self.sum);
        let threshold = self.threshold as usize;
        let shares_of = |of: u32| -> Result<&[Share], SecAggError> {
            let shares = self.revealed.get(&of).map_or(&[][..], Vec::as_slice);
            shares.get(..threshold).ok_or(SecAggError::TooFew {
                set: "the revealed shares of one agent",
                have: shares.len(),
                threshold: self.threshold,
            })
        };

        // Every mask to remove, then removed in one pass over the sum on every core.
        let mut masks = Vec::with_capacity(self.weights.len());
        for &u in self.weights.keys() {
            masks.push((shamir::combine(shares_of(u)?)?, Sign::Minus));
        }
        for &dropped in needed.iter().filter(|v| !self.weights.contains_key(v)) {
            let secret = StaticSecret::from(*shamir::combine(shares_of(dropped)?)?);
            let published = self.keys.get(&dropped).map(|keys| keys.mask);
            if published != Some(keys::public_of(&secret)) {
                return Err(SecAggError::KeyMismatch { index: dropped });
            }
            for &u in self.weights.keys().filter(|&&u| self.graph.adjacent(dropped, u)) {
                let Some(u_keys) = self.keys.get(&u) else {
                    return Err(SecAggError::NotMember {
                        index: u,
                        set: "U1 (the roster)",
                    });
                };
                let seed = keys::pair_seed(&self.context, &secret, dropped, u, &u_keys.mask)?;
                // u added +PRG(s_uv) for a higher-indexed v and −PRG(s_uv) for a lower one; undo it.
                let sign = if dropped > u { Sign::Minus } else { Sign::Plus };
                masks.push((seed, sign));
            }
        }
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        mask::add_prgs(&mut sum, &masks, threads);

        let contributors: Vec<u32> = self.weights.keys().copied().collect();
        let dropped = (0..self.cohort).filter(|i| !self.weights.contains_key(i)).collect();
        Ok(Unmasked {
            mean: mask::decode(&sum, self.scale, self.total_weight),
            total_weight: self.total_weight,
            contributors,
            dropped,
        })
    }

    fn expect(&self, phase: Phase, call: &'static str) -> Result<(), SecAggError> {
        if self.phase == phase {
            Ok(())
        } else {
            Err(SecAggError::OutOfOrder {
                call,
                phase: self.phase.name(),
            })
        }
    }

    fn in_cohort(&self, index: u32) -> Result<(), SecAggError> {
        if index < self.cohort {
            Ok(())
        } else {
            Err(SecAggError::IndexOutOfRange {
                index,
                cohort: self.cohort,
            })
        }
    }

    fn enough(&self, set: &'static str, have: usize) -> Result<(), SecAggError> {
        if have >= self.threshold as usize {
            Ok(())
        } else {
            Err(SecAggError::TooFew {
                set,
                have,
                threshold: self.threshold,
            })
        }
    }
}
