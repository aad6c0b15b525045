//! `fedtune-aggregator evaluate`: the accuracy and loss of any weights file on a
//! dataset's test split, so a model made anywhere (a fedtune run, PyTorch) can be checked.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use fedtune_models::data::{DataError, Dataset, FASHION_MNIST_DIR, load_csv, load_fashion_mnist};
use fedtune_models::model::default_device;
use fedtune_models::text::{Split, WORDNET_DIR, WordnetTask};
use fedtune_models::train::{TrainError, evaluate};
use fedtune_models::weights::{self, WeightsError, WeightsSource};
use fedtune_protocol::ModelSpec;
use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;

/// The bundled digits data and its split (global test rows), from the source tree.
fn digits_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data")
}

/// A dataset whose test split a model is evaluated on.
#[derive(Debug, Clone, PartialEq)]
pub enum TestSet {
    /// The bundled digits (8×8, scaled to [0, 1]): the global test rows of
    /// `data/digits_partition.json`.
    Digits,
    /// Fashion-MNIST's 10,000 test images (Debian's `dataset-fashion-mnist`).
    FashionMnist,
    /// The held-out fifth of the WordNet task (Debian's `wordnet-base`, default settings):
    /// 4,000 noun definitions in ten categories, as token ids.
    Wordnet,
    /// Every row of a CSV file (features, then an integer label), each feature
    /// multiplied by `scale` as an agent's `[data] scale` does (digits: 1/16).
    Csv {
        /// The file.
        path: PathBuf,
        /// Multiplier applied to every feature.
        scale: f32,
    },
}

impl FromStr for TestSet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "digits" => Ok(Self::Digits),
            "fashion-mnist" => Ok(Self::FashionMnist),
            "wordnet" => Ok(Self::Wordnet),
            _ => match s.strip_prefix("csv:") {
                Some(path) if !path.is_empty() => Ok(Self::Csv {
                    path: path.into(),
                    scale: 1.0,
                }),
                _ => Err(format!(
                    "unknown dataset `{s}`: expected digits, fashion-mnist, wordnet or csv:PATH"
                )),
            },
        }
    }
}

impl std::fmt::Display for TestSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Digits => f.write_str("digits"),
            Self::FashionMnist => f.write_str("fashion-mnist"),
            Self::Wordnet => f.write_str("wordnet"),
            Self::Csv { path, scale } if *scale == 1.0 => write!(f, "csv:{}", path.display()),
            Self::Csv { path, scale } => write!(f, "csv:{} (features × {scale})", path.display()),
        }
    }
}

impl TestSet {
    /// The same set with CSV features multiplied by `scale`, as an agent's `[data]
    /// scale` does.
    ///
    /// # Errors
    /// When `scale` is not a finite positive number, or the set is not a CSV file (the
    /// others are scaled as they are loaded).
    pub fn with_scale(self, scale: f32) -> Result<Self, String> {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(format!("scale must be a finite positive number, got {scale}"));
        }
        match self {
            Self::Csv { path, .. } => Ok(Self::Csv { path, scale }),
            other => Err(format!(
                "--scale applies to csv:PATH; {other} is scaled as it is loaded"
            )),
        }
    }

    /// Loads the test split.
    ///
    /// # Errors
    /// [`EvaluateError::Data`] when the files cannot be read.
    pub fn load(&self) -> Result<Dataset, EvaluateError> {
        let data = |e: DataError| EvaluateError::Data(e.to_string());
        match self {
            Self::Digits => {
                #[derive(Deserialize)]
                struct Split {
                    global_test: Vec<usize>,
                }
                let dir = digits_dir();
                let all = load_csv(dir.join("digits.csv"), 1.0 / 16.0).map_err(data)?;
                let split_path = dir.join("digits_partition.json");
                let text = std::fs::read(&split_path)
                    .map_err(|e| EvaluateError::Data(format!("{}: {e}", split_path.display())))?;
                let split: Split = serde_json::from_slice(&text)
                    .map_err(|e| EvaluateError::Data(format!("{}: {e}", split_path.display())))?;
                all.subset(&split.global_test).map_err(data)
            }
            Self::FashionMnist => load_fashion_mnist(FASHION_MNIST_DIR, false).map_err(data),
            Self::Wordnet => WordnetTask::default().load(WORDNET_DIR, Split::Test).map_err(data),
            Self::Csv { path, scale } => load_csv(path, *scale).map_err(data),
        }
    }
}

/// What `evaluate` found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvaluationReport {
    /// The model, described.
    pub model: String,
    /// Its parameter count.
    pub parameters: usize,
    /// The weights file.
    pub weights: PathBuf,
    /// The dataset.
    pub dataset: String,
    /// Test samples.
    pub samples: u64,
    /// Fraction classified right.
    pub accuracy: f64,
    /// Mean cross-entropy.
    pub loss: f64,
}

/// Why a weights file could not be evaluated.
#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    /// The model file could not be read or holds no usable `[model]`.
    #[error("{path}: {reason}")]
    Model {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The weights do not fit the model.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The dataset could not be loaded.
    #[error("dataset: {0}")]
    Data(String),
    /// The data does not fit the model.
    #[error(transparent)]
    Evaluate(#[from] TrainError),
}

/// Reads the `[model]` table of a TOML file (a model file, or an aggregator's whole
/// configuration): its plain architecture, since a LoRA model's final file holds the
/// adapters merged.
///
/// # Errors
/// [`EvaluateError::Model`] naming the file and the problem.
pub fn load_model_toml(path: &Path) -> Result<ModelSpec, EvaluateError> {
    let model = ModelConfig::from_file(path).map_err(|e| EvaluateError::Model {
        path: path.into(),
        reason: e.to_string(),
    })?;
    model.spec.validate().map_err(|e| EvaluateError::Model {
        path: path.into(),
        reason: e.to_string(),
    })?;
    Ok(model.architecture().clone())
}

/// Evaluates the weights in `source`, read into `spec`, on `test`.
///
/// # Errors
/// [`EvaluateError`] saying what did not fit or could not be read.
pub fn evaluate_weights(
    spec: &ModelSpec,
    source: &WeightsSource,
    test: &TestSet,
) -> Result<EvaluationReport, EvaluateError> {
    let device = default_device();
    let params = weights::import(spec, source, &device)?;
    let data = test.load()?;
    let result = evaluate(spec, &params, &data, &device)?;
    Ok(EvaluationReport {
        model: spec.describe(),
        parameters: params.len(),
        weights: source.path.clone(),
        dataset: test.to_string(),
        samples: result.samples,
        accuracy: result.accuracy,
        loss: result.loss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datasets_parse_and_print_back() {
        for text in ["digits", "fashion-mnist", "wordnet", "csv:data/x.csv"] {
            assert_eq!(text.parse::<TestSet>().unwrap().to_string(), text);
        }
        for bad in ["mnist", "csv:", ""] {
            assert!(
                bad.parse::<TestSet>()
                    .unwrap_err()
                    .contains("digits, fashion-mnist, wordnet or csv:PATH")
            );
        }
    }

    #[test]
    fn the_digits_test_split_is_the_shared_one() {
        let data = TestSet::Digits.load().unwrap();
        assert_eq!((data.len(), data.dim(), data.classes()), (360, 64, 10));
    }
}
