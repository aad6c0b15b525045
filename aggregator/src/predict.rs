//! `fedtune-aggregator predict`: what a model fedtune produced says about a user's rows,
//! each row's class and class probabilities, for any model kind.
//!
//! Rows are read as the agents' `csv` and `text` data sources read them (see
//! [`fedtune_models::table`]): a text model (a BERT, the transformer) takes each row's
//! `text`, tokenized by the model's own tokenizer (a `[model] pretrained` folder's
//! `tokenizer.json`; the transformer's hashed words); any other model takes feature
//! columns. A row's `label`, where there is one, is compared with the prediction.

use std::path::{Path, PathBuf};

use fedtune_models::data::Dataset;
use fedtune_models::model::default_device;
use fedtune_models::table::{Columns, Content, TableError, class_id, read_rows};
use fedtune_models::tokenizer::{TextInput, TextTokenizer};
use fedtune_models::train::{TrainError, probabilities};
use fedtune_models::weights::{self, WeightsError, WeightsSource};
use fedtune_protocol::ModelSpec;
use serde::Serialize;

use crate::config::ModelConfig;

/// One row's prediction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// The row in the input file (from 1, a CSV's header being row 1).
    pub row: usize,
    /// The predicted class's name (its id when the model names no classes).
    pub label: String,
    /// Every class's probability, in class order.
    pub probabilities: Vec<f64>,
    /// The row's own label as a class id, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truth: Option<u32>,
}

/// Why predictions could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    /// The model cannot predict on these rows as configured.
    #[error("{0}")]
    Model(String),
    /// The weights do not fit the model.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The input file or a row of it is unusable.
    #[error(transparent)]
    Input(#[from] TableError),
    /// A row's label is not one of the model's classes.
    #[error("{path}, row {row}: {reason}")]
    Label {
        /// The input file.
        path: PathBuf,
        /// The row.
        row: usize,
        /// What is wrong with the label.
        reason: String,
    },
    /// The rows do not fit the model.
    #[error(transparent)]
    Data(#[from] TrainError),
}

/// The tokenizer of a BERT's `[model] pretrained` folder; none for other models.
fn folder_tokenizer(model: &ModelConfig) -> Result<Option<TextTokenizer>, PredictError> {
    if !matches!(model.architecture(), ModelSpec::Bert(_)) {
        return Ok(None);
    }
    let folder = model
        .init
        .as_ref()
        .map(|i| i.path.clone())
        .filter(|p| p.is_dir())
        .ok_or_else(|| {
            PredictError::Model("a BERT reads text with its tokenizer: name its folder with [model] pretrained".into())
        })?;
    TextTokenizer::in_folder(&folder)
        .map(Some)
        .map_err(|e| PredictError::Model(e.to_string()))
}

/// Predicts every row of `input` with `model` (its plain architecture) and the weights
/// in `weights`.
///
/// # Errors
/// [`PredictError`] naming the file and row, or the model setting, that is wrong.
pub fn predict(model: &ModelConfig, weights: &WeightsSource, input: &Path) -> Result<Vec<Prediction>, PredictError> {
    let spec = model.architecture();
    let outputs = spec
        .classes()
        .ok_or_else(|| PredictError::Model("a custom model has no head fedtune can run".into()))?;
    let tokenizer = folder_tokenizer(model)?;
    let text_input = TextInput::of(spec, tokenizer.as_ref()).map_err(PredictError::Model)?;
    let columns = Columns {
        text: text_input.is_some().then(|| "text".to_string()),
        label: Some("label".into()),
        label_required: false,
    };
    let rows = read_rows(input, &columns)?;
    if rows.is_empty() {
        return Err(PredictError::Model(format!("{}: no rows to predict", input.display())));
    }
    let mut features = Vec::new();
    let mut truths = Vec::with_capacity(rows.len());
    for row in &rows {
        let encoded = match (&row.content, &text_input) {
            (Content::Text(text), Some(text_input)) => text_input.row(text).map_err(|e| e.to_string()),
            (Content::Features(values), None) => Ok(values.clone()),
            _ => Err("the row is not what the model reads".to_string()),
        }
        .map_err(|reason| PredictError::Label {
            path: input.to_path_buf(),
            row: row.line,
            reason,
        })?;
        features.extend(encoded);
        let truth = row
            .label
            .as_deref()
            .map(|label| class_id(label, &model.classes, outputs))
            .transpose()
            .map_err(|reason| PredictError::Label {
                path: input.to_path_buf(),
                row: row.line,
                reason,
            })?;
        truths.push(truth);
    }
    let dim = features.len() / rows.len();
    let data = Dataset::from_parts(features, vec![0; rows.len()], dim, outputs)
        .map_err(|e| PredictError::Model(e.to_string()))?;
    let device = default_device();
    let params = weights::import(spec, weights, &device)?;
    let all = probabilities(spec, &params, &data, &device)?;
    Ok(rows
        .iter()
        .zip(all)
        .zip(truths)
        .map(|((row, probabilities), truth)| {
            let best = probabilities
                .iter()
                .enumerate()
                .fold(
                    (0, f64::NEG_INFINITY),
                    |(i, p), (j, &q)| if q > p { (j, q) } else { (i, p) },
                )
                .0;
            Prediction {
                row: row.line,
                label: model.classes.get(best).cloned().unwrap_or_else(|| best.to_string()),
                probabilities,
                truth,
            }
        })
        .collect())
}

/// The share of labelled predictions that are right, and how many rows had labels.
#[must_use]
pub fn accuracy(predictions: &[Prediction], classes: &[String]) -> Option<(f64, usize)> {
    let labelled: Vec<_> = predictions.iter().filter_map(|p| p.truth.map(|t| (p, t))).collect();
    if labelled.is_empty() {
        return None;
    }
    let right = labelled
        .iter()
        .filter(|(p, truth)| {
            classes
                .get(*truth as usize)
                .map_or(p.label == truth.to_string(), |name| &p.label == name)
        })
        .count();
    Some((right as f64 / labelled.len() as f64, labelled.len()))
}
