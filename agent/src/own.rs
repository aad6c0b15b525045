//! Data a device really holds: its own rows, read whole from its own files, whose
//! features or labels depend on the model a task names.
//!
//! A `text` source's rows are texts, tokenized by the model's own tokenizer (the device
//! holds its `tokenizer.json`; a BERT's spec names the one it was trained with, by hash,
//! and a device holding another declines). A `csv` source with a named label column has
//! feature columns. Either may label rows by class name: names map to ids through the
//! class list every task carries (the aggregator's `[model] classes`). Rows are turned
//! into a dataset for the first task of each model and class list, and kept for the next.
//!
//! Rows are checked when the agent starts (a row without its text or label, a text that
//! tokenizes to nothing: an error naming the file and row); what depends on the task (a
//! label outside the task's classes, another tokenizer) makes the agent decline it with
//! a reason the aggregator records, as does a device left with no row to train on.
//!
//! An `image-folder` source's rows are its images, labelled by their class folder's
//! name; each is decoded when the agent starts (an unreadable one is an error naming it)
//! and again, converted to the CNN's channels and size, when a task names the model.
//! Their pixels stay bytes ([`Dataset::from_pixels`]).

use std::path::PathBuf;

use fedtune_protocol::{Capabilities, Evaluate, Evaluation, ModelSpec, Task};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::cancel::Cancel;
use crate::data::Dataset;
use crate::image_folder::{ImageShape, pixels};
use crate::model::Device;
use crate::table::{Content, Row, class_id};
use crate::tokenizer::{TextInput, TextTokenizer};
use crate::trainer::{BurnTrainer, FitOutcome, Trainer, TrainerError};

/// A device's own rows, with the share kept for local validation.
#[derive(Debug)]
pub struct OwnRows {
    path: PathBuf,
    rows: Vec<Row>,
    /// Whether each row is in the validation share.
    validation: Vec<bool>,
    /// The tokenizer for text rows.
    tokenizer: Option<TextTokenizer>,
}

impl OwnRows {
    /// `rows` read from `path`, a seeded `validation_fraction` of them kept for
    /// validation (at least one when there are two or more), text rows checked against
    /// `tokenizer` (none may tokenize to nothing).
    ///
    /// # Errors
    /// A message naming the file and row of a text that tokenizes to nothing.
    pub fn new(
        path: PathBuf,
        rows: Vec<Row>,
        tokenizer: Option<TextTokenizer>,
        validation_fraction: f64,
        seed: u64,
    ) -> Result<Self, String> {
        if let Some(tokenizer) = &tokenizer {
            for row in &rows {
                if let Content::Text(text) = &row.content {
                    let tokens = tokenizer.content_tokens(text).map_err(|e| e.to_string())?;
                    if tokens == 0 {
                        return Err(format!(
                            "{}, row {}: the text tokenizes to nothing",
                            path.display(),
                            row.line
                        ));
                    }
                }
            }
        }
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(seed));
        let held = if rows.len() >= 2 {
            ((rows.len() as f64 * validation_fraction).round() as usize).clamp(1, rows.len() - 1)
        } else {
            0
        };
        let mut validation = vec![false; rows.len()];
        for &row in &order[..held] {
            validation[row] = true;
        }
        Ok(Self {
            path,
            rows,
            validation,
            tokenizer,
        })
    }

    /// Rows that train.
    #[must_use]
    pub fn train_rows(&self) -> usize {
        self.validation.iter().filter(|v| !**v).count()
    }

    /// Rows kept for validation.
    #[must_use]
    pub fn validation_rows(&self) -> usize {
        self.validation.len() - self.train_rows()
    }

    /// The (train, validation) datasets of these rows for `model` with `classes`.
    fn datasets(&self, model: &ModelSpec, classes: &[String]) -> Result<(Dataset, Dataset), TrainerError> {
        let declined = |reason: String| TrainerError::Declined(reason);
        let at = |row: &Row, reason: String| {
            declined(match &row.content {
                Content::Image(image) => format!("{}: {reason}", image.display()),
                _ => format!("{}, row {}: {reason}", self.path.display(), row.line),
            })
        };
        let outputs = model
            .classes()
            .ok_or_else(|| TrainerError::UnsupportedModel("a custom model cannot read this device's rows".into()))?;
        if self.train_rows() == 0 {
            return Err(declined(format!(
                "{}: no row to train on ({} in all)",
                self.path.display(),
                self.rows.len()
            )));
        }
        let base = match model {
            ModelSpec::Lora(lora) => &*lora.base,
            other => other,
        };
        if let (ModelSpec::Bert(bert), Some(tokenizer)) = (base, &self.tokenizer)
            && let Some(expected) = &bert.tokenizer
            && expected != tokenizer.hash()
        {
            return Err(declined(format!(
                "this device's tokenizer ({}…) is not the model's ({}…)",
                &tokenizer.hash()[..12],
                &expected[..expected.len().min(12)]
            )));
        }
        let input = TextInput::of(model, self.tokenizer.as_ref())
            .map_err(|_| declined("text rows need a tokenizer ([data] source tokenizer)".into()))?;
        let shape = image_shape(base);
        let mut features = Vec::new();
        let mut image_bytes = Vec::new();
        let mut labels = Vec::with_capacity(self.rows.len());
        for row in &self.rows {
            let label = row.label.as_deref().ok_or_else(|| at(row, "no label".into()))?;
            labels.push(class_id(label, classes, outputs).map_err(|reason| at(row, reason))?);
            match (&row.content, &input) {
                (Content::Image(path), _) => {
                    let shape = shape.ok_or_else(|| {
                        declined(format!(
                            "this device holds images; {} does not read them (a CNN does)",
                            base.describe()
                        ))
                    })?;
                    pixels(path, shape, &mut image_bytes).map_err(|e| declined(e.to_string()))?;
                }
                (Content::Text(text), Some(input)) => {
                    features.extend(input.row(text).map_err(|e| at(row, e.to_string()))?);
                }
                (Content::Features(values), _) => features.extend_from_slice(values),
                (Content::Text(_), None) => {
                    return Err(declined(format!(
                        "this device holds text; {} reads features",
                        base.describe()
                    )));
                }
            }
        }
        let all = if image_bytes.is_empty() {
            let dim = features.len() / self.rows.len().max(1);
            Dataset::from_parts(features, labels, dim, outputs)
        } else {
            let dim = image_bytes.len() / self.rows.len().max(1);
            Dataset::from_pixels(image_bytes, labels, dim, outputs)
        }
        .map_err(|e| declined(e.to_string()))?;
        let pick =
            |held: bool| -> Vec<usize> { (0..self.rows.len()).filter(|&i| self.validation[i] == held).collect() };
        let split = |rows: &[usize]| all.subset(rows).map_err(|e| declined(e.to_string()));
        Ok((split(&pick(false))?, split(&pick(true))?))
    }
}

/// The shape a model reads images in: a CNN's channels and size.
fn image_shape(model: &ModelSpec) -> Option<ImageShape> {
    match model {
        ModelSpec::Cnn(cnn) => Some(ImageShape {
            channels: cnn.channels,
            height: cnn.height,
            width: cnn.width,
        }),
        ModelSpec::Lora(lora) => image_shape(&lora.base),
        _ => None,
    }
}

/// Trains on a device's own rows ([`OwnRows`]) with Burn: a [`BurnTrainer`] over the
/// datasets the current model and class list make of them.
#[derive(Debug)]
pub struct OwnDataTrainer {
    rows: OwnRows,
    device: Device,
    /// The datasets' model input and class list, and the trainer over them.
    ready: Option<(String, BurnTrainer)>,
}

impl OwnDataTrainer {
    /// A trainer over `rows` on `device`.
    #[must_use]
    pub fn new(rows: OwnRows, device: Device) -> Self {
        Self {
            rows,
            device,
            ready: None,
        }
    }

    /// The trainer over the datasets `model` and `classes` make, made once per both.
    fn prepare(&mut self, model: &ModelSpec, classes: &[String]) -> Result<&mut BurnTrainer, TrainerError> {
        let base = match model {
            ModelSpec::Lora(lora) => &*lora.base,
            other => other,
        };
        // What the rows become depends on the input (tokenizer, length, vocabulary) and
        // the classes, not on adapters or widths.
        let input = match base {
            ModelSpec::Bert(b) => format!("bert {} {} {:?}", b.max_len, b.vocab, b.tokenizer),
            ModelSpec::Transformer(t) => format!("transformer {} {}", t.max_len, t.vocab),
            other => match image_shape(other) {
                Some(shape) => format!("image {shape:?}"),
                None => "features".to_string(),
            },
        };
        let key = format!("{input} {} [{}]", base.classes().unwrap_or(0), classes.join("\u{1f}"));
        if self.ready.as_ref().is_none_or(|(k, _)| *k != key) {
            let (train, validation) = self.rows.datasets(model, classes)?;
            tracing::info!(
                train = train.len(),
                validation = validation.len(),
                "own rows ready for {}",
                base.describe()
            );
            self.ready = Some((key, BurnTrainer::new(train, validation, self.device.clone())));
        }
        Ok(&mut self.ready.as_mut().expect("just made").1)
    }
}

impl Trainer for OwnDataTrainer {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            memory_bytes: 0,
            backend: "burn-flex-cpu".into(),
            train_samples: self.rows.train_rows() as u64,
            validation_samples: self.rows.validation_rows() as u64,
        }
    }

    fn fit(&mut self, task: &Task, global: &[f32], cancel: &Cancel) -> Result<FitOutcome, TrainerError> {
        self.prepare(&task.model, &task.classes)?.fit(task, global, cancel)
    }

    fn evaluate(&mut self, request: &Evaluate, params: &[f32]) -> Result<Evaluation, TrainerError> {
        self.prepare(&request.model, &request.classes)?
            .evaluate(request, params)
    }
}

/// The data a `[data]` table names, ready to train on: a share that fits any model, or a
/// device's own rows that become features once a task names the model.
#[derive(Debug)]
pub enum LocalData {
    /// Train and validation rows as they are.
    Ready(Dataset, Dataset),
    /// Rows the task's model and classes turn into datasets.
    Rows(Box<OwnRows>),
}

impl LocalData {
    /// The trainer over this data on `device`.
    #[must_use]
    pub fn trainer(self, device: Device) -> Box<dyn Trainer> {
        match self {
            Self::Ready(train, validation) => Box::new(BurnTrainer::new(train, validation, device)),
            Self::Rows(rows) => Box::new(OwnDataTrainer::new(*rows, device)),
        }
    }
}

/// Reads the data `config` names: [`crate::config::DataConfig::load`]'s share, or for a
/// source labelled by name, holding text or images (see
/// [`crate::config::DataSource::rows_need_the_model`]) every row of the device's file.
///
/// # Errors
/// [`crate::config::ConfigError::Data`] naming the file, and the row, that cannot be used;
/// a partition on a device's own rows.
pub fn load(config: &crate::config::DataConfig) -> Result<LocalData, crate::config::ConfigError> {
    use crate::config::{ConfigError, DataSource};
    use crate::table::{Columns, read_rows};
    let data = ConfigError::Data;
    let (path, columns, tokenizer) = match &config.source {
        DataSource::Csv {
            path,
            label: Some(label),
            ..
        } => (
            path,
            Columns {
                text: None,
                label: Some(label.clone()),
                label_required: true,
            },
            None,
        ),
        DataSource::Text {
            path,
            text,
            label,
            tokenizer,
        } => (
            path,
            Columns {
                text: Some(text.clone()),
                label: Some(label.clone()),
                label_required: true,
            },
            Some(TextTokenizer::from_path(tokenizer).map_err(|e| data(e.to_string()))?),
        ),
        DataSource::ImageFolder { path } => {
            refuse_partition(config, path)?;
            let folder = crate::image_folder::read_folder(path).map_err(|e| data(e.to_string()))?;
            if folder.images.is_empty() {
                tracing::warn!(
                    "{}: no image (expected one subfolder per class holding {} files)",
                    path.display(),
                    crate::image_folder::EXTENSIONS.join(", ")
                );
            } else if !folder.empty.is_empty() {
                tracing::warn!(
                    "{}: class folders without an image: {}",
                    path.display(),
                    folder.empty.join(", ")
                );
            }
            let rows = folder
                .images
                .into_iter()
                .enumerate()
                .map(|(i, image)| Row {
                    line: i + 1,
                    content: Content::Image(image.path),
                    label: Some(image.class),
                })
                .collect();
            let rows = OwnRows::new(path.clone(), rows, None, config.validation, config.seed).map_err(data)?;
            return Ok(LocalData::Rows(Box::new(rows)));
        }
        _ => {
            let (train, validation) = config.load()?;
            return Ok(LocalData::Ready(train, validation));
        }
    };
    refuse_partition(config, path)?;
    let rows = read_rows(path, &columns).map_err(|e| data(e.to_string()))?;
    let rows = OwnRows::new(path.clone(), rows, tokenizer, config.validation, config.seed).map_err(data)?;
    Ok(LocalData::Rows(Box::new(rows)))
}

/// A device's own rows are all its own: a partition (a simulation's share) is refused.
fn refuse_partition(
    config: &crate::config::DataConfig,
    path: &std::path::Path,
) -> Result<(), crate::config::ConfigError> {
    match config.partition {
        Some(_) => Err(crate::config::ConfigError::Data(format!(
            "{}: a device's own rows take no partition (partitions split a shared dataset in simulations)",
            path.display()
        ))),
        None => Ok(()),
    }
}
