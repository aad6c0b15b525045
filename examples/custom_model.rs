//! Bring your own model: a residual MLP with layer normalisation, which fedtune's zoo
//! does not have, written as a plain Burn module, federated over loopback QUIC on the
//! digits split. The model implements `Classifier` (its forward pass); `ModelTrainer`
//! runs it in each agent with fedtune's training loop, and the aggregator knows it only
//! by name and manifest (`custom_spec`), starting from its Burn initialisation
//! (`initial_params`).
//!
//! ```text
//! cargo run --release --example custom_model -- --rounds 20 --summary custom.json
//! ```

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use clap::Parser;
use fedtune::agent::custom::{ModelTrainer, custom_spec, initial_params};
use fedtune::agent::data::Dataset;
use fedtune::agent::model::{Classifier, CustomModel, Device, ModelShape, default_device, manifest_of};
use fedtune::agent::train::evaluate_with;
use fedtune::aggregator::config::{FederationConfig, ModelConfig};
use fedtune::aggregator::{AggregatorConfig, Evaluator, GlobalEvaluation, Hooks, RoundRecord, run};
use fedtune::federation::EvaluationError;
use fedtune::protocol::{ClientHyperparameters, ModelSpec};
use fedtune::sim::{bind_aggregator, ephemeral_pki, spawn_agents};
use serde::Serialize;

/// One residual block: `h + b(relu(a(h)))`.
#[derive(Module, Debug)]
struct Residual {
    a: Linear,
    b: Linear,
}

/// A residual MLP: an input projection, residual blocks, layer norm, a linear read-out.
#[derive(Module, Debug)]
struct ResidualMlp {
    input: Linear,
    blocks: Vec<Residual>,
    norm: LayerNorm,
    output: Linear,
}

impl ResidualMlp {
    fn init(features: usize, width: usize, depth: usize, classes: usize, device: &Device) -> Self {
        Self {
            input: LinearConfig::new(features, width).init(device),
            blocks: (0..depth)
                .map(|_| Residual {
                    a: LinearConfig::new(width, width).init(device),
                    b: LinearConfig::new(width, width).init(device),
                })
                .collect(),
            norm: LayerNormConfig::new(width).init(device),
            output: LinearConfig::new(width, classes).init(device),
        }
    }
}

impl Classifier for ResidualMlp {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let mut h = relu(self.input.forward(x));
        for block in &self.blocks {
            h = h.clone() + block.b.forward(relu(block.a.forward(h)));
        }
        self.output.forward(self.norm.forward(h))
    }
}

#[derive(Parser, Debug)]
#[command(about = "A model of your own, federated: a residual MLP on the digits split")]
struct Args {
    /// Agents.
    #[arg(long, default_value_t = 10)]
    agents: usize,
    /// Rounds.
    #[arg(long, default_value_t = 20)]
    rounds: u64,
    /// Width of the residual blocks.
    #[arg(long, default_value_t = 64)]
    width: usize,
    /// Residual blocks.
    #[arg(long, default_value_t = 2)]
    depth: usize,
    /// Write the final figures as JSON here.
    #[arg(long)]
    summary: Option<PathBuf>,
}

/// The aggregator's test-set evaluation of the custom model.
struct TestSet<F> {
    model: CustomModel<F>,
    test: Dataset,
    device: Device,
}

impl<F: Fn(&Device) -> ResidualMlp + Send + Sync + 'static> Evaluator for TestSet<F> {
    fn evaluate(&self, _model: &ModelSpec, params: &[f32]) -> Result<GlobalEvaluation, EvaluationError> {
        let e = evaluate_with(&self.model, params, &self.test, &self.device)
            .map_err(|e| EvaluationError::Failed(e.to_string()))?;
        Ok(GlobalEvaluation {
            loss: e.loss,
            accuracy: e.accuracy,
            samples: e.samples,
        })
    }
}

#[derive(Serialize)]
struct Summary {
    model: String,
    parameters: usize,
    tensors: Vec<String>,
    agents: usize,
    rounds: usize,
    final_test_accuracy: f64,
    test_accuracy_by_round: Vec<f64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::init_logging();
    let args = Args::parse();
    let device = default_device();
    let data = fedtune::sim::digits_split()?;
    let classes = data.dataset.classes();
    let (width, depth) = (args.width, args.depth);
    let build = move |device: &Device| ResidualMlp::init(64, width, depth, classes, device);

    // The aggregator knows the model by name and layout, and starts from its init.
    let model = build(&device);
    let spec = custom_spec("residual-mlp", &model);
    let manifest = manifest_of(&model);
    println!(
        "custom model `residual-mlp`: {} tensors, {} parameters ({})",
        manifest.tensors.len(),
        manifest.numel(),
        manifest
            .tensors
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let pki = ephemeral_pki(args.agents)?;
    let endpoint = bind_aggregator(&pki, true)?;
    let addr = endpoint.local_addr()?;
    let config = AggregatorConfig {
        listen: addr,
        federation: FederationConfig {
            study: "custom-model".into(),
            rounds: args.rounds,
            min_agents: args.agents,
            wait_for_agents_secs: 20.0,
            loopback: true,
            ..FederationConfig::default()
        },
        model: ModelConfig {
            initial: Some(Arc::new(initial_params(&model))),
            ..spec.clone().into()
        },
        client: ClientHyperparameters::default(),
        ..AggregatorConfig::default()
    };
    config.validate()?;

    let trainers = (0..args.agents)
        .map(|i| {
            let (train, validation) = data.client(i as u32)?;
            Ok(ModelTrainer::new(
                "residual-mlp",
                build,
                64,
                classes,
                train,
                validation,
                device.clone(),
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let hooks = Hooks {
        evaluator: Some(Arc::new(TestSet {
            model: CustomModel::new(build, ModelShape { input: 64, classes }, &device),
            test: data.global_test()?,
            device: device.clone(),
        })),
        on_round: Some(Box::new(|r: &RoundRecord| {
            println!(
                "round {:>3}  updates {:>2}  federated accuracy {:.4}  test accuracy {:.4}",
                r.round,
                r.updates,
                r.federated_accuracy,
                r.test.map_or(f64::NAN, |t| t.accuracy)
            );
        })),
        ..Hooks::default()
    };
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let mut agents = spawn_agents(&pki, addr, trainers, true, stopped.clone()).map_err(anyhow::Error::msg)?;
    let report = run(endpoint, config, hooks, stopped)
        .await
        .context("federation failed")?;
    while let Some(exit) = agents.join_next().await {
        exit??;
    }
    let final_test = report.final_test.context("no test evaluation")?;
    println!("final test accuracy {:.4}", final_test.accuracy);
    common::write_summary(
        args.summary.as_deref(),
        &Summary {
            model: "residual-mlp".into(),
            parameters: manifest.numel(),
            tensors: manifest.tensors.iter().map(|t| t.name.clone()).collect(),
            agents: args.agents,
            rounds: report.rounds.len(),
            final_test_accuracy: final_test.accuracy,
            test_accuracy_by_round: report
                .rounds
                .iter()
                .map(|r| r.test.map_or(f64::NAN, |t| t.accuracy))
                .collect(),
        },
    )
}
