//! An agent's side of secure aggregation fed whatever a hostile aggregator could send: a
//! roster, sealed shares and survivor lists decoded from arbitrary bytes, updates with any
//! values and weights, in any order, mixed with the honest messages of a real round so the
//! fuzzer reaches every step. Never a panic, and never a second masked input or a reveal
//! for a second survivor set.

#![no_main]

use fedtune_protocol::frame::decode_header;
use std::sync::LazyLock;

use fedtune_protocol::secagg::{ClientRound, EncryptedShare, PeerKeys, RoundContext, SecureRound, ServerRound};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::ChaCha20Rng;

const COHORT: u32 = 5;
const NUMEL: usize = 8;

#[derive(Arbitrary, Debug)]
enum Op {
    Roster { raw: Vec<u8> },
    HonestRoster,
    Shares { raw: Vec<u8> },
    HonestShares,
    Mask { update: Vec<f32>, weight: u64 },
    Reveal { survivors: Vec<u32> },
}

#[derive(Arbitrary, Debug)]
struct Input {
    sparse: bool,
    ops: Vec<Op>,
}

fn context() -> RoundContext {
    RoundContext {
        study: "fuzz".into(),
        trial: 0,
        round: 0,
    }
}

/// The honest part of a round, dealt once per process: agent 0's parameters, the
/// roster, and the shares the other agents sealed for agent 0.
struct Honest {
    params: SecureRound,
    roster: Vec<PeerKeys>,
    to_zero: Vec<EncryptedShare>,
}

/// Agent `i` draws its keys from this generator, so agent 0 can be rebuilt with the keys
/// the roster holds.
fn agent_rng(i: u32) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(1_000 + u64::from(i))
}

fn deal(sparse: bool) -> Honest {
    let mut server = ServerRound::new(context(), COHORT, 2, 1.0, NUMEL, 100).expect("valid round");
    if sparse {
        server = server.with_degree(2).expect("valid degree");
    }
    let mut clients = Vec::new();
    for i in 0..COHORT {
        let (client, keys) =
            ClientRound::new(context(), server.params_for(i), &mut agent_rng(i)).expect("valid params");
        server.add_keys(i, keys).expect("honest keys");
        clients.push(client);
    }
    let roster = server.roster().expect("all keys in");
    let mut to_zero = Vec::new();
    for (i, client) in clients.iter_mut().enumerate().skip(1) {
        let shares = client
            .share_keys(&server.roster_for(i as u32), &mut agent_rng(100 + i as u32))
            .expect("honest");
        to_zero.extend(shares.into_iter().filter(|share| share.to == 0));
    }
    Honest {
        params: server.params_for(0),
        roster,
        to_zero,
    }
}

static HONEST: LazyLock<[Honest; 2]> = LazyLock::new(|| [deal(false), deal(true)]);

fuzz_target!(|input: Input| {
    let honest = &HONEST[usize::from(input.sparse)];
    let roster = &honest.roster;
    let honest_for_0 = &honest.to_zero;
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let (mut agent, _) = ClientRound::new(context(), honest.params, &mut agent_rng(0)).expect("valid params");
    let agent = &mut agent;
    let mut masked = false;
    let mut revealed: Option<Vec<u32>> = None;
    for op in input.ops {
        match op {
            Op::Roster { raw } => {
                if let Ok(peers) = decode_header::<Vec<PeerKeys>>(&raw) {
                    let _ = agent.share_keys(&peers, &mut rng);
                }
            }
            Op::HonestRoster => {
                let _ = agent.share_keys(roster, &mut rng);
            }
            Op::Shares { raw } => {
                if let Ok(shares) = decode_header::<Vec<EncryptedShare>>(&raw) {
                    let _ = agent.receive_shares(&shares);
                }
            }
            Op::HonestShares => {
                let _ = agent.receive_shares(honest_for_0);
            }
            Op::Mask { update, weight } => {
                let result = agent.mask(&update, weight);
                if result.is_ok() {
                    assert!(!masked, "a second masked input");
                    masked = true;
                }
            }
            Op::Reveal { mut survivors } => {
                if agent.reveal(&survivors).is_ok() {
                    survivors.sort_unstable();
                    if let Some(previous) = &revealed {
                        assert_eq!(previous, &survivors, "reveals for a second survivor set");
                    }
                    revealed = Some(survivors);
                }
            }
        }
    }
});
