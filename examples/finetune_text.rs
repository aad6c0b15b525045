//! Fine-tuning a pretrained Hugging Face encoder across agents that hold raw text: a
//! BERT-family folder (all-MiniLM-L6-v2 from `scripts/fetch_minilm.sh`, or any other) is
//! read with `[model] pretrained` semantics — its `config.json`, weights and
//! `tokenizer.json` — and federated over the WordNet definitions task (10 categories),
//! whose training texts are split among the agents by Dirichlet(0.5) and tokenized by
//! the model's own tokenizer. Modes, side by side:
//!
//! - `head`: the encoder frozen, only the classification head trains and travels;
//! - `lora`: low-rank adapters (`--lora-rank`, alpha = 2 · rank) on the attention's query
//!   and value projections, plus the head; only those travel;
//! - `full`: every tensor trains and travels.
//!
//! Each round an agent takes at most `--local-steps` minibatch steps. The curve is
//! measured each round on a fixed stratified sample of the test texts
//! (`--eval-sample`), the final model on all of them.
//!
//! ```text
//! bash scripts/fetch_minilm.sh target/minilm
//! cargo run --release --example finetune_text -- --pretrained target/minilm --summary finetune_text.json
//! cargo run --release --example finetune_text -- --pretrained target/minilm --rounds 2 --modes lora   # a quick look
//! ```

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use fedtune::agent::model::default_device;
use fedtune::agent::train::evaluate;
use fedtune::agent::weights::WeightsSource;
use fedtune::aggregator::config::{FederationConfig, LoraConfig, ModelConfig};
use fedtune::aggregator::progress::Progress;
use fedtune::aggregator::{AggregatorConfig, Hooks, RoundRecord, run, service};
use fedtune::evaluate::TestSetEvaluator;
use fedtune::protocol::{ClientHyperparameters, ModelSpec, Optimizer, Pooling};
use fedtune::sim::{bind_aggregator, ephemeral_pki, spawn_agents};
use serde::Serialize;

const LOOPBACK: bool = true;

#[derive(Parser, Debug)]
#[command(about = "Fine-tune a pretrained Hugging Face encoder across agents holding raw text")]
struct Args {
    /// A Hugging Face BERT-family folder (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    pretrained: PathBuf,
    /// Agents.
    #[arg(long, default_value_t = 10)]
    agents: usize,
    /// Federated rounds per mode.
    #[arg(long, default_value_t = 3)]
    rounds: u64,
    /// At most this many minibatch steps per agent and round.
    #[arg(long, default_value_t = 12)]
    local_steps: u32,
    /// Minibatch size.
    #[arg(long, default_value_t = 32)]
    batch_size: u32,
    /// Token ids per text.
    #[arg(long, default_value_t = 32)]
    max_len: usize,
    /// Modes to run, comma-separated: head, lora, full.
    #[arg(long, value_delimiter = ',', default_value = "head,lora,full")]
    modes: Vec<String>,
    /// Rank of the `lora` mode's adapters.
    #[arg(long, default_value_t = 8)]
    lora_rank: usize,
    /// Learning rate (AdamW-style Adam with weight decay) of `head`, `lora` and `full`.
    #[arg(long, value_delimiter = ',', default_value = "3e-3,1e-3,1e-4")]
    learning_rates: Vec<f64>,
    /// Share of each agent's texts kept for its validation (fairness, rewards).
    #[arg(long, default_value_t = 0.1)]
    validation_fraction: f64,
    /// Test texts evaluated after every round (the final model sees all of them).
    #[arg(long, default_value_t = 1000)]
    eval_sample: usize,
    /// Seed of the split, the fresh head and the federations.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Directory for the final models.
    #[arg(long, default_value = "target/finetune_text")]
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
    learning_rate: f64,
    trainable_parameters: usize,
    final_test_accuracy: f64,
    worst_agent_accuracy: f64,
    bytes_per_round_per_agent: f64,
    first_round_bytes_per_agent: f64,
    device_seconds: f64,
    rounds: usize,
    test_accuracy_by_round: Vec<f64>,
    model: PathBuf,
    hugging_face_folder: Option<PathBuf>,
    seconds: f64,
}

#[derive(Serialize)]
struct Summary {
    dataset: &'static str,
    model: String,
    pretrained: PathBuf,
    parameters: usize,
    agents: usize,
    federated_samples: usize,
    test_samples: usize,
    local_steps: u32,
    batch_size: u32,
    max_len: usize,
    runs: Vec<ModeRun>,
    total_seconds: f64,
}

/// What a mode freezes or adapts.
fn mode(name: &str, lora_rank: usize) -> anyhow::Result<(Vec<String>, Option<LoraConfig>)> {
    Ok(match name {
        "head" => (vec!["bert".into()], None),
        "lora" => (vec![], Some(common::text::query_value_lora(lora_rank))),
        "full" => (vec![], None),
        other => anyhow::bail!("unknown mode `{other}`: use head, lora or full"),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::init_logging();
    let args = Args::parse();
    let started = Instant::now();
    anyhow::ensure!(
        args.learning_rates.len() == 3,
        "--learning-rates takes three values: head, lora, full"
    );
    for name in &args.modes {
        mode(name, args.lora_rank)?;
    }
    std::fs::create_dir_all(&args.out)?;
    let device = default_device();

    // The task: WordNet definitions as text, their categories as classes.
    let t = Instant::now();
    let (
        common::text::TextTask {
            described,
            classes,
            test,
            test_sample,
        },
        data,
    ) = common::text::wordnet_text(
        &args.pretrained,
        args.max_len,
        args.agents,
        args.validation_fraction,
        args.eval_sample,
        args.seed,
    )?;
    let spec = ModelSpec::Bert(described.spec.clone());
    let pooling = match described.spec.pooling {
        Pooling::Cls => "BERT's pooler",
        Pooling::Mean => "mean pooling",
    };
    println!(
        "fedtune finetune_text: {} ({} parameters, {pooling}, tokenizer {}…), WordNet: {} texts across {} agents \
         (Dirichlet 0.5), {} test; tokenized in {:.1} s",
        spec.describe(),
        spec.manifest().numel(),
        &described.tokenizer.hash()[..12],
        data.dataset.len(),
        args.agents,
        test.len(),
        t.elapsed().as_secs_f64()
    );

    let mut runs = Vec::new();
    for name in &args.modes {
        let (freeze, lora) = mode(name, args.lora_rank)?;
        let learning_rate = match name.as_str() {
            "head" => args.learning_rates[0],
            "lora" => args.learning_rates[1],
            _ => args.learning_rates[2],
        };
        let t = Instant::now();
        let pki = ephemeral_pki(args.agents)?;
        let endpoint = bind_aggregator(&pki, LOOPBACK)?;
        let addr = endpoint.local_addr()?;
        let mut config = AggregatorConfig {
            listen: addr,
            federation: FederationConfig {
                study: format!("finetune-text-{name}"),
                rounds: args.rounds,
                min_agents: args.agents,
                wait_for_agents_secs: 60.0,
                // Ten agents fine-tuning a transformer on two cores take minutes a round.
                round_timeout_secs: 1800.0,
                seed: args.seed,
                loopback: LOOPBACK,
                ..FederationConfig::default()
            },
            model: ModelConfig {
                init: Some(WeightsSource::new(&args.pretrained)),
                freeze: freeze.clone(),
                classes: classes.clone(),
                ..spec.clone().into()
            },
            client: ClientHyperparameters {
                learning_rate,
                local_epochs: 1,
                local_steps: args.local_steps,
                batch_size: args.batch_size,
                optimizer: Optimizer::Adam,
                weight_decay: 0.01,
                ..ClientHyperparameters::default()
            },
            ..AggregatorConfig::default()
        };
        config.model.set_lora(lora.clone());
        service::load_initial_model(&mut config)?;
        config.validate()?;
        let model_spec = config.model.spec.clone();
        let model_config = config.model.clone();
        let trainable_parameters = config.model.trainable()?.numel();
        println!(
            "mode {name}: {trainable_parameters} parameters train (learning rate {learning_rate}, freeze {freeze:?})"
        );
        let progress = Progress::stdout(args.rounds, "round");
        let on_round = progress.clone();
        let hooks = Hooks {
            evaluator: Some(Arc::new(TestSetEvaluator::new(test_sample.clone(), device.clone()))),
            on_round: Some(Box::new(move |r: &RoundRecord| {
                let accuracy = r.test.map_or(f64::NAN, |t| t.accuracy);
                on_round.line(&format!(
                    "  round {:>3}  updates {:>2}  sampled test accuracy {accuracy:.4}  {:.0} kB moved  {:.1} s",
                    r.round,
                    r.updates,
                    r.payload_bytes as f64 / 1e3,
                    r.seconds
                ));
                on_round.advance(r.round + 1, &format!("sampled test accuracy {accuracy:.4}"));
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

        let final_test = evaluate(&model_spec, &report.global, &test, &device)?;
        let model_path = args.out.join(format!("final-{name}.safetensors"));
        service::save_model(
            &model_spec,
            &report.global,
            &model_path,
            fedtune::agent::weights::Layout::Burn,
        )?;
        let folder = service::save_pretrained(&model_config, &report.global, &model_path)?;
        let rounds = report.rounds.len();
        // The first round also carries the frozen weights to every agent, once.
        let per_agent = |r: &RoundRecord| r.payload_bytes as f64 / r.updates.max(1) as f64;
        let first = report.rounds.first().map_or(0.0, per_agent);
        let later: Vec<f64> = report.rounds.iter().skip(1).map(per_agent).collect();
        let steady = if later.is_empty() {
            first
        } else {
            later.iter().sum::<f64>() / later.len() as f64
        };
        let run = ModeRun {
            mode: name.clone(),
            freeze,
            lora_rank: lora.map(|l| l.rank),
            learning_rate,
            trainable_parameters,
            final_test_accuracy: final_test.accuracy,
            worst_agent_accuracy: report
                .final_agent_evaluation
                .values()
                .map(|e| e.accuracy)
                .fold(f64::INFINITY, f64::min),
            bytes_per_round_per_agent: steady,
            first_round_bytes_per_agent: first,
            device_seconds: report.rounds.iter().map(|r| r.device_seconds).sum(),
            rounds,
            test_accuracy_by_round: report
                .rounds
                .iter()
                .map(|r| r.test.map_or(f64::NAN, |t| t.accuracy))
                .collect(),
            model: model_path,
            hugging_face_folder: folder,
            seconds: t.elapsed().as_secs_f64(),
        };
        println!(
            "  final test accuracy {:.4} (all {} test texts), worst agent {:.4}, {:.0} kB per round per agent \
             ({:.0} kB in the first, which ships the frozen weights), {:.0} device s, {:.0} s\n",
            run.final_test_accuracy,
            test.len(),
            run.worst_agent_accuracy,
            run.bytes_per_round_per_agent / 1e3,
            run.first_round_bytes_per_agent / 1e3,
            run.device_seconds,
            run.seconds,
        );
        runs.push(run);
    }

    println!("summary");
    println!(
        "  {:<6} {:>9} {:>11} {:>14} {:>10}",
        "mode", "test acc", "worst agent", "kB/round/agent", "device s"
    );
    for r in &runs {
        println!(
            "  {:<6} {:>9.4} {:>11.4} {:>14.0} {:>10.0}",
            r.mode,
            r.final_test_accuracy,
            r.worst_agent_accuracy,
            r.bytes_per_round_per_agent / 1e3,
            r.device_seconds
        );
    }
    let summary = Summary {
        dataset: "wordnet",
        model: spec.describe(),
        pretrained: args.pretrained.clone(),
        parameters: spec.manifest().numel(),
        agents: args.agents,
        federated_samples: data.dataset.len(),
        test_samples: test.len(),
        local_steps: args.local_steps,
        batch_size: args.batch_size,
        max_len: args.max_len,
        runs,
        total_seconds: started.elapsed().as_secs_f64(),
    };
    println!("  total {:.0} s", summary.total_seconds);
    common::write_summary(args.summary.as_deref(), &summary)
}
