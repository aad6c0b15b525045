//! `fedtune-aggregator predict`: each row's class and class probabilities under a model
//! fedtune produced. It runs the model over the whole file: `main` runs it off the async
//! runtime.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use fedtune_aggregator::config::ModelConfig;
use fedtune_aggregator::predict::{accuracy, predict};
use fedtune_models::weights::{Layout, WeightsSource};

/// The arguments of `predict`.
#[derive(clap::Args)]
pub struct Args {
    /// A TOML file with a `[model]` table (a model file, or an aggregator's
    /// configuration); its `classes` name the predictions.
    #[arg(long)]
    model: PathBuf,
    /// The weights: `.safetensors`, `.pt` / `.pth` or `.bpk` (a run's final model).
    #[arg(long)]
    weights: PathBuf,
    /// The file's layout: auto, pytorch or burn.
    #[arg(long, default_value = "auto")]
    layout: Layout,
    /// The rows: `.jsonl` (objects with `text`, or a `features` array) or `.csv` (a
    /// header; a `text` column, or feature columns); a `label` field or column, where
    /// there is one, is compared with the prediction.
    #[arg(long)]
    input: PathBuf,
    /// One JSON object per row (`label`, `probabilities` in class order) instead of text.
    #[arg(long)]
    json: bool,
}

/// Prints each row's predicted class and class probabilities.
pub fn run(args: Args) -> anyhow::Result<()> {
    let model = ModelConfig::from_file(&args.model)?;
    let source = WeightsSource::new(&args.weights).layout(args.layout);
    let predictions =
        predict(&model, &source, &args.input).with_context(|| format!("predicting {}", args.input.display()))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        for p in &predictions {
            serde_json::to_writer(&mut out, p)?;
            writeln!(out)?;
        }
        return Ok(());
    }
    let names: Vec<String> = match model.classes.is_empty() {
        true => (0..predictions[0].probabilities.len()).map(|i| i.to_string()).collect(),
        false => model.classes.clone(),
    };
    let width = names.iter().map(String::len).max().unwrap_or(5).max(5);
    writeln!(out, "{:>5}  {:<width$}  {}", "row", "label", names.join("  "))?;
    for p in &predictions {
        let probabilities: Vec<String> = p
            .probabilities
            .iter()
            .zip(&names)
            .map(|(q, name)| format!("{q:>w$.4}", w = name.len().max(6)))
            .collect();
        writeln!(out, "{:>5}  {:<width$}  {}", p.row, p.label, probabilities.join("  "))?;
    }
    if let Some((share, rows)) = accuracy(&predictions, &model.classes) {
        writeln!(out, "accuracy {share:.4} over {rows} labelled rows")?;
    }
    Ok(())
}
