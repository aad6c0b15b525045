//! The aggregator's side of secure aggregation fed whatever a hostile cohort could send,
//! in any order: keys, share batches and reveals decoded from arbitrary bytes, masked
//! inputs of any length and weight. Honest keys and shares can be dealt first so the
//! fuzzer reaches the later steps. Never a panic: every bad input is a `SecAggError`.

#![no_main]

use std::sync::LazyLock;

use fedtune_protocol::frame::decode_header;
use fedtune_protocol::secagg::{ClientRound, EncryptedShare, PublicKeys, Reveal, RoundContext, ServerRound};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::ChaCha20Rng;

const COHORT: u32 = 6;
const NUMEL: usize = 16;

#[derive(Arbitrary, Debug)]
enum Op {
    Keys {
        index: u32,
        cipher: [u8; 32],
        mask: [u8; 32],
    },
    Roster,
    Shares {
        index: u32,
        raw: Vec<u8>,
    },
    CloseShares,
    Masked {
        index: u32,
        words: Vec<u32>,
        weight: u64,
    },
    CloseInputs,
    Reveal {
        index: u32,
        raw: Vec<u8>,
    },
    Finish,
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// SecAgg+ with degree 2, or the complete graph.
    sparse: bool,
    /// Deal every agent's honest keys (and then shares) before the fuzzed steps.
    honest_keys: bool,
    honest_shares: bool,
    threshold: u8,
    ops: Vec<Op>,
}

fn context() -> RoundContext {
    RoundContext {
        study: "fuzz".into(),
        trial: 0,
        round: 0,
    }
}

/// A round after the honest agents' steps, dealt once per process for each graph and
/// threshold and cloned for every input: with every agent's keys, and with every agent's
/// sealed shares on top. Checking keys costs two X25519 multiplications each, which would
/// otherwise dominate every run.
struct Honest {
    keyed: ServerRound,
    shared: ServerRound,
}

fn round(sparse: bool, threshold: u32) -> ServerRound {
    let server = ServerRound::new(context(), COHORT, threshold, 1.0, NUMEL, 600).expect("valid round");
    if sparse {
        server.with_degree(2).expect("degree 2 fits a threshold of at most 3")
    } else {
        server
    }
}

fn deal(sparse: bool, threshold: u32) -> Honest {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut server = round(sparse, threshold);
    let mut clients = Vec::new();
    for i in 0..COHORT {
        let (client, published) = ClientRound::new(context(), server.params_for(i), &mut rng).expect("valid params");
        server.add_keys(i, published).expect("honest keys");
        clients.push(client);
    }
    let keyed = server.clone();
    server.roster().expect("all keys in");
    for (i, client) in clients.iter_mut().enumerate() {
        let shares = client
            .share_keys(&server.roster_for(i as u32), &mut rng)
            .expect("honest roster");
        server.add_shares(i as u32, shares).expect("honest shares");
    }
    Honest { keyed, shared: server }
}

/// Indexed by `[sparse][threshold - 2]`.
static HONEST: LazyLock<[[Honest; 2]; 2]> =
    LazyLock::new(|| [[deal(false, 2), deal(false, 3)], [deal(true, 2), deal(true, 3)]]);

fuzz_target!(|input: Input| {
    let threshold = 2 + u32::from(input.threshold) % 2;
    let honest = &HONEST[usize::from(input.sparse)][threshold as usize - 2];
    let server = match (input.honest_keys, input.honest_shares) {
        (false, _) => round(input.sparse, threshold),
        (true, false) => honest.keyed.clone(),
        (true, true) => honest.shared.clone(),
    };
    let mut server = Some(server);
    for op in input.ops {
        let Some(round) = server.as_mut() else { return };
        match op {
            Op::Keys { index, cipher, mask } => {
                let _ = round.add_keys(index, PublicKeys { cipher, mask });
            }
            Op::Roster => {
                if let Ok(roster) = round.roster() {
                    for peer in &roster {
                        let _ = round.roster_for(peer.index);
                    }
                }
            }
            Op::Shares { index, raw } => {
                if let Ok(shares) = decode_header::<Vec<EncryptedShare>>(&raw) {
                    let _ = round.add_shares(index, shares);
                }
            }
            Op::CloseShares => {
                if let Ok(u2) = round.close_shares() {
                    for index in u2 {
                        let _ = round.shares_for(index);
                    }
                }
            }
            Op::Masked { index, words, weight } => {
                let _ = round.add_masked(index, &words, weight);
            }
            Op::CloseInputs => {
                let _ = round.close_inputs();
            }
            Op::Reveal { index, raw } => {
                if let Ok(reveals) = decode_header::<Vec<Reveal>>(&raw) {
                    let _ = round.add_reveal(index, reveals);
                }
            }
            Op::Finish => {
                let _ = round.can_finish();
                if let Some(round) = server.take()
                    && let Ok(unmasked) = round.finish()
                {
                    assert_eq!(unmasked.mean.len(), NUMEL);
                }
            }
        }
    }
});
