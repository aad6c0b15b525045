//! Secure aggregation: the aggregator learns the weighted sum of a cohort's updates and
//! nothing else about any one of them, even when agents drop out mid-round.
//!
//! This is the protocol of Bonawitz et al., "Practical Secure Aggregation for
//! Privacy-Preserving Machine Learning" (CCS 2017), in its semi-honest-server variant: no
//! signatures and no consistency-check round. Each agent u adds to its fixed-point update
//! a self mask PRG(b_u) and, for every other agent v, a pairwise mask ±PRG(s_uv) that v adds
//! with the opposite sign. In the sum the pairwise masks cancel; the aggregator then removes
//! the self masks of the agents whose inputs arrived, and the leftover pairwise masks of
//! those that dropped, from secrets that the survivors hold in Shamir shares.
//!
//! # The round
//! | step | agent ([`ClientRound`]) | aggregator ([`ServerRound`]) |
//! |------|-------------------------|------------------------------|
//! | task | [`ClientRound::new`] → [`PublicKeys`] | [`ServerRound::params_for`] each agent; [`ServerRound::add_keys`] |
//! | share keys | [`ClientRound::share_keys`] → [`EncryptedShare`]s | [`ServerRound::roster`] (U1); [`ServerRound::add_shares`] |
//! | masked input | [`ClientRound::receive_shares`], [`ClientRound::mask`] | [`ServerRound::close_shares`] (U2), [`ServerRound::shares_for`]; [`ServerRound::add_masked`] |
//! | unmasking | [`ClientRound::reveal`] → [`Reveal`]s | [`ServerRound::close_inputs`] (U3); [`ServerRound::add_reveal`]; [`ServerRound::finish`] |
//!
//! # What it protects, and what it does not
//! - An aggregator that follows the protocol, even together with fewer than `threshold`
//!   agents, learns only the sum of the inputs in U3 (and their weights, which travel in
//!   clear). The round completes as long as `threshold` agents stay to the end.
//! - An aggregator that lies — for instance tells different agents different survivor sets —
//!   is out of scope: that needs the signed consistency round of the paper's malicious
//!   variant. Each agent still refuses to mask twice or to reveal for two survivor sets.
//! - Nothing stops an agent from submitting a poisoned (if clipped) update: the sum hides
//!   who sent what, by design.
//!
//! # Layout
//! - `wire`: the values that travel ([`SecureRound`], [`PublicKeys`], [`Reveal`], …).
//! - `client`: [`ClientRound`], the agent's state machine.
//! - `server`: [`ServerRound`], the aggregator's state machine, and [`Unmasked`].
//! - `shamir`: [`Share`]s of 32-byte secrets over GF(2^8).
//! - `mask`: the fixed-point encoding ([`scale_for`]) and the ChaCha20 masks.
//! - `keys`: X25519 agreement, HKDF-SHA256, ChaCha20-Poly1305 sealing of shares.
//! - `error`: [`SecAggError`].

mod client;
mod error;
mod graph;
mod keys;
mod mask;
mod server;
mod shamir;
mod wire;

#[cfg(test)]
mod tests;

pub use client::ClientRound;
pub use error::SecAggError;
pub use mask::scale_for;
pub use server::{ServerRound, Unmasked};
pub use shamir::Share;
pub use wire::{
    DistributedNoise, EncryptedShare, MAX_COHORT, PeerKeys, PublicKeys, Reveal, RoundContext, SecureRound, clip_l2,
};
