//! `fedtune-aggregator evaluate`: a weights file's accuracy and loss on a test split.
//! It trains nothing but runs the model over the whole split: `main` runs it off the
//! async runtime.

use std::path::PathBuf;

use anyhow::Context;
use fedtune_aggregator::evaluate::{TestSet, evaluate_weights, load_model_toml};
use fedtune_models::weights::{Layout, WeightsSource};

/// The arguments of `evaluate`.
#[derive(clap::Args)]
pub struct Args {
    /// A TOML file with a `[model]` table (a model file, or an aggregator's
    /// configuration).
    #[arg(long)]
    model: PathBuf,
    /// The weights: `.safetensors`, `.pt` / `.pth` or `.bpk`.
    #[arg(long)]
    weights: PathBuf,
    /// The file's layout: auto (Burn's for files Burn or fedtune wrote, PyTorch's
    /// otherwise), pytorch or burn.
    #[arg(long, default_value = "auto")]
    layout: Layout,
    /// A key rewrite `PATTERN=REPLACEMENT` (a regular expression) applied to the file's
    /// tensor names before they are matched to the model's; repeatable.
    #[arg(long = "remap")]
    remap: Vec<String>,
    /// `digits`, `fashion-mnist`, `wordnet` or `csv:PATH`.
    #[arg(long)]
    dataset: TestSet,
    /// Multiplier applied to every feature of a `csv:PATH` dataset, as the agents'
    /// `[data] scale` (digits: 0.0625 or 1/16).
    #[arg(long, value_parser = parse_scale)]
    scale: Option<f32>,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Prints the model's test accuracy and loss with these weights.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut source = WeightsSource::new(args.weights).layout(args.layout);
    for rule in &args.remap {
        let (pattern, replacement) = rule
            .split_once('=')
            .with_context(|| format!("--remap {rule}: write it as PATTERN=REPLACEMENT"))?;
        source = source.remap(pattern, replacement);
    }
    let spec = load_model_toml(&args.model)?;
    let dataset = match args.scale {
        Some(scale) => args.dataset.with_scale(scale).map_err(anyhow::Error::msg)?,
        None => args.dataset,
    };
    let report = evaluate_weights(&spec, &source, &dataset)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} ({} parameters) from {}\n{} test samples of {}: accuracy {:.4}, loss {:.4}",
            report.model,
            report.parameters,
            report.weights.display(),
            report.samples,
            report.dataset,
            report.accuracy,
            report.loss
        );
    }
    Ok(())
}

/// A number, or a fraction `a/b`.
fn parse_scale(text: &str) -> Result<f32, String> {
    let number = |t: &str| {
        t.trim()
            .parse::<f32>()
            .map_err(|_| format!("`{text}` is not a number or a fraction a/b"))
    };
    match text.split_once('/') {
        Some((a, b)) => Ok(number(a)? / number(b)?),
        None => number(text),
    }
}
