//! Whole rounds between one [`ServerRound`] and its [`ClientRound`]s, with dropouts and
//! with the bad inputs each side must refuse.

use rand::rngs::ChaCha20Rng;
use rand::{RngExt, SeedableRng};

use super::mask;
use super::*;

/// Crosses ChaCha buffer boundaries (1024 words) without being a multiple of them.
const NUMEL: usize = 2_500;
const CLIP: f32 = 1.0;
const MAX_WEIGHT: u64 = 1_000;

fn context() -> RoundContext {
    RoundContext {
        study: "secagg-test".into(),
        trial: 3,
        round: 7,
    }
}

/// A cohort driven step by step; each step skips the agents told to drop before it.
struct Harness {
    server: ServerRound,
    clients: Vec<ClientRound>,
    updates: Vec<Vec<f32>>,
    weights: Vec<u64>,
    rng: ChaCha20Rng,
}

impl Harness {
    /// `n` agents, threshold `t`, every agent's keys accepted; updates in [-1.5, 1.5] so that
    /// some coordinates are clipped.
    fn new(seed: u64, n: u32, t: u32) -> Self {
        Self::on_graph(seed, n, t, None)
    }

    /// As [`new`](Self::new), on the SecAgg+ graph of `degree` when given.
    fn on_graph(seed: u64, n: u32, t: u32, degree: Option<u32>) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut server = ServerRound::new(context(), n, t, CLIP, NUMEL, MAX_WEIGHT * u64::from(n)).unwrap();
        if let Some(degree) = degree {
            server = server.with_degree(degree).unwrap();
        }
        let mut clients = Vec::new();
        for i in 0..n {
            let (client, keys) = ClientRound::new(context(), server.params_for(i), &mut rng).unwrap();
            server.add_keys(i, keys).unwrap();
            clients.push(client);
        }
        let updates = (0..n)
            .map(|_| (0..NUMEL).map(|_| rng.random_range(-1.5f32..1.5)).collect())
            .collect();
        let weights = (0..n).map(|_| rng.random_range(1..=MAX_WEIGHT)).collect();
        Self {
            server,
            clients,
            updates,
            weights,
            rng,
        }
    }

    /// Roster, and shares from every member but `drop`; returns U2.
    fn share(&mut self, drop: &[u32]) -> Vec<u32> {
        let roster = self.server.roster().unwrap();
        for peer in &roster {
            let shares = self.clients[peer.index as usize]
                .share_keys(&roster, &mut self.rng)
                .unwrap();
            if !drop.contains(&peer.index) {
                self.server.add_shares(peer.index, shares).unwrap();
            }
        }
        self.server.close_shares().unwrap()
    }

    /// Shares delivered to U2, masked inputs from every member but `drop`; returns U3.
    fn mask(&mut self, u2: &[u32], drop: &[u32]) -> Result<Vec<u32>, SecAggError> {
        for &i in u2 {
            let shares = self.server.shares_for(i);
            self.clients[i as usize].receive_shares(&shares).unwrap();
            if !drop.contains(&i) {
                let (update, weight) = (&self.updates[i as usize], self.weights[i as usize]);
                let masked = self.clients[i as usize].mask(update, weight).unwrap();
                self.server.add_masked(i, &masked, weight).unwrap();
            }
        }
        self.server.close_inputs()
    }

    /// Reveals from every member of U3 but `drop`.
    fn reveal(&mut self, u3: &[u32], drop: &[u32]) {
        for &i in u3.iter().filter(|i| !drop.contains(i)) {
            let reveals = self.clients[i as usize].reveal(u3).unwrap();
            self.server.add_reveal(i, reveals).unwrap();
        }
    }

    /// The weighted mean of the clipped updates of `contributors`, in f64.
    fn expected(&self, contributors: &[u32]) -> Vec<f64> {
        let total: u64 = contributors.iter().map(|&i| self.weights[i as usize]).sum();
        (0..NUMEL)
            .map(|j| {
                let sum: f64 = contributors
                    .iter()
                    .map(|&i| {
                        self.weights[i as usize] as f64 * f64::from(self.updates[i as usize][j].clamp(-CLIP, CLIP))
                    })
                    .sum();
                sum / total as f64
            })
            .collect()
    }

    /// Runs the round to the end and checks the mean against the plain computation.
    fn finish_and_check(self, contributors: &[u32], dropped: &[u32]) {
        let expected = self.expected(contributors);
        let scale = self.server.scale();
        let cohort = self.clients.len() as f64;
        let unmasked = self.server.finish().unwrap();
        assert_eq!(unmasked.contributors, contributors);
        assert_eq!(unmasked.dropped, dropped);
        let total: u64 = contributors.iter().map(|&i| self.weights[i as usize]).sum();
        assert_eq!(unmasked.total_weight, total);
        let quantisation = cohort / (2.0 * scale * total as f64);
        for (j, (got, want)) in unmasked.mean.iter().zip(&expected).enumerate() {
            let tolerance = quantisation + want.abs() * f64::from(f32::EPSILON);
            assert!(
                (f64::from(*got) - want).abs() <= tolerance,
                "coordinate {j}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn nobody_drops() {
    let mut h = Harness::new(1, 5, 3);
    let u2 = h.share(&[]);
    assert_eq!(u2, [0, 1, 2, 3, 4]);
    let u3 = h.mask(&u2, &[]).unwrap();
    h.reveal(&u3, &[]);
    assert!(h.server.can_finish());
    h.finish_and_check(&[0, 1, 2, 3, 4], &[]);
}

#[test]
fn an_agent_that_shared_its_keys_but_sent_no_input_is_unmasked_out() {
    let mut h = Harness::new(2, 5, 3);
    let u2 = h.share(&[]);
    let u3 = h.mask(&u2, &[2]).unwrap();
    assert_eq!(u3, [0, 1, 3, 4]);
    h.reveal(&u3, &[]);
    h.finish_and_check(&[0, 1, 3, 4], &[2]);
}

#[test]
fn an_agent_that_sent_its_input_but_not_its_reveal_still_counts() {
    let mut h = Harness::new(3, 5, 3);
    let u2 = h.share(&[]);
    let u3 = h.mask(&u2, &[]).unwrap();
    h.reveal(&u3, &[1]);
    h.finish_and_check(&[0, 1, 2, 3, 4], &[]);
}

#[test]
fn dropouts_at_every_step_at_once() {
    let mut h = Harness::new(4, 7, 3);
    let u2 = h.share(&[0]);
    let u3 = h.mask(&u2, &[4, 6]).unwrap();
    assert_eq!(u3, [1, 2, 3, 5]);
    h.reveal(&u3, &[2]);
    h.finish_and_check(&[1, 2, 3, 5], &[0, 4, 6]);
}

#[test]
fn two_agents_that_drop_after_their_keys_are_left_out() {
    let mut h = Harness::new(5, 5, 3);
    let u2 = h.share(&[1, 3]);
    assert_eq!(u2, [0, 2, 4]);
    assert!(
        h.server.shares_for(1).is_empty(),
        "nothing is forwarded to an agent outside U2"
    );
    let u3 = h.mask(&u2, &[]).unwrap();
    h.reveal(&u3, &[]);
    h.finish_and_check(&[0, 2, 4], &[1, 3]);
}

#[test]
fn too_few_survivors_is_a_clear_error() {
    let mut h = Harness::new(6, 5, 3);
    let u2 = h.share(&[]);
    let err = h.mask(&u2, &[0, 1, 2]).unwrap_err();
    assert_eq!(
        err,
        SecAggError::TooFew {
            set: "U3 (agents whose masked input arrived)",
            have: 2,
            threshold: 3
        }
    );
    assert!(
        err.to_string().contains("2 agents, fewer than the threshold of 3"),
        "{err}"
    );
    // An agent asked to reveal for too few survivors refuses as well.
    let err = h.clients[3].reveal(&[3, 4]).unwrap_err();
    assert!(
        matches!(
            err,
            SecAggError::TooFew {
                have: 2,
                threshold: 3,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn too_few_reveals_is_a_clear_error() {
    let mut h = Harness::new(7, 5, 3);
    let u2 = h.share(&[]);
    let u3 = h.mask(&u2, &[]).unwrap();
    h.reveal(&u3, &[0, 2, 4]);
    assert!(!h.server.can_finish());
    let err = h.server.finish().unwrap_err();
    assert!(
        matches!(
            err,
            SecAggError::TooFew {
                have: 2,
                threshold: 3,
                ..
            }
        ),
        "{err}"
    );
}

/// SecAgg+: on a sparse graph each agent shares with and masks against its neighbours
/// only, and the round still unmasks exactly through dropouts at every step.
#[test]
fn a_sparse_graph_round_unmasks_through_dropouts_at_every_step() {
    let mut h = Harness::on_graph(30, 40, 4, Some(8));
    assert!(!h.server.is_complete_graph());
    let roster = h.server.roster().unwrap();
    // Each agent seals shares for its 8 neighbours, not for the 39 others.
    let sealed = h.clients[0].share_keys(&roster, &mut h.rng).unwrap();
    assert_eq!(sealed.len(), 8);
    // A share addressed to a non-neighbour is refused.
    let graph = graph::Graph::new(&context().encode(), 40, Some(8));
    let stranger = (1..40).find(|&v| !graph.adjacent(0, v)).unwrap();
    let mut misaddressed = sealed.clone();
    misaddressed[0].to = stranger;
    let err = h.server.add_shares(0, misaddressed).unwrap_err();
    assert!(
        matches!(err, SecAggError::NotMember { index, .. } if index == stranger),
        "{err}"
    );
    h.server.add_shares(0, sealed).unwrap();
    // The others get only their neighbourhood's keys, as the aggregator sends them.
    assert_eq!(h.server.roster_for(5).len(), 9);
    for i in 1..40 {
        let shares = h.clients[i as usize]
            .share_keys(&h.server.roster_for(i), &mut h.rng)
            .unwrap();
        if i != 3 {
            h.server.add_shares(i, shares).unwrap();
        }
    }
    let u2 = h.server.close_shares().unwrap();
    assert_eq!(u2.len(), 39);
    let u3 = h.mask(&u2, &[10, 11]).unwrap();
    assert_eq!(u3.len(), 37);
    h.reveal(&u3, &[20]);
    assert!(h.server.can_finish());
    let contributors: Vec<u32> = u3.clone();
    h.finish_and_check(&contributors, &[3, 10, 11]);
}

/// Cohorts past 255 (GF(2^16) shares), on a sparse graph, with dropouts.
#[test]
fn a_cohort_of_300_on_a_sparse_graph_unmasks() {
    let mut h = Harness::on_graph(31, 300, 6, Some(10));
    let u2 = h.share(&[7, 299]);
    let u3 = h.mask(&u2, &[0, 256]).unwrap();
    assert_eq!(u3.len(), 296);
    h.reveal(&u3, &[100, 200]);
    let contributors = u3.clone();
    h.finish_and_check(&contributors, &[0, 7, 256, 299]);
}

/// A neighbourhood with fewer reveals than the threshold cannot be unmasked, even when
/// the cohort as a whole revealed plenty.
#[test]
fn a_sparse_neighbourhood_short_of_reveals_is_a_clear_error() {
    let mut h = Harness::on_graph(32, 30, 4, Some(6));
    let u2 = h.share(&[]);
    let u3 = h.mask(&u2, &[]).unwrap();
    let graph = graph::Graph::new(&context().encode(), 30, Some(6));
    // Agent 5 and four of its six neighbours stay silent: two shares of b_5 remain.
    let silent: Vec<u32> = std::iter::once(5)
        .chain(graph.neighbours(5, 30).into_iter().take(4))
        .collect();
    h.reveal(&u3, &silent);
    assert!(!h.server.can_finish());
    let err = h.server.finish().unwrap_err();
    assert!(
        matches!(
            err,
            SecAggError::TooFew {
                have: 2,
                threshold: 4,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn too_few_keys_or_shares_keep_the_step_open() {
    let mut server = ServerRound::new(context(), 4, 3, CLIP, 4, 10).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let mut clients = Vec::new();
    for i in 0..2 {
        let (client, keys) = ClientRound::new(context(), server.params_for(i), &mut rng).unwrap();
        server.add_keys(i, keys).unwrap();
        clients.push(client);
    }
    assert!(matches!(server.roster(), Err(SecAggError::TooFew { have: 2, .. })));
    let (client, keys) = ClientRound::new(context(), server.params_for(2), &mut rng).unwrap();
    server.add_keys(2, keys).unwrap();
    clients.push(client);
    let roster = server.roster().unwrap();
    let shares = clients[0].share_keys(&roster, &mut rng).unwrap();
    server.add_shares(0, shares).unwrap();
    assert!(matches!(
        server.close_shares(),
        Err(SecAggError::TooFew { have: 1, .. })
    ));
}

#[test]
fn a_masked_input_looks_nothing_like_the_update() {
    let mut h = Harness::new(9, 5, 3);
    let u2 = h.share(&[]);
    for &i in &u2 {
        let shares = h.server.shares_for(i);
        h.clients[i as usize].receive_shares(&shares).unwrap();
    }
    let (update, weight) = (&h.updates[0], h.weights[0]);
    let masked = h.clients[0].mask(update, weight).unwrap();
    let encoded = mask::encode(update, weight, CLIP, h.server.scale());
    let equal = masked.iter().zip(&encoded).filter(|(m, e)| m == e).count();
    assert!(equal < NUMEL / 100, "{equal} of {NUMEL} coordinates in the clear");
    // Nor is it a small perturbation: the typical word is far from the encoded one.
    let close = masked
        .iter()
        .zip(&encoded)
        .filter(|(m, e)| m.wrapping_sub(**e).min(e.wrapping_sub(**m)) < 1 << 24);
    assert!(close.count() < NUMEL / 50);
}

#[test]
fn same_seed_same_round() {
    let masked = |seed| {
        let mut h = Harness::new(seed, 3, 2);
        let u2 = h.share(&[]);
        for &i in &u2 {
            let shares = h.server.shares_for(i);
            h.clients[i as usize].receive_shares(&shares).unwrap();
        }
        let update = h.updates[1].clone();
        h.clients[1].mask(&update, 5).unwrap()
    };
    assert_eq!(masked(10), masked(10));
    assert_ne!(masked(10), masked(11));
}

/// A five-agent round run up to the point where every agent holds its shares.
fn ready(seed: u64) -> (Harness, Vec<u32>) {
    let mut h = Harness::new(seed, 5, 3);
    let u2 = h.share(&[]);
    for &i in &u2 {
        let shares = h.server.shares_for(i);
        h.clients[i as usize].receive_shares(&shares).unwrap();
    }
    (h, u2)
}

#[test]
fn a_client_never_reveals_both_secrets_of_one_agent() {
    let (mut h, _) = ready(12);
    h.clients[0].mask(&h.updates[0], 1).unwrap();
    let reveals = h.clients[0].reveal(&[0, 1, 3, 4]).unwrap();
    assert_eq!(reveals.len(), 5);
    for reveal in &reveals {
        assert_eq!(reveal.share().x, 1, "agent 0's shares sit at x = 1");
        match reveal {
            Reveal::MaskKey { of, .. } => assert_eq!(*of, 2, "only the omitted agent's mask key"),
            Reveal::SelfMask { of, .. } => assert_ne!(*of, 2),
        }
    }
    // Asked again for the same survivors (a retransmission): the same answer.
    assert_eq!(h.clients[0].reveal(&[4, 3, 1, 0]).unwrap(), reveals);
    // Asked for other survivors, which would hand out agent 2's self-mask share too: refused.
    assert_eq!(
        h.clients[0].reveal(&[0, 1, 2, 3, 4]).unwrap_err(),
        SecAggError::AlreadyRevealed
    );
}

#[test]
fn a_client_masks_once_and_checks_its_input() {
    let (mut h, _) = ready(13);
    let mut update = h.updates[0].clone();
    assert_eq!(h.clients[0].mask(&update, 0).unwrap_err(), SecAggError::ZeroWeight);
    update[17] = f32::NAN;
    let err = h.clients[0].mask(&update, 1).unwrap_err();
    assert!(matches!(err, SecAggError::NonFinite { position: 17, .. }), "{err}");
    assert!(matches!(
        h.clients[0].mask(&h.updates[0], u64::MAX),
        Err(SecAggError::WeightTooLarge { .. })
    ));
    // Refusals do not use up the one masked input; the round's whole weight budget fits.
    h.clients[0].mask(&h.updates[0], MAX_WEIGHT * 5).unwrap();
    assert_eq!(
        h.clients[0].mask(&h.updates[0], 1).unwrap_err(),
        SecAggError::AlreadyMasked
    );
}

#[test]
fn a_client_refuses_survivors_outside_u2_or_without_itself() {
    let mut h = Harness::new(14, 5, 3);
    let u2 = h.share(&[4]);
    for &i in &u2 {
        let shares = h.server.shares_for(i);
        h.clients[i as usize].receive_shares(&shares).unwrap();
    }
    h.clients[0].mask(&h.updates[0], 1).unwrap();
    let err = h.clients[0].reveal(&[0, 1, 4]).unwrap_err();
    assert_eq!(
        err,
        SecAggError::NotMember {
            index: 4,
            set: "U2 as this agent saw it"
        }
    );
    let err = h.clients[0].reveal(&[1, 2, 3]).unwrap_err();
    assert_eq!(
        err,
        SecAggError::NotMember {
            index: 0,
            set: "the survivors (U3)"
        }
    );
    let err = h.clients[0].reveal(&[0, 1, 1, 2]).unwrap_err();
    assert!(matches!(err, SecAggError::Duplicate { index: 1, .. }), "{err}");
    // None of these counted as the one reveal.
    assert_eq!(h.clients[0].reveal(&[0, 1, 2]).unwrap().len(), 4);
}

#[test]
fn a_client_checks_the_roster() {
    let mut rng = ChaCha20Rng::seed_from_u64(15);
    let server = ServerRound::new(context(), 4, 3, CLIP, 4, 10).unwrap();
    let mut roster = Vec::new();
    let mut clients = Vec::new();
    for i in 0..4 {
        let (client, keys) = ClientRound::new(context(), server.params_for(i), &mut rng).unwrap();
        roster.push(PeerKeys { index: i, keys });
        clients.push(client);
    }
    let client = &mut clients[0];
    let err = client.share_keys(&roster[1..], &mut rng).unwrap_err();
    assert_eq!(err, SecAggError::NotInRoster { index: 0 });
    assert!(err.to_string().contains("agent 0"), "{err}");
    let mut swapped = roster.clone();
    swapped[0].keys = roster[1].keys.clone();
    assert_eq!(
        client.share_keys(&swapped, &mut rng).unwrap_err(),
        SecAggError::NotInRoster { index: 0 }
    );
    let mut duplicated = roster.clone();
    duplicated.push(roster[2].clone());
    let err = client.share_keys(&duplicated, &mut rng).unwrap_err();
    assert_eq!(
        err,
        SecAggError::Duplicate {
            index: 2,
            list: "the roster"
        }
    );
    let mut outside = roster.clone();
    outside[3].index = 9;
    let err = client.share_keys(&outside, &mut rng).unwrap_err();
    assert_eq!(err, SecAggError::IndexOutOfRange { index: 9, cohort: 4 });
    let mut weak = roster.clone();
    weak[2].keys.cipher = [0; 32];
    assert_eq!(
        client.share_keys(&weak, &mut rng).unwrap_err(),
        SecAggError::WeakKey { index: 2 }
    );
    let err = client.share_keys(&roster[..2], &mut rng).unwrap_err();
    assert!(
        matches!(
            err,
            SecAggError::TooFew {
                have: 2,
                threshold: 3,
                ..
            }
        ),
        "{err}"
    );
    // After all those refusals the real roster still works, once.
    assert_eq!(client.share_keys(&roster, &mut rng).unwrap().len(), 3);
    assert!(matches!(
        client.share_keys(&roster, &mut rng),
        Err(SecAggError::OutOfOrder { .. })
    ));
}

#[test]
fn a_client_checks_the_shares_it_receives() {
    let mut h = Harness::new(16, 5, 3);
    let u2 = h.share(&[]);
    let mine = h.server.shares_for(0);
    assert_eq!(mine.len(), 4);
    assert!(mine.iter().all(|s| s.to == 0 && s.from != 0));
    let client = &mut h.clients[0];

    let theirs = h.server.shares_for(1);
    let err = client.receive_shares(&theirs).unwrap_err();
    assert!(
        matches!(err, SecAggError::WrongRecipient { to: 1, expected: 0, .. }),
        "{err}"
    );

    let mut tampered = mine.clone();
    tampered[2].ciphertext[5] ^= 1;
    let from = tampered[2].from;
    assert_eq!(
        client.receive_shares(&tampered).unwrap_err(),
        SecAggError::Decryption { from, to: 0 }
    );

    // A share relabelled as coming from another sender no longer authenticates.
    let mut relabelled = mine.clone();
    relabelled[0].from = relabelled[1].from;
    relabelled.swap_remove(1);
    assert!(matches!(
        client.receive_shares(&relabelled),
        Err(SecAggError::Decryption { .. })
    ));

    let mut truncated = mine.clone();
    truncated[0].ciphertext.pop();
    assert!(matches!(
        client.receive_shares(&truncated),
        Err(SecAggError::CiphertextLength { .. })
    ));

    let mut duplicated = mine.clone();
    duplicated.push(mine[1].clone());
    assert!(matches!(
        client.receive_shares(&duplicated),
        Err(SecAggError::Duplicate { .. })
    ));

    let mut stranger = mine.clone();
    stranger[0].from = 0;
    assert!(matches!(
        client.receive_shares(&stranger),
        Err(SecAggError::NotMember { index: 0, .. })
    ));

    let err = client.receive_shares(&mine[..1]).unwrap_err();
    assert!(
        matches!(
            err,
            SecAggError::TooFew {
                have: 2,
                threshold: 3,
                ..
            }
        ),
        "{err}"
    );

    // Nothing above changed the state: the genuine shares are accepted.
    client.receive_shares(&mine).unwrap();
    assert_eq!(u2.len(), 5);
}

#[test]
fn the_server_checks_keys_and_shares() {
    let mut rng = ChaCha20Rng::seed_from_u64(17);
    let mut server = ServerRound::new(context(), 3, 2, CLIP, 4, 10).unwrap();
    let mut clients = Vec::new();
    for i in 0..3 {
        let (client, keys) = ClientRound::new(context(), server.params_for(i), &mut rng).unwrap();
        if i == 0 {
            let err = server.add_keys(3, keys.clone()).unwrap_err();
            assert_eq!(err, SecAggError::IndexOutOfRange { index: 3, cohort: 3 });
            let weak = PublicKeys {
                cipher: [0; 32],
                mask: keys.mask,
            };
            assert_eq!(server.add_keys(0, weak).unwrap_err(), SecAggError::WeakKey { index: 0 });
        }
        server.add_keys(i, keys.clone()).unwrap();
        if i == 0 {
            assert!(matches!(
                server.add_keys(0, keys),
                Err(SecAggError::Duplicate { index: 0, .. })
            ));
        }
        clients.push(client);
    }
    assert!(matches!(
        server.add_shares(0, vec![]),
        Err(SecAggError::OutOfOrder { .. })
    ));
    let roster = server.roster().unwrap();
    let (_, late) = ClientRound::new(context(), server.params_for(2), &mut rng).unwrap();
    assert!(matches!(server.add_keys(2, late), Err(SecAggError::OutOfOrder { .. })));

    let shares = clients[0].share_keys(&roster, &mut rng).unwrap();
    let err = server.add_shares(0, shares[..1].to_vec()).unwrap_err();
    assert_eq!(
        err,
        SecAggError::ShareCount {
            index: 0,
            got: 1,
            expected: 2
        }
    );
    assert!(err.to_string().contains("sent 1 encrypted shares, expected 2"), "{err}");
    let mut forged = shares.clone();
    forged[1].from = 1;
    assert_eq!(
        server.add_shares(0, forged).unwrap_err(),
        SecAggError::WrongSender { index: 0, from: 1 }
    );
    let mut twice = shares.clone();
    twice[1].to = twice[0].to;
    assert!(matches!(
        server.add_shares(0, twice),
        Err(SecAggError::Duplicate { .. })
    ));
    let mut to_self = shares.clone();
    to_self[0].to = 0;
    assert!(matches!(
        server.add_shares(0, to_self),
        Err(SecAggError::NotMember { index: 0, .. })
    ));
    let mut short = shares.clone();
    short[0].ciphertext.truncate(10);
    assert!(matches!(
        server.add_shares(0, short),
        Err(SecAggError::CiphertextLength { got: 10, .. })
    ));
    server.add_shares(0, shares.clone()).unwrap();
    assert!(matches!(
        server.add_shares(0, shares),
        Err(SecAggError::Duplicate { index: 0, .. })
    ));
    assert!(
        server.shares_for(1).is_empty(),
        "nothing is forwarded before U2 is closed"
    );
}

#[test]
fn the_server_checks_masked_inputs() {
    let mut h = Harness::new(18, 5, 3);
    let u2 = h.share(&[4]);
    let masked = |h: &mut Harness, i: usize| {
        let shares = h.server.shares_for(i as u32);
        h.clients[i].receive_shares(&shares).unwrap();
        h.clients[i].mask(&h.updates[i], h.weights[i]).unwrap()
    };
    let input = masked(&mut h, 0);
    let err = h.server.add_masked(0, &input[1..], 1).unwrap_err();
    assert_eq!(
        err,
        SecAggError::WrongLength {
            index: 0,
            got: NUMEL - 1,
            expected: NUMEL
        }
    );
    assert_eq!(
        h.server.add_masked(4, &input, 1).unwrap_err().to_string(),
        "agent 4 is not a member of U2 (agents that sent shares)"
    );
    assert_eq!(h.server.add_masked(0, &input, 0).unwrap_err(), SecAggError::ZeroWeight);
    let err = h.server.add_masked(0, &input, MAX_WEIGHT * 5 + 1).unwrap_err();
    assert!(matches!(err, SecAggError::WeightOverBound { index: 0, .. }), "{err}");
    h.server.add_masked(0, &input, h.weights[0]).unwrap();
    assert!(matches!(
        h.server.add_masked(0, &input, h.weights[0]),
        Err(SecAggError::Duplicate { index: 0, .. })
    ));
    // The refused inputs left the sum alone: the round still unmasks exactly.
    for &i in &u2[1..] {
        let input = masked(&mut h, i as usize);
        h.server.add_masked(i, &input, h.weights[i as usize]).unwrap();
    }
    let u3 = h.server.close_inputs().unwrap();
    h.reveal(&u3, &[]);
    h.finish_and_check(&[0, 1, 2, 3], &[4]);
}

#[test]
fn the_server_refuses_reveals_out_of_place() {
    let (mut h, u2) = ready(19);
    for &i in &u2[..4] {
        let masked = h.clients[i as usize]
            .mask(&h.updates[i as usize], h.weights[i as usize])
            .unwrap();
        h.server.add_masked(i, &masked, h.weights[i as usize]).unwrap();
    }
    let u3 = h.server.close_inputs().unwrap();
    assert_eq!(u3, [0, 1, 2, 3]);
    let honest = h.clients[0].reveal(&u3).unwrap();

    // Both kinds for agent 1 (in U3): its mask key would unmask its input.
    let mut both = honest.clone();
    let share = both[1].share().clone();
    both[1] = Reveal::MaskKey { of: 1, share };
    let err = h.server.add_reveal(0, both).unwrap_err();
    assert_eq!(
        err,
        SecAggError::WrongRevealKind {
            from: 0,
            of: 1,
            got: "mask-key",
            expected: "self-mask"
        }
    );
    // A self-mask share of agent 4, which dropped: with its mask key, that unmasks nothing
    // today, but the server must never hold both.
    let mut wrong_kind = honest.clone();
    let share = wrong_kind[4].share().clone();
    wrong_kind[4] = Reveal::SelfMask { of: 4, share };
    assert!(matches!(
        h.server.add_reveal(0, wrong_kind),
        Err(SecAggError::WrongRevealKind { of: 4, .. })
    ));

    let mut wrong_x = honest.clone();
    wrong_x[2] = Reveal::SelfMask {
        of: 2,
        share: Share { x: 2, y: [0; 32] },
    };
    let err = h.server.add_reveal(0, wrong_x).unwrap_err();
    assert_eq!(
        err,
        SecAggError::WrongShareX {
            from: 0,
            of: 2,
            x: 2,
            expected: 1
        }
    );

    let mut duplicated = honest.clone();
    duplicated[3] = duplicated[2].clone();
    assert!(matches!(
        h.server.add_reveal(0, duplicated),
        Err(SecAggError::Duplicate { index: 2, .. })
    ));
    let err = h.server.add_reveal(0, honest[..4].to_vec()).unwrap_err();
    assert_eq!(err, SecAggError::IncompleteReveal { from: 0, missing: 4 });
    let reveals_of_4 = h.clients[4].reveal(&u3);
    assert!(
        matches!(reveals_of_4, Err(SecAggError::OutOfOrder { .. })),
        "agent 4 never masked"
    );
    assert!(matches!(
        h.server.add_reveal(4, honest.clone()),
        Err(SecAggError::NotMember { index: 4, .. })
    ));

    // Every refusal left the state alone.
    h.server.add_reveal(0, honest.clone()).unwrap();
    assert!(matches!(
        h.server.add_reveal(0, honest),
        Err(SecAggError::Duplicate { index: 0, .. })
    ));
    h.reveal(&u3, &[0]);
    h.finish_and_check(&[0, 1, 2, 3], &[4]);
}

#[test]
fn corrupted_shares_of_a_mask_key_are_detected() {
    let (mut h, u2) = ready(20);
    for &i in &u2[..4] {
        let masked = h.clients[i as usize]
            .mask(&h.updates[i as usize], h.weights[i as usize])
            .unwrap();
        h.server.add_masked(i, &masked, h.weights[i as usize]).unwrap();
    }
    let u3 = h.server.close_inputs().unwrap();
    for &i in &u3 {
        let mut reveals = h.clients[i as usize].reveal(&u3).unwrap();
        if let Reveal::MaskKey { share, .. } = &mut reveals[4] {
            share.y[0] ^= 0x80;
        }
        h.server.add_reveal(i, reveals).unwrap();
    }
    assert_eq!(h.server.finish().unwrap_err(), SecAggError::KeyMismatch { index: 4 });
}

#[test]
fn steps_out_of_order_are_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(21);
    let mut server = ServerRound::new(context(), 3, 2, CLIP, 4, 10).unwrap();
    let (mut client, _) = ClientRound::new(context(), server.params_for(0), &mut rng).unwrap();
    let err = client.mask(&[0.0; 4], 1).unwrap_err();
    assert_eq!(
        err,
        SecAggError::OutOfOrder {
            call: "mask",
            phase: "share keys"
        }
    );
    assert!(matches!(
        client.receive_shares(&[]),
        Err(SecAggError::OutOfOrder { .. })
    ));
    assert!(matches!(client.reveal(&[0, 1]), Err(SecAggError::OutOfOrder { .. })));
    assert!(matches!(server.close_shares(), Err(SecAggError::OutOfOrder { .. })));
    assert!(matches!(
        server.add_masked(0, &[0; 4], 1),
        Err(SecAggError::OutOfOrder { .. })
    ));
    assert!(matches!(
        server.add_reveal(0, vec![]),
        Err(SecAggError::OutOfOrder { .. })
    ));
    assert!(!server.can_finish());
    let err = server.finish().unwrap_err();
    assert_eq!(
        err.to_string(),
        "finish is not possible now: the round is at the public keys step"
    );
}

#[test]
fn parameters_are_validated() {
    let mut rng = ChaCha20Rng::seed_from_u64(22);
    let good = SecureRound {
        index: 0,
        cohort: 5,
        degree: None,
        threshold: 3,
        clip: 1.0,
        scale: 1e6,
        noise: None,
    };
    assert!(good.validate().is_ok());
    // Cohorts past GF(2^8)'s 255, on the complete graph or a sparse one.
    for degree in [None, Some(2), Some(40)] {
        let large = SecureRound {
            index: 299,
            cohort: 300,
            degree,
            ..good
        };
        assert!(large.validate().is_ok(), "{large:?}");
    }
    let bad = [
        SecureRound {
            cohort: 1,
            threshold: 1,
            ..good
        },
        SecureRound { cohort: 65_536, ..good },
        SecureRound {
            cohort: 300,
            degree: Some(3),
            ..good
        },
        SecureRound {
            cohort: 300,
            degree: Some(0),
            ..good
        },
        // A neighbourhood of 3 cannot meet a threshold of 4.
        SecureRound {
            cohort: 300,
            degree: Some(2),
            threshold: 4,
            ..good
        },
        SecureRound { threshold: 1, ..good },
        SecureRound { threshold: 6, ..good },
        SecureRound { clip: f32::NAN, ..good },
        SecureRound { clip: -1.0, ..good },
        SecureRound { scale: 0.0, ..good },
        SecureRound {
            scale: f64::INFINITY,
            ..good
        },
        SecureRound { index: 5, ..good },
        SecureRound {
            noise: Some(DistributedNoise { clip: 0.0, std: 0.1 }),
            ..good
        },
        SecureRound {
            noise: Some(DistributedNoise {
                clip: 1.0,
                std: f32::NAN,
            }),
            ..good
        },
    ];
    for params in bad {
        assert!(ClientRound::new(context(), params, &mut rng).is_err(), "{params:?}");
    }
    assert!(ServerRound::new(context(), 65_536, 3, 1.0, 4, 10).is_err());
    assert!(ServerRound::new(context(), 5, 6, 1.0, 4, 10).is_err());
    assert!(ServerRound::new(context(), 5, 3, 0.0, 4, 10).is_err());
    assert!(ServerRound::new(context(), 5, 3, 1.0, 0, 10).is_err());
    assert!(ServerRound::new(context(), 5, 3, 1.0, 4, 0).is_err());
    let err = ServerRound::new(context(), 5, 1, 1.0, 4, 10).unwrap_err();
    assert!(
        err.to_string()
            .contains("threshold must be between 2 and the neighbourhood size 5, not 1"),
        "{err}"
    );
    // On a sparse graph the threshold is bounded by the neighbourhood, not the cohort.
    let sparse = ServerRound::new(context(), 50, 8, 1.0, 4, 10).unwrap();
    let err = sparse.with_degree(6).unwrap_err();
    assert!(
        err.to_string()
            .contains("threshold must be between 2 and the neighbourhood size 7, not 8"),
        "{err}"
    );
    let odd = ServerRound::new(context(), 50, 3, 1.0, 4, 10).unwrap().with_degree(5);
    assert!(odd.unwrap_err().to_string().contains("even"));
    let server = ServerRound::new(context(), 5, 3, 1.0, 4, 10).unwrap();
    assert_eq!(
        server.params_for(4),
        SecureRound {
            index: 4,
            cohort: 5,
            degree: None,
            threshold: 3,
            clip: 1.0,
            scale: scale_for(1.0, 10),
            noise: None,
        }
    );
    assert!(server.params_for(4).validate().is_ok());
}

#[test]
fn a_round_does_not_mix_with_another() {
    // An agent of another round (another context) cannot take part: its shares do not open.
    let mut rng = ChaCha20Rng::seed_from_u64(23);
    let server = ServerRound::new(context(), 2, 2, CLIP, 4, 10).unwrap();
    let other = RoundContext { round: 8, ..context() };
    let (mut a, keys_a) = ClientRound::new(context(), server.params_for(0), &mut rng).unwrap();
    let (mut b, keys_b) = ClientRound::new(other, server.params_for(1), &mut rng).unwrap();
    let roster = [PeerKeys { index: 0, keys: keys_a }, PeerKeys { index: 1, keys: keys_b }];
    let from_a = a.share_keys(&roster, &mut rng).unwrap();
    b.share_keys(&roster, &mut rng).unwrap();
    assert_eq!(
        b.receive_shares(&from_a).unwrap_err(),
        SecAggError::Decryption { from: 0, to: 1 }
    );
}

#[test]
fn wire_types_survive_bincode() {
    let config = bincode::config::standard();
    let reveal = vec![
        Reveal::SelfMask {
            of: 3,
            share: Share { x: 4, y: [7; 32] },
        },
        Reveal::MaskKey {
            of: 1,
            share: Share { x: 4, y: [9; 32] },
        },
    ];
    let bytes = bincode::serde::encode_to_vec(&reveal, config).unwrap();
    let (back, _): (Vec<Reveal>, usize) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
    assert_eq!(back, reveal);
    let params = SecureRound {
        index: 2,
        cohort: 9,
        degree: Some(4),
        threshold: 5,
        clip: 0.5,
        scale: 1234.5,
        noise: Some(DistributedNoise { clip: 0.25, std: 0.01 }),
    };
    let bytes = bincode::serde::encode_to_vec(params, config).unwrap();
    let (back, _): (SecureRound, usize) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
    assert_eq!(back, params);
}

/// A distributed-noise round: each agent clips in L2 and adds its share of the noise; the
/// unmasked mean is the mean of the clipped updates plus noise whose spread matches
/// σ · clip · √n / cohort for the n agents whose inputs arrived.
#[test]
fn distributed_noise_sums_to_the_promised_spread_with_and_without_dropouts() {
    const N: u32 = 8;
    let (sigma, l2) = (1.2f64, 5.0f32);
    let noise = DistributedNoise {
        clip: l2,
        std: (sigma * f64::from(l2) / f64::from(N).sqrt()) as f32,
    };
    for dropped in [vec![], vec![2, 5]] {
        let mut rng = ChaCha20Rng::seed_from_u64(40 + dropped.len() as u64);
        let mut server = ServerRound::new(context(), N, 4, noise.coordinate_range(), NUMEL, u64::from(N))
            .unwrap()
            .with_noise(noise)
            .unwrap();
        let mut clients = Vec::new();
        for i in 0..N {
            let params = server.params_for(i);
            assert_eq!(params.noise, Some(noise));
            let (client, keys) = ClientRound::new(context(), params, &mut rng).unwrap();
            server.add_keys(i, keys).unwrap();
            clients.push(client);
        }
        let roster = server.roster().unwrap();
        for (i, client) in clients.iter_mut().enumerate() {
            let shares = client.share_keys(&roster, &mut rng).unwrap();
            server.add_shares(i as u32, shares).unwrap();
        }
        let u2 = server.close_shares().unwrap();
        // Updates of norm ~ 0.3 · √2500 = 15, so every one is clipped to 5.
        let updates: Vec<Vec<f32>> = (0..N)
            .map(|_| (0..NUMEL).map(|_| rng.random_range(-0.5f32..0.5)).collect())
            .collect();
        let mut clipped_sum = vec![0f64; NUMEL];
        for &i in &u2 {
            let client = &mut clients[i as usize];
            client.receive_shares(&server.shares_for(i)).unwrap();
            if dropped.contains(&i) {
                continue;
            }
            let mut update = updates[i as usize].clone();
            assert!(noise.apply(&mut update, &mut rng), "the update is longer than the clip");
            let norm = updates[i as usize]
                .iter()
                .map(|&v| f64::from(v).powi(2))
                .sum::<f64>()
                .sqrt();
            for (sum, &v) in clipped_sum.iter_mut().zip(&updates[i as usize]) {
                *sum += f64::from(v) * f64::from(l2) / norm;
            }
            assert_eq!(
                client.mask(&update, 2).unwrap_err(),
                SecAggError::NoisedWeight { weight: 2 }
            );
            let masked = client.mask(&update, 1).unwrap();
            assert_eq!(
                server.add_masked(i, &masked, 3).unwrap_err(),
                SecAggError::NoisedWeight { weight: 3 }
            );
            server.add_masked(i, &masked, 1).unwrap();
        }
        let u3 = server.close_inputs().unwrap();
        for &i in &u3 {
            let reveals = clients[i as usize].reveal(&u3).unwrap();
            server.add_reveal(i, reveals).unwrap();
        }
        let unmasked = server.finish().unwrap();
        let n = N as usize - dropped.len();
        assert_eq!(unmasked.total_weight, n as u64);
        // mean − clipped mean = noise sum / n, whose std is σ · clip · √(n / N) / n.
        let residual: Vec<f64> = unmasked
            .mean
            .iter()
            .zip(&clipped_sum)
            .map(|(&got, &sum)| f64::from(got) - sum / n as f64)
            .collect();
        let mean = residual.iter().sum::<f64>() / NUMEL as f64;
        let std = (residual.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / NUMEL as f64).sqrt();
        let promised = sigma * f64::from(l2) * (n as f64 / f64::from(N)).sqrt() / n as f64;
        assert!(mean.abs() < 4.0 * promised / (NUMEL as f64).sqrt(), "noise mean {mean}");
        assert!(
            (std / promised - 1.0).abs() < 0.05,
            "noise std {std}, promised {promised} ({n} of {N} agents)"
        );
    }
}

#[test]
fn a_noised_round_needs_a_coordinate_range_that_holds_the_noise() {
    let noise = DistributedNoise { clip: 1.0, std: 0.1 };
    let server = ServerRound::new(context(), 4, 2, 1.5, NUMEL, 4).unwrap();
    let err = server.with_noise(noise).unwrap_err();
    assert!(err.to_string().contains("below the noised update's range 2"), "{err}");
}

#[test]
fn noise_clips_only_longer_updates_and_is_centred() {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let quiet = DistributedNoise { clip: 2.0, std: 0.0 };
    let mut short = vec![0.6f32, 0.8];
    assert!(!quiet.apply(&mut short, &mut rng));
    assert_eq!(short, [0.6, 0.8]);
    let mut long = vec![3.0f32, 4.0];
    assert!(quiet.apply(&mut long, &mut rng));
    assert!((long[0] - 1.2).abs() < 1e-6 && (long[1] - 1.6).abs() < 1e-6, "{long:?}");
    let noisy = DistributedNoise { clip: 1.0, std: 0.5 };
    let mut zeros = vec![0f32; 100_001];
    noisy.apply(&mut zeros, &mut rng);
    let mean = zeros.iter().map(|&v| f64::from(v)).sum::<f64>() / zeros.len() as f64;
    let var = zeros.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / zeros.len() as f64;
    assert!(mean.abs() < 0.01, "{mean}");
    assert!((var.sqrt() - 0.5).abs() < 0.01, "{}", var.sqrt());
}
