//! An agent's side of secure aggregation fed whatever a hostile aggregator could send: a
//! roster, sealed shares and survivor lists decoded from arbitrary bytes, updates with any
//! values and weights, in any order, mixed with the honest messages of a real round so the
//! fuzzer reaches every step. Never a panic, and never a second masked input or a reveal
//! for a second survivor set.

#![no_main]

use fedtune_protocol::frame::decode_header;
use fedtune_protocol::secagg::{ClientRound, EncryptedShare, PeerKeys, RoundContext, ServerRound};
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

fuzz_target!(|input: Input| {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let mut server = ServerRound::new(context(), COHORT, 2, 1.0, NUMEL, 100).expect("valid round");
    if input.sparse {
        server = server.with_degree(2).expect("valid degree");
    }
    // Agent 0 is the one under test; the others play honestly.
    let mut clients = Vec::new();
    for i in 0..COHORT {
        let (client, keys) = ClientRound::new(context(), server.params_for(i), &mut rng).expect("valid params");
        server.add_keys(i, keys).expect("honest keys");
        clients.push(client);
    }
    let roster = server.roster().expect("all keys in");
    // What agent 0 would be forwarded: the others' shares addressed to it.
    let mut honest_for_0: Vec<EncryptedShare> = Vec::new();
    for (i, client) in clients.iter_mut().enumerate().skip(1) {
        let shares = client
            .share_keys(&server.roster_for(i as u32), &mut rng)
            .expect("honest");
        honest_for_0.extend(shares.into_iter().filter(|share| share.to == 0));
    }
    let agent = &mut clients[0];
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
                let _ = agent.share_keys(&roster, &mut rng);
            }
            Op::Shares { raw } => {
                if let Ok(shares) = decode_header::<Vec<EncryptedShare>>(&raw) {
                    let _ = agent.receive_shares(&shares);
                }
            }
            Op::HonestShares => {
                let _ = agent.receive_shares(&honest_for_0);
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
