//! Hugging Face model folders: a BERT-family checkpoint as a [`BertSpec`], its weights in
//! manifest order, its class names and its tokenizer.
//!
//! A folder holds `config.json`, the weights (`model.safetensors`, or `pytorch_model.bin`
//! when there is no safetensors file) and `tokenizer.json`; a sentence-transformers
//! folder also `1_Pooling/config.json`. Both key layouts load: `BertModel`'s (`embeddings.…`,
//! `encoder.layer.…`, `pooler.…`) and `BertForSequenceClassification`'s (the same under
//! `bert.`, then `classifier.…`). Linear weights are transposed to Burn's `[in, out]`
//! and layer norms' `weight` / `bias` (or old checkpoints' `gamma` / `beta`) read as
//! `gamma` / `beta`.
//!
//! # The head
//! A `BertForSequenceClassification` checkpoint keeps its head: BERT's pooler, then its
//! classifier, with the class names of its `id2label`, computing what Hugging Face
//! computes. Otherwise (a `BertModel`, or other classes than the checkpoint's) the
//! classifier starts fresh and [`Pretrained::notes`] says so; pooling is what
//! [`PretrainedOptions::pooling`] asks, else mean pooling when the folder's
//! `1_Pooling/config.json` says so (sentence-transformers), else BERT's pooler.
//! A checkpoint's tensors the model does not use (the pooler under mean pooling, a
//! replaced classifier, the `position_ids` buffer) are left out; anything else missing,
//! unexpected or mis-shaped is one error listing every tensor.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use fedtune_protocol::model::Architecture;
use fedtune_protocol::{BertSpec, ModelSpec, Pooling};
use serde::Deserialize;

use crate::tokenizer::{TextTokenizer, TokenizerError};
use crate::weights::{WeightsError, extend_floats};

/// What the user chooses about a pretrained model; the rest comes from its folder.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PretrainedOptions {
    /// Token ids per row (at most the checkpoint's `max_position_embeddings`).
    pub max_len: usize,
    /// How rows are pooled; `None` follows the folder (see the module docs).
    pub pooling: Option<Pooling>,
    /// Class names in id order; `None` keeps a classification checkpoint's own.
    pub classes: Option<Vec<String>>,
    /// Dropout while training; `None` keeps the checkpoint's `hidden_dropout_prob` and
    /// `attention_probs_dropout_prob`.
    pub dropout: Option<f64>,
    /// Seeds a fresh classifier's weights.
    pub seed: u64,
}

/// A pretrained model ready to federate.
#[derive(Debug)]
pub struct Pretrained {
    /// The architecture.
    pub spec: BertSpec,
    /// Its starting parameters in manifest order.
    pub params: Vec<f32>,
    /// Class names in id order.
    pub classes: Vec<String>,
    /// The folder's tokenizer.
    pub tokenizer: TextTokenizer,
    /// The keys were `BertForSequenceClassification`'s (under `bert.`).
    pub prefixed: bool,
    /// What was decided that a user should know (a fresh head, an unused pooler).
    pub notes: Vec<String>,
}

/// Why a pretrained folder could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PretrainedError {
    /// A file could not be read or parsed.
    #[error("{path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The checkpoint's configuration asks for something fedtune does not build.
    #[error("{path}: {field} = {value}: {reason}")]
    Unsupported {
        /// The `config.json`.
        path: PathBuf,
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
        /// What fedtune builds instead.
        reason: String,
    },
    /// The options do not fit the checkpoint.
    #[error("{0}")]
    Options(String),
    /// The weights do not fit the architecture.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The tokenizer could not be read.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// The fields of a Hugging Face `config.json` a BERT is built from.
#[derive(Debug, Deserialize)]
struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "gelu")]
    hidden_act: String,
    #[serde(default)]
    hidden_dropout_prob: f64,
    #[serde(default)]
    attention_probs_dropout_prob: f64,
    max_position_embeddings: usize,
    #[serde(default = "two")]
    type_vocab_size: usize,
    #[serde(default = "bert_eps")]
    layer_norm_eps: f64,
    position_embedding_type: Option<String>,
    #[serde(default)]
    is_decoder: bool,
    #[serde(default)]
    add_cross_attention: bool,
    problem_type: Option<String>,
    #[serde(default)]
    id2label: BTreeMap<String, String>,
}

fn gelu() -> String {
    "gelu".into()
}
fn two() -> usize {
    2
}
fn bert_eps() -> f64 {
    1e-12
}

/// sentence-transformers' `1_Pooling/config.json`.
#[derive(Debug, Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
}

/// What a Hugging Face folder describes, before its weights are read.
#[derive(Debug)]
pub struct Described {
    /// The architecture.
    pub spec: BertSpec,
    /// Class names in id order.
    pub classes: Vec<String>,
    /// The folder's tokenizer.
    pub tokenizer: TextTokenizer,
    /// What was decided that a user should know (a fresh head).
    pub notes: Vec<String>,
}

/// Reads the Hugging Face folder `dir` as a BERT classifier: its spec, class names and
/// tokenizer, without the weights.
///
/// # Errors
/// [`PretrainedError`] naming the file and what is wrong: an unreadable file, a
/// configuration field fedtune does not implement, options that do not fit, a tokenizer
/// that cannot be read or whose vocabulary is larger than the model's.
pub fn describe(dir: &Path, options: &PretrainedOptions) -> Result<Described, PretrainedError> {
    let config_path = dir.join("config.json");
    let config: HfConfig = read_json(&config_path)?;
    check_supported(&config, &config_path)?;
    let checkpoint_classes = checkpoint_classes(&config, &config_path)?;
    let folder_pooling = {
        let path = dir.join("1_Pooling").join("config.json");
        if path.is_file() {
            let pooling: PoolingConfig = read_json(&path)?;
            pooling.pooling_mode_mean_tokens.then_some(Pooling::Mean)
        } else {
            None
        }
    };
    let pooling = options.pooling.or(folder_pooling).unwrap_or(Pooling::Cls);
    let classes = match (&options.classes, &checkpoint_classes) {
        (Some(classes), _) => classes.clone(),
        (None, Some(classes)) => classes.clone(),
        (None, None) => {
            return Err(PretrainedError::Options(format!(
                "{}: a {} checkpoint has no classification head: name the classes ([model] classes)",
                dir.display(),
                config.architectures.first().map_or("BertModel", String::as_str)
            )));
        }
    };
    if classes.len() < 2 {
        return Err(PretrainedError::Options(format!(
            "a classifier needs at least two classes, not [{}]",
            classes.join(", ")
        )));
    }
    let notes = head_note(checkpoint_classes.as_deref(), &classes, pooling)
        .into_iter()
        .collect::<Vec<_>>();
    let spec = BertSpec {
        vocab: config.vocab_size,
        hidden: config.hidden_size,
        layers: config.num_hidden_layers,
        heads: config.num_attention_heads,
        intermediate: config.intermediate_size,
        max_positions: config.max_position_embeddings,
        type_vocab: config.type_vocab_size,
        layer_norm_eps: config.layer_norm_eps,
        max_len: options.max_len,
        pooling,
        classes: classes.len(),
        dropout: options.dropout.unwrap_or(config.hidden_dropout_prob),
        attention_dropout: options.dropout.unwrap_or(config.attention_probs_dropout_prob),
        tokenizer: None,
    };
    ModelSpec::Bert(spec.clone())
        .validate()
        .map_err(|e| PretrainedError::Options(format!("{}: {e}", dir.display())))?;
    let tokenizer = TextTokenizer::in_folder(dir)?;
    if tokenizer.vocab() > spec.vocab {
        return Err(PretrainedError::Options(format!(
            "{}: the tokenizer gives {} ids but the model embeds {}",
            dir.display(),
            tokenizer.vocab(),
            spec.vocab
        )));
    }
    let spec = BertSpec {
        tokenizer: Some(tokenizer.hash().to_string()),
        ..spec
    };
    Ok(Described {
        spec,
        classes,
        tokenizer,
        notes,
    })
}

/// Reads the Hugging Face folder `dir` as a BERT classifier, weights included.
///
/// # Errors
/// As [`describe`], and [`PretrainedError::Weights`] listing every tensor that does not
/// fit.
pub fn load_pretrained(dir: &Path, options: &PretrainedOptions) -> Result<Pretrained, PretrainedError> {
    let Described {
        spec,
        classes,
        tokenizer,
        mut notes,
    } = describe(dir, options)?;
    let (params, prefixed, more) = load_weights(dir, &spec, &classes, options.seed)?;
    // Both say why the head starts fresh; keep it once.
    for note in more {
        if !notes.contains(&note) {
            notes.push(note);
        }
    }
    Ok(Pretrained {
        spec,
        params,
        classes,
        tokenizer,
        prefixed,
        notes,
    })
}

/// The weights of the folder `dir` laid out for `spec` (as [`describe`] gave it) with
/// Why the head starts fresh, when it does: a checkpoint that classifies
/// `checkpoint_classes` (none: no head) read for `classes` under `pooling`.
fn head_note(checkpoint_classes: Option<&[String]>, classes: &[String], pooling: Pooling) -> Option<String> {
    match checkpoint_classes {
        Some(_) if keeps_head(checkpoint_classes, classes, pooling) => None,
        Some(_) if pooling == Pooling::Mean => Some(
            "the checkpoint's classifier was trained on BERT's pooler; under mean pooling the head starts fresh".into(),
        ),
        Some(own) => Some(format!(
            "the checkpoint classifies [{}]; the head starts fresh for [{}]",
            own.join(", "),
            classes.join(", ")
        )),
        None => Some(format!(
            "the checkpoint has no classification head; a fresh one classifies [{}]",
            classes.join(", ")
        )),
    }
}

/// `classes`: the checkpoint's head when it classifies exactly these under BERT's pooler,
/// else a fresh one seeded by `seed`. Also gives whether the keys were under `bert.`, and
/// notes on tensors left out.
///
/// # Errors
/// [`PretrainedError::Read`] for an unreadable folder, [`PretrainedError::Weights`]
/// listing every tensor that does not fit.
pub fn load_weights(
    dir: &Path,
    spec: &BertSpec,
    classes: &[String],
    seed: u64,
) -> Result<(Vec<f32>, bool, Vec<String>), PretrainedError> {
    let config_path = dir.join("config.json");
    let config: HfConfig = read_json(&config_path)?;
    let own_classes = checkpoint_classes(&config, &config_path)?;
    let keep_head = keeps_head(own_classes.as_deref(), classes, spec.pooling);
    let (weights_path, mut tensors) = read_checkpoint(dir)?;
    let prefixed = tensors.keys().any(|k| k.starts_with("bert."));
    let mut notes: Vec<String> = head_note(own_classes.as_deref(), classes, spec.pooling)
        .into_iter()
        .collect();
    if spec.pooling == Pooling::Mean && tensors.keys().any(|k| k.contains("pooler.")) {
        notes.push("mean pooling does not use the checkpoint's pooler; it is left out".into());
    }
    let params = map_onto(spec, &mut tensors, prefixed, keep_head, seed, &weights_path, &mut notes)?;
    Ok((params, prefixed, notes))
}

/// A `BertForSequenceClassification` checkpoint's class names (`id2label` in id order).
fn checkpoint_classes(config: &HfConfig, path: &Path) -> Result<Option<Vec<String>>, PretrainedError> {
    let classifier = config
        .architectures
        .iter()
        .any(|a| a == "BertForSequenceClassification");
    classifier.then(|| labels(config, path)).transpose()
}

/// The checkpoint's classifier is used when it classifies exactly `classes` on BERT's
/// pooler.
fn keeps_head(checkpoint: Option<&[String]>, classes: &[String], pooling: Pooling) -> bool {
    checkpoint == Some(classes) && pooling == Pooling::Cls
}

/// Refuses what the BERT fedtune builds does not compute, naming the field.
fn check_supported(config: &HfConfig, path: &Path) -> Result<(), PretrainedError> {
    let unsupported = |field: &'static str, value: String, reason: &str| {
        Err(PretrainedError::Unsupported {
            path: path.to_path_buf(),
            field,
            value,
            reason: reason.to_string(),
        })
    };
    if let Some(kind) = &config.model_type
        && kind != "bert"
    {
        return unsupported("model_type", kind.clone(), "fedtune builds BERT encoders (`bert`)");
    }
    if config.hidden_act != "gelu" {
        return unsupported(
            "hidden_act",
            config.hidden_act.clone(),
            "fedtune's BERT uses the exact erf GELU (`gelu`)",
        );
    }
    if let Some(kind) = &config.position_embedding_type
        && kind != "absolute"
    {
        return unsupported(
            "position_embedding_type",
            kind.clone(),
            "fedtune's BERT has absolute position embeddings",
        );
    }
    if config.is_decoder {
        return unsupported("is_decoder", "true".into(), "fedtune's BERT is an encoder");
    }
    if config.add_cross_attention {
        return unsupported(
            "add_cross_attention",
            "true".into(),
            "fedtune's BERT has no cross-attention",
        );
    }
    if let Some(problem) = &config.problem_type
        && problem != "single_label_classification"
    {
        return unsupported(
            "problem_type",
            problem.clone(),
            "fedtune trains single-label classifiers",
        );
    }
    Ok(())
}

/// `id2label`'s names in id order; the ids must be 0, 1, ….
fn labels(config: &HfConfig, path: &Path) -> Result<Vec<String>, PretrainedError> {
    let mut by_id = BTreeMap::new();
    for (id, name) in &config.id2label {
        let id: usize = id.parse().map_err(|_| PretrainedError::Read {
            path: path.to_path_buf(),
            reason: format!("id2label key `{id}` is not a class id"),
        })?;
        by_id.insert(id, name.clone());
    }
    if by_id.keys().copied().ne(0..by_id.len()) {
        return Err(PretrainedError::Read {
            path: path.to_path_buf(),
            reason: "id2label's ids are not 0, 1, 2, …".into(),
        });
    }
    Ok(by_id.into_values().collect())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, PretrainedError> {
    let read = |reason: String| PretrainedError::Read {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| read(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| read(e.to_string()))
}

/// A checkpoint's float tensors by key: shape and values (row-major), read when used.
type Tensors = HashMap<String, Stored>;

/// One checkpoint tensor: its shape and where its values are.
#[derive(Debug)]
struct Stored {
    shape: Vec<usize>,
    values: Values,
}

/// Where a checkpoint tensor's values are.
#[derive(Debug)]
enum Values {
    /// Read already, as f32.
    Read(Vec<f32>),
    /// Bytes `start..start + len` of the file, of `dtype`: read when the model takes the
    /// tensor, so loading never holds the whole file and all its values at once.
    InFile {
        path: PathBuf,
        dtype: safetensors::Dtype,
        start: u64,
        len: usize,
    },
}

impl Stored {
    /// The tensor's values as f32 (taken: each tensor is read once).
    fn take(&mut self) -> Result<Vec<f32>, PretrainedError> {
        match std::mem::replace(&mut self.values, Values::Read(Vec::new())) {
            Values::Read(values) => Ok(values),
            Values::InFile {
                path,
                dtype,
                start,
                len,
            } => {
                use std::io::{Read, Seek, SeekFrom};
                let read = |reason: String| PretrainedError::Read {
                    path: path.clone(),
                    reason,
                };
                let mut file = std::fs::File::open(&path).map_err(|e| read(e.to_string()))?;
                file.seek(SeekFrom::Start(start)).map_err(|e| read(e.to_string()))?;
                let mut bytes = vec![0u8; len];
                file.read_exact(&mut bytes)
                    .map_err(|e| read(format!("truncated tensor data: {e}")))?;
                let mut values = Vec::with_capacity(self.shape.iter().product());
                extend_floats(&mut values, dtype, &bytes);
                Ok(values)
            }
        }
    }
}

/// The folder's weights: `model.safetensors`, else `pytorch_model.bin`.
fn read_checkpoint(dir: &Path) -> Result<(PathBuf, Tensors), PretrainedError> {
    let safetensors = dir.join("model.safetensors");
    if safetensors.is_file() {
        return Ok((safetensors.clone(), read_safetensors(&safetensors)?));
    }
    let bin = dir.join("pytorch_model.bin");
    if bin.is_file() {
        return Ok((bin.clone(), read_pytorch(&bin)?));
    }
    Err(PretrainedError::Read {
        path: dir.to_path_buf(),
        reason: "no model.safetensors or pytorch_model.bin in the folder".into(),
    })
}

/// A safetensors file's float tensors, from its header alone (an 8-byte little-endian
/// length, then JSON naming each tensor's dtype, shape and byte range); each range is
/// checked against the shape and the file's length.
fn read_safetensors(path: &Path) -> Result<Tensors, PretrainedError> {
    use std::io::Read;
    /// Headers above this are not safetensors files anyone wrote by hand or by tool.
    const MAX_HEADER: u64 = 100 << 20;
    let read = |reason: String| PretrainedError::Read {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = std::fs::File::open(path).map_err(|e| read(e.to_string()))?;
    let file_len = file.metadata().map_err(|e| read(e.to_string()))?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|_| read("not a safetensors file (shorter than its header length)".into()))?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER || 8 + len > file_len {
        return Err(read(format!("not a safetensors file (a {len}-byte header)")));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header)
        .map_err(|_| read("not a safetensors file (truncated header)".into()))?;
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| read(format!("not a safetensors file (header: {e})")))?;
    #[derive(Deserialize)]
    struct Entry {
        dtype: String,
        shape: Vec<usize>,
        data_offsets: (u64, u64),
    }
    let data_start = 8 + len;
    let mut tensors = Tensors::new();
    for (name, value) in header {
        if name == "__metadata__" {
            continue;
        }
        let entry: Entry = serde_json::from_value(value).map_err(|e| read(format!("tensor `{name}`: {e}")))?;
        let (dtype, width) = match entry.dtype.as_str() {
            "F32" => (safetensors::Dtype::F32, 4),
            "F64" => (safetensors::Dtype::F64, 8),
            "F16" => (safetensors::Dtype::F16, 2),
            "BF16" => (safetensors::Dtype::BF16, 2),
            // Integer buffers (`position_ids`) are not parameters.
            _ => continue,
        };
        let (start, end) = entry.data_offsets;
        let numel = entry
            .shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
            .ok_or_else(|| read(format!("tensor `{name}`: its shape overflows")))?;
        if end < start || end - start != numel.saturating_mul(width) || data_start + end > file_len {
            return Err(read(format!(
                "tensor `{name}`: bytes {start}..{end} do not hold a {:?} {} tensor within the file",
                entry.shape, entry.dtype
            )));
        }
        let values = Values::InFile {
            path: path.to_path_buf(),
            dtype,
            start: data_start + start,
            len: (end - start) as usize,
        };
        tensors.insert(
            name,
            Stored {
                shape: entry.shape,
                values,
            },
        );
    }
    Ok(tensors)
}

fn read_pytorch(path: &Path) -> Result<Tensors, PretrainedError> {
    use burn::store::pytorch_reader::{DType, PytorchReader};
    let read = |reason: String| PretrainedError::Read {
        path: path.to_path_buf(),
        reason,
    };
    let reader = PytorchReader::new(path).map_err(|e| read(e.to_string()))?;
    let mut tensors = Tensors::new();
    for (name, tensor) in reader.tensors() {
        let dtype = match tensor.dtype() {
            DType::F32 => safetensors::Dtype::F32,
            DType::F64 => safetensors::Dtype::F64,
            DType::F16 => safetensors::Dtype::F16,
            DType::BF16 => safetensors::Dtype::BF16,
            // Integer buffers (`position_ids`) are not parameters.
            _ => continue,
        };
        let bytes = tensor.read().map_err(|e| read(e.to_string()))?;
        let mut values = Vec::new();
        extend_floats(&mut values, dtype, &bytes);
        if values.len() != tensor.num_elements() {
            return Err(read(format!("tensor `{name}` holds fewer values than its shape")));
        }
        tensors.insert(
            name.clone(),
            Stored {
                shape: tensor.shape().to_vec(),
                values: Values::Read(values),
            },
        );
    }
    Ok(tensors)
}

/// The checkpoint's tensors in `spec`'s manifest order, in Burn's conventions; every
/// mismatch listed at once. `keep_head` takes the classifier from the checkpoint.
fn map_onto(
    spec: &BertSpec,
    tensors: &mut Tensors,
    prefixed: bool,
    keep_head: bool,
    seed: u64,
    path: &Path,
    notes: &mut Vec<String>,
) -> Result<Vec<f32>, PretrainedError> {
    let mut params = Vec::with_capacity(Architecture::manifest(spec).numel());
    let mut used = BTreeSet::new();
    let (mut missing, mut mismatched) = (Vec::new(), Vec::new());
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    for (tensor, init) in spec.tensors() {
        let name = &tensor.name;
        if name.starts_with("classifier.") && !keep_head {
            init.fill(tensor.numel(), &mut rng, &mut params);
            continue;
        }
        let candidates = checkpoint_keys(name, prefixed);
        let Some(key) = candidates.iter().find(|key| tensors.contains_key(*key)).cloned() else {
            missing.push(candidates[0].clone());
            params.resize(params.len() + tensor.numel(), 0.0);
            continue;
        };
        let stored = tensors.get_mut(&key).expect("the key was just found");
        let shape = stored.shape.clone();
        used.insert(key.clone());
        // Linear weights are `[out, in]` in the checkpoint, `[in, out]` here.
        let transposed = tensor.shape.len() == 2 && !name.contains("embeddings");
        let expected: Vec<usize> = if transposed {
            vec![tensor.shape[1], tensor.shape[0]]
        } else {
            tensor.shape.clone()
        };
        if shape != expected {
            mismatched.push(format!("{key} (model {expected:?}, file {shape:?})"));
            params.resize(params.len() + tensor.numel(), 0.0);
            continue;
        }
        let values = stored.take()?;
        if transposed {
            let (rows, cols) = (shape[0], shape[1]);
            let values = &values;
            params.extend((0..cols).flat_map(|c| (0..rows).map(move |r| values[r * cols + c])));
        } else {
            params.extend_from_slice(&values);
        }
    }
    let ignored = |key: &str| {
        key.ends_with("position_ids")
            || (spec.pooling == Pooling::Mean && key.contains("pooler."))
            || (!keep_head && key.starts_with("classifier."))
    };
    let mut unexpected: Vec<String> = tensors
        .keys()
        .filter(|k| !used.contains(*k) && !ignored(k))
        .cloned()
        .collect();
    unexpected.sort();
    missing.sort();
    if !(missing.is_empty() && unexpected.is_empty() && mismatched.is_empty()) {
        return Err(WeightsError::Mismatch {
            path: path.to_path_buf(),
            missing,
            unexpected,
            mismatched,
        }
        .into());
    }
    if !keep_head && tensors.keys().any(|k| k.starts_with("classifier.")) {
        notes.push("the checkpoint's classifier is left out".into());
    }
    Ok(params)
}

/// The keys a manifest tensor may have in a checkpoint, the usual one first: without the
/// `bert.` prefix in a `BertModel` file, Hugging Face's `weight` / `bias` for a layer
/// norm's `gamma` / `beta` (old checkpoints keep `gamma` / `beta`).
fn checkpoint_keys(name: &str, prefixed: bool) -> Vec<String> {
    let name = match name.strip_prefix("bert.") {
        Some(inner) if !prefixed => inner,
        _ => name,
    };
    if name.contains("LayerNorm.") {
        if let Some(stem) = name.strip_suffix(".gamma") {
            return vec![format!("{stem}.weight"), name.to_string()];
        }
        if let Some(stem) = name.strip_suffix(".beta") {
            return vec![format!("{stem}.bias"), name.to_string()];
        }
    }
    vec![name.to_string()]
}

/// Writes a BERT classifier as a Hugging Face folder `dir`, which
/// `BertForSequenceClassification.from_pretrained(dir)` loads: `model.safetensors` with
/// that class's keys (`bert.…`, `classifier.…`; linear weights `[out, in]`, layer norms
/// `weight` / `bias`), `config.json` (the source folder's, with this model's sizes,
/// `BertForSequenceClassification` as its architecture and `classes` as its `id2label`)
/// and the source folder's tokenizer files. `params` lay out `spec` (adapters merged
/// already). Under mean pooling there is no pooler to write: Hugging Face's class then
/// starts its pooler fresh, and only fedtune computes the model exactly.
///
/// # Errors
/// [`PretrainedError::Read`] when `params` does not fit `spec` or a file cannot be
/// written.
pub fn write_folder(
    dir: &Path,
    spec: &BertSpec,
    params: &[f32],
    classes: &[String],
    source: &Path,
) -> Result<(), PretrainedError> {
    use safetensors::{Dtype, tensor::TensorView};
    let failed = |path: &Path, reason: String| PretrainedError::Read {
        path: path.to_path_buf(),
        reason,
    };
    let tensors = spec.tensors();
    let numel: usize = tensors.iter().map(|(t, _)| t.numel()).sum();
    if params.len() != numel {
        return Err(failed(
            dir,
            format!("{} parameters for a model of {numel}", params.len()),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| failed(dir, e.to_string()))?;
    let mut entries = Vec::with_capacity(tensors.len());
    let mut offset = 0;
    for (tensor, _) in &tensors {
        let values = &params[offset..offset + tensor.numel()];
        offset += tensor.numel();
        let key = checkpoint_keys(&tensor.name, true).swap_remove(0);
        let transposed = tensor.shape.len() == 2 && !tensor.name.contains("embeddings");
        let (shape, bytes): (Vec<usize>, Vec<u8>) = if transposed {
            let (rows, cols) = (tensor.shape[0], tensor.shape[1]);
            let bytes = (0..cols)
                .flat_map(|c| (0..rows).map(move |r| values[r * cols + c]))
                .flat_map(f32::to_le_bytes)
                .collect();
            (vec![cols, rows], bytes)
        } else {
            (
                tensor.shape.clone(),
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        };
        entries.push((key, shape, bytes));
    }
    let weights = dir.join("model.safetensors");
    let views = entries
        .iter()
        .map(|(key, shape, bytes)| TensorView::new(Dtype::F32, shape.clone(), bytes).map(|v| (key.as_str(), v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| failed(&weights, e.to_string()))?;
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), &weights).map_err(|e| failed(&weights, e.to_string()))?;

    let mut config: serde_json::Value = std::fs::read_to_string(source.join("config.json"))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .filter(serde_json::Value::is_object)
        .unwrap_or_else(|| serde_json::json!({}));
    let id2label: serde_json::Map<String, serde_json::Value> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (i.to_string(), c.clone().into()))
        .collect();
    let label2id: serde_json::Map<String, serde_json::Value> =
        classes.iter().enumerate().map(|(i, c)| (c.clone(), i.into())).collect();
    for (key, value) in [
        ("architectures", serde_json::json!(["BertForSequenceClassification"])),
        ("model_type", "bert".into()),
        ("vocab_size", spec.vocab.into()),
        ("hidden_size", spec.hidden.into()),
        ("num_hidden_layers", spec.layers.into()),
        ("num_attention_heads", spec.heads.into()),
        ("intermediate_size", spec.intermediate.into()),
        ("max_position_embeddings", spec.max_positions.into()),
        ("type_vocab_size", spec.type_vocab.into()),
        ("layer_norm_eps", spec.layer_norm_eps.into()),
        ("hidden_act", "gelu".into()),
        ("id2label", id2label.into()),
        ("label2id", label2id.into()),
    ] {
        config[key] = value;
    }
    let config_path = dir.join("config.json");
    let text = serde_json::to_string_pretty(&config).map_err(|e| failed(&config_path, e.to_string()))?;
    std::fs::write(&config_path, text + "\n").map_err(|e| failed(&config_path, e.to_string()))?;
    for file in [
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "special_tokens_map.json",
    ] {
        let from = source.join(file);
        if from.is_file() && from != dir.join(file) {
            std::fs::copy(&from, dir.join(file)).map_err(|e| failed(&from, e.to_string()))?;
        }
    }
    Ok(())
}
