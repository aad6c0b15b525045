//! A federated hyperparameter study over loopback QUIC: N agents and an aggregator in
//! one process. Each trial trains the model from scratch for up to `--rounds` rounds
//! with the parameters the sampler proposes; ASHA stops weak trials early.
//!
//! ```text
//! cargo run --release --example tune -- --dataset digits --trials 20 --summary tune.json
//! cargo run --release --example tune -- --sampler random --pruner none
//! ```
//!
//! With `--pretrained DIR` (a Hugging Face BERT-family folder, e.g. all-MiniLM-L6-v2 from
//! `scripts/fetch_minilm.sh`) every trial fine-tunes that encoder with LoRA (rank 8 on the
//! attention's query and value, the head training beside them, Adam) over the WordNet
//! texts, tokenized by its own tokenizer; `presets/nlp.toml` searches the adapters'
//! rank, alpha and targets with the learning rate, local steps and warm-up:
//!
//! ```text
//! cargo run --release --example tune -- --dataset wordnet --pretrained target/minilm \
//!     --space presets/nlp.toml --objectives accuracy,bytes --agents 4 --trials 12 --rounds 2
//! ```
//!
//! The aggregator's own settings are Flower's quickstart ones (SGD, lr 0.05, one local
//! epoch); with `--baseline` (the default) they run as trial 0, so the table shows what
//! tuning adds.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use fedtune::agent::config::{DataSource, FederatedData};
use fedtune::agent::model::default_device;
use fedtune::agent::partition::PartitionSpec;
use fedtune::agent::weights::WeightsSource;
use fedtune::aggregator::config::FederationConfig;
use fedtune::aggregator::config::ModelConfig;
use fedtune::aggregator::progress::Progress;
use fedtune::aggregator::service;
use fedtune::aggregator::tune::{TrialMetric, TrialRecord, TuneConfig, TuneEvent, TuneHooks, tune};
use fedtune::aggregator::{AggregatorConfig, tune_stored};
use fedtune::evaluate::TestSetEvaluator;
use fedtune::protocol::{ClientHyperparameters, Optimizer};
use fedtune::sim::{bind_aggregator, ephemeral_pki, spawn_agents};
use fedtune::store::SqliteStore;
use fedtune::tuning::pareto::non_dominated_ranks;
use fedtune::tuning::spec::load_space_toml;
use fedtune::tuning::{
    Direction, MedianPruner, Params, PrunerConfig, SamplerKind, SuccessiveHalvingPruner, TrialState,
};
use serde::Serialize;

const LOOPBACK: bool = true;

#[derive(Parser, Debug)]
#[command(about = "A federated hyperparameter study over loopback QUIC")]
struct Args {
    /// Dataset: the bundled digits with its shared split, or Fashion-MNIST split
    /// Dirichlet(0.5) (Debian's `dataset-fashion-mnist`), or the WordNet text task split
    /// Dirichlet(0.5) (Debian's `wordnet-base`; `--model transformer`).
    #[arg(long, default_value = "digits", value_parser = ["digits", "fashion-mnist", "wordnet"])]
    dataset: String,
    /// The model every trial trains.
    #[arg(long, value_enum, default_value_t = common::ModelKind::Mlp)]
    model: common::ModelKind,
    /// Fine-tune this Hugging Face BERT-family folder with LoRA instead (`--dataset
    /// wordnet`, as raw text; `--model` does not apply).
    #[arg(long)]
    pretrained: Option<PathBuf>,
    /// With `--pretrained`: token ids per text.
    #[arg(long, default_value_t = 32)]
    max_len: usize,
    /// With `--pretrained`: at most this many minibatch steps per agent and round in the
    /// untuned settings (a space's `local_steps` replaces it).
    #[arg(long, default_value_t = 8)]
    local_steps: u32,
    /// With `--pretrained`: test texts every trial is evaluated on (a fixed stratified
    /// sample; 0 for all).
    #[arg(long, default_value_t = 1000)]
    eval_sample: usize,
    /// With `--pretrained`: share of each agent's texts kept for its validation (every
    /// task evaluates on it before and after training).
    #[arg(long, default_value_t = 0.05)]
    validation_fraction: f64,
    /// Start every trial's global model from this weights file (a pretrained model).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Number of agents.
    #[arg(long, default_value_t = 10)]
    agents: usize,
    /// Trials to run.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Rounds per trial (the pruner's budget).
    #[arg(long, default_value_t = 30)]
    rounds: u64,
    /// Strategy between trials: grid, random, tpe, gp or bayes+rl (GP plus a FedEx
    /// policy over the adaptive parameters within each trial).
    #[arg(long, default_value = "bayes+rl")]
    sampler: SamplerKind,
    /// Early stopping: none, median or asha.
    #[arg(long, default_value = "asha")]
    pruner: PrunerConfig,
    /// Rounds before the pruner's first decision: ASHA's first rung, the median
    /// pruner's warm-up. One round says little about where a federation ends up.
    #[arg(long, default_value_t = 3)]
    min_rounds: u64,
    /// Trials at once, each on its own group of agents.
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// Seed of the sampler, the policies and the models.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Random trials before TPE or GP take over (default: a quarter of the trials,
    /// between 3 and 10).
    #[arg(long)]
    startup_trials: Option<usize>,
    /// Search space (TOML with `[params]`); see presets/.
    #[arg(long, default_value = "presets/vision.toml")]
    space: PathBuf,
    /// Objectives, comma-separated, the first primary: accuracy, loss,
    /// accuracy_variance, worst_10pct_accuracy, device_seconds, bytes.
    #[arg(long, value_delimiter = ',', default_value = "accuracy")]
    objectives: Vec<TrialMetric>,
    /// Weights for a weighted sum of the objectives (one per objective).
    #[arg(long, value_delimiter = ',')]
    weights: Option<Vec<f64>>,
    /// Run the untuned settings (SGD, lr 0.05, one local epoch) as trial 0.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    baseline: bool,
    /// Test accuracy the report counts trials to.
    #[arg(long, default_value_t = 0.95)]
    target: f64,
    /// Hidden layer widths, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    hidden: Vec<usize>,
    /// Print every round of every trial.
    #[arg(long)]
    verbose: bool,
    /// Keep the study, its trials, rounds and checkpoints in this SQLite store; run again
    /// with the same flags to resume an interrupted study (see `fedtune-aggregator trials`).
    #[arg(long)]
    db: Option<PathBuf>,
    /// Write the final figures as JSON here.
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Write the optimisation history, intermediate values and Pareto front (SVG and
    /// PNG) into this directory.
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[derive(Serialize)]
struct TrialSummary {
    number: u64,
    params: Params,
    policy_best: Option<Params>,
    state: TrialState,
    values: Option<Vec<f64>>,
    metrics: BTreeMap<TrialMetric, f64>,
    rounds: u64,
    test_accuracy: Option<f64>,
}

#[derive(Serialize)]
struct FrontPoint {
    trial: u64,
    accuracy: f64,
    device_seconds: f64,
    bytes: f64,
    params: Params,
}

#[derive(Serialize)]
struct Summary {
    dataset: String,
    agents: usize,
    sampler: String,
    pruner: String,
    seed: u64,
    objectives: Vec<TrialMetric>,
    best_trial: Option<u64>,
    best_test_accuracy: Option<f64>,
    best_params: Option<Params>,
    target: f64,
    trials_to_target: Option<usize>,
    rounds_spent: u64,
    rounds_budget: u64,
    trials: Vec<TrialSummary>,
    pareto_front: Vec<FrontPoint>,
    total_seconds: f64,
}

fn show(params: &Params) -> String {
    params
        .iter()
        .map(|(k, v)| match v.as_f64() {
            Some(x) if x.fract() != 0.0 => format!("{k}={x:.3e}"),
            _ => format!("{k}={v}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn row(t: &TrialRecord) -> String {
    let value = t
        .values
        .as_ref()
        .map(|v| v.iter().map(|x| format!("{x:.4}")).collect::<Vec<_>>().join(","))
        .or_else(|| t.curve.last().map(|x| format!("({x:.4})")))
        .unwrap_or_else(|| "-".into());
    format!(
        "{:>5}  {:<8}  {:>14}  {:>6}  {:>6.1}  {}",
        t.number,
        format!("{:?}", t.state).to_lowercase(),
        value,
        t.rounds,
        t.seconds,
        show(&t.params)
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::init_logging();
    let args = Args::parse();
    let started = Instant::now();
    let space = load_space_toml(&args.space).with_context(|| format!("search space {}", args.space.display()))?;

    let text = match &args.pretrained {
        Some(dir) => {
            anyhow::ensure!(
                args.dataset == "wordnet",
                "--pretrained fine-tunes an encoder on text: use --dataset wordnet"
            );
            let eval_sample = if args.eval_sample == 0 {
                usize::MAX
            } else {
                args.eval_sample
            };
            Some(common::text::wordnet_text(
                dir,
                args.max_len,
                args.agents,
                args.validation_fraction,
                eval_sample,
                args.seed,
            )?)
        }
        None => None,
    };
    let (text, text_data) = text.unzip();
    let (data, side) = match (text_data, args.dataset.as_str()) {
        (Some(data), _) => (data, 0),
        (None, "fashion-mnist") => (
            FederatedData::load(
                &DataSource::FashionMnist {
                    dir: fedtune::agent::data::FASHION_MNIST_DIR.into(),
                },
                &PartitionSpec::Dirichlet(0.5),
                args.agents,
                args.seed,
            )?,
            28,
        ),
        (None, "wordnet") => (
            FederatedData::load(
                &DataSource::Wordnet {
                    dir: fedtune::agent::text::WORDNET_DIR.into(),
                },
                &PartitionSpec::Dirichlet(0.5),
                args.agents,
                args.seed,
            )?,
            0,
        ),
        (None, "digits") => (fedtune::sim::digits_split()?, 8),
        (None, other) => bail!("unknown dataset `{other}`: use digits, fashion-mnist or wordnet"),
    };
    if text.is_none() && (args.dataset == "wordnet") != matches!(args.model, common::ModelKind::Transformer) {
        bail!(
            "the transformer reads token ids and the other models images: use --dataset wordnet with --model transformer"
        );
    }
    if data.clients() < args.agents {
        bail!(
            "the {} split has {} clients; --agents {} is more",
            args.dataset,
            data.clients(),
            args.agents
        );
    }
    let classes = data.dataset.classes();
    let model = match &text {
        Some(t) => fedtune::protocol::ModelSpec::Bert(t.described.spec.clone()),
        None => common::model_for(args.model, side, &args.hidden, classes),
    };
    let pki = ephemeral_pki(args.agents)?;
    let endpoint = bind_aggregator(&pki, LOOPBACK)?;
    let addr = endpoint.local_addr()?;
    let mut config = AggregatorConfig {
        listen: addr,
        federation: FederationConfig {
            study: format!("tune-{}", args.dataset),
            rounds: args.rounds,
            min_agents: args.agents,
            wait_for_agents_secs: 20.0,
            seed: args.seed,
            loopback: LOOPBACK,
            ..FederationConfig::default()
        },
        model: ModelConfig {
            init: args.init.clone().map(WeightsSource::new),
            ..model.clone().into()
        },
        // Flower's quickstart settings: what an untuned federation would run.
        client: ClientHyperparameters {
            learning_rate: 0.05,
            local_epochs: 1,
            batch_size: 32,
            optimizer: Optimizer::Sgd,
            ..ClientHyperparameters::default()
        },
        ..AggregatorConfig::default()
    };
    if let (Some(dir), Some(text)) = (&args.pretrained, &text) {
        // What finetune_text's `lora` mode runs: adapters on query and value, the head
        // beside them, Adam; a round is bounded in steps, not epochs.
        config.model.init = Some(WeightsSource::new(dir));
        config.model.classes = text.classes.clone();
        config.model.set_lora(Some(common::text::query_value_lora(8)));
        config.client = ClientHyperparameters {
            learning_rate: 1e-3,
            local_epochs: 1,
            local_steps: args.local_steps,
            batch_size: 32,
            optimizer: Optimizer::Adam,
            weight_decay: 0.01,
            ..ClientHyperparameters::default()
        };
        config.federation.round_timeout_secs = 1800.0;
        config.federation.wait_for_agents_secs = 60.0;
    }
    service::load_initial_model(&mut config)?;
    let pruner = match args.pruner.clone() {
        PrunerConfig::Asha(asha) => PrunerConfig::Asha(SuccessiveHalvingPruner {
            min_resource: args.min_rounds,
            ..asha
        }),
        PrunerConfig::Median(median) => PrunerConfig::Median(MedianPruner {
            n_warmup_steps: args.min_rounds,
            ..median
        }),
        PrunerConfig::None => PrunerConfig::None,
    };
    let study = TuneConfig {
        objectives: args.objectives.clone(),
        weights: args.weights.clone(),
        sampler: args.sampler,
        pruner,
        parallel: args.parallel,
        seed: args.seed,
        startup_trials: args.startup_trials,
        baseline_first: args.baseline,
        ..TuneConfig::new(space.clone(), args.trials, args.rounds)
    };

    let trainers = data.burn_trainers(args.agents, &default_device())?;
    let test = match text {
        Some(t) => t.test_sample,
        None => data.global_test()?,
    };
    println!(
        "fedtune study: {} trials of up to {} rounds on {} agents ({}), {}, sampler {}, pruner {}, seed {}",
        args.trials,
        args.rounds,
        args.agents,
        args.dataset,
        model.describe(),
        args.sampler,
        args.pruner.name(),
        args.seed
    );
    println!("space ({}):", args.space.display());
    for p in &space.params {
        let adaptive = if p.adaptive { "  adaptive" } else { "" };
        println!("  {:<22} {}  {:?}{adaptive}", p.name, p.distribution, p.scope);
    }
    println!(
        "objectives: {}\n",
        args.objectives.iter().map(|m| m.name()).collect::<Vec<_>>().join(", ")
    );
    println!(
        "{:>5}  {:<8}  {:>14}  {:>6}  {:>6}  params",
        "trial", "state", "value", "rounds", "secs"
    );

    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let mut agents = spawn_agents(&pki, addr, trainers, LOOPBACK, stopped.clone()).map_err(anyhow::Error::msg)?;
    let verbose = args.verbose;
    // Trial lines above a bar of finished trials when stdout is a terminal.
    let progress = Progress::stdout(study.trials as u64, "trial");
    let on_event = progress.clone();
    let mut finished = 0;
    let hooks = TuneHooks {
        evaluator: Some(Arc::new(TestSetEvaluator::new(test, default_device()))),
        on_event: Some(Box::new(move |event: &TuneEvent| match event {
            TuneEvent::TrialFinished(t) => {
                finished += 1;
                on_event.line(&row(t));
                on_event.advance(finished, "");
            }
            TuneEvent::Round {
                number,
                round,
                values,
                pruned,
            } => {
                if verbose {
                    let stop = if *pruned { "  pruned" } else { "" };
                    on_event.line(&format!("         trial {number} round {round}: {values:.4?}{stop}"));
                }
                on_event.advance(finished, &format!("trial {number} at round {round}"));
            }
            TuneEvent::TrialStarted { number, .. } => on_event.advance(finished, &format!("trial {number} started")),
        })),
        metrics: None,
    };
    let report = match &args.db {
        Some(db) => {
            let store = SqliteStore::open(db)?;
            let stored = tune_stored(endpoint, config, study, Box::new(store), 3, hooks, stopped)
                .await
                .context("the study failed")?;
            println!(
                "study {} {} in {} ({} trials held before this session)",
                stored.study,
                stored.status.as_str(),
                db.display(),
                stored.resumed_trials
            );
            stored.report
        }
        None => tune(endpoint, config, study, hooks, stopped)
            .await
            .context("the study failed")?,
    };
    progress.finish();
    while let Some(exit) = agents.join_next().await {
        exit??;
    }

    let accuracy = |t: &TrialRecord| t.final_test.map(|e| e.accuracy);
    let trials_to_target = report
        .trials
        .iter()
        .position(|t| t.state == TrialState::Complete && accuracy(t).is_some_and(|a| a >= args.target))
        .map(|i| i + 1);
    let complete: Vec<&TrialRecord> = report
        .trials
        .iter()
        .filter(|t| t.state == TrialState::Complete && !t.metrics.is_empty())
        .collect();
    let points: Vec<Vec<f64>> = complete
        .iter()
        .map(|t| {
            vec![
                Direction::Maximize.loss(t.metrics[&TrialMetric::Accuracy]),
                t.metrics[&TrialMetric::DeviceSeconds],
                t.metrics[&TrialMetric::Bytes],
            ]
        })
        .collect();
    let ranks = non_dominated_ranks(&points);
    let mut front: Vec<FrontPoint> = complete
        .iter()
        .zip(&ranks)
        .filter(|(_, r)| **r == 0)
        .map(|(t, _)| FrontPoint {
            trial: t.number,
            accuracy: t.metrics[&TrialMetric::Accuracy],
            device_seconds: t.metrics[&TrialMetric::DeviceSeconds],
            bytes: t.metrics[&TrialMetric::Bytes],
            params: t.params.clone(),
        })
        .collect();
    front.sort_by(|a, b| b.accuracy.total_cmp(&a.accuracy));

    let best = report.best_trial();
    println!("\nbest trial");
    match best {
        Some(t) => {
            println!(
                "  trial {}: test accuracy {:.4}",
                t.number,
                accuracy(t).unwrap_or(f64::NAN)
            );
            println!("  params       {}", show(&t.params));
            if let Some(policy) = &t.policy_best {
                println!("  policy best  {}", show(policy));
            }
        }
        None => println!("  no trial completed"),
    }
    match trials_to_target {
        Some(n) => println!("  trials to {:.2} test accuracy: {n}", args.target),
        None => println!("  test accuracy {:.2} not reached", args.target),
    }
    println!(
        "  rounds spent {} of {} ({} trials × {} rounds)",
        report.rounds_spent,
        args.trials as u64 * args.rounds,
        args.trials,
        args.rounds
    );
    println!("\nPareto front (test accuracy ↑, device seconds ↓, model bytes ↓)");
    for p in &front {
        println!(
            "  trial {:>3}  accuracy {:.4}  device {:>7.2} s  bytes {:>8.1} MB  {}",
            p.trial,
            p.accuracy,
            p.device_seconds,
            p.bytes / 1e6,
            show(&p.params)
        );
    }
    println!("\ntotal {:.1} s", started.elapsed().as_secs_f64());

    let summary = Summary {
        dataset: args.dataset.clone(),
        agents: args.agents,
        sampler: args.sampler.to_string(),
        pruner: args.pruner.name().into(),
        seed: args.seed,
        objectives: args.objectives.clone(),
        best_trial: best.map(|t| t.number),
        best_test_accuracy: best.and_then(accuracy),
        best_params: best.map(|t| t.params.clone()),
        target: args.target,
        trials_to_target,
        rounds_spent: report.rounds_spent,
        rounds_budget: args.trials as u64 * args.rounds,
        trials: report
            .trials
            .iter()
            .map(|t| TrialSummary {
                number: t.number,
                params: t.params.clone(),
                policy_best: t.policy_best.clone(),
                state: t.state,
                values: t.values.clone(),
                metrics: t.metrics.clone(),
                rounds: t.rounds,
                test_accuracy: accuracy(t),
            })
            .collect(),
        pareto_front: front,
        total_seconds: started.elapsed().as_secs_f64(),
    };
    if let Some(dir) = &args.plot {
        fedtune::aggregator::plot::tune_report(&report, dir)?;
        println!("plots written to {}", dir.display());
    }
    common::write_summary(args.summary.as_deref(), &summary)
}
