//! Whole rounds between one [`ServerRound`] and its [`ClientRound`]s, with dropouts; the
//! bad inputs each side must refuse are in `client` and `server`, the rules in `rules`.

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

mod client;
mod rules;
mod server;

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
