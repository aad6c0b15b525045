//! Fine-tuning a pretrained CNN across agents: the NIID-Bench LeNet is pretrained
//! centrally on a stratified fifth of Fashion-MNIST's training set that no agent holds,
//! written as safetensors, and then federated over the other four fifths, split among
//! 10 agents by Dirichlet(0.5), in several modes side by side:
//!
//! - `scratch`: from a random initialisation, as if nothing were pretrained;
//! - `full`: from the pretrained weights, every tensor trained;
//! - `frozen`: from the pretrained weights, the convolutions frozen (features), the
//!   linear head trained and sent;
//! - `frozen-head0`: also the head's first layer frozen; only its last two layers travel;
//! - `lora`: from the pretrained weights, everything frozen and low-rank adapters
//!   (`--lora-rank`, alpha = 2 · rank) on the head's three linear layers; only the
//!   adapters travel.
//!
//! Every mode's final model is written as safetensors (a LoRA model merged, and its
//! adapters alone beside it) and checked with the aggregator's `evaluate`, which must
//! give the run's own final test accuracy.
//!
//! ```text
//! cargo run --release --example finetune -- --summary finetune.json
//! cargo run --release --example finetune -- --rounds 5 --modes full,lora   # a quick look
//! ```

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use fedtune::agent::cancel::Cancel;
use fedtune::agent::config::FederatedData;
use fedtune::agent::data::{FASHION_MNIST_DIR, load_fashion_mnist};
use fedtune::agent::model::default_device;
use fedtune::agent::partition::{Dirichlet, SplitFile, stratified_holdout};
use fedtune::agent::train::{TrainJob, evaluate, train_local};
use fedtune::agent::weights::WeightsSource;
use fedtune::aggregator::config::{FederationConfig, LoraConfig, ModelConfig};
use fedtune::aggregator::evaluate::{TestSet, evaluate_weights};
use fedtune::aggregator::progress::Progress;
use fedtune::aggregator::{AggregatorConfig, Hooks, RoundRecord, run, service};
use fedtune::evaluate::TestSetEvaluator;
use fedtune::protocol::{ClientHyperparameters, CnnSpec, ModelSpec, Optimizer};
use fedtune::sim::{bind_aggregator, ephemeral_pki, spawn_agents};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;

const LOOPBACK: bool = true;

#[derive(Parser, Debug)]
#[command(about = "Pretrain a CNN centrally, then fine-tune it across agents in several modes")]
struct Args {
    /// Agents.
    #[arg(long, default_value_t = 10)]
    agents: usize,
    /// Federated rounds per mode.
    #[arg(long, default_value_t = 50)]
    rounds: u64,
    /// Local epochs per round.
    #[arg(long, default_value_t = 2)]
    local_epochs: u32,
    /// Epochs of central pretraining.
    #[arg(long, default_value_t = 10)]
    pretrain_epochs: u32,
    /// Share of the training set held out for pretraining (no agent holds it).
    #[arg(long, default_value_t = 0.2)]
    pretrain_fraction: f64,
    /// Modes to run, comma-separated: scratch, full, frozen, frozen-head0, lora.
    #[arg(long, value_delimiter = ',', default_value = "scratch,full,frozen,frozen-head0,lora")]
    modes: Vec<String>,
    /// Rank of the `lora` mode's adapters.
    #[arg(long, default_value_t = 4)]
    lora_rank: usize,
    /// Client learning rate (Adam).
    #[arg(long, default_value_t = 1e-3)]
    learning_rate: f64,
    /// Client learning rate of the `lora` mode (adapters start at zero and usually take a
    /// larger step than full fine-tuning).
    #[arg(long, default_value_t = 1e-2)]
    lora_learning_rate: f64,
    /// Seed of the split, the pretraining and the federations.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Directory for the pretrained and the final models.
    #[arg(long, default_value = "target/finetune")]
    out: PathBuf,
    /// Write the final figures as JSON here.
    #[arg(long)]
    summary: Option<PathBuf>,
}

#[derive(Serialize)]
struct ModeRun {
    mode: String,
    freeze: Vec<String>,
    lora_rank: Option<usize>,
    trainable_parameters: usize,
    final_test_accuracy: f64,
    worst_agent_accuracy: f64,
    bytes_per_round_per_agent: f64,
    device_seconds: f64,
    rounds: usize,
    test_accuracy_by_round: Vec<f64>,
    model: PathBuf,
    evaluate_accuracy: f64,
    seconds: f64,
}

#[derive(Serialize)]
struct Summary {
    dataset: &'static str,
    model: String,
    agents: usize,
    pretrain_samples: usize,
    federated_samples: usize,
    pretrained_test_accuracy: f64,
    local_epochs: u32,
    runs: Vec<ModeRun>,
    total_seconds: f64,
}

/// How a mode fine-tunes.
struct Mode {
    from_pretrained: bool,
    freeze: Vec<String>,
    lora: Option<LoraConfig>,
}

/// What each mode freezes or adapts, and whether it starts from the pretrained weights.
fn mode(name: &str, lora_rank: usize) -> anyhow::Result<Mode> {
    let (from_pretrained, freeze, lora) = match name {
        "scratch" => (false, vec![], None),
        "full" => (true, vec![], None),
        "frozen" => (true, vec!["convs.*".into()], None),
        "frozen-head0" => (true, vec!["convs.*".into(), "head.0".into()], None),
        "lora" => (
            true,
            vec![],
            Some(LoraConfig {
                rank: lora_rank,
                alpha: Some(2.0 * lora_rank as f64),
                targets: vec!["head.*".into()],
                train: Vec::new(),
            }),
        ),
        other => anyhow::bail!("unknown mode `{other}`: use scratch, full, frozen, frozen-head0 or lora"),
    };
    Ok(Mode {
        from_pretrained,
        freeze,
        lora,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::init_logging();
    let args = Args::parse();
    let started = Instant::now();
    for name in &args.modes {
        mode(name, args.lora_rank)?;
    }
    std::fs::create_dir_all(&args.out)?;
    let device = default_device();
    let spec = ModelSpec::Cnn(CnnSpec::lenet(1, 28, 28, 10));

    // Data: a pretraining share no agent sees, the rest split among the agents, and the
    // official test set for every evaluation.
    let train = load_fashion_mnist(FASHION_MNIST_DIR, true)?;
    let test = load_fashion_mnist(FASHION_MNIST_DIR, false)?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let (federated_rows, pretrain_rows) = stratified_holdout(train.labels(), args.pretrain_fraction, &mut rng)?;
    let pretrain = train.subset(&pretrain_rows)?;
    let federated = train.subset(&federated_rows)?;
    let partitioner = Dirichlet {
        alpha: 0.5,
        min_size: 10,
    };
    let split = SplitFile::generate(federated.labels(), &partitioner, args.agents, 0.0, 0.2, &mut rng)?;
    let data = FederatedData {
        dataset: federated,
        split,
    };
    println!(
        "fedtune finetune: {} ({} parameters), Fashion-MNIST: {} rows pretrain centrally, {} rows across {} agents (Dirichlet 0.5), {} test",
        spec.describe(),
        spec.manifest().numel(),
        pretrain.len(),
        data.dataset.len(),
        args.agents,
        test.len()
    );

    // 1. Pretrain centrally and write the model as safetensors.
    let t = Instant::now();
    let init = spec.init_params(&mut rng);
    let hp = ClientHyperparameters {
        learning_rate: 1e-3,
        local_epochs: args.pretrain_epochs,
        batch_size: 64,
        optimizer: Optimizer::Adam,
        ..ClientHyperparameters::default()
    };
    let empty = pretrain.subset(&[])?;
    let job = TrainJob {
        frozen: &[],
        global: &init,
        hp: &hp,
        train: &pretrain,
        validation: &empty,
        seed: args.seed,
        device: &device,
        cancel: &Cancel::never(),
    };
    let update = train_local(&spec, &job)?;
    let pretrained: Vec<f32> = init.iter().zip(&update.delta).map(|(w, d)| w + d).collect();
    let pretrained_path = args.out.join("pretrained.safetensors");
    service::save_model(
        &spec,
        &pretrained,
        &pretrained_path,
        fedtune::agent::weights::Layout::Burn,
    )?;
    let pretrained_accuracy = evaluate(&spec, &pretrained, &test, &device)?.accuracy;
    println!(
        "pretrained {} epochs in {:.1} s: test accuracy {pretrained_accuracy:.4}, written to {}\n",
        args.pretrain_epochs,
        t.elapsed().as_secs_f64(),
        pretrained_path.display()
    );

    // 2. Federate in each mode.
    let mut runs = Vec::new();
    for name in &args.modes {
        let Mode {
            from_pretrained,
            freeze,
            lora,
        } = mode(name, args.lora_rank)?;
        let t = Instant::now();
        let pki = ephemeral_pki(args.agents)?;
        let endpoint = bind_aggregator(&pki, LOOPBACK)?;
        let addr = endpoint.local_addr()?;
        let mut config = AggregatorConfig {
            listen: addr,
            federation: FederationConfig {
                study: format!("finetune-{name}"),
                rounds: args.rounds,
                min_agents: args.agents,
                wait_for_agents_secs: 30.0,
                seed: args.seed,
                loopback: LOOPBACK,
                ..FederationConfig::default()
            },
            model: ModelConfig {
                init: from_pretrained.then(|| WeightsSource::new(&pretrained_path)),
                freeze: freeze.clone(),
                ..spec.clone().into()
            },
            client: ClientHyperparameters {
                learning_rate: if lora.is_some() {
                    args.lora_learning_rate
                } else {
                    args.learning_rate
                },
                local_epochs: args.local_epochs,
                batch_size: 64,
                optimizer: Optimizer::Adam,
                ..ClientHyperparameters::default()
            },
            ..AggregatorConfig::default()
        };
        config.model.set_lora(lora.clone());
        service::load_initial_model(&mut config)?;
        config.validate()?;
        let model_spec = config.model.spec.clone();
        let trainable_parameters = config.model.trainable()?.numel();
        println!(
            "mode {name}: {}, freeze {freeze:?}, from {}, {trainable_parameters} parameters train",
            model_spec.describe(),
            if from_pretrained { "pretrained" } else { "scratch" }
        );
        let progress = Progress::stdout(args.rounds, "round");
        let on_round = progress.clone();
        let hooks = Hooks {
            evaluator: Some(Arc::new(TestSetEvaluator::new(test.clone(), device.clone()))),
            on_round: Some(Box::new(move |r: &RoundRecord| {
                let accuracy = r.test.map_or(f64::NAN, |t| t.accuracy);
                on_round.line(&format!(
                    "  round {:>3}  updates {:>2}  test accuracy {accuracy:.4}  {:.1} s",
                    r.round, r.updates, r.seconds
                ));
                on_round.advance(r.round + 1, &format!("test accuracy {accuracy:.4}"));
            })),
            ..Hooks::default()
        };
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        let trainers = data.burn_trainers(args.agents, &device)?;
        let mut agents = spawn_agents(&pki, addr, trainers, LOOPBACK, stopped.clone()).map_err(anyhow::Error::msg)?;
        let report = run(endpoint, config, hooks, stopped)
            .await
            .context("federation failed")?;
        progress.finish();
        while let Some(exit) = agents.join_next().await {
            exit??;
        }

        let final_test = report.final_test.context("no test evaluation")?;
        let model_path = args.out.join(format!("final-{name}.safetensors"));
        service::save_model(
            &model_spec,
            &report.global,
            &model_path,
            fedtune::agent::weights::Layout::Burn,
        )?;
        let check = evaluate_weights(&spec, &WeightsSource::new(&model_path), &TestSet::FashionMnist)?;
        let rounds = report.rounds.len();
        let bytes: u64 = report.rounds.iter().map(|r| r.payload_bytes).sum();
        let run = ModeRun {
            mode: name.clone(),
            freeze,
            lora_rank: lora.map(|l| l.rank),
            trainable_parameters,
            final_test_accuracy: final_test.accuracy,
            worst_agent_accuracy: report
                .final_agent_evaluation
                .values()
                .map(|e| e.accuracy)
                .fold(f64::INFINITY, f64::min),
            bytes_per_round_per_agent: bytes as f64 / (rounds * args.agents).max(1) as f64,
            device_seconds: report.rounds.iter().map(|r| r.device_seconds).sum(),
            rounds,
            test_accuracy_by_round: report
                .rounds
                .iter()
                .map(|r| r.test.map_or(f64::NAN, |t| t.accuracy))
                .collect(),
            model: model_path,
            evaluate_accuracy: check.accuracy,
            seconds: t.elapsed().as_secs_f64(),
        };
        println!(
            "  final test accuracy {:.4}, worst agent {:.4}, {:.0} kB per round per agent, {:.0} device s, {:.0} s; \
             evaluate on {}: {:.4}\n",
            run.final_test_accuracy,
            run.worst_agent_accuracy,
            run.bytes_per_round_per_agent / 1e3,
            run.device_seconds,
            run.seconds,
            run.model.display(),
            run.evaluate_accuracy
        );
        runs.push(run);
    }

    println!("summary (pretrained alone: {pretrained_accuracy:.4})");
    println!(
        "  {:<13} {:>9} {:>11} {:>14} {:>10}",
        "mode", "test acc", "worst agent", "kB/round/agent", "device s"
    );
    for r in &runs {
        println!(
            "  {:<13} {:>9.4} {:>11.4} {:>14.0} {:>10.0}",
            r.mode,
            r.final_test_accuracy,
            r.worst_agent_accuracy,
            r.bytes_per_round_per_agent / 1e3,
            r.device_seconds
        );
    }
    let summary = Summary {
        dataset: "fashion-mnist",
        model: spec.describe(),
        agents: args.agents,
        pretrain_samples: pretrain.len(),
        federated_samples: data.dataset.len(),
        pretrained_test_accuracy: pretrained_accuracy,
        local_epochs: args.local_epochs,
        runs,
        total_seconds: started.elapsed().as_secs_f64(),
    };
    println!("  total {:.0} s", summary.total_seconds);
    common::write_summary(args.summary.as_deref(), &summary)
}
