//! What durability costs: a round's commit next to a memcpy of its checkpoint.
//!
//! `cargo bench --bench store` — for P = 10⁶ parameters (a 4 MB model):
//! - `memcpy`: one copy of the model's bytes (the floor);
//! - `encode_checkpoint`: the federation's state into the checkpoint format (raw f32
//!   bytes and a CRC-32);
//! - `commit_round`: a round record and its checkpoint into a SQLite store in one
//!   transaction, keeping the last 3 checkpoints (the default), as the writer thread does
//!   after every round.
//!
//! Throughput is in bytes of model per second, so each figure divided by memcpy's is the
//! commit's cost in copies of the model. The store is written under `TMPDIR` (`/tmp` by
//! default): `TMPDIR=/dev/shm` separates SQLite's own cost from the disk's.

#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use fedtune_federation::fairness::{FairnessReport, History};
use fedtune_federation::strategy::StrategyState;
use fedtune_federation::{FederationState, RngState, RoundRecord};
use fedtune_store::{NewRun, RunKind, SqliteStore, Storage, encode_checkpoint};

const P: usize = 1_000_000;

fn state(round: u64) -> FederationState {
    FederationState {
        trial: 0,
        round,
        global: (0..P).map(|i| (i as f32).sin()).collect(),
        strategy: StrategyState::Stateless,
        server_lr: None,
        history: History::default(),
        rng: RngState {
            seed: [3; 32],
            stream: 0,
            word_pos: u128::from(round) * 64,
        },
        tuner: None,
        privacy: None,
    }
}

fn record(round: u64) -> RoundRecord {
    let cohort: Vec<String> = (0..10).map(|i| format!("agent-{i}")).collect();
    RoundRecord {
        round,
        agent_accuracy: cohort.iter().map(|a| (a.clone(), 0.9)).collect::<BTreeMap<_, _>>(),
        cohort,
        updates: 10,
        applied: true,
        failures: Vec::new(),
        aggregation_error: None,
        train_loss: 0.1,
        federated_accuracy: 0.9,
        federated_loss: 0.3,
        server_learning_rate: None,
        fairness: FairnessReport::default(),
        violations: Vec::new(),
        test: None,
        seconds: 0.1,
        device_seconds: 1.0,
        payload_bytes: 80_000_000,
        base_bytes: 0,
        contributions: Default::default(),
        secure: false,
        bounded_claims: Default::default(),
        epsilon: None,
        clip: None,
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("store");
    group
        .throughput(Throughput::Bytes(4 * P as u64))
        .measurement_time(Duration::from_secs(8))
        .sample_size(30);
    let model = state(0).global;
    group.bench_function("memcpy", |b| b.iter(|| black_box(model.clone())));
    group.bench_function("encode_checkpoint", |b| {
        b.iter_batched(
            || state(1),
            |s| black_box(encode_checkpoint(s).unwrap()),
            BatchSize::LargeInput,
        )
    });
    let path = std::env::temp_dir().join(format!("fedtune-bench-store-{}.db", std::process::id()));
    let mut store = SqliteStore::open(&path).unwrap();
    let run = store
        .create_run(&NewRun {
            name: "bench".into(),
            kind: RunKind::Run,
            rounds_planned: u64::MAX >> 1,
            manifest_hash: String::new(),
            config: "{}".into(),
        })
        .unwrap();
    let mut round = 0;
    group.bench_function("commit_round", |b| {
        b.iter_batched(
            || {
                round += 1;
                (record(round), state(round + 1))
            },
            |(record, state)| store.commit_round(run, &record, state, 3).unwrap(),
            BatchSize::LargeInput,
        )
    });
    group.finish();
    drop(store);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
