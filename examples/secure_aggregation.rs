//! Secure aggregation on the shared digits split over loopback QUIC: the aggregator
//! learns only the sample-weighted sum of each round's updates. Three runs with the
//! same seed: plain FedAvg, FedAvg under secure aggregation, and secure aggregation
//! while agents drop out mid-round (after the key exchange, before sending their
//! update), which the protocol recovers from with the survivors' key shares.
//!
//! ```text
//! cargo run --release --example secure_aggregation -- --summary secure.json
//! ```

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use fedtune::agent::cancel::Cancel;
use fedtune::agent::model::default_device;
use fedtune::agent::trainer::{BurnTrainer, FitOutcome, Trainer, TrainerError};
use fedtune::aggregator::config::FederationConfig;
use fedtune::aggregator::{AggregatorConfig, Hooks};
use fedtune::evaluate::TestSetEvaluator;
use fedtune::protocol::{Capabilities, ClientHyperparameters, Evaluate, Evaluation, Task};
use rand::{RngExt, SeedableRng};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "FedAvg with and without secure aggregation, and with agents dropping out mid-round")]
struct Args {
    /// Federated rounds per run.
    #[arg(long, default_value_t = 20)]
    rounds: u64,
    /// Probability that an agent drops out of a round after the key exchange (third run).
    #[arg(long, default_value_t = 0.2)]
    dropout: f64,
    /// Shares needed to unmask, as a fraction of the cohort.
    #[arg(long, default_value_t = 0.5)]
    threshold: f64,
    /// Seed of the runs (split, model, cohorts and dropouts).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the figures as JSON here.
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Write each mode's accuracy, loss and fairness charts (SVG, PNG) under this directory.
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// Trains honestly, but walks away from some rounds after the key exchange began.
struct Flaky {
    inner: BurnTrainer,
    dropout: f64,
    rng: rand::rngs::StdRng,
}

impl Trainer for Flaky {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn fit(&mut self, task: &Task, global: &[f32], cancel: &Cancel) -> Result<FitOutcome, TrainerError> {
        if self.rng.random_bool(self.dropout) {
            return Err(TrainerError::Declined(format!("dropped out of round {}", task.round)));
        }
        self.inner.fit(task, global, cancel)
    }
    fn evaluate(&mut self, request: &Evaluate, params: &[f32]) -> Result<Evaluation, TrainerError> {
        self.inner.evaluate(request, params)
    }
}

#[derive(Serialize)]
struct Run {
    mode: String,
    final_test_accuracy: f64,
    rounds_applied: usize,
    dropped_updates: usize,
    seconds_per_round: f64,
    /// Largest difference of a final parameter from the plain run's.
    max_parameter_difference_from_plain: f64,
}

#[derive(Serialize)]
struct Summary {
    agents: usize,
    rounds: u64,
    parameters: usize,
    threshold: f64,
    dropout: f64,
    runs: Vec<Run>,
    /// Seconds per round under secure aggregation over plain, same run of the example.
    secure_time_ratio: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::init_logging();
    let args = Args::parse();
    let data = fedtune::sim::digits_split()?;
    let agents = data.clients();
    let model = fedtune::sim::digits_mlp();
    let parameters = model.manifest().numel();
    println!(
        "secure aggregation: {agents} agents on the shared digits split, {parameters} parameters, {} rounds, \
         threshold {} of the cohort\n",
        args.rounds, args.threshold
    );
    println!(
        "{:<16} {:>10} {:>9} {:>9} {:>11} {:>14}",
        "run", "test acc", "applied", "dropped", "s/round", "max |Δ| plain"
    );
    let mut runs: Vec<Run> = Vec::new();
    let mut plain_global: Option<Vec<f32>> = None;
    for (mode, secure, dropout) in [
        ("plain", false, 0.0),
        ("secure", true, 0.0),
        ("secure_dropout", true, args.dropout),
    ] {
        let trainers: Vec<Flaky> = data
            .burn_trainers(agents, &default_device())?
            .into_iter()
            .enumerate()
            .map(|(i, inner)| Flaky {
                inner,
                dropout,
                rng: rand::rngs::StdRng::seed_from_u64(args.seed * 1000 + i as u64),
            })
            .collect();
        let mut config = AggregatorConfig {
            federation: FederationConfig {
                rounds: args.rounds,
                min_agents: agents,
                min_updates: 2,
                seed: args.seed,
                loopback: true,
                final_evaluation: false,
                ..FederationConfig::default()
            },
            model: model.clone().into(),
            client: ClientHyperparameters::default(),
            ..AggregatorConfig::default()
        };
        config.secure_aggregation.enabled = secure;
        config.secure_aggregation.threshold = args.threshold;
        let hooks = Hooks {
            evaluator: Some(Arc::new(TestSetEvaluator::new(data.global_test()?, default_device()))),
            ..Hooks::default()
        };
        let started = Instant::now();
        let report = fedtune::sim::run_local(config, trainers, hooks)
            .await
            .map_err(anyhow::Error::msg)?;
        common::plot_run(args.plot.as_deref(), mode, &report.rounds)?;
        let seconds: f64 = report.rounds.iter().map(|r| r.seconds).sum();
        let seconds_per_round = seconds / report.rounds.len().max(1) as f64;
        let difference = match &plain_global {
            None => 0.0,
            Some(plain) => plain
                .iter()
                .zip(&report.global)
                .map(|(a, b)| f64::from((a - b).abs()))
                .fold(0.0, f64::max),
        };
        if plain_global.is_none() {
            plain_global = Some(report.global.clone());
        }
        let run = Run {
            mode: mode.into(),
            final_test_accuracy: report.final_test.map_or(f64::NAN, |t| t.accuracy),
            rounds_applied: report.rounds.iter().filter(|r| r.applied).count(),
            dropped_updates: report.rounds.iter().map(|r| r.cohort.len() - r.updates).sum(),
            seconds_per_round,
            max_parameter_difference_from_plain: difference,
        };
        println!(
            "{:<16} {:>10.4} {:>9} {:>9} {:>11.3} {:>14.2e}",
            run.mode,
            run.final_test_accuracy,
            run.rounds_applied,
            run.dropped_updates,
            run.seconds_per_round,
            run.max_parameter_difference_from_plain
        );
        tracing::debug!(seconds = started.elapsed().as_secs_f64(), mode, "run finished");
        runs.push(run);
    }
    let secure_time_ratio = runs[1].seconds_per_round / runs[0].seconds_per_round;
    println!("\nsecure / plain time per round: {secure_time_ratio:.2}×");
    common::plots_written(args.plot.as_deref());
    common::write_summary(
        args.summary.as_deref(),
        &Summary {
            agents,
            rounds: args.rounds,
            parameters,
            threshold: args.threshold,
            dropout: args.dropout,
            runs,
            secure_time_ratio,
        },
    )
}
