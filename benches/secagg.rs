//! Secure-aggregation cost next to a memcpy and a plain weighted sum of the same bytes.
//!
//! `cargo bench --bench secagg` — for a cohort of N = 10 agents and updates of P = 10⁶
//! parameters (`FEDTUNE_BENCH_N=10,50` and `FEDTUNE_BENCH_P=100000` override them):
//! - `memcpy`: copies one update's 4P bytes (the bandwidth bound);
//! - `axpy`: adds one update, times its weight, into an f32 accumulator (plain FedAvg's
//!   work per update);
//! - `client_mask`: [`ClientRound::mask`] for one agent: the fixed-point encoding plus N
//!   ChaCha20 streams (its self mask and N − 1 pairwise masks);
//! - `server_finish/dropped=0`: [`ServerRound::finish`] with every input in: N self masks
//!   to reconstruct and remove;
//! - `server_finish/dropped=1`: the same with one agent dropped after sharing its keys:
//!   N − 1 self masks plus that agent's N − 1 pairwise masks.
//!
//! Throughput is in bytes of one update (4P), so each figure compares directly with memcpy.
//! Rounds are run up to the timed step outside the timing.

#![allow(missing_docs)] // criterion's macros generate undocumented items

mod common;

use std::hint::black_box;
use std::time::Duration;

use common::{Deltas, cohort_sizes};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use fedtune_protocol::secagg::{ClientRound, PeerKeys, RoundContext, ServerRound};
use rand::SeedableRng;
use rand::rngs::ChaCha20Rng;

const CLIP: f32 = 1.0;
const WEIGHT: u64 = 100;

fn update_len() -> usize {
    std::env::var("FEDTUNE_BENCH_P")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1_000_000)
}

fn context() -> RoundContext {
    RoundContext {
        study: "bench".into(),
        trial: 1,
        round: 1,
    }
}

/// Agent `i`'s RNG: the same seed rebuilds the same keys.
fn agent_rng(i: u32) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(u64::from(i))
}

/// A round of `n` agents with U2 closed: every agent has shared its keys, none has its
/// shares yet. Also returns the roster.
fn shared(n: u32, p: usize) -> (ServerRound, Vec<ClientRound>, Vec<PeerKeys>) {
    let mut server = ServerRound::new(context(), n, n / 2 + 1, CLIP, p, WEIGHT * u64::from(n)).unwrap();
    let mut agents = Vec::new();
    for i in 0..n {
        let mut rng = agent_rng(i);
        let (client, keys) = ClientRound::new(context(), server.params_for(i), &mut rng).unwrap();
        server.add_keys(i, keys).unwrap();
        agents.push((client, rng));
    }
    let roster = server.roster().unwrap();
    for (i, (client, rng)) in (0..n).zip(&mut agents) {
        server.add_shares(i, client.share_keys(&roster, rng).unwrap()).unwrap();
    }
    server.close_shares().unwrap();
    let clients = agents.into_iter().map(|(client, _)| client).collect();
    (server, clients, roster)
}

/// A round ready to finish: every agent but those in `drop` sent `delta` and revealed.
fn revealed(n: u32, delta: &[f32], drop: &[u32]) -> ServerRound {
    let (mut server, mut clients, _) = shared(n, delta.len());
    for (i, client) in (0..n).zip(&mut clients) {
        client.receive_shares(&server.shares_for(i)).unwrap();
        if !drop.contains(&i) {
            server
                .add_masked(i, &client.mask(delta, WEIGHT).unwrap(), WEIGHT)
                .unwrap();
        }
    }
    let survivors = server.close_inputs().unwrap();
    for &i in &survivors {
        let reveals = clients[i as usize].reveal(&survivors).unwrap();
        server.add_reveal(i, reveals).unwrap();
    }
    server
}

fn secagg(c: &mut Criterion) {
    let p = update_len();
    let delta = Deltas::default().take(p);
    for n in cohort_sizes(vec![10u32]) {
        cohort(c, n, &delta);
    }
}

fn cohort(c: &mut Criterion, n: u32, delta: &[f32]) {
    let p = delta.len();

    let mut group = c.benchmark_group(format!("secagg/n={n}/p={p}"));
    group.throughput(Throughput::Bytes(size_of_val(delta) as u64));
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));

    let mut dst = vec![0.0f32; p];
    group.bench_function("memcpy", |b| {
        b.iter(|| {
            dst.copy_from_slice(delta);
            black_box(&mut dst);
        })
    });

    let mut acc = vec![0.0f32; p];
    group.bench_function("axpy", |b| {
        b.iter(|| {
            let w = black_box(WEIGHT as f32);
            for (a, x) in acc.iter_mut().zip(delta) {
                *a += w * x;
            }
            black_box(&mut acc);
        })
    });

    // Agent 0 is rebuilt from its seed for every iteration (mask consumes the round's one
    // masked input), with the roster and the shares the others sealed for it.
    let (server, _, roster) = shared(n, p);
    let incoming = server.shares_for(0);
    group.bench_function("client_mask", |b| {
        b.iter_batched(
            || {
                let mut rng = agent_rng(0);
                let (mut client, _) = ClientRound::new(context(), server.params_for(0), &mut rng).unwrap();
                client.share_keys(&roster, &mut rng).unwrap();
                client.receive_shares(&incoming).unwrap();
                client
            },
            |mut client| black_box(client.mask(delta, WEIGHT).unwrap()),
            BatchSize::PerIteration,
        )
    });

    for drop in [&[][..], &[n - 1][..]] {
        let ready = revealed(n, delta, drop);
        group.bench_function(format!("server_finish/dropped={}", drop.len()), |b| {
            b.iter_batched(
                || ready.clone(),
                |server| black_box(server.finish().unwrap()),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, secagg);
criterion_main!(benches);
