//! Aggregation throughput next to a memcpy of the same bytes, in the same run.
//!
//! `cargo bench --bench aggregation` — for N ∈ {10, 50, 100} updates of P = 10⁶
//! parameters, each benchmark consumes N·P·4 bytes of updates:
//! - `memcpy`: copies each update into one model-sized buffer (the bandwidth bound);
//! - `fedavg`: `begin_round`, N × `add`, `finish` (a streaming weighted sum);
//! - `median`, `trimmed_mean`, `krum`: N × `add_owned` (buffers are moved, as the driver
//!   does with updates read off the wire; the clones handed in are made outside the
//!   timing) and `finish`.
//!
//! Throughput is reported in bytes/s of updates consumed, so each rule's figure divided
//! by memcpy's is its fraction of memory bandwidth. `FEDTUNE_BENCH_N=10,50` limits N.

#![allow(missing_docs)] // criterion's macros generate undocumented items

mod common;

use std::hint::black_box;
use std::time::Duration;

use common::{Deltas, cohort_sizes};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use fedtune_federation::strategy::{Aggregation, KrumConfig, Strategy, StrategyConfig, TrimmedMeanConfig, UpdateMeta};

const P: usize = 1_000_000;

fn updates(n: usize) -> Vec<Vec<f32>> {
    let mut deltas = Deltas::default();
    (0..n).map(|_| deltas.take(P)).collect()
}

fn aggregate_borrowed(strategy: &mut dyn Strategy, rows: &[Vec<f32>]) -> Vec<f32> {
    let mut agg: Box<dyn Aggregation> = strategy.begin_round(1, P);
    for (i, row) in rows.iter().enumerate() {
        agg.add(row, 100 + i as u64, &UpdateMeta::new("bench", 1.0)).unwrap();
    }
    agg.finish().unwrap()
}

fn aggregate_owned(strategy: &mut dyn Strategy, rows: Vec<Vec<f32>>) -> Vec<f32> {
    let mut agg = strategy.begin_round(1, P);
    for (i, row) in rows.into_iter().enumerate() {
        agg.add_owned(row, 100 + i as u64, &UpdateMeta::new("bench", 1.0))
            .unwrap();
    }
    agg.finish().unwrap()
}

fn aggregation(c: &mut Criterion) {
    for n in cohort_sizes(vec![10, 50, 100]) {
        let rows = updates(n);
        // Krum tolerating 20% attackers, the robustness example's setting.
        let f = (n / 5).min((n - 3) / 2);
        let robust = [
            StrategyConfig::Median,
            StrategyConfig::TrimmedMean(TrimmedMeanConfig::default()),
            StrategyConfig::Krum(KrumConfig {
                byzantine: Some(f),
                ..KrumConfig::default()
            }),
        ];

        let mut group = c.benchmark_group(format!("aggregate/n={n}/p=1e6"));
        group.throughput(Throughput::Bytes((n * P * size_of::<f32>()) as u64));
        group.sample_size(10);
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(2));

        let mut dst = vec![0.0f32; P];
        group.bench_function("memcpy", |b| {
            b.iter(|| {
                for row in &rows {
                    dst.copy_from_slice(row);
                    black_box(&mut dst);
                }
            })
        });

        let mut fedavg = StrategyConfig::default().build().unwrap();
        group.bench_function("fedavg", |b| {
            b.iter(|| black_box(aggregate_borrowed(&mut *fedavg, &rows)))
        });

        for config in &robust {
            let mut strategy = config.build().unwrap();
            group.bench_function(config.name(), |b| {
                b.iter_batched(
                    || rows.clone(),
                    |owned| black_box(aggregate_owned(&mut *strategy, owned)),
                    BatchSize::PerIteration,
                )
            });
        }
        group.finish();
    }
}

criterion_group!(benches, aggregation);
criterion_main!(benches);
