//! Weight files in and out, through burn-store: a starting checkpoint from safetensors
//! (what PyTorch and Hugging Face users export), a PyTorch `.pt` / `.pth` state dict, or
//! Burn's own burnpack; the trained model out as safetensors.
//!
//! Tensors map onto the model by module path (the manifest's names), after the file's
//! keys are rewritten by the `remap` rules (regular expressions, applied in order). A
//! file in PyTorch's layout has its linear weights transposed (`[out, in]` → `[in, out]`)
//! and its normalisation layers' `weight` / `bias` read as `gamma` / `beta`. Every tensor
//! the model needs must be in the file with the right shape, and every tensor in the file
//! must be used: anything else is an error that lists each missing, unexpected and
//! mis-shaped tensor.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{
    ApplyError, ApplyResult, BurnpackStore, KeyRemapper, ModuleSnapshot, PyTorchToBurnAdapter, PytorchStore,
    SafetensorsStore,
};
use fedtune_protocol::ModelSpec;
use serde::{Deserialize, Serialize};

use crate::model::{Cnn, Device, Mlp, ModelError, flatten, load};

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
    #[error("{path}: unknown weights format (use .safetensors, .pt / .pth or .bpk)")]
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
    spec.validate().map_err(|e| WeightsError::InvalidModel(e.to_string()))?;
    let device = device.clone().without_autodiff();
    match spec {
        ModelSpec::Mlp(mlp) => Ok(flatten(&import_into(Mlp::init(mlp, &device), source)?)),
        ModelSpec::Cnn(cnn) => Ok(flatten(&import_into(Cnn::init(cnn, &device), source)?)),
        ModelSpec::Custom { name, .. } => Err(WeightsError::Unsupported(name.clone())),
    }
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

/// Burn's layout when the file's `producer` metadata names Burn or fedtune, PyTorch's
/// otherwise. Reads only the header (an 8-byte little-endian length, then JSON).
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
    let producer = header
        .get("__metadata__")
        .and_then(|m| m.get("producer"))
        .and_then(serde_json::Value::as_str);
    Ok(match producer {
        Some("burn" | "fedtune") => Layout::Burn,
        _ => Layout::Pytorch,
    })
}

fn extension(path: &Path) -> Option<String> {
    path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase())
}

/// Every tensor the model needs was applied, none was left over, none failed.
fn check(path: &Path, result: &ApplyResult) -> Result<(), WeightsError> {
    let mut missing: Vec<String> = result.missing.iter().map(|(p, _)| p.clone()).collect();
    missing.sort();
    let mut unexpected = result.unused.clone();
    unexpected.sort();
    let mismatched: Vec<String> = result
        .errors
        .iter()
        .map(|e| match e {
            ApplyError::ShapeMismatch { path, expected, found } => {
                format!("{path} (model {:?}, file {:?})", expected.as_slice(), found.as_slice())
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

/// Writes the zoo model `spec` with `params` (manifest order) to `path` as safetensors in
/// Burn's layout: one tensor per manifest entry, named by its module path (replacing a
/// file already there).
///
/// # Errors
/// [`WeightsError::Model`] when `params` does not fit `spec`, [`WeightsError::Write`].
pub fn export(spec: &ModelSpec, params: &[f32], path: &Path, device: &Device) -> Result<(), WeightsError> {
    spec.validate().map_err(|e| WeightsError::InvalidModel(e.to_string()))?;
    let device = device.clone().without_autodiff();
    let manifest = spec.manifest();
    match spec {
        ModelSpec::Mlp(mlp) => export_module(&load(Mlp::init(mlp, &device), params, &manifest)?, path),
        ModelSpec::Cnn(cnn) => export_module(&load(Cnn::init(cnn, &device), params, &manifest)?, path),
        ModelSpec::Custom { name, .. } => Err(WeightsError::Unsupported(name.clone())),
    }
}

/// Writes any Burn module to `path` as safetensors, tensors named by module path
/// (replacing a file already there).
///
/// # Errors
/// [`WeightsError::Write`].
pub fn export_module<M: Module>(model: &M, path: &Path) -> Result<(), WeightsError> {
    let mut store = SafetensorsStore::from_file(path)
        .overwrite(true)
        .metadata("producer", "fedtune");
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
            let path = dir.join("model.safetensors");
            export(&spec, &params, &path, &default_device()).unwrap();
            let back = import(
                &spec,
                &WeightsSource::new(&path).layout(Layout::Burn),
                &default_device(),
            )
            .unwrap();
            assert_eq!(back, params, "{}", spec.describe());
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
        export(&written, &params, &path, &default_device()).unwrap();
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
}
