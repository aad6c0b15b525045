//! What can go wrong in a secure-aggregation round, on either side.

/// Why a secure-aggregation step was refused.
///
/// A refused step leaves the state machine as it was, so the caller can drop the offending
/// agent and go on (or give up on the round) without having to undo anything.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SecAggError {
    /// The round's parameters are unusable.
    #[error("invalid secure-aggregation parameters: {0}")]
    InvalidParams(String),
    /// A step was called before the step it depends on, or after the round moved past it.
    #[error("{call} is not possible now: the round is at the {phase} step")]
    OutOfOrder {
        /// The call that was refused.
        call: &'static str,
        /// The step the round is at.
        phase: &'static str,
    },
    /// An agent index at or above the cohort size.
    #[error("agent {index} is outside the cohort of {cohort} agents (indices 0..{cohort})")]
    IndexOutOfRange {
        /// The offending index.
        index: u32,
        /// The cohort size.
        cohort: u32,
    },
    /// The same agent appears twice where each may appear once.
    #[error("agent {index} appears more than once in {list}")]
    Duplicate {
        /// The repeated index.
        index: u32,
        /// Which list or step it was repeated in.
        list: &'static str,
    },
    /// An agent that is not a member of the set a step is restricted to.
    #[error("agent {index} is not a member of {set}")]
    NotMember {
        /// The outsider's index.
        index: u32,
        /// The set it should have belonged to.
        set: &'static str,
    },
    /// Fewer agents than the threshold remain, so the masks could not be removed.
    #[error("{set} has {have} agents, fewer than the threshold of {threshold}")]
    TooFew {
        /// The set that is too small.
        set: &'static str,
        /// Its size.
        have: usize,
        /// The round's threshold.
        threshold: u32,
    },
    /// The roster does not list this agent with the keys it published.
    #[error("the roster does not list agent {index} with the public keys it published")]
    NotInRoster {
        /// This agent's index.
        index: u32,
    },
    /// A public key of small order, which would make the shared secret predictable.
    #[error("agent {index} published a low-order X25519 public key")]
    WeakKey {
        /// The agent that published it.
        index: u32,
    },
    /// An agent sent the wrong number of encrypted shares.
    #[error("agent {index} sent {got} encrypted shares, expected {expected} (one per other member of U1)")]
    ShareCount {
        /// The sender.
        index: u32,
        /// How many it sent.
        got: usize,
        /// How many the roster calls for.
        expected: usize,
    },
    /// An encrypted share claims another sender than the agent that sent it.
    #[error("agent {index} sent a share marked as coming from agent {from}")]
    WrongSender {
        /// The agent that sent it.
        index: u32,
        /// The sender written in the share.
        from: u32,
    },
    /// An encrypted share delivered to an agent it is not addressed to.
    #[error("the share from agent {from} is addressed to agent {to}, not to this agent ({expected})")]
    WrongRecipient {
        /// The sender.
        from: u32,
        /// The addressee written in the share.
        to: u32,
        /// The agent it was delivered to.
        expected: u32,
    },
    /// An encrypted share whose length cannot be that of a sealed share pair.
    #[error("the share from agent {from} to agent {to} has {got} bytes of ciphertext, expected {expected}")]
    CiphertextLength {
        /// The sender.
        from: u32,
        /// The addressee.
        to: u32,
        /// Its length.
        got: usize,
        /// The length of a sealed share pair.
        expected: usize,
    },
    /// An encrypted share failed authentication.
    #[error("the share from agent {from} to agent {to} does not decrypt: tampered with, or sealed for other keys")]
    Decryption {
        /// The sender.
        from: u32,
        /// The addressee.
        to: u32,
    },
    /// A key derivation or encryption primitive failed.
    #[error("cryptographic failure: {0}")]
    Crypto(&'static str),
    /// An update coordinate is NaN or infinite.
    #[error("update coordinate {position} is not finite ({value})")]
    NonFinite {
        /// Its position in the update.
        position: usize,
        /// Its value.
        value: f32,
    },
    /// An input with weight zero, which would contribute nothing but still reveal a mask.
    #[error("the weight (sample count) of an input must be at least 1")]
    ZeroWeight,
    /// A weight other than 1 in a distributed-noise round, where every input counts once
    /// (a weight would scale the agent's noise share with its update).
    #[error("a distributed-noise round weights every input 1, not {weight}")]
    NoisedWeight {
        /// The weight.
        weight: u64,
    },
    /// A weight so large that this input alone would overflow the fixed-point range.
    #[error("weight {weight} is too large for the round's fixed-point scale (at most {max})")]
    WeightTooLarge {
        /// The weight.
        weight: u64,
        /// The largest weight the scale allows.
        max: u64,
    },
    /// Accepting an input would take the total weight over the round's bound.
    #[error(
        "agent {index}'s weight {weight} would bring the total weight to {total}, above the round's bound of {max}"
    )]
    WeightOverBound {
        /// The agent.
        index: u32,
        /// Its weight.
        weight: u64,
        /// The total it would reach (saturating).
        total: u64,
        /// The round's bound.
        max: u64,
    },
    /// A masked input of the wrong length.
    #[error("the masked input of agent {index} has {got} values, expected {expected}")]
    WrongLength {
        /// The agent.
        index: u32,
        /// Its length.
        got: usize,
        /// The update length of the round.
        expected: usize,
    },
    /// The agent already produced its masked input: a second one, under the same masks, would
    /// reveal the difference of the two updates.
    #[error("this agent already produced its masked input for this round")]
    AlreadyMasked,
    /// The agent already revealed shares for another set of survivors: answering again could
    /// hand out both kinds of share for one agent.
    #[error("this agent already revealed its shares for another set of survivors")]
    AlreadyRevealed,
    /// A reveal of the wrong kind: self-mask shares are only for U3, mask-key shares only for U2 \ U3.
    #[error("agent {from} revealed a {got} share of agent {of}, which calls for a {expected} share")]
    WrongRevealKind {
        /// The revealing agent.
        from: u32,
        /// The agent whose secret the share belongs to.
        of: u32,
        /// The kind it sent.
        got: &'static str,
        /// The kind allowed.
        expected: &'static str,
    },
    /// A revealed share not evaluated at the revealer's own point.
    #[error("agent {from} revealed a share of agent {of} at x = {x}, but its own shares are at x = {expected}")]
    WrongShareX {
        /// The revealing agent.
        from: u32,
        /// The agent whose secret the share belongs to.
        of: u32,
        /// The share's x.
        x: u16,
        /// The revealer's index + 1.
        expected: u32,
    },
    /// A reveal that leaves out a member of U2.
    #[error("agent {from}'s reveal has no share of agent {missing}")]
    IncompleteReveal {
        /// The revealing agent.
        from: u32,
        /// The member of U2 it left out.
        missing: u32,
    },
    /// A Shamir split with impossible parameters.
    #[error("cannot split a secret into {n} shares with threshold {t} (needs 1 <= t <= n)")]
    Sharing {
        /// Number of shares.
        n: usize,
        /// Threshold.
        t: usize,
    },
    /// No shares to reconstruct from.
    #[error("no shares to reconstruct from")]
    NoShares,
    /// A share at x = 0, where the secret itself sits.
    #[error("a share at x = 0 is not a valid share")]
    ShareAtZero,
    /// Two shares at the same point.
    #[error("two shares at x = {x}")]
    DuplicateShare {
        /// The repeated x.
        x: u16,
    },
    /// A reconstructed mask key does not match the public key its owner published.
    #[error("the mask key reconstructed for agent {index} does not match its published public key")]
    KeyMismatch {
        /// The dropped agent.
        index: u32,
    },
}
