//! Set-up shared by the examples.
//!
//! # Layout
//! - [`perturb`]: agents that skip training and answer with a fixed perturbation.
//! - [`processes`]: the aggregator and the agents in separate processes (PKI on disk,
//!   the port handed over in a file).
//! - [`text`]: the WordNet task as raw text for a pretrained encoder, split among agents.
#![allow(dead_code)]

pub mod perturb;
pub mod processes;
pub mod text;

use std::path::Path;

use serde::Serialize;

use fedtune::protocol::{CnnSpec, ConvBlock, MlpSpec, ModelSpec, TransformerSpec};

/// The model an example trains.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ModelKind {
    /// A multi-layer perceptron (`--hidden` sets its widths).
    Mlp,
    /// A CNN: the NIID-Bench LeNet on 28×28 images; on 8×8 digits one 3×3 conv block
    /// (16 channels, padded, pooled) before the `--hidden` head.
    Cnn,
    /// A transformer encoder classifier over token ids (the WordNet text task): 2 layers,
    /// d_model 64, 4 heads, feed-forward 128.
    Transformer,
}

/// The model of `kind` for `side`×`side` single-channel images (or, for the transformer,
/// the WordNet task's token rows) with `classes` classes.
pub fn model_for(kind: ModelKind, side: usize, hidden: &[usize], classes: usize) -> ModelSpec {
    match (kind, side) {
        (ModelKind::Transformer, _) => {
            let text = fedtune::agent::text::WordnetTask::default();
            ModelSpec::Transformer(TransformerSpec {
                max_len: text.max_len,
                vocab: text.vocab,
                d_model: 64,
                heads: 4,
                layers: 2,
                d_ff: 128,
                classes,
                dropout: 0.1,
            })
        }
        (ModelKind::Mlp, _) => ModelSpec::Mlp(MlpSpec {
            input: side * side,
            hidden: hidden.to_vec(),
            classes,
        }),
        (ModelKind::Cnn, 28) => ModelSpec::Cnn(CnnSpec::lenet(1, 28, 28, classes)),
        (ModelKind::Cnn, _) => ModelSpec::Cnn(CnnSpec {
            channels: 1,
            height: side,
            width: side,
            blocks: vec![ConvBlock {
                channels: 16,
                kernel: 3,
                padding: 1,
                pool: 2,
                batch_norm: false,
            }],
            hidden: hidden.to_vec(),
            classes,
            norm_stats: Default::default(),
        }),
    }
}

/// Mean of `xs` (0 for none).
pub fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// Population variance of `xs` (0 for none).
pub fn variance(xs: &[f64]) -> f64 {
    let m = mean(xs);
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len() as f64
    }
}

/// Median of `xs` (0 for none).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Writes `summary` as pretty JSON to `path` when one was given.
pub fn write_summary(path: Option<&Path>, summary: &impl Serialize) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_vec_pretty(summary)?)?;
        println!("summary written to {}", path.display());
    }
    Ok(())
}

/// Writes a run's charts (accuracy, loss, fairness by round) as SVG and PNG into `dir`,
/// or into `dir/name` when an example plots several runs, when `--plot DIR` was given.
pub fn plot_run(dir: Option<&Path>, name: &str, rounds: &[fedtune::federation::RoundRecord]) -> anyhow::Result<()> {
    if let Some(dir) = dir {
        let dir = if name.is_empty() {
            dir.to_path_buf()
        } else {
            dir.join(name)
        };
        fedtune::aggregator::plot::run(rounds, &dir)?;
    }
    Ok(())
}

/// Says where the plots went, when `--plot DIR` was given.
pub fn plots_written(dir: Option<&Path>) {
    if let Some(dir) = dir {
        println!("plots written to {}", dir.display());
    }
}

/// Logs to stderr at `warn` unless `RUST_LOG` says otherwise, so reports stay readable.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
