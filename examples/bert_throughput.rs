//! Training throughput of one agent fine-tuning a pretrained Hugging Face encoder
//! (all-MiniLM-L6-v2 from `scripts/fetch_minilm.sh`): samples per second through the
//! agent's own training loop (`train_local`: batches copied from the dataset, forward,
//! cross-entropy, backward, Adam), batch 32, sequences of 32 seeded token ids with no
//! padding, LoRA r=8 on the attention's query and value (alpha 16) with the head trained,
//! or the head alone, or everything; and the process's peak resident memory. The PyTorch
//! side is `benches/bert_throughput_torch.py`; `benches/bert_throughput.sh` runs both,
//! interleaved, on one core.
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo run --release --example bert_throughput -- --pretrained target/minilm
//! ```

mod common;

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use fedtune::agent::cancel::Cancel;
use fedtune::agent::data::Dataset;
use fedtune::agent::model::default_device;
use fedtune::agent::pretrained::{PretrainedOptions, load_pretrained};
use fedtune::agent::train::{TrainJob, peak_rss_bytes, train_local};
use fedtune::protocol::{ClientHyperparameters, LoraSpec, ModelSpec, Optimizer};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "Fine-tuning throughput of a pretrained encoder through the agent's training loop")]
struct Args {
    /// A Hugging Face BERT-family folder.
    #[arg(long)]
    pretrained: PathBuf,
    /// `lora` (r=8 on query and value, head trained), `head` or `full`.
    #[arg(long, default_value = "lora")]
    mode: String,
    /// Timed repetitions.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Optimizer steps per repetition.
    #[arg(long, default_value_t = 8)]
    steps: usize,
    /// Batch size.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Token ids per row.
    #[arg(long, default_value_t = 32)]
    seq: usize,
    /// Write the figures as JSON here.
    #[arg(long)]
    summary: Option<PathBuf>,
}

#[derive(Serialize)]
struct Summary {
    framework: &'static str,
    mode: String,
    threads: Option<String>,
    batch: usize,
    seq: usize,
    steps: usize,
    samples_per_second: Vec<f64>,
    samples_per_second_median: f64,
    weights_bytes: u64,
    peak_rss_bytes: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let classes: Vec<String> = (0..10).map(|i| format!("class{i}")).collect();
    let options = PretrainedOptions {
        max_len: args.seq,
        classes: Some(classes),
        ..PretrainedOptions::default()
    };
    let pretrained = load_pretrained(&args.pretrained, &options)?;
    let base = ModelSpec::Bert(pretrained.spec.clone());
    let weights_bytes = 4 * pretrained.params.len() as u64;
    let mut rng = StdRng::seed_from_u64(0);
    let (spec, global, frozen) = match args.mode.as_str() {
        "lora" => {
            let lora = LoraSpec {
                base: Box::new(base),
                rank: 8,
                alpha: 16.0,
                targets: vec!["*.attention.self.query".into(), "*.attention.self.value".into()],
                train: vec!["classifier".into()],
            };
            let params = lora.with_adapters(&pretrained.params, &mut rng);
            let spec = ModelSpec::Lora(lora);
            let frozen = spec.implied_frozen();
            (spec, params, frozen)
        }
        "head" => (base, pretrained.params, vec!["bert".to_string()]),
        "full" => (base, pretrained.params, Vec::new()),
        other => anyhow::bail!("unknown mode `{other}`: use lora, head or full"),
    };
    let samples = args.steps * args.batch;
    // [CLS], ids from the vocabulary's word range, [SEP]: no padding, every row full length.
    let (cls, sep) = (101.0, 102.0);
    let mut features = Vec::with_capacity(samples * args.seq);
    for _ in 0..samples {
        features.push(cls);
        features.extend((0..args.seq - 2).map(|_| rng.random_range(1_000..20_000) as f32));
        features.push(sep);
    }
    let labels: Vec<u32> = (0..samples).map(|_| rng.random_range(0..10)).collect();
    let train = Dataset::from_parts(features, labels, args.seq, 10)?;
    let validation = Dataset::from_parts(Vec::new(), Vec::new(), args.seq, 10)?;
    let hp = ClientHyperparameters {
        learning_rate: 1e-4,
        optimizer: Optimizer::Adam,
        batch_size: args.batch as u32,
        local_epochs: 1,
        ..ClientHyperparameters::default()
    };
    let device = default_device();
    let cancel = Cancel::never();
    let run = |seed| {
        let job = TrainJob {
            frozen: &frozen,
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
    run(0)?;
    let threads = std::env::var("RAYON_NUM_THREADS").ok();
    println!(
        "{} ({} mode), batch {}, sequence {}, {} steps per repetition, Adam, Burn flex on {} thread(s)",
        spec.describe(),
        args.mode,
        args.batch,
        args.seq,
        args.steps,
        threads.as_deref().unwrap_or("all")
    );
    let mut rates = Vec::with_capacity(args.reps);
    for rep in 0..args.reps {
        let started = Instant::now();
        run(rep as u64 + 1)?;
        let rate = samples as f64 / started.elapsed().as_secs_f64();
        println!("  repetition {rep}: {rate:.1} samples/s");
        rates.push(rate);
    }
    let median = common::median(&rates);
    let peak = peak_rss_bytes();
    println!(
        "median {median:.1} samples/s; peak resident memory {:.0} MiB for {:.0} MiB of weights ({:.2}x)",
        peak as f64 / 1048576.0,
        weights_bytes as f64 / 1048576.0,
        peak as f64 / weights_bytes as f64
    );
    common::write_summary(
        args.summary.as_deref(),
        &Summary {
            framework: "fedtune",
            mode: args.mode.clone(),
            threads,
            batch: args.batch,
            seq: args.seq,
            steps: args.steps,
            samples_per_second: rates,
            samples_per_second_median: median,
            weights_bytes,
            peak_rss_bytes: peak,
        },
    )
}
