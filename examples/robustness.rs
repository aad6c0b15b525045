//! Robust aggregation against poisoned updates: 20% of the agents send their update
//! sign-flipped and scaled ×10 (`--attack flip`), or their honest update scaled ×10
//! (`--attack scale`). FedAvg vs coordinate median vs trimmed mean vs Krum vs Multi-Krum,
//! each with and without the attack, on the shared digits split over loopback QUIC. The
//! rules assume the default expected attacker share (0.2, `--expected`); `--poisoned 0.4`
//! goes past trimmed mean's and Krum's breakdown at that setting.
//!
//! ```text
//! cargo run --release --example robustness -- --summary robustness.json
//! cargo run --release --example robustness -- --attack scale --poisoned 0.4
//! ```

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use fedtune::agent::cancel::Cancel;
use fedtune::agent::model::default_device;
use fedtune::agent::trainer::{BurnTrainer, FitOutcome, Trainer, TrainerError};
use fedtune::aggregator::{AggregatorConfig, Hooks};
use fedtune::evaluate::TestSetEvaluator;
use fedtune::federation::strategy::StrategyConfig;
use fedtune::protocol::{Capabilities, Evaluate, Evaluation, Task};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "Robust aggregation rules against sign-flipping agents")]
struct Args {
    /// Federated rounds per run.
    #[arg(long, default_value_t = 30)]
    rounds: u64,
    /// Fraction of agents that poison their updates.
    #[arg(long, default_value_t = 0.2)]
    poisoned: f64,
    /// Scale of the poisoned update.
    #[arg(long, default_value_t = 10.0)]
    scale: f32,
    /// `flip` (send `−scale × update`) or `scale` (send `scale × update`).
    #[arg(long, default_value = "flip", value_parser = ["flip", "scale"])]
    attack: String,
    /// The attacker share Krum, Multi-Krum and trimmed mean assume (f, and the trim at
    /// each end, is ⌈expected · n⌉).
    #[arg(long, default_value_t = 0.2)]
    expected: f64,
    /// Rules to compare.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fedavg,median,trimmed_mean,krum,multi_krum"
    )]
    rules: Vec<String>,
    /// Seed of the run.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the figures as JSON here.
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Write each rule's accuracy, loss and fairness charts, attacked and not (SVG, PNG), under this directory.
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// Trains honestly, then multiplies its update by `factor` when poisoned (`−scale` to
/// flip it, `scale` to blow it up).
struct Agent {
    inner: BurnTrainer,
    factor: Option<f32>,
}

impl Trainer for Agent {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn fit(&mut self, task: &Task, global: &[f32], cancel: &Cancel) -> Result<FitOutcome, TrainerError> {
        let mut outcome = self.inner.fit(task, global, cancel)?;
        if let Some(factor) = self.factor {
            outcome.delta.iter_mut().for_each(|d| *d *= factor);
        }
        Ok(outcome)
    }
    fn evaluate(&mut self, request: &Evaluate, params: &[f32]) -> Result<Evaluation, TrainerError> {
        self.inner.evaluate(request, params)
    }
}

#[derive(Serialize)]
struct Run {
    rule: String,
    attack: String,
    final_test_accuracy: f64,
}

#[derive(Serialize)]
struct Summary {
    agents: usize,
    poisoned_agents: usize,
    rounds: u64,
    runs: Vec<Run>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::init_logging();
    let args = Args::parse();
    let data = fedtune::sim::digits_split()?;
    let agents = data.clients();
    let poisoned = ((agents as f64) * args.poisoned).round() as usize;
    let (factor, how) = match args.attack.as_str() {
        "scale" => (args.scale, "scaled"),
        _ => (-args.scale, "sign-flipped and scaled"),
    };
    println!(
        "robustness: {agents} agents on the shared digits split, {poisoned} send their update {how} ×{}, {} rounds; \
         the robust rules assume an attacker share of {}\n",
        args.scale, args.rounds, args.expected
    );
    println!("{:<14} {:>12} {:>12}", "rule", "clean", "attacked");
    let mut runs = Vec::new();
    for name in &args.rules {
        let mut strategy: StrategyConfig = name.parse()?;
        match &mut strategy {
            StrategyConfig::Krum(k) => k.attackers = args.expected,
            StrategyConfig::MultiKrum(k) => k.attackers = args.expected,
            StrategyConfig::TrimmedMean(t) => t.attackers = args.expected,
            _ => {}
        }
        let mut row = Vec::new();
        for attacked in [false, true] {
            let trainers: Vec<Agent> = data
                .burn_trainers(agents, &default_device())?
                .into_iter()
                .enumerate()
                .map(|(i, inner)| Agent {
                    inner,
                    factor: (attacked && i < poisoned).then_some(factor),
                })
                .collect();
            let mut config = AggregatorConfig {
                strategy: strategy.clone(),
                ..fedtune::sim::loopback_config(fedtune::sim::digits_mlp(), agents, args.rounds, args.seed)
            };
            config.federation.final_evaluation = false;
            let hooks = Hooks {
                evaluator: Some(Arc::new(TestSetEvaluator::new(data.global_test()?, default_device()))),
                ..Hooks::default()
            };
            let report = fedtune::sim::run_local(config, trainers, hooks)
                .await
                .map_err(anyhow::Error::msg)?;
            let accuracy = report.final_test.map_or(f64::NAN, |t| t.accuracy);
            let name = format!("{}-{}", strategy.name(), if attacked { "attacked" } else { "clean" });
            common::plot_run(args.plot.as_deref(), &name, &report.rounds)?;
            row.push(accuracy);
            runs.push(Run {
                rule: strategy.name().into(),
                attack: if attacked {
                    format!("{}_x{}", if factor < 0.0 { "sign_flip" } else { "scale" }, args.scale)
                } else {
                    "none".into()
                },
                final_test_accuracy: accuracy,
            });
        }
        println!("{:<14} {:>12.4} {:>12.4}", strategy.name(), row[0], row[1]);
    }
    common::plots_written(args.plot.as_deref());
    common::write_summary(
        args.summary.as_deref(),
        &Summary {
            agents,
            poisoned_agents: poisoned,
            rounds: args.rounds,
            runs,
        },
    )
}
