//! The agent's side of a secure round.

use rand::CryptoRng;
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use super::error::SecAggError;
use super::graph::Graph;
use super::keys;
use super::mask::{self, Sign};
use super::shamir::{self, Share};
use super::wire::{EncryptedShare, PeerKeys, PublicKeys, Reveal, RoundContext, SecureRound};

/// One agent's part in one secure round.
///
/// Driven through the steps in order: [`new`](Self::new) (publish keys),
/// [`share_keys`](Self::share_keys), [`receive_shares`](Self::receive_shares),
/// [`mask`](Self::mask), [`reveal`](Self::reveal). A refused call leaves the state as it was.
///
/// Two guards protect the agent from an aggregator that asks twice: it masks only one
/// input per round (two inputs under the same masks would give away their difference), and
/// it reveals for only one set of survivors (two sets could hand out both the self-mask and
/// the mask key of one agent, which unmasks its input).
pub struct ClientRound {
    context: Vec<u8>,
    params: SecureRound,
    /// Who this agent shares secrets and masks with.
    graph: Graph,
    /// c^SK: agrees the keys that seal shares.
    cipher_secret: StaticSecret,
    /// s^SK: agrees the pairwise mask seeds; shared among the neighbours.
    mask_secret: StaticSecret,
    /// b: the self-mask seed; shared among the neighbours.
    self_seed: Zeroizing<[u8; 32]>,
    published: PublicKeys,
    phase: Phase,
}

/// The agent's shares of one agent's two secrets (at x = own index + 1).
#[derive(Clone)]
struct SharePair {
    /// Share of s^SK.
    mask_key: Zeroizing<[u8; 32]>,
    /// Share of b.
    self_mask: Zeroizing<[u8; 32]>,
}

impl SharePair {
    /// Splits a decrypted 64-byte plaintext: the s^SK share, then the b share.
    fn from_plaintext(plaintext: &[u8; 64]) -> Self {
        let mut pair = Self {
            mask_key: Zeroizing::new([0; 32]),
            self_mask: Zeroizing::new([0; 32]),
        };
        pair.mask_key.copy_from_slice(&plaintext[..32]);
        pair.self_mask.copy_from_slice(&plaintext[32..]);
        pair
    }

    fn to_plaintext(&self) -> Zeroizing<[u8; 64]> {
        let mut plaintext = Zeroizing::new([0; 64]);
        plaintext[..32].copy_from_slice(self.mask_key.as_ref());
        plaintext[32..].copy_from_slice(self.self_mask.as_ref());
        plaintext
    }
}

/// A member of U2 as this agent sees it.
struct Member {
    index: u32,
    /// This agent's shares of the member's secrets.
    shares: SharePair,
    /// The pairwise mask seed s_uv with the member; `None` for this agent itself.
    seed: Option<Zeroizing<[u8; 32]>>,
}

enum Phase {
    /// Keys published; waiting for the roster.
    Keys,
    /// Shares sent to the roster; waiting for theirs.
    Shared {
        /// U1, sorted by index.
        roster: Vec<PeerKeys>,
        /// This agent's shares of its own secrets.
        own: SharePair,
    },
    /// U2 is known and the pairwise seeds agreed.
    Ready {
        /// This agent's neighbours in U2, sorted by index, this agent included.
        members: Vec<Member>,
        /// Whether the masked input has been produced.
        masked: bool,
        /// The survivors the agent revealed for, sorted.
        revealed_for: Option<Vec<u32>>,
    },
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Self::Keys => "share keys",
            Self::Shared { .. } => "receive shares",
            Self::Ready { masked: false, .. } => "masked input",
            Self::Ready { masked: true, .. } => "unmasking",
        }
    }
}

impl ClientRound {
    /// Checks the parameters and draws this round's secrets: the two X25519 key pairs (c
    /// to seal shares, s to agree masks) and the self-mask seed b. Returns the public keys to
    /// send to the aggregator.
    ///
    /// # Errors
    /// [`SecAggError::InvalidParams`] or [`SecAggError::IndexOutOfRange`] when `params` are
    /// unusable (see [`SecureRound::validate`]).
    pub fn new(
        context: RoundContext,
        params: SecureRound,
        rng: &mut impl CryptoRng,
    ) -> Result<(Self, PublicKeys), SecAggError> {
        params.validate()?;
        let cipher_secret = keys::draw_secret(rng);
        let mask_secret = keys::draw_secret(rng);
        let self_seed = keys::draw_seed(rng);
        let published = PublicKeys {
            cipher: keys::public_of(&cipher_secret),
            mask: keys::public_of(&mask_secret),
        };
        let context = context.encode();
        let graph = Graph::new(&context, params.cohort, params.degree);
        let round = Self {
            context,
            params,
            graph,
            cipher_secret,
            mask_secret,
            self_seed,
            published: published.clone(),
            phase: Phase::Keys,
        };
        Ok((round, published))
    }

    /// This agent's parameters.
    pub fn params(&self) -> &SecureRound {
        &self.params
    }

    /// Step "share keys": splits s^SK and b into shares for this agent and its neighbours in
    /// the roster U1 (each share at x = index + 1; every member on the complete graph) and
    /// seals each neighbour's pair of shares for it. Returns one [`EncryptedShare`] per
    /// neighbour in U1.
    ///
    /// # Errors
    /// - [`SecAggError::OutOfOrder`] if called twice;
    /// - [`SecAggError::IndexOutOfRange`] or [`SecAggError::Duplicate`] for a bad roster entry;
    /// - [`SecAggError::NotInRoster`] if this agent is missing or listed with other keys;
    /// - [`SecAggError::TooFew`] if this agent's neighbourhood in the roster is smaller
    ///   than the threshold;
    /// - [`SecAggError::WeakKey`] if a neighbour published a low-order cipher key (every key
    ///   agreement refuses low-order keys: a weak mask key is refused when
    ///   [`receive_shares`](Self::receive_shares) agrees the pairwise seed with it).
    pub fn share_keys(
        &mut self,
        roster: &[PeerKeys],
        rng: &mut impl CryptoRng,
    ) -> Result<Vec<EncryptedShare>, SecAggError> {
        if !matches!(self.phase, Phase::Keys) {
            return Err(self.out_of_order("share_keys"));
        }
        let own_index = self.params.index;
        let mut roster = roster.to_vec();
        roster.sort_by_key(|peer| peer.index);
        for (i, peer) in roster.iter().enumerate() {
            if peer.index >= self.params.cohort {
                return Err(SecAggError::IndexOutOfRange {
                    index: peer.index,
                    cohort: self.params.cohort,
                });
            }
            if i > 0 && roster[i - 1].index == peer.index {
                return Err(SecAggError::Duplicate {
                    index: peer.index,
                    list: "the roster",
                });
            }
        }
        if !roster
            .iter()
            .any(|peer| peer.index == own_index && peer.keys == self.published)
        {
            return Err(SecAggError::NotInRoster { index: own_index });
        }
        // Only this agent's neighbours matter from here on.
        roster.retain(|peer| peer.index == own_index || self.graph.adjacent(own_index, peer.index));
        if roster.len() < self.params.threshold as usize {
            return Err(SecAggError::TooFew {
                set: "this agent's neighbourhood in the roster (U1)",
                have: roster.len(),
                threshold: self.params.threshold,
            });
        }

        // validate() bounds the cohort by 65535, so every point index + 1 fits in a u16.
        let xs: Vec<u16> = roster.iter().map(|peer| (peer.index + 1) as u16).collect();
        let t = self.params.threshold as usize;
        let mask_key = Zeroizing::new(self.mask_secret.to_bytes());
        let mask_key_shares = shamir::split(&mask_key, &xs, t, rng)?;
        let self_mask_shares = shamir::split(&self.self_seed, &xs, t, rng)?;
        let pair_for = |position: usize| SharePair {
            mask_key: Zeroizing::new(mask_key_shares[position].y),
            self_mask: Zeroizing::new(self_mask_shares[position].y),
        };

        let mut sealed = Vec::with_capacity(roster.len() - 1);
        let mut own = None;
        for (position, peer) in roster.iter().enumerate() {
            if peer.index == own_index {
                own = Some(pair_for(position));
                continue;
            }
            let plaintext = pair_for(position).to_plaintext();
            let ciphertext = keys::seal(
                &self.context,
                &self.cipher_secret,
                own_index,
                peer.index,
                &peer.keys.cipher,
                &plaintext,
            )?;
            sealed.push(EncryptedShare {
                from: own_index,
                to: peer.index,
                ciphertext,
            });
        }
        let own = own.ok_or(SecAggError::NotInRoster { index: own_index })?;
        self.phase = Phase::Shared { roster, own };
        Ok(sealed)
    }

    /// Step "masked input", first half: the shares addressed to this agent by its
    /// neighbours in U2 (those that completed [`share_keys`](Self::share_keys)). Opens and
    /// keeps them, and agrees a pairwise mask seed with each sender. Its neighbourhood in
    /// U2, as this agent sees it, is the senders and itself.
    ///
    /// # Errors
    /// - [`SecAggError::OutOfOrder`] before [`share_keys`](Self::share_keys) or if called twice;
    /// - [`SecAggError::WrongRecipient`] for a share addressed to another agent;
    /// - [`SecAggError::NotMember`] for a sender outside its neighbours in the roster;
    /// - [`SecAggError::Duplicate`] for two shares from one sender;
    /// - [`SecAggError::CiphertextLength`] or [`SecAggError::Decryption`] for a share that
    ///   does not open;
    /// - [`SecAggError::TooFew`] if U2 is smaller than the threshold.
    pub fn receive_shares(&mut self, shares: &[EncryptedShare]) -> Result<(), SecAggError> {
        let Phase::Shared { roster, own } = &self.phase else {
            return Err(self.out_of_order("receive_shares"));
        };
        let own_index = self.params.index;
        let mut members = Vec::with_capacity(shares.len() + 1);
        members.push(Member {
            index: own_index,
            shares: own.clone(),
            seed: None,
        });
        for share in shares {
            if share.to != own_index {
                return Err(SecAggError::WrongRecipient {
                    from: share.from,
                    to: share.to,
                    expected: own_index,
                });
            }
            let sender = roster
                .iter()
                .find(|peer| peer.index == share.from && peer.index != own_index)
                .ok_or(SecAggError::NotMember {
                    index: share.from,
                    set: "this agent's neighbours in the roster",
                })?;
            if members.iter().any(|m| m.index == share.from) {
                return Err(SecAggError::Duplicate {
                    index: share.from,
                    list: "the shares received",
                });
            }
            let plaintext = keys::open(
                &self.context,
                &self.cipher_secret,
                share.from,
                own_index,
                &sender.keys.cipher,
                &share.ciphertext,
            )?;
            let seed = keys::pair_seed(
                &self.context,
                &self.mask_secret,
                own_index,
                sender.index,
                &sender.keys.mask,
            )?;
            members.push(Member {
                index: share.from,
                shares: SharePair::from_plaintext(&plaintext),
                seed: Some(seed),
            });
        }
        if members.len() < self.params.threshold as usize {
            return Err(SecAggError::TooFew {
                set: "this agent's neighbourhood in U2 (itself and the senders of its shares)",
                have: members.len(),
                threshold: self.params.threshold,
            });
        }
        members.sort_by_key(|m| m.index);
        self.phase = Phase::Ready {
            members,
            masked: false,
            revealed_for: None,
        };
        Ok(())
    }

    /// Step "masked input": the update to send, hidden under masks that cancel in the sum.
    ///
    /// y = encode(weight · clip(update)) + PRG(b) + Σ_{v ∈ U2, v > self} PRG(s_uv)
    /// − Σ_{v ∈ U2, v < self} PRG(s_uv), in wrapping u32 arithmetic. `weight` is the sample
    /// count the aggregator weights the update by (sent in clear beside it).
    ///
    /// Only one masked input per round: a second call is refused.
    ///
    /// # Errors
    /// - [`SecAggError::OutOfOrder`] before [`receive_shares`](Self::receive_shares);
    /// - [`SecAggError::AlreadyMasked`] on a second call;
    /// - [`SecAggError::ZeroWeight`], [`SecAggError::WeightTooLarge`] (this input alone would
    ///   overflow the fixed-point range);
    /// - [`SecAggError::NonFinite`] for a NaN or infinite coordinate.
    pub fn mask(&mut self, update: &[f32], weight: u64) -> Result<Vec<u32>, SecAggError> {
        let Phase::Ready { members, masked, .. } = &mut self.phase else {
            return Err(SecAggError::OutOfOrder {
                call: "mask",
                phase: self.phase.name(),
            });
        };
        if *masked {
            return Err(SecAggError::AlreadyMasked);
        }
        if weight == 0 {
            return Err(SecAggError::ZeroWeight);
        }
        if self.params.noise.is_some() && weight != 1 {
            return Err(SecAggError::NoisedWeight { weight });
        }
        let SecureRound {
            index: own_index,
            clip,
            scale,
            ..
        } = self.params;
        // One input rounds once, so it may use i32's whole range: the aggregator's bound on
        // the total weight is what keeps the sum inside it. Checked here only to fail early.
        let max_weight = (f64::from(i32::MAX) - 0.5) / (f64::from(clip) * scale);
        if weight as f64 > max_weight {
            return Err(SecAggError::WeightTooLarge {
                weight,
                max: max_weight as u64,
            });
        }
        if let Some(position) = update.iter().position(|v| !v.is_finite()) {
            return Err(SecAggError::NonFinite {
                position,
                value: update[position],
            });
        }

        let mut masked_input = mask::encode(update, weight, clip, scale);
        mask::add_prg(&mut masked_input, &self.self_seed, Sign::Plus);
        for member in members.iter() {
            if let Some(seed) = &member.seed {
                let sign = if member.index > own_index {
                    Sign::Plus
                } else {
                    Sign::Minus
                };
                mask::add_prg(&mut masked_input, seed, sign);
            }
        }
        *masked = true;
        Ok(masked_input)
    }

    /// Step "unmasking": given U3, the survivors whose inputs are in the sum, reveals for
    /// every member u of its neighbourhood in U2 (this agent included) its share of u's
    /// self-mask seed b if u survived, of u's mask key s^SK if not — never both kinds for
    /// one agent.
    ///
    /// Asking again with the same survivors gives the same reveals (a retransmission);
    /// asking with others is refused.
    ///
    /// # Errors
    /// - [`SecAggError::OutOfOrder`] before [`mask`](Self::mask);
    /// - [`SecAggError::NotMember`] for a neighbour among the survivors that is not in U2 as
    ///   this agent saw it, or if this agent is not among them;
    /// - [`SecAggError::IndexOutOfRange`] for a survivor outside the cohort;
    /// - [`SecAggError::Duplicate`] for a survivor listed twice;
    /// - [`SecAggError::TooFew`] for fewer survivors in its neighbourhood than the threshold;
    /// - [`SecAggError::AlreadyRevealed`] if already revealed for other survivors.
    pub fn reveal(&mut self, survivors: &[u32]) -> Result<Vec<Reveal>, SecAggError> {
        let Phase::Ready {
            members,
            masked: true,
            revealed_for,
        } = &mut self.phase
        else {
            return Err(SecAggError::OutOfOrder {
                call: "reveal",
                phase: self.phase.name(),
            });
        };
        let own_index = self.params.index;
        let mut survivors = survivors.to_vec();
        survivors.sort_unstable();
        for (i, &index) in survivors.iter().enumerate() {
            if i > 0 && survivors[i - 1] == index {
                return Err(SecAggError::Duplicate {
                    index,
                    list: "the survivors (U3)",
                });
            }
            if index >= self.params.cohort {
                return Err(SecAggError::IndexOutOfRange {
                    index,
                    cohort: self.params.cohort,
                });
            }
            let neighbour = index == own_index || self.graph.adjacent(own_index, index);
            if neighbour && !members.iter().any(|m| m.index == index) {
                return Err(SecAggError::NotMember {
                    index,
                    set: "U2 as this agent saw it",
                });
            }
        }
        if survivors.binary_search(&own_index).is_err() {
            return Err(SecAggError::NotMember {
                index: own_index,
                set: "the survivors (U3)",
            });
        }
        let near = members
            .iter()
            .filter(|m| survivors.binary_search(&m.index).is_ok())
            .count();
        if near < self.params.threshold as usize {
            return Err(SecAggError::TooFew {
                set: "the survivors (U3) in this agent's neighbourhood",
                have: near,
                threshold: self.params.threshold,
            });
        }
        match revealed_for {
            Some(previous) if *previous != survivors => return Err(SecAggError::AlreadyRevealed),
            Some(_) => {}
            None => *revealed_for = Some(survivors.clone()),
        }

        // Share points are index + 1 <= 65535: validate() bounds the cohort.
        let x = (own_index + 1) as u16;
        let reveals = members
            .iter()
            .map(|member| {
                if survivors.binary_search(&member.index).is_ok() {
                    Reveal::SelfMask {
                        of: member.index,
                        share: Share {
                            x,
                            y: *member.shares.self_mask,
                        },
                    }
                } else {
                    Reveal::MaskKey {
                        of: member.index,
                        share: Share {
                            x,
                            y: *member.shares.mask_key,
                        },
                    }
                }
            })
            .collect();
        Ok(reveals)
    }

    fn out_of_order(&self, call: &'static str) -> SecAggError {
        SecAggError::OutOfOrder {
            call,
            phase: self.phase.name(),
        }
    }
}

impl std::fmt::Debug for ClientRound {
    /// Shows where the round is, never its secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRound")
            .field("params", &self.params)
            .field("published", &self.published)
            .field("phase", &self.phase.name())
            .finish_non_exhaustive()
    }
}
