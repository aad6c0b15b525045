//! Fairness across agents: FedAvg vs q-FedAvg (Li et al. 2020) on digits split among 20
//! agents with strong label skew (Dirichlet α = 0.1), same round budget, same agents and
//! same local hyperparameters, over loopback QUIC. The final model is evaluated on every
//! agent's own validation split.
//!
//! ```text
//! cargo run --release --example fairness -- --summary fairness.json
//! ```
//!
//! q-FedAvg's `Fₖ` is, as in the paper, the global model's loss on agent k's *training*
//! data (the strategy asks agents to measure it), so the validation splits where fairness
//! is measured never steer the aggregation.
//!
//! Validation splits are small (a few agents hold 2–3 validation rows), so part of the
//! accuracy variance is sampling noise that no strategy can remove; the `noise` column
//! estimates it as the mean over agents of `a(1 − a) / n` (accuracy `a`, `n` rows).

mod common;

use std::path::PathBuf;

use clap::Parser;
use fedtune::agent::config::FederatedData;
use fedtune::agent::model::default_device;
use fedtune::agent::partition::PartitionSpec;
use fedtune::agent::trainer::BurnTrainer;
use fedtune::aggregator::{AggregatorConfig, Hooks, RunReport};
use fedtune::federation::strategy::{QFedAvgConfig, StrategyConfig};
use fedtune::protocol::ClientHyperparameters;
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
    /// Local epochs per round.
    #[arg(long, default_value_t = 2)]
    epochs: u32,
    /// Local minibatch size.
    #[arg(long, default_value_t = 32)]
    batch_size: u32,
    /// q-FedAvg's Lipschitz estimate is L = 1 / this rate. The paper's L = 1 / lr is exact
    /// for one local SGD step; after 2 local epochs the delta is several steps long and
    /// L = 1 / lr cuts q-FedAvg's step to about a quarter, so it falls far behind FedAvg
    /// (`--q-lr 0.1`, seeds 0–9: mean accuracy 0.42–0.69 for q = 2…0.5, FedAvg 0.84). 10 gives
    /// L = 0.1, close to the L → 0 limit, a loss-reweighted FedAvg.
    #[arg(long, default_value_t = 10.0)]
    q_lr: f64,
    /// Seed of the split and the runs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also print every agent's validation size and accuracy.
    #[arg(long)]
    per_agent: bool,
    /// Write the figures as JSON here.
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Write each strategy's accuracy, loss and fairness charts (SVG, PNG) under this directory.
    #[arg(long)]
    plot: Option<PathBuf>,
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
    /// Mean over agents of `a(1 − a) / n`: the variance finite validation splits add.
    sampling_noise_variance: f64,
}

#[derive(Serialize)]
struct Summary {
    agents: usize,
    alpha: f64,
    rounds: u64,
    learning_rate: f64,
    local_epochs: u32,
    batch_size: u32,
    q_lipschitz: f64,
    seed: u64,
    runs: Vec<Run>,
}

/// Mean over agents of `a(1 − a) / n` for the final evaluation.
fn sampling_noise(report: &RunReport) -> f64 {
    let per_agent: Vec<f64> = report
        .final_agent_evaluation
        .values()
        .filter(|e| e.samples > 0)
        .map(|e| e.accuracy * (1.0 - e.accuracy) / e.samples as f64)
        .collect();
    common::mean(&per_agent)
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
        local_epochs: args.epochs,
        batch_size: args.batch_size,
        ..Default::default()
    };
    let q_lr = args.q_lr;
    println!(
        "fairness: digits among {} agents, Dirichlet α = {}, seed {}, {} rounds of {} {} epochs \
         lr {} batch {}; q-FedAvg L = 1/{q_lr}\n",
        args.agents,
        args.alpha,
        args.seed,
        args.rounds,
        client.local_epochs,
        client.optimizer,
        client.learning_rate,
        client.batch_size
    );
    println!(
        "{:<16} {:>9} {:>9} {:>10} {:>9} {:>7} {:>9}",
        "strategy", "mean", "variance", "worst 10%", "worst", "Jain", "noise"
    );
    let strategies = std::iter::once(StrategyConfig::default()).chain(
        args.q
            .iter()
            .map(|&q| StrategyConfig::QFedAvg(QFedAvgConfig { q, learning_rate: q_lr })),
    );
    let mut runs = Vec::new();
    for strategy in strategies {
        let device = default_device();
        let trainers = (0..args.agents)
            .map(|i| {
                let (train, validation) = data.client(u32::try_from(i)?)?;
                Ok(BurnTrainer::new(train, validation, device.clone()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let config = AggregatorConfig {
            client: client.clone(),
            strategy: strategy.clone(),
            ..fedtune::sim::loopback_config(fedtune::sim::digits_mlp(), args.agents, args.rounds, args.seed)
        };
        let report = fedtune::sim::run_local(config, trainers, Hooks::default())
            .await
            .map_err(anyhow::Error::msg)?;
        let f = report.final_fairness;
        let noise = sampling_noise(&report);
        let name = match &strategy {
            StrategyConfig::QFedAvg(c) => format!("{}-q{}", strategy.name(), c.q),
            _ => strategy.name().to_string(),
        };
        common::plot_run(args.plot.as_deref(), &name, &report.rounds)?;
        let q = match &strategy {
            StrategyConfig::QFedAvg(c) => Some(c.q),
            _ => None,
        };
        let label = q.map_or_else(|| strategy.name().to_string(), |q| format!("{} q={q}", strategy.name()));
        println!(
            "{label:<16} {:>9.4} {:>9.5} {:>10.4} {:>9.4} {:>7.4} {noise:>9.5}",
            f.mean_accuracy, f.accuracy_variance, f.worst_10pct_accuracy, f.worst_accuracy, f.jain_index
        );
        if args.per_agent {
            let cells: Vec<String> = (0..args.agents)
                .filter_map(|i| {
                    let e = report.final_agent_evaluation.get(&fedtune::sim::agent_id(i))?;
                    Some(format!("{i}:{:.2}/{}", e.accuracy, e.samples))
                })
                .collect();
            println!("  accuracy/validation rows by agent: {}", cells.join(" "));
        }
        runs.push(Run {
            strategy: strategy.name().into(),
            q,
            mean_accuracy: f.mean_accuracy,
            accuracy_variance: f.accuracy_variance,
            worst_10pct_accuracy: f.worst_10pct_accuracy,
            jain_index: f.jain_index,
            worst_accuracy: f.worst_accuracy,
            sampling_noise_variance: noise,
        });
    }
    common::plots_written(args.plot.as_deref());
    common::write_summary(
        args.summary.as_deref(),
        &Summary {
            agents: args.agents,
            alpha: args.alpha,
            rounds: args.rounds,
            learning_rate: args.lr,
            local_epochs: args.epochs,
            batch_size: args.batch_size,
            q_lipschitz: 1.0 / q_lr,
            seed: args.seed,
            runs,
        },
    )
}
