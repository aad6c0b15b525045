//! Weight files in and out, through burn-store: a starting checkpoint from safetensors
//! (what PyTorch and Hugging Face users export), a PyTorch `.pt` / `.pth` state dict, or
//! Burn's own burnpack; the trained model out as safetensors.
//!
//! Tensors map onto the model by module path (the manifest's names), after the file's
//! keys are rewritten by the `remap` rules (regular expressions, applied in order). A
//! file in PyTorch's layout has its linear weights transposed (`[out, in]` → `[in, out]`)
//! and its normalisation layers' `weight` / `bias` read as `gamma` / `beta`. Every tensor
//! the model needs must be in the file with the right shape, and every tensor in the file
//! must be used (but a batch norm's `num_batches_tracked` counter, which Burn does not
//! keep): anything else is an error that lists each missing, unexpected and mis-shaped
//! tensor.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{
    ApplyError, ApplyResult, BurnToPyTorchAdapter, BurnpackStore, KeyRemapper, ModuleSnapshot, PyTorchToBurnAdapter,
    PytorchStore, SafetensorsStore,
};
use fedtune_protocol::{Manifest, ModelSpec};
use serde::{Deserialize, Serialize};

use crate::model::{Blueprint, Device, ModelError, NotInZoo, ZooTask, flatten, load, with_zoo_model};

/// How the tensors in a weights file are laid out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// Burn's for a safetensors file that Burn or fedtune wrote (its `producer` metadata
    /// says so) and for burnpack; PyTorch's for every other file.
    #[default]
    Auto,
    /// PyTorch's conventions: linear weights `[out, in]`, normalisation `weight` / `bias`.
    Pytorch,
    /// Burn's conventions, as fedtune writes them: linear weights `[in, out]`.
    Burn,
}

impl std::str::FromStr for Layout {
    type Err = String;

    /// `auto`, `burn` or `pytorch`, as the command-line flags and TOML write it.
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(Self::Auto),
            "burn" => Ok(Self::Burn),
            "pytorch" => Ok(Self::Pytorch),
            other => Err(format!("`{other}`: expected auto, burn or pytorch")),
        }
    }
}

/// A weights file to start a model from. In TOML either a path (`init = "model.pt"`) or a
/// table (`init = { path = "model.safetensors", layout = "pytorch", remap = [["^fc1\\.",
/// "head.0."]] }`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "SourceRepr")]
pub struct WeightsSource {
    /// The file: `.safetensors`, `.pt` / `.pth` (a PyTorch state dict) or `.bpk` (burnpack).
    pub path: PathBuf,
    /// How its tensors are laid out (`.pt` files are always PyTorch's, `.bpk` Burn's).
    pub layout: Layout,
    /// Key rewrites `(pattern, replacement)` applied in order to the file's names before
    /// they are matched to module paths, e.g. `("^fc1\\.", "head.0.")`.
    pub remap: Vec<(String, String)>,
}

/// The forms a [`WeightsSource`] takes in configuration.
#[derive(Deserialize)]
#[serde(untagged)]
enum SourceRepr {
    Path(PathBuf),
    Table {
        path: PathBuf,
        #[serde(default)]
        layout: Layout,
        #[serde(default)]
        remap: Vec<(String, String)>,
    },
}

impl From<SourceRepr> for WeightsSource {
    fn from(repr: SourceRepr) -> Self {
        match repr {
            SourceRepr::Path(path) => Self::new(path),
            SourceRepr::Table { path, layout, remap } => Self { path, layout, remap },
        }
    }
}

impl WeightsSource {
    /// `path`, its layout told from the file, with no key rewrites.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            layout: Layout::Auto,
            remap: Vec::new(),
        }
    }

    /// Adds a key rewrite.
    #[must_use]
    pub fn remap(mut self, pattern: impl Into<String>, replacement: impl Into<String>) -> Self {
        self.remap.push((pattern.into(), replacement.into()));
        self
    }

    /// Sets the layout.
    #[must_use]
    pub fn layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }
}

/// Why a weights file could not be read into a model or written out.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file's extension names no format this reads.
    #[error("{path}: unknown weights format (expected .safetensors, .pt / .pth or .bpk)")]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// A key rewrite is not a valid regular expression.
    #[error("key rewrite `{pattern}` is not a valid regular expression: {reason}")]
    BadRemap {
        /// The pattern.
        pattern: String,
        /// What the regex parser said.
        reason: String,
    },
    /// The file could not be read or parsed.
    #[error("{path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The file's tensors do not match the model.
    #[error("{path} does not fit the model:{}", mismatch_lines(.missing, .unexpected, .mismatched))]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// Module paths the model needs that the file lacks (sorted).
        missing: Vec<String>,
        /// File tensors (after rewrites) the model has no place for (sorted).
        unexpected: Vec<String>,
        /// Tensors present with another shape or type, each described.
        mismatched: Vec<String>,
    },
    /// The model could not be built or its parameters laid out.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A custom spec has no architecture to load weights into.
    #[error("weights load into the zoo's models (MLP, CNN), not custom model `{0}`")]
    Unsupported(String),
    /// The spec is inconsistent.
    #[error("{0}")]
    InvalidModel(String),
    /// The file could not be written.
    #[error("writing {path}: {reason}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

impl From<NotInZoo> for WeightsError {
    fn from(custom: NotInZoo) -> Self {
        WeightsError::Unsupported(custom.name)
    }
}

fn mismatch_lines(missing: &[String], unexpected: &[String], mismatched: &[String]) -> String {
    let mut text = String::new();
    for (what, names) in [
        ("missing from the file", missing),
        ("in the file but not in the model", unexpected),
        ("wrong shape or type", mismatched),
    ] {
        if !names.is_empty() {
            text.push_str(&format!("\n  {what} ({}): {}", names.len(), names.join(", ")));
        }
    }
    text
}

/// Reads `source` into the zoo model `spec` and returns its parameters in manifest order.
///
/// # Errors
/// [`WeightsError`] saying what is wrong with the file, naming every tensor that does not
/// fit.
pub fn import(spec: &ModelSpec, source: &WeightsSource, device: &Device) -> Result<Vec<f32>, WeightsError> {
    struct Import<'a> {
        source: &'a WeightsSource,
        device: Device,
    }
    impl ZooTask for Import<'_> {
        type Output = Result<Vec<f32>, WeightsError>;
        fn run<B: Blueprint>(self, model: &B) -> Self::Output {
            Ok(flatten(&import_into(model.build(&self.device), self.source)?))
        }
    }
    spec.validate().map_err(|e| WeightsError::InvalidModel(e.to_string()))?;
    if let ModelSpec::Lora(lora) = spec {
        return Err(WeightsError::InvalidModel(format!(
            "a weights file holds a plain model: import it into the LoRA base ({}), then add adapters",
            lora.base.describe()
        )));
    }
    let task = Import {
        source,
        device: device.clone().without_autodiff(),
    };
    with_zoo_model(spec, task)?
}

/// Reads `source` into any Burn module, every parameter of which it must provide.
///
/// # Errors
/// As [`import`].
pub fn import_into<M: Module>(mut model: M, source: &WeightsSource) -> Result<M, WeightsError> {
    let path = &source.path;
    let read = |reason: String| WeightsError::Read {
        path: path.clone(),
        reason,
    };
    if !path.is_file() {
        return Err(read("no such file".into()));
    }
    let mut remapper = KeyRemapper::new();
    for (pattern, replacement) in &source.remap {
        remapper = remapper
            .add_pattern(pattern, replacement.as_str())
            .map_err(|e| WeightsError::BadRemap {
                pattern: pattern.clone(),
                reason: e.to_string(),
            })?;
    }
    // Module paths name a keyword field as the keyword (`attention.self`, see
    // `model::path_segment`); Burn's own paths keep its underscore.
    remapper = remapper
        .add_pattern(KEYWORD_IN_FILE, KEYWORD_IN_BURN)
        .expect("the keyword pattern is a valid regular expression");
    // Partial and unvalidated: the result lists every problem, reported all at once below.
    let result = match extension(path).as_deref() {
        Some("safetensors") => {
            let store = SafetensorsStore::from_file(path)
                .remap(remapper)
                .validate(false)
                .allow_partial(true);
            let layout = match source.layout {
                Layout::Auto => safetensors_layout(path).map_err(read)?,
                layout => layout,
            };
            let mut store = match layout {
                Layout::Burn => store,
                _ => store.with_from_adapter(PyTorchToBurnAdapter),
            };
            model.load_from(&mut store).map_err(|e| read(e.to_string()))?
        }
        Some("pt" | "pth") => {
            let mut store = PytorchStore::from_file(path)
                .remap(remapper)
                .validate(false)
                .allow_partial(true);
            model.load_from(&mut store).map_err(|e| read(e.to_string()))?
        }
        Some("bpk") => {
            let mut store = BurnpackStore::from_file(path)
                .remap(remapper)
                .validate(false)
                .allow_partial(true);
            model.load_from(&mut store).map_err(|e| read(e.to_string()))?
        }
        _ => return Err(WeightsError::UnknownFormat { path: path.clone() }),
    };
    check(path, &result)?;
    Ok(model)
}

/// The layout a safetensors file's `layout` metadata names (fedtune writes it); else
/// Burn's when its `producer` metadata names Burn or fedtune, PyTorch's otherwise. Reads
/// only the header (an 8-byte little-endian length, then JSON).
fn safetensors_layout(path: &Path) -> Result<Layout, String> {
    use std::io::Read;
    /// Headers above this are not safetensors files anyone wrote by hand or by tool.
    const MAX_HEADER: u64 = 100 << 20;
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|_| "not a safetensors file (shorter than its header length)".to_string())?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER {
        return Err(format!("not a safetensors file (a {len}-byte header)"));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header)
        .map_err(|_| "not a safetensors file (truncated header)".to_string())?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| format!("not a safetensors file (header: {e})"))?;
    let field = |name: &str| {
        header
            .get("__metadata__")
            .and_then(|m| m.get(name))
            .and_then(serde_json::Value::as_str)
    };
    Ok(match (field("layout"), field("producer")) {
        (Some("pytorch"), _) => Layout::Pytorch,
        (Some("burn"), _) | (None, Some("burn" | "fedtune")) => Layout::Burn,
        _ => Layout::Pytorch,
    })
}

/// A `self` segment of a file's tensor name, and the Burn path segment it reads into: a
/// field cannot be named `self`, so fedtune's BERT names it `self_` (module paths and
/// files spell it `self`, as Hugging Face does).
const KEYWORD_IN_FILE: &str = r"(^|\.)self\.";
const KEYWORD_IN_BURN: &str = "${1}self_.";
/// The same, written out.
const KEYWORD_IN_BURN_PATH: &str = r"(^|\.)self_\.";
const KEYWORD_IN_FILE_NAME: &str = "${1}self.";

fn extension(path: &Path) -> Option<String> {
    path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase())
}

/// Every tensor the model needs was applied, none was left over, none failed.
fn check(path: &Path, result: &ApplyResult) -> Result<(), WeightsError> {
    // Named as module paths and files name them (`attention.self`, not Burn's `self_`).
    let named = |path: &str| path.replace(".self_.", ".self.");
    let mut missing: Vec<String> = result.missing.iter().map(|(p, _)| named(p)).collect();
    missing.sort();
    // PyTorch's batch norms count their batches; Burn's keep no such counter.
    let mut unexpected: Vec<String> = result
        .unused
        .iter()
        .filter(|name| !name.ends_with(".num_batches_tracked"))
        .map(|name| named(name))
        .collect();
    unexpected.sort();
    let mismatched: Vec<String> = result
        .errors
        .iter()
        .map(|e| match e {
            ApplyError::ShapeMismatch { path, expected, found } => {
                format!(
                    "{} (model {:?}, file {:?})",
                    named(path),
                    expected.as_slice(),
                    found.as_slice()
                )
            }
            other => other.to_string(),
        })
        .collect();
    if missing.is_empty() && unexpected.is_empty() && mismatched.is_empty() {
        return Ok(());
    }
    Err(WeightsError::Mismatch {
        path: path.to_path_buf(),
        missing,
        unexpected,
        mismatched,
    })
}

/// Writes the zoo model `spec` with `params` (manifest order) to `path` as safetensors:
/// one tensor per manifest entry, named by its module path (replacing a file already
/// there), in Burn's layout or, with [`Layout::Pytorch`], PyTorch's (linear weights
/// `[out, in]`, normalisation `weight` / `bias`), which `load_state_dict` takes. The
/// header says which ([`metadata`]).
///
/// # Errors
/// [`WeightsError::Model`] when `params` does not fit `spec`, [`WeightsError::Write`].
pub fn export(
    spec: &ModelSpec,
    params: &[f32],
    path: &Path,
    layout: Layout,
    device: &Device,
) -> Result<(), WeightsError> {
    struct Export<'a> {
        params: &'a [f32],
        path: &'a Path,
        layout: Layout,
        device: Device,
    }
    impl ZooTask for Export<'_> {
        type Output = Result<(), WeightsError>;
        fn run<B: Blueprint>(self, model: &B) -> Self::Output {
            // Adapters, if any, merged into their weights: the file holds a plain model.
            let module = load(model.build(&self.device), self.params, &model.manifest())?.materialize();
            export_module_as(&module, self.path, self.layout)
        }
    }
    spec.validate().map_err(|e| WeightsError::InvalidModel(e.to_string()))?;
    let task = Export {
        params,
        path,
        layout,
        device: device.clone().without_autodiff(),
    };
    with_zoo_model(spec, task)?
}

/// The header metadata of a safetensors file fedtune writes: `format`, `producer`
/// (`fedtune`), `version` (fedtune's) and `layout` (`burn` or `pytorch`; [`Layout::Auto`]
/// writes Burn's).
#[must_use]
pub fn metadata(layout: Layout) -> Vec<(&'static str, String)> {
    let layout = match layout {
        Layout::Pytorch => "pytorch",
        Layout::Auto | Layout::Burn => "burn",
    };
    vec![
        ("format", "safetensors".into()),
        ("producer", "fedtune".into()),
        ("version", env!("CARGO_PKG_VERSION").into()),
        ("layout", layout.into()),
    ]
}

/// A custom model's layout and starting values from a safetensors file, such as a
/// PyTorch `state_dict` saved with `safetensors.torch.save_file`: one tensor per entry,
/// named as in the file and in the file's order, its values as f32 (f16, bf16 and f64
/// are converted). Integer and boolean tensors (BatchNorm's `num_batches_tracked`, say)
/// are refused: only floating-point tensors train and average.
///
/// # Errors
/// [`WeightsError::Read`] when the file cannot be read, is not safetensors, holds a
/// tensor that is not floating-point, or no tensor at all.
pub fn read_custom(path: &Path) -> Result<(Manifest, Vec<f32>), WeightsError> {
    use safetensors::SafeTensors;
    let read = |reason: String| WeightsError::Read {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| read(e.to_string()))?;
    let (_, metadata) = SafeTensors::read_metadata(&bytes).map_err(|e| read(format!("not a safetensors file: {e}")))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| read(format!("not a safetensors file: {e}")))?;
    let mut tensors = Vec::new();
    let mut values = Vec::new();
    let mut refused = Vec::new();
    for name in metadata.offset_keys() {
        let view = file.tensor(&name).map_err(|e| read(e.to_string()))?;
        let data = view.data();
        let before = values.len();
        if !extend_floats(&mut values, view.dtype(), data) {
            refused.push(format!("`{name}` ({:?})", view.dtype()));
            continue;
        }
        let spec = fedtune_protocol::TensorSpec::new(name, view.shape().to_vec());
        if values.len() - before != spec.numel() {
            return Err(read(format!(
                "tensor `{}` holds fewer values than its shape",
                spec.name
            )));
        }
        tensors.push(spec);
    }
    if !refused.is_empty() {
        return Err(read(format!(
            "only floating-point tensors federate; drop {} from the state_dict before saving it (load_state_dict \
             with strict=False restores the rest)",
            refused.join(", ")
        )));
    }
    if tensors.is_empty() {
        return Err(read("the file holds no tensor".into()));
    }
    Ok((Manifest { tensors }, values))
}

/// Appends a tensor's little-endian bytes of `dtype` to `values` as f32 (f64, f16 and
/// bf16 converted); false, with nothing appended, for a dtype that is not floating-point.
pub(crate) fn extend_floats(values: &mut Vec<f32>, dtype: safetensors::Dtype, data: &[u8]) -> bool {
    use safetensors::Dtype;
    match dtype {
        Dtype::F32 => values.extend(
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        Dtype::F64 => values.extend(
            data.chunks_exact(8)
                .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32),
        ),
        Dtype::F16 => values.extend(
            data.chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        Dtype::BF16 => values.extend(
            data.chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        _ => return false,
    }
    true
}

/// Writes the trainable tensors of `params` (laid out by `manifest`; for a LoRA model, its
/// adapters) to `path` as safetensors named by module path, with `metadata` (e.g. the
/// LoRA rank and alpha) in the header: what a fine-tune changed, without the base.
///
/// # Errors
/// [`WeightsError::InvalidModel`] when `params` does not fit `manifest` or nothing is
/// trainable, [`WeightsError::Write`].
pub fn export_trainable(
    manifest: &Manifest,
    frozen: &[String],
    params: &[f32],
    metadata: &[(&str, String)],
    path: &Path,
) -> Result<(), WeightsError> {
    use safetensors::{Dtype, tensor::TensorView};
    if params.len() != manifest.numel() {
        return Err(WeightsError::InvalidModel(format!(
            "{} parameters for a manifest of {}",
            params.len(),
            manifest.numel()
        )));
    }
    let trainable = fedtune_protocol::freeze::Trainable::new(manifest, frozen)
        .map_err(|e| WeightsError::InvalidModel(e.to_string()))?;
    let mut tensors = Vec::new();
    let mut offset = 0;
    for tensor in &manifest.tensors {
        let end = offset + tensor.numel();
        if trainable.contains(offset..end) {
            let bytes: Vec<u8> = params[offset..end].iter().flat_map(|v| v.to_le_bytes()).collect();
            tensors.push((tensor.name.clone(), tensor.shape.clone(), bytes));
        }
        offset = end;
    }
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| TensorView::new(Dtype::F32, shape.clone(), bytes).map(|view| (name.as_str(), view)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| WeightsError::Write {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let mut info: std::collections::HashMap<String, String> = self::metadata(Layout::Burn)
        .into_iter()
        .chain(metadata.iter().cloned())
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    info.insert("producer".into(), "fedtune".into());
    safetensors::serialize_to_file(views, Some(info), path).map_err(|e| WeightsError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Writes any Burn module to `path` as safetensors in Burn's layout, tensors named by
/// module path (replacing a file already there).
///
/// # Errors
/// [`WeightsError::Write`].
pub fn export_module<M: Module>(model: &M, path: &Path) -> Result<(), WeightsError> {
    export_module_as(model, path, Layout::Burn)
}

/// As [`export_module`], in `layout`.
///
/// # Errors
/// [`WeightsError::Write`].
pub fn export_module_as<M: Module>(model: &M, path: &Path, layout: Layout) -> Result<(), WeightsError> {
    let names = KeyRemapper::new()
        .add_pattern(KEYWORD_IN_BURN_PATH, KEYWORD_IN_FILE_NAME)
        .expect("the keyword pattern is a valid regular expression");
    let mut store = SafetensorsStore::from_file(path)
        .overwrite(true)
        .clear_metadata()
        .remap(names);
    for (key, value) in metadata(layout) {
        store = store.metadata(key, value);
    }
    if layout == Layout::Pytorch {
        store = store.with_to_adapter(BurnToPyTorchAdapter);
    }
    model.save_into(&mut store).map_err(|e| WeightsError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::default_device;
    use fedtune_protocol::{CnnSpec, MlpSpec};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fedtune-weights-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn an_exported_model_imports_to_the_same_parameters() {
        let dir = temp("roundtrip");
        for spec in [
            ModelSpec::Mlp(MlpSpec {
                input: 6,
                hidden: vec![5, 4],
                classes: 3,
            }),
            ModelSpec::Cnn(CnnSpec::lenet(1, 28, 28, 10)),
        ] {
            let params = spec.init_params(&mut StdRng::seed_from_u64(9));
            for layout in [Layout::Burn, Layout::Pytorch] {
                let path = dir.join("model.safetensors");
                export(&spec, &params, &path, layout, &default_device()).unwrap();
                // Read back by what the header says, and as the layout named.
                for read_as in [Layout::Auto, layout] {
                    let back = import(&spec, &WeightsSource::new(&path).layout(read_as), &default_device()).unwrap();
                    assert_eq!(back, params, "{} written {layout:?} read {read_as:?}", spec.describe());
                }
            }
        }
    }

    /// The header of `path`: its tensors' shapes and its metadata.
    fn header(path: &Path) -> serde_json::Value {
        let bytes = std::fs::read(path).unwrap();
        let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        serde_json::from_slice(&bytes[8..8 + len]).unwrap()
    }

    #[test]
    fn a_pytorch_layout_export_is_what_load_state_dict_takes_and_says_so() {
        let dir = temp("pytorch-out");
        let spec = ModelSpec::Mlp(MlpSpec {
            input: 6,
            hidden: vec![5],
            classes: 3,
        });
        let params = spec.init_params(&mut StdRng::seed_from_u64(3));
        let (burn, torch) = (dir.join("burn.safetensors"), dir.join("torch.safetensors"));
        export(&spec, &params, &burn, Layout::Burn, &default_device()).unwrap();
        export(&spec, &params, &torch, Layout::Pytorch, &default_device()).unwrap();
        let (burn, torch) = (header(&burn), header(&torch));
        // nn.Linear(6, 5).weight is [out, in] = [5, 6]; Burn keeps [in, out].
        assert_eq!(burn["layers.0.weight"]["shape"], serde_json::json!([6, 5]));
        assert_eq!(torch["layers.0.weight"]["shape"], serde_json::json!([5, 6]));
        assert_eq!(torch["layers.0.bias"]["shape"], serde_json::json!([5]));
        for (file, layout) in [(&burn, "burn"), (&torch, "pytorch")] {
            let meta = &file["__metadata__"];
            assert_eq!(meta["layout"], layout, "{meta}");
            assert_eq!(meta["producer"], "fedtune", "{meta}");
            assert_eq!(
                meta["version"],
                env!("CARGO_PKG_VERSION"),
                "fedtune's version, not Burn's: {meta}"
            );
        }
    }

    #[test]
    fn a_file_for_another_model_lists_every_missing_extra_and_misshaped_tensor() {
        let dir = temp("mismatch");
        let written = ModelSpec::Mlp(MlpSpec {
            input: 6,
            hidden: vec![5],
            classes: 3,
        });
        let path = dir.join("small.safetensors");
        let params = written.init_params(&mut StdRng::seed_from_u64(1));
        export(&written, &params, &path, Layout::Burn, &default_device()).unwrap();
        // Two hidden layers (layers.2 missing from the file) and 4 inputs (layers.0 mis-shaped).
        let wanted = ModelSpec::Mlp(MlpSpec {
            input: 4,
            hidden: vec![5, 3],
            classes: 3,
        });
        let source = WeightsSource::new(&path)
            .layout(Layout::Burn)
            .remap(r"^layers\.1\.bias$", "extra.bias");
        let err = import(&wanted, &source, &default_device()).unwrap_err();
        let WeightsError::Mismatch {
            missing,
            unexpected,
            mismatched,
            ..
        } = &err
        else {
            panic!("{err}")
        };
        assert_eq!(missing, &["layers.1.bias", "layers.2.bias", "layers.2.weight"]);
        assert_eq!(unexpected, &["extra.bias"]);
        assert!(
            mismatched.len() == 1 && mismatched[0].starts_with("layers.0.weight"),
            "{mismatched:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("missing from the file (3)") && text.contains("extra.bias"),
            "{text}"
        );
    }

    #[test]
    fn a_weights_source_reads_from_a_path_or_a_table() {
        #[derive(Deserialize)]
        struct Model {
            init: WeightsSource,
        }
        let plain: Model = toml::from_str("init = \"lenet.pt\"").unwrap();
        assert_eq!(plain.init, WeightsSource::new("lenet.pt"));
        let table: Model = toml::from_str(
            "init = { path = \"m.safetensors\", layout = \"pytorch\", remap = [[\"^fc1\\\\.\", \"head.0.\"]] }",
        )
        .unwrap();
        assert_eq!(
            table.init,
            WeightsSource::new("m.safetensors")
                .layout(Layout::Pytorch)
                .remap(r"^fc1\.", "head.0.")
        );
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let spec = ModelSpec::Mlp(MlpSpec {
            input: 2,
            hidden: vec![],
            classes: 2,
        });
        let dir = temp("bad");
        let missing = import(
            &spec,
            &WeightsSource::new(dir.join("nope.safetensors")),
            &default_device(),
        );
        assert!(matches!(missing, Err(WeightsError::Read { .. })));
        let junk = dir.join("junk.safetensors");
        std::fs::write(&junk, b"not a safetensors file").unwrap();
        assert!(matches!(
            import(&spec, &WeightsSource::new(&junk), &default_device()),
            Err(WeightsError::Read { .. })
        ));
        let txt = dir.join("weights.txt");
        std::fs::write(&txt, b"1 2 3").unwrap();
        assert!(matches!(
            import(&spec, &WeightsSource::new(&txt), &default_device()),
            Err(WeightsError::UnknownFormat { .. })
        ));
        assert!(matches!(
            import(&spec, &WeightsSource::new(&junk).remap("(", "x"), &default_device()),
            Err(WeightsError::BadRemap { .. })
        ));
    }

    #[test]
    fn a_merged_lora_export_gives_the_adapted_models_outputs_and_the_adapters_export_alone() {
        use crate::model::Classifier;
        use burn::tensor::{Tensor, TensorData};
        use fedtune_protocol::LoraSpec;
        use rand::RngExt;
        let dir = temp("lora");
        let lora = LoraSpec {
            base: Box::new(ModelSpec::Cnn(CnnSpec::lenet(1, 28, 28, 10))),
            rank: 4,
            alpha: 8.0,
            targets: vec!["head.*".into()],
            train: Vec::new(),
        };
        let spec = ModelSpec::Lora(lora.clone());
        let manifest = spec.manifest();
        let mut rng = StdRng::seed_from_u64(5);
        // Trained-looking adapters: B is no longer zero, so the adapters change the outputs.
        let params: Vec<f32> = spec
            .init_params(&mut rng)
            .into_iter()
            .map(|v| if v == 0.0 { rng.random_range(-0.05f32..0.05) } else { v })
            .collect();
        let device = default_device();
        let rows: Vec<f32> = (0..2 * 784).map(|i| ((i * 7) % 31) as f32 / 31.0).collect();
        let x = || Tensor::<2>::from_data(TensorData::new(rows.clone(), [2, 784]), &device);
        struct Logits<'a>(&'a [f32], &'a Manifest, Tensor<2>);
        impl ZooTask for Logits<'_> {
            type Output = Vec<f32>;
            fn run<B: Blueprint>(self, model: &B) -> Vec<f32> {
                let model = load(model.build(&default_device()), self.0, self.1).unwrap();
                model.forward(self.2).into_data().try_to_vec::<f32>().unwrap()
            }
        }
        let adapted = with_zoo_model(&spec, Logits(&params, &manifest, x())).unwrap();
        let base_only = with_zoo_model(&lora.base, Logits(&lora.merged(&params), &lora.base.manifest(), x())).unwrap();
        let merged_path = dir.join("merged.safetensors");
        export(&spec, &params, &merged_path, Layout::Burn, &device).unwrap();
        let imported = import(&lora.base, &WeightsSource::new(&merged_path), &device).unwrap();
        let from_file = with_zoo_model(&lora.base, Logits(&imported, &lora.base.manifest(), x())).unwrap();
        for ((a, f), h) in adapted.iter().zip(&from_file).zip(&base_only) {
            assert!((a - f).abs() < 1e-4, "adapted {a} vs merged file {f}");
            assert!((a - h).abs() < 1e-4, "adapted {a} vs host merge {h}");
        }
        // The adapters differ from a plain base: the check above is not vacuous.
        let plain = with_zoo_model(
            &lora.base,
            Logits(&spec_base(&lora, &params), &lora.base.manifest(), x()),
        )
        .unwrap();
        assert!(adapted.iter().zip(&plain).any(|(a, p)| (a - p).abs() > 1e-3));

        let adapters_path = dir.join("adapters.safetensors");
        export_trainable(&manifest, &[], &params, &[("lora_rank", "4".into())], &adapters_path).unwrap();
        let bytes = std::fs::read(&adapters_path).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut names = file.names();
        names.sort();
        assert_eq!(names.len(), 6);
        assert!(
            names.iter().all(|n| n.ends_with(".lora.a") || n.ends_with(".lora.b")),
            "{names:?}"
        );
        let a0 = file.tensor("head.0.weight.lora.a").unwrap();
        assert_eq!(a0.shape(), &[256, 4]);
        let offset = manifest
            .tensors
            .iter()
            .take_while(|t| t.name != "head.0.weight.lora.a")
            .map(|t| t.numel())
            .sum::<usize>();
        let first = f32::from_le_bytes(a0.data()[..4].try_into().unwrap());
        assert_eq!(first, params[offset]);
        // A LoRA spec is not a target for a plain weights file.
        assert!(matches!(
            import(&spec, &WeightsSource::new(&merged_path), &device),
            Err(WeightsError::InvalidModel(_))
        ));
    }

    #[test]
    fn a_pytorch_batch_norm_cnn_imports_by_pytorch_names() {
        use safetensors::{Dtype, tensor::TensorView};
        let dir = temp("pytorch-bn");
        let spec = ModelSpec::Cnn(CnnSpec {
            channels: 1,
            height: 4,
            width: 4,
            blocks: vec![fedtune_protocol::ConvBlock {
                channels: 2,
                kernel: 3,
                padding: 1,
                pool: 2,
                batch_norm: true,
            }],
            hidden: vec![],
            classes: 3,
            norm_stats: fedtune_protocol::NormStats::Averaged,
        });
        // A PyTorch state dict: BatchNorm2d's weight / bias / running stats and its
        // `num_batches_tracked` counter, a Linear weight as [out, in].
        let f32s = |n: usize, start: f32| (0..n).map(|i| start + i as f32).collect::<Vec<f32>>();
        let tensors: Vec<(&str, Vec<usize>, Vec<f32>)> = vec![
            ("convs.0.conv.weight", vec![2, 1, 3, 3], f32s(18, 0.0)),
            ("convs.0.conv.bias", vec![2], f32s(2, 100.0)),
            ("convs.0.norm.weight", vec![2], f32s(2, 200.0)),
            ("convs.0.norm.bias", vec![2], f32s(2, 300.0)),
            ("convs.0.norm.running_mean", vec![2], f32s(2, 400.0)),
            ("convs.0.norm.running_var", vec![2], f32s(2, 500.0)),
            ("head.0.weight", vec![3, 8], f32s(24, 600.0)),
            ("head.0.bias", vec![3], f32s(3, 700.0)),
        ];
        let bytes: Vec<(String, Vec<usize>, Vec<u8>, Dtype)> = tensors
            .iter()
            .map(|(n, s, v)| {
                (
                    (*n).to_string(),
                    s.clone(),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    Dtype::F32,
                )
            })
            .chain(std::iter::once((
                "convs.0.norm.num_batches_tracked".to_string(),
                vec![],
                7i64.to_le_bytes().to_vec(),
                Dtype::I64,
            )))
            .collect();
        let views: Vec<(&str, TensorView<'_>)> = bytes
            .iter()
            .map(|(n, s, b, d)| (n.as_str(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        let path = dir.join("bn.safetensors");
        safetensors::serialize_to_file(views, None, &path).unwrap();
        let params = import(&spec, &WeightsSource::new(&path), &default_device()).unwrap();
        // Manifest order: conv weight, bias, gamma, beta, running mean, running var, then
        // the head's weight transposed to [in, out].
        assert_eq!(
            &params[18..28],
            &[100.0, 101.0, 200.0, 201.0, 300.0, 301.0, 400.0, 401.0, 500.0, 501.0]
        );
        assert_eq!(&params[28..31], &[600.0, 608.0, 616.0]);
        assert_eq!(&params[52..], &[700.0, 701.0, 702.0]);
    }

    /// The base weights of a LoRA parameter vector, adapters dropped.
    fn spec_base(lora: &fedtune_protocol::LoraSpec, params: &[f32]) -> Vec<f32> {
        let manifest = ModelSpec::Lora(lora.clone()).manifest();
        let mut out = Vec::new();
        let mut offset = 0;
        for t in &manifest.tensors {
            if !fedtune_protocol::model::is_lora_factor(&t.name) {
                out.extend_from_slice(&params[offset..offset + t.numel()]);
            }
            offset += t.numel();
        }
        out
    }
}
