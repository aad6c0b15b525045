//! Fairness across agents: FedAvg vs q-FedAvg (Li et al. 2020) on digits split among 20
//! agents with strong label skew (Dirichlet α = 0.1), same round budget, over loopback
//! QUIC. The final model is evaluated on every agent's own validation split.
//!
//! ```text
//! cargo run --release --example fairness -- --summary fairness.json
//! ```

mod common;

use std::path::PathBuf;

use clap::Parser;
use fedtune::agent::config::FederatedData;
use fedtune::agent::model::default_device;
use fedtune::agent::partition::PartitionSpec;
use fedtune::aggregator::config::FederationConfig;
use fedtune::aggregator::strategy::{QFedAvgConfig, StrategyConfig};
use fedtune::aggregator::{AggregatorConfig, Hooks};
use fedtune::protocol::{ClientHyperparameters, MlpSpec, ModelSpec};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "FedAvg vs q-FedAvg: accuracy spread across agents under label skew")]
struct Args {
    /// Number of agents.
    #[arg(long, default_value_t = 20)]
    agents: usize,
    /// Dirichlet concentration of the label skew.
    #[arg(long, default_value_t = 0.1)]
    alpha: f64,
    /// Federated rounds per run.
    #[arg(long, default_value_t = 30)]
    rounds: u64,
    /// q values for q-FedAvg.
    #[arg(long, value_delimiter = ',', default_value = "0.5,1,2")]
    q: Vec<f64>,
    /// Local optimizer of every agent (q-FedAvg's step assumes SGD).
    #[arg(long, default_value = "sgd")]
    optimizer: fedtune::protocol::Optimizer,
    /// Local learning rate.
    #[arg(long, default_value_t = 0.1)]
    lr: f64,
    /// q-FedAvg's Lipschitz estimate is L = 1 / this rate. The paper's 1 / (local rate)
    /// assumes one local SGD step; after several local epochs the delta is far larger
    /// than one step and L = 1 / lr shrinks q-FedAvg's steps until it stops learning.
    #[arg(long, default_value_t = 1.0)]
    q_lr: f64,
    /// Seed of the split and the runs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the figures as JSON here.
    #[arg(long)]
    summary: Option<PathBuf>,
}

#[derive(Serialize)]
struct Run {
    strategy: String,
    q: Option<f64>,
    mean_accuracy: f64,
    accuracy_variance: f64,
    worst_10pct_accuracy: f64,
    jain_index: f64,
    worst_accuracy: f64,
}

#[derive(Serialize)]
struct Summary {
    agents: usize,
    alpha: f64,
    rounds: u64,
    runs: Vec<Run>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::init_logging();
    let args = Args::parse();
    let data = FederatedData::load(
        &fedtune::sim::digits_source(),
        &PartitionSpec::Dirichlet(args.alpha),
        args.agents,
        args.seed,
    )?;
    let client = ClientHyperparameters {
        optimizer: args.optimizer,
        learning_rate: args.lr,
        ..Default::default()
    };
    let q_lr = args.q_lr;
    println!(
        "fairness: digits among {} agents, Dirichlet α = {}, {} rounds of {} {} epochs lr {}; q-FedAvg L = 1/{q_lr}\n",
        args.agents, args.alpha, args.rounds, client.local_epochs, client.optimizer, client.learning_rate
    );
    println!(
        "{:<16} {:>9} {:>9} {:>10} {:>9} {:>7}",
        "strategy", "mean", "variance", "worst 10%", "worst", "Jain"
    );
    let strategies = std::iter::once(StrategyConfig::default()).chain(
        args.q
            .iter()
            .map(|&q| StrategyConfig::QFedAvg(QFedAvgConfig { q, learning_rate: q_lr })),
    );
    let mut runs = Vec::new();
    for strategy in strategies {
        let trainers = data.burn_trainers(args.agents, &default_device())?;
        let config = AggregatorConfig {
            federation: FederationConfig {
                rounds: args.rounds,
                min_agents: args.agents,
                seed: args.seed,
                loopback: true,
                ..FederationConfig::default()
            },
            model: ModelSpec::Mlp(MlpSpec {
                input: 64,
                hidden: vec![64],
                classes: 10,
            }),
            client: client.clone(),
            strategy: strategy.clone(),
            ..AggregatorConfig::default()
        };
        let report = fedtune::sim::run_local(config, trainers, Hooks::default())
            .await
            .map_err(anyhow::Error::msg)?;
        let f = report.final_fairness;
        let q = match &strategy {
            StrategyConfig::QFedAvg(c) => Some(c.q),
            _ => None,
        };
        let label = q.map_or_else(|| strategy.name().to_string(), |q| format!("{} q={q}", strategy.name()));
        println!(
            "{label:<16} {:>9.4} {:>9.5} {:>10.4} {:>9.4} {:>7.4}",
            f.mean_accuracy, f.accuracy_variance, f.worst_10pct_accuracy, f.worst_accuracy, f.jain_index
        );
        runs.push(Run {
            strategy: strategy.name().into(),
            q,
            mean_accuracy: f.mean_accuracy,
            accuracy_variance: f.accuracy_variance,
            worst_10pct_accuracy: f.worst_10pct_accuracy,
            jain_index: f.jain_index,
            worst_accuracy: f.worst_accuracy,
        });
    }
    common::write_summary(
        args.summary.as_deref(),
        &Summary {
            agents: args.agents,
            alpha: args.alpha,
            rounds: args.rounds,
            runs,
        },
    )
}
