//! An aggregator and N agents in one process over real mutual-TLS QUIC on 127.0.0.1,
//! training an MLP or a CNN with FedAvg on a real dataset split non-IID.
//!
//! ```text
//! cargo run --release --example simulation -- --agents 10 --rounds 30 --summary sim.json
//! ```

mod common;

const LOOPBACK: bool = true;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use fedtune::agent::config::{DataSource, FederatedData};
use fedtune::agent::model::default_device;
use fedtune::agent::partition::PartitionSpec;
use fedtune::agent::weights::WeightsSource;
use fedtune::aggregator::config::{FederationConfig, ModelConfig, SecureAggregationConfig};
use fedtune::aggregator::progress::Progress;
use fedtune::aggregator::{AggregatorConfig, Hooks, RoundRecord, run, run_stored, service};
use fedtune::evaluate::TestSetEvaluator;
use fedtune::federation::strategy::StrategyConfig;
use fedtune::protocol::{ClientHyperparameters, Optimizer};
use fedtune::sim::{bind_aggregator, ephemeral_pki, spawn_agents};
use fedtune::store::SqliteStore;
use serde::Serialize;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DatasetName {
    Digits,
    FashionMnist,
    /// WordNet noun definitions by category (text; for `--model transformer`).
    Wordnet,
}

#[derive(Parser, Debug)]
#[command(about = "Federated training over loopback QUIC: N agents and an aggregator in one process")]
struct Args {
    /// Number of agents.
    #[arg(long, default_value_t = 10)]
    agents: usize,
    /// Federated rounds.
    #[arg(long, default_value_t = 30)]
    rounds: u64,
    /// Dataset.
    #[arg(long, value_enum, default_value_t = DatasetName::Digits)]
    dataset: DatasetName,
    /// `iid`, `dirichlet:ALPHA` or `file:PATH`; digits defaults to the shared split file
    /// data/digits_partition.json, Fashion-MNIST and WordNet to dirichlet:0.5.
    #[arg(long)]
    partition: Option<PartitionSpec>,
    /// Seed for the split, the model initialisation, cohorts and local shuffling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Agents per round: a fraction (0, 1] of those connected, or a count above 1.
    #[arg(long, default_value_t = 1.0)]
    cohort: f64,
    /// Local learning rate.
    #[arg(long, default_value_t = ClientHyperparameters::default().learning_rate)]
    lr: f64,
    /// Local epochs per round.
    #[arg(long, default_value_t = ClientHyperparameters::default().local_epochs)]
    local_epochs: u32,
    /// Local minibatch size.
    #[arg(long, default_value_t = ClientHyperparameters::default().batch_size)]
    batch_size: u32,
    /// Local optimizer: adam or sgd.
    #[arg(long, default_value_t = ClientHyperparameters::default().optimizer)]
    optimizer: Optimizer,
    /// Aggregation strategy: fedavg, fedprox, fedavgm, fedadam, fedyogi, fedadagrad,
    /// qfedavg, median, trimmed_mean, krum, multi_krum (default parameters).
    #[arg(long, default_value = "fedavg")]
    strategy: StrategyConfig,
    /// Mask the updates with secure aggregation: the aggregator sees only each round's
    /// sum (needs a strategy that works on the sum, such as fedavg).
    #[arg(long)]
    secure: bool,
    /// The model to train.
    #[arg(long, value_enum, default_value_t = common::ModelKind::Mlp)]
    model: common::ModelKind,
    /// Hidden layer widths, comma-separated (the MLP's, or the digits CNN's head).
    #[arg(long, value_delimiter = ',', default_value = "64")]
    hidden: Vec<usize>,
    /// Commit every round to this SQLite store; run again with the same flags to resume
    /// an interrupted run (see `fedtune-aggregator runs --db PATH`).
    #[arg(long)]
    db: Option<PathBuf>,
    /// Start the global model from this weights file (safetensors, `.pt` or `.bpk`, laid
    /// out as `fedtune-aggregator evaluate` reads them) instead of a random initialisation.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Write the final global model here as safetensors (check it with
    /// `fedtune-aggregator evaluate`).
    #[arg(long)]
    save_model: Option<PathBuf>,
    /// The layout of `--save-model`'s file: Burn's, or PyTorch's (linear weights
    /// `[out, in]`) for `load_state_dict`.
    #[arg(long, default_value = "burn")]
    save_layout: fedtune::agent::weights::Layout,
    /// Write the final figures as JSON here.
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Write accuracy, loss and fairness charts (SVG and PNG) into this directory.
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[derive(Serialize)]
struct Summary {
    dataset: String,
    model: String,
    partition: String,
    agents: usize,
    rounds: usize,
    seed: u64,
    hyperparameters: ClientHyperparameters,
    strategy: String,
    secure_aggregation: bool,
    final_test_accuracy: f64,
    rounds_to_90: Option<usize>,
    final_test_loss: f64,
    per_agent_accuracy: Vec<f64>,
    mean_agent_accuracy: f64,
    worst_agent_accuracy: f64,
    agent_accuracy_variance: f64,
    median_round_seconds: f64,
    total_seconds: f64,
    test_accuracy_by_round: Vec<f64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::init_logging();
    let args = Args::parse();
    let started = Instant::now();

    let (source, default_partition, side) = match args.dataset {
        DatasetName::Digits => (
            fedtune::sim::digits_source(),
            PartitionSpec::File(fedtune::sim::data_dir().join("digits_partition.json")),
            8,
        ),
        DatasetName::FashionMnist => (
            DataSource::FashionMnist {
                dir: fedtune::agent::data::FASHION_MNIST_DIR.into(),
            },
            PartitionSpec::Dirichlet(0.5),
            28,
        ),
        DatasetName::Wordnet => (
            DataSource::Wordnet {
                dir: fedtune::agent::text::WORDNET_DIR.into(),
            },
            PartitionSpec::Dirichlet(0.5),
            0,
        ),
    };
    let text = matches!(args.dataset, DatasetName::Wordnet);
    if text != matches!(args.model, common::ModelKind::Transformer) {
        bail!(
            "the transformer reads token ids and the other models images: use --dataset wordnet with --model transformer"
        );
    }
    let partition = args.partition.clone().unwrap_or(default_partition);
    let data = FederatedData::load(&source, &partition, args.agents, args.seed)?;
    if data.clients() < args.agents {
        bail!(
            "the split {partition} has {} clients; --agents {} is more",
            data.clients(),
            args.agents
        );
    }
    let classes = data.dataset.classes();
    let model = common::model_for(args.model, side, &args.hidden, classes);
    model.validate()?;
    let client = ClientHyperparameters {
        learning_rate: args.lr,
        local_epochs: args.local_epochs,
        batch_size: args.batch_size,
        optimizer: args.optimizer,
        ..ClientHyperparameters::default()
    };
    client.validate().map_err(anyhow::Error::msg)?;

    let pki = ephemeral_pki(args.agents)?;
    let endpoint = bind_aggregator(&pki, LOOPBACK)?;
    let addr = endpoint.local_addr()?;
    let mut config = AggregatorConfig {
        listen: addr,
        federation: FederationConfig {
            study: format!("{:?}", args.dataset).to_lowercase(),
            rounds: args.rounds,
            min_agents: args.agents,
            wait_for_agents_secs: 20.0,
            cohort: args.cohort,
            seed: args.seed,
            loopback: LOOPBACK,
            ..FederationConfig::default()
        },
        model: ModelConfig {
            init: args.init.clone().map(WeightsSource::new),
            ..model.clone().into()
        },
        client: client.clone(),
        strategy: args.strategy.clone(),
        secure_aggregation: SecureAggregationConfig {
            enabled: args.secure,
            ..SecureAggregationConfig::default()
        },
        ..AggregatorConfig::default()
    };
    service::load_initial_model(&mut config)?;
    config.validate()?;

    let trainers = data.burn_trainers(args.agents, &default_device())?;
    let test = data.global_test()?;
    println!(
        "fedtune simulation: {} agents, {} rounds, {:?} ({} rows, {} test), partition {partition}",
        args.agents,
        args.rounds,
        args.dataset,
        data.dataset.len(),
        test.len()
    );
    println!(
        "model {} ({} parameters), {} local epoch(s) of {} lr {} batch {}, {}{}; QUIC + mutual TLS on {addr}\n",
        model.describe(),
        model.manifest().numel(),
        client.local_epochs,
        client.optimizer,
        client.learning_rate,
        client.batch_size,
        args.strategy,
        if args.secure { " under secure aggregation" } else { "" }
    );
    println!(
        "{:>5}  {:>7}  {:>10}  {:>10}  {:>9}  {:>7}",
        "round", "updates", "train loss", "agents acc", "test acc", "seconds"
    );

    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let mut agents = spawn_agents(&pki, addr, trainers, LOOPBACK, stopped.clone()).map_err(anyhow::Error::msg)?;
    // Round lines above a bar when stdout is a terminal, plain lines otherwise.
    let progress = Progress::stdout(args.rounds, "round");
    let (on_round, on_waiting) = (progress.clone(), progress.clone());
    let hooks = Hooks {
        evaluator: Some(Arc::new(TestSetEvaluator::new(test, default_device()))),
        on_round: Some(Box::new(move |r: &RoundRecord| {
            let accuracy = r.test.map_or(f64::NAN, |t| t.accuracy);
            on_round.line(&format!(
                "{:>5}  {:>7}  {:>10.4}  {:>10.4}  {:>9.4}  {:>7.3}",
                r.round,
                format!("{}/{}", r.updates, r.cohort.len()),
                r.train_loss,
                r.federated_accuracy,
                accuracy,
                r.seconds
            ));
            on_round.advance(r.round + 1, &format!("test accuracy {accuracy:.4}"));
        })),
        on_waiting: Some(Box::new(move |connected, needed| on_waiting.waiting(connected, needed))),
        metrics: None,
    };
    let report = match &args.db {
        Some(db) => {
            let store = SqliteStore::open(db)?;
            let stored = run_stored(endpoint, config, Box::new(store), 3, hooks, stopped)
                .await
                .context("federation failed")?;
            println!(
                "run {} {} in {}{}",
                stored.run,
                stored.status.as_str(),
                db.display(),
                stored
                    .resumed_from
                    .map(|r| format!(" (resumed at round {r})"))
                    .unwrap_or_default()
            );
            stored.report
        }
        None => run(endpoint, config, hooks, stopped)
            .await
            .context("federation failed")?,
    };
    progress.finish();
    while let Some(exit) = agents.join_next().await {
        exit??;
    }

    let per_agent: Vec<f64> = report.final_agent_evaluation.values().map(|e| e.accuracy).collect();
    let round_seconds: Vec<f64> = report.rounds.iter().map(|r| r.seconds).collect();
    let final_test = report.final_test.context("no test evaluation")?;
    let summary = Summary {
        dataset: format!("{:?}", args.dataset).to_lowercase(),
        model: model.describe(),
        partition: partition.to_string(),
        agents: args.agents,
        rounds: report.rounds.len(),
        seed: args.seed,
        hyperparameters: client,
        strategy: args.strategy.name().into(),
        secure_aggregation: args.secure,
        final_test_accuracy: final_test.accuracy,
        rounds_to_90: report
            .rounds
            .iter()
            .position(|r| r.test.is_some_and(|t| t.accuracy >= 0.9))
            .map(|i| i + 1),
        final_test_loss: final_test.loss,
        mean_agent_accuracy: common::mean(&per_agent),
        worst_agent_accuracy: per_agent.iter().copied().fold(f64::INFINITY, f64::min),
        agent_accuracy_variance: common::variance(&per_agent),
        per_agent_accuracy: per_agent,
        median_round_seconds: common::median(&round_seconds),
        total_seconds: started.elapsed().as_secs_f64(),
        test_accuracy_by_round: report
            .rounds
            .iter()
            .map(|r| r.test.map_or(f64::NAN, |t| t.accuracy))
            .collect(),
    };
    println!("\nsummary");
    println!(
        "  global test accuracy      {:.4} (loss {:.4})",
        summary.final_test_accuracy, summary.final_test_loss
    );
    println!(
        "  per-agent accuracy        mean {:.4}  worst {:.4}  variance {:.5}",
        summary.mean_agent_accuracy, summary.worst_agent_accuracy, summary.agent_accuracy_variance
    );
    for (agent, e) in &report.final_agent_evaluation {
        println!("    {agent:<10} {:.4} on {} validation samples", e.accuracy, e.samples);
    }
    match summary.rounds_to_90 {
        Some(r) => println!("  rounds to 0.90 test acc.  {r}"),
        None => println!("  rounds to 0.90 test acc.  not reached"),
    }
    println!("  median round time         {:.3} s", summary.median_round_seconds);
    println!("  total                     {:.1} s", summary.total_seconds);
    if let Some(path) = &args.save_model {
        service::save_model(&model, &report.global, path, args.save_layout)?;
        println!("  final model               {}", path.display());
    }
    common::plot_run(args.plot.as_deref(), "", &report.rounds)?;
    common::plots_written(args.plot.as_deref());
    common::write_summary(args.summary.as_deref(), &summary)
}
