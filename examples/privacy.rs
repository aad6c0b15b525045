//! Client-level differential privacy: accuracy against ε. DP-FedAvg at several noise
//! multipliers σ over many simulated agents on loopback QUIC, each σ twice: with central
//! noise (the aggregator clips and noises) and under secure aggregation with distributed
//! noise (each agent clips and adds its share before masking). σ = 0 is the baseline
//! without differential privacy.
//!
//! Client-level DP protects an agent's whole dataset, so the noise on the average falls
//! with the cohort: its standard deviation per value is `σ · clip / cohort`. The example
//! therefore runs 100 agents, 20 of them per round, by default; ε is what the RDP
//! accountant composes at sampling rate q = cohort / agents.
//!
//! ```text
//! cargo run --release --example privacy -- --summary privacy.json
//! cargo run --release --example privacy -- --dataset fashion-mnist --model cnn --agents 200 --cohort 0.25
//! ```

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use fedtune::agent::config::{DataSource, FederatedData};
use fedtune::agent::model::default_device;
use fedtune::agent::partition::PartitionSpec;
use fedtune::aggregator::config::{FederationConfig, SecureAggregationConfig};
use fedtune::aggregator::{AggregatorConfig, Hooks};
use fedtune::evaluate::TestSetEvaluator;
use fedtune::federation::privacy::{Clipping, NoisePlacement, PrivacyConfig};
use fedtune::protocol::ClientHyperparameters;
use serde::Serialize;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DatasetName {
    Digits,
    FashionMnist,
}

#[derive(Parser, Debug)]
#[command(about = "DP-FedAvg: accuracy against ε, with central and with distributed noise")]
struct Args {
    /// Dataset.
    #[arg(long, value_enum, default_value_t = DatasetName::Digits)]
    dataset: DatasetName,
    /// Model.
    #[arg(long, value_enum, default_value_t = common::ModelKind::Mlp)]
    model: common::ModelKind,
    /// Hidden layer widths of the MLP (or of the CNN's head).
    #[arg(long, value_delimiter = ',', default_value = "64")]
    hidden: Vec<usize>,
    /// Simulated agents.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Agents per round: a fraction (0, 1] of those connected, or a count above 1.
    #[arg(long, default_value_t = 0.2)]
    cohort: f64,
    /// `iid` or `dirichlet:ALPHA`.
    #[arg(long, default_value = "iid")]
    partition: PartitionSpec,
    /// Federated rounds per run.
    #[arg(long, default_value_t = 30)]
    rounds: u64,
    /// Noise multipliers σ to run (0: no differential privacy).
    #[arg(long, value_delimiter = ',', default_value = "0,0.5,1,2,4")]
    sigmas: Vec<f64>,
    /// The L2 norm updates are clipped to (the starting value with --adaptive).
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// Adaptive clipping (Andrew et al.) for the central-noise runs.
    #[arg(long)]
    adaptive: bool,
    /// δ of the reported (ε, δ).
    #[arg(long, default_value_t = 1e-5)]
    delta: f64,
    /// Which placements to run: `central` (no secure aggregation), `distributed` (under
    /// secure aggregation).
    #[arg(long, value_delimiter = ',', default_value = "central,distributed")]
    noise: Vec<String>,
    /// Local learning rate.
    #[arg(long, default_value_t = 0.1)]
    lr: f64,
    /// Local epochs per round.
    #[arg(long, default_value_t = 2)]
    local_epochs: u32,
    /// Seed of the split, the model, the cohorts and the noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the figures as JSON here.
    #[arg(long)]
    summary: Option<PathBuf>,
}

#[derive(Serialize)]
struct Run {
    noise_multiplier: f64,
    /// `none` (σ = 0), `central` or `distributed`.
    noise: String,
    secure: bool,
    /// ε at δ after the last round; `null` without differential privacy (σ = 0), where
    /// no finite ε holds.
    epsilon: Option<f64>,
    final_test_accuracy: f64,
    rounds: usize,
    /// The clip of the last round (it moves under adaptive clipping).
    final_clip: Option<f64>,
    seconds: f64,
}

#[derive(Serialize)]
struct Summary {
    dataset: String,
    model: String,
    agents: usize,
    cohort: usize,
    sample_rate: f64,
    delta: f64,
    clip: f64,
    adaptive: bool,
    runs: Vec<Run>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::init_logging();
    let args = Args::parse();
    let (source, side) = match args.dataset {
        DatasetName::Digits => (fedtune::sim::digits_source(), 8),
        DatasetName::FashionMnist => (
            DataSource::FashionMnist {
                dir: fedtune::agent::data::FASHION_MNIST_DIR.into(),
            },
            28,
        ),
    };
    if matches!(args.model, common::ModelKind::Transformer) {
        anyhow::bail!("the privacy example runs image models: --model mlp or cnn");
    }
    let data = FederatedData::load(&source, &args.partition, args.agents, args.seed)?;
    let model = common::model_for(args.model, side, &args.hidden, data.dataset.classes());
    model.validate()?;
    let cohort = if args.cohort <= 1.0 {
        ((args.cohort * args.agents as f64).round() as usize).max(1)
    } else {
        args.cohort as usize
    };
    let sample_rate = cohort as f64 / args.agents as f64;
    println!(
        "privacy: {} agents ({} per round, q = {sample_rate}), {:?} {:?}, {} rounds, clip {}{}, δ = {}\n",
        args.agents,
        cohort,
        args.dataset,
        args.model,
        args.rounds,
        args.clip,
        if args.adaptive { " (adaptive)" } else { "" },
        args.delta
    );
    println!(
        "{:>6} {:<12} {:>10} {:>10} {:>8} {:>8}",
        "σ", "noise", "ε", "accuracy", "clip", "seconds"
    );
    let mut runs = Vec::new();
    for &sigma in &args.sigmas {
        for placement in &args.noise {
            let noise = match placement.as_str() {
                "central" => NoisePlacement::Central,
                "distributed" => NoisePlacement::Distributed,
                other => anyhow::bail!("--noise takes central and distributed, not {other}"),
            };
            let secure = noise == NoisePlacement::Distributed;
            let privacy = PrivacyConfig {
                noise_multiplier: sigma,
                clip: args.clip,
                delta: args.delta,
                noise,
                clipping: if args.adaptive && !secure {
                    Clipping::Adaptive
                } else {
                    Clipping::Fixed
                },
                ..PrivacyConfig::default()
            };
            let config = AggregatorConfig {
                federation: FederationConfig {
                    rounds: args.rounds,
                    min_agents: args.agents,
                    wait_for_agents_secs: 60.0,
                    cohort: args.cohort,
                    seed: args.seed,
                    loopback: true,
                    final_evaluation: false,
                    ..FederationConfig::default()
                },
                model: model.clone().into(),
                client: ClientHyperparameters {
                    learning_rate: args.lr,
                    local_epochs: args.local_epochs,
                    ..ClientHyperparameters::default()
                },
                secure_aggregation: SecureAggregationConfig {
                    enabled: secure,
                    ..SecureAggregationConfig::default()
                },
                privacy,
                ..AggregatorConfig::default()
            };
            config.validate()?;
            let hooks = Hooks {
                evaluator: Some(Arc::new(TestSetEvaluator::new(data.global_test()?, default_device()))),
                ..Hooks::default()
            };
            let trainers = data.burn_trainers(args.agents, &default_device())?;
            let started = Instant::now();
            let report = fedtune::sim::run_local(config, trainers, hooks)
                .await
                .map_err(anyhow::Error::msg)?;
            let seconds = started.elapsed().as_secs_f64();
            let last = report.rounds.last();
            let run = Run {
                noise_multiplier: sigma,
                noise: if sigma > 0.0 { placement.clone() } else { "none".into() },
                secure,
                epsilon: last.and_then(|r| r.epsilon),
                final_test_accuracy: report.final_test.map_or(f64::NAN, |t| t.accuracy),
                rounds: report.rounds.len(),
                final_clip: last.and_then(|r| r.clip),
                seconds,
            };
            let epsilon = run.epsilon.map_or_else(|| "∞".into(), |e| format!("{e:.3}"));
            let clip = run.final_clip.map_or_else(|| "-".into(), |c| format!("{c:.3}"));
            println!(
                "{:>6} {:<12} {:>10} {:>10.4} {:>8} {:>8.1}",
                sigma,
                if secure { "distributed" } else { "central" },
                epsilon,
                run.final_test_accuracy,
                clip,
                seconds
            );
            runs.push(run);
        }
    }
    common::write_summary(
        args.summary.as_deref(),
        &Summary {
            dataset: format!("{:?}", args.dataset).to_lowercase(),
            model: format!("{:?}", args.model).to_lowercase(),
            agents: args.agents,
            cohort,
            sample_rate,
            delta: args.delta,
            clip: args.clip,
            adaptive: args.adaptive,
            runs,
        },
    )
}
