//! Model specifications: what architecture a task trains, and its parameter layout.
//!
//! Each architecture is described once, by its spec type and that type's
//! [`Architecture`] impl: its tensors in manifest order with how each starts (from which
//! both [`ModelSpec::manifest`] and [`ModelSpec::init_params`] come), the checks its
//! dimensions must pass, and the variants a tuner derives from it. [`ModelSpec`]'s methods
//! dispatch to that impl in one place, [`ModelSpec::architecture`].
//!
//! # Layout
//! - [`mlp`]: the multi-layer perceptron.
//! - [`cnn`]: the convolutional classifier, its blocks and batch-norm policy.
//! - [`transformer`]: the transformer encoder classifier over token ids.
//! - [`bert`]: BERT-family encoders (Hugging Face's `BertModel`) with a classification head.
//! - [`lora`]: low-rank adapters on any of them.
//! - [`custom`]: a bare parameter layout for trainers that bring their own model.

pub mod bert;
pub mod cnn;
pub mod custom;
pub mod lora;
pub mod mlp;
pub mod transformer;

pub use bert::{BertSpec, Pooling};
pub use cnn::{CnnSpec, ConvBlock, NORM_TENSORS, NormStats};
pub use custom::CustomSpec;
pub use lora::LoraSpec;
pub use mlp::MlpSpec;
pub use transformer::{MAX_TRANSFORMER_LAYERS, TransformerSpec};

pub use crate::tensor::{LORA_A, LORA_B, is_lora_factor};
use rand::{Rng, RngExt};
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::ProtocolError;
use crate::tensor::{Manifest, TensorSpec};

/// The architecture an agent builds for a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelSpec {
    /// A multi-layer perceptron classifier with ReLU between layers.
    Mlp(MlpSpec),
    /// A convolutional classifier: conv / ReLU / max-pool blocks, then a linear head.
    Cnn(CnnSpec),
    /// A transformer encoder classifier over token ids.
    Transformer(TransformerSpec),
    /// A base model with low-rank adapters on some of its 2-D weights; only the adapters
    /// train.
    Lora(LoraSpec),
    /// A flat parameter layout with no architecture behind it, for trainers that bring
    /// their own model (benchmarks, custom agents). The built-in trainer refuses it.
    Custom(CustomSpec),
    /// A BERT-family encoder (Hugging Face's `BertModel`) with a classification head,
    /// usually started from a pretrained checkpoint.
    Bert(BertSpec),
}

/// What fedtune knows about one kind of model. Every [`ModelSpec`] variant holds a type
/// that implements it; [`ModelSpec`]'s methods of the same names call it.
pub trait Architecture {
    /// Every tensor in manifest order, named by module path, with how it starts.
    fn tensors(&self) -> Vec<(TensorSpec, Init)>;

    /// Checks the architecture's own rules (positive dimensions, a kernel that fits…);
    /// [`ModelSpec::validate`] runs them, then checks the manifest.
    ///
    /// # Errors
    /// [`ProtocolError::InvalidModel`] naming the offending dimension.
    fn check(&self) -> Result<(), ProtocolError>;

    /// A short human description (see [`ModelSpec::describe`]).
    fn describe(&self) -> String;

    /// The same architecture with every hidden width scaled by `width`, which
    /// [`ModelSpec::scaled`] has checked is positive and finite (see [`scale_width`]).
    ///
    /// # Errors
    /// [`ProtocolError::InvalidModel`] for an architecture without widths.
    fn scaled(&self, width: f64) -> Result<ModelSpec, ProtocolError>;

    /// The same architecture with dropout `p` where it has dropout.
    ///
    /// # Errors
    /// [`ProtocolError::InvalidModel`] for a model without dropout (the default) or `p`
    /// outside [0, 1).
    fn with_dropout(&self, _p: f64) -> Result<ModelSpec, ProtocolError> {
        Err(ProtocolError::InvalidModel(format!(
            "{} has no dropout (the transformer does)",
            self.describe()
        )))
    }

    /// The number of classes it outputs logits for; `None` for a layout without a known
    /// head (the default).
    fn classes(&self) -> Option<usize> {
        None
    }

    /// Freeze patterns the architecture itself implies (none by default).
    fn implied_frozen(&self) -> Vec<String> {
        Vec::new()
    }

    /// The parameter layout: [`Architecture::tensors`] without their initialisation.
    fn manifest(&self) -> Manifest {
        Manifest {
            tensors: self.tensors().into_iter().map(|(tensor, _)| tensor).collect(),
        }
    }

    /// Fresh parameters in manifest order, each tensor drawn as its [`Init`] says.
    fn init_params(&self, rng: &mut dyn Rng) -> Vec<f32> {
        let tensors = self.tensors();
        let numel = tensors.iter().fold(0usize, |n, (t, _)| n.saturating_add(t.numel()));
        let mut params = Vec::with_capacity(numel);
        for (tensor, init) in tensors {
            init.fill(tensor.numel(), rng, &mut params);
        }
        params
    }
}

/// How a tensor of a built-in model starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`: PyTorch's default for linear and
    /// convolution layers.
    Uniform(usize),
    /// `N(0, std²)`: the given standard deviation times a standard normal draw.
    Normal(f64),
    /// Every value the same.
    Constant(f32),
}

impl Init {
    /// Appends `n` values drawn as this says to `params`.
    pub fn fill(self, n: usize, rng: &mut dyn Rng, params: &mut Vec<f32>) {
        match self {
            Init::Uniform(fan_in) => {
                let bound = 1.0 / (fan_in as f32).sqrt();
                params.extend((0..n).map(|_| rng.random_range(-bound..bound)));
            }
            Init::Normal(std) => params.extend((0..n).map(|_| {
                let z: f64 = rng.sample(StandardNormal);
                (z * std) as f32
            })),
            Init::Constant(value) => params.extend(std::iter::repeat_n(value, n)),
        }
    }
}

/// A linear layer's tensors under `name`: `weight` (`[in, out]`, Burn's layout) and `bias`
/// (`[out]`), both from `U(-1/sqrt(in), 1/sqrt(in))`.
fn linear(name: &str, fan_in: usize, fan_out: usize) -> [(TensorSpec, Init); 2] {
    [
        (
            TensorSpec::new(format!("{name}.weight"), vec![fan_in, fan_out]),
            Init::Uniform(fan_in),
        ),
        (
            TensorSpec::new(format!("{name}.bias"), vec![fan_out]),
            Init::Uniform(fan_in),
        ),
    ]
}

/// `n` scaled by a width multiplier, rounded, at least 1.
#[must_use]
pub fn scale_width(n: usize, width: f64) -> usize {
    ((n as f64 * width).round() as usize).max(1)
}

impl ModelSpec {
    /// The architecture this spec describes: the one place that tells the variants apart.
    #[must_use]
    pub fn architecture(&self) -> &dyn Architecture {
        match self {
            ModelSpec::Mlp(mlp) => mlp,
            ModelSpec::Cnn(cnn) => cnn,
            ModelSpec::Transformer(transformer) => transformer,
            ModelSpec::Lora(lora) => lora,
            ModelSpec::Custom(custom) => custom,
            ModelSpec::Bert(bert) => bert,
        }
    }

    /// A short human description, e.g. `MLP 64-64-10` or `CNN 1x28x28 c5:6 c5:16 256-120-84-10`.
    #[must_use]
    pub fn describe(&self) -> String {
        self.architecture().describe()
    }

    /// The same architecture with every hidden width scaled by `width` (rounded, at least
    /// 1): an MLP's hidden layers, a CNN's block channels and head widths, a transformer's
    /// `d_model` (kept a multiple of its heads) and `d_ff`. Inputs and classes stay.
    ///
    /// # Errors
    /// [`ProtocolError::InvalidModel`] for a width that is not positive and finite, or a
    /// custom model (it has no widths fedtune knows).
    pub fn scaled(&self, width: f64) -> Result<ModelSpec, ProtocolError> {
        if !(width.is_finite() && width > 0.0) {
            return Err(ProtocolError::InvalidModel(format!(
                "width multiplier {width} must be positive"
            )));
        }
        self.architecture().scaled(width)
    }

    /// The same architecture with dropout `p` where it has dropout (the transformer's
    /// encoder layers).
    ///
    /// # Errors
    /// [`ProtocolError::InvalidModel`] for a model without dropout or `p` outside [0, 1).
    pub fn with_dropout(&self, p: f64) -> Result<ModelSpec, ProtocolError> {
        self.architecture().with_dropout(p)
    }

    /// The number of classes the model outputs logits for (`None` for a custom layout).
    #[must_use]
    pub fn classes(&self) -> Option<usize> {
        self.architecture().classes()
    }

    /// Freeze patterns the architecture itself implies: the running statistics of batch
    /// norms under [`NormStats::Frozen`]. A task's `frozen` list includes them.
    #[must_use]
    pub fn implied_frozen(&self) -> Vec<String> {
        self.architecture().implied_frozen()
    }

    /// Checks that every dimension is positive and the layout is small enough to address.
    ///
    /// # Errors
    /// [`ProtocolError::InvalidModel`] naming the offending dimension.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let architecture = self.architecture();
        architecture.check()?;
        architecture.manifest().validate()
    }

    /// The parameter layout, named by module path: for an MLP, see [`MlpSpec`]; for a CNN,
    /// [`CnnSpec`] (an invalid CNN, see [`ModelSpec::validate`], has an empty head); for the
    /// transformer, [`TransformerSpec`]; for LoRA, [`LoraSpec`].
    pub fn manifest(&self) -> Manifest {
        self.architecture().manifest()
    }

    /// Fresh parameters in manifest order. Every MLP and CNN layer draws its weights and
    /// biases from `U(-1/sqrt(fan_in), 1/sqrt(fan_in))` (PyTorch's default for linear and
    /// convolution layers; a convolution's fan-in is `in · k · k`); a transformer's
    /// embeddings from `N(0, 1)`, its linear layers likewise and its layer norms at
    /// `gamma` 1, `beta` 0; LoRA adapters start as
    /// [`LoraSpec::with_adapters`] says; custom layouts start at zero.
    pub fn init_params(&self, rng: &mut impl Rng) -> Vec<f32> {
        self.architecture().init_params(rng)
    }
}
