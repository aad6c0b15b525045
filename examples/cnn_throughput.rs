//! Training throughput of the NIID-Bench LeNet on one agent: samples per second through
//! the agent's own training loop (`train_local`: batches copied from the dataset, forward,
//! cross-entropy, backward, SGD with momentum), batch 64, on seeded synthetic 28×28 data.
//! The PyTorch side of the comparison is `benches/cnn_throughput_torch.py`;
//! `benches/cnn_throughput.sh` runs both, interleaved, on one core.
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo run --release --example cnn_throughput -- --reps 5 --steps 200
//! ```

mod common;

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use fedtune::agent::cancel::Cancel;
use fedtune::agent::data::Dataset;
use fedtune::agent::model::default_device;
use fedtune::agent::train::{TrainJob, train_local};
use fedtune::protocol::{ClientHyperparameters, CnnSpec, ModelSpec, Optimizer};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "LeNet training throughput through the agent's training loop")]
struct Args {
    /// Timed repetitions.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Optimizer steps per repetition.
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Write the figures as JSON here.
    #[arg(long)]
    summary: Option<PathBuf>,
}

#[derive(Serialize)]
struct Summary {
    framework: &'static str,
    backend: &'static str,
    threads: Option<String>,
    batch: usize,
    steps: usize,
    samples_per_second: Vec<f64>,
    samples_per_second_median: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let spec = ModelSpec::Cnn(CnnSpec::lenet(1, 28, 28, 10));
    let mut rng = StdRng::seed_from_u64(0);
    let global = spec.init_params(&mut rng);
    let samples = args.steps * args.batch;
    let features: Vec<f32> = (0..samples * 784).map(|_| rng.random_range(0.0f32..1.0)).collect();
    let labels: Vec<u32> = (0..samples).map(|_| rng.random_range(0..10)).collect();
    let train = Dataset::from_parts(features, labels, 784, 10)?;
    let validation = Dataset::from_parts(Vec::new(), Vec::new(), 784, 10)?;
    let hp = ClientHyperparameters {
        learning_rate: 0.01,
        momentum: 0.9,
        optimizer: Optimizer::Sgd,
        batch_size: args.batch as u32,
        local_epochs: 1,
        weight_decay: 0.0,
        ..ClientHyperparameters::default()
    };
    let device = default_device();
    let cancel = Cancel::never();
    let run = |seed| {
        let job = TrainJob {
            frozen: &[],
            global: &global,
            hp: &hp,
            train: &train,
            validation: &validation,
            seed,
            device: &device,
            cancel: &cancel,
        };
        train_local(&spec, &job)
    };
    // Warm-up: allocator pools, first-touch pages.
    run(0)?;
    let threads = std::env::var("RAYON_NUM_THREADS").ok();
    println!(
        "LeNet ({} parameters), batch {}, {} steps per repetition, SGD momentum 0.9, Burn flex on {} thread(s)",
        spec.manifest().numel(),
        args.batch,
        args.steps,
        threads.as_deref().unwrap_or("all")
    );
    let mut rates = Vec::with_capacity(args.reps);
    for rep in 0..args.reps {
        let started = Instant::now();
        run(rep as u64 + 1)?;
        let rate = samples as f64 / started.elapsed().as_secs_f64();
        println!("  repetition {rep}: {rate:.0} samples/s");
        rates.push(rate);
    }
    let median = common::median(&rates);
    println!("median {median:.0} samples/s");
    common::write_summary(
        args.summary.as_deref(),
        &Summary {
            framework: "fedtune",
            backend: "burn-flex",
            threads,
            batch: args.batch,
            steps: args.steps,
            samples_per_second: rates,
            samples_per_second_median: median,
        },
    )
}
