//! Model specifications: what architecture a task trains, and its parameter layout.

pub use crate::tensor::{LORA_A, LORA_B, is_lora_factor};
use rand::{Rng, RngExt};
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
    Custom {
        /// Name the custom trainer recognises.
        name: String,
        /// Parameter layout.
        manifest: Manifest,
    },
}

/// A multi-layer perceptron: `input -> hidden[0] -> ... -> classes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MlpSpec {
    /// Number of input features.
    pub input: usize,
    /// Widths of the hidden layers, in order (may be empty: a linear model).
    pub hidden: Vec<usize>,
    /// Number of output classes.
    pub classes: usize,
}

impl MlpSpec {
    /// `(fan_in, fan_out)` of every linear layer, in order.
    pub fn layer_dims(&self) -> Vec<(usize, usize)> {
        let mut widths = Vec::with_capacity(self.hidden.len() + 2);
        widths.push(self.input);
        widths.extend_from_slice(&self.hidden);
        widths.push(self.classes);
        widths.windows(2).map(|w| (w[0], w[1])).collect()
    }
}

/// One convolution block of a [`CnnSpec`]: a square `kernel`×`kernel` convolution to
/// `channels` output channels (stride 1, zero `padding` on each side), an optional batch
/// norm, ReLU, then a `pool`×`pool` max-pool with stride `pool` (1 for none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvBlock {
    /// Output channels.
    pub channels: usize,
    /// Side of the square kernel.
    pub kernel: usize,
    /// Zero padding on each side.
    #[serde(default)]
    pub padding: usize,
    /// Side and stride of the max-pool after the ReLU; 1 for no pooling.
    #[serde(default = "ConvBlock::default_pool")]
    pub pool: usize,
    /// A batch norm between the convolution and the ReLU (`convs.{i}.norm.gamma`, `beta`,
    /// `running_mean`, `running_var`; PyTorch's `BatchNorm2d`, ε = 1e-5, momentum 0.1).
    #[serde(default)]
    pub batch_norm: bool,
}

/// How agents treat batch-norm running statistics (the mean and variance a batch norm
/// normalises with at inference).
///
/// - `averaged` (the default): each agent's training updates them from its batches and
///   they are averaged with the weights, as FedAvg over a PyTorch `state_dict` does. With
///   non-IID agents the average is a mixture of their statistics.
/// - `frozen`: they keep their starting values (a pretrained model's), agents normalise
///   with them during training too (the batch norm runs as at inference), and they are
///   neither sent nor averaged; `gamma` and `beta` still train. The usual choice when
///   fine-tuning a pretrained model on small or skewed local data.
///
/// Keeping them local per agent (FedBN) is not offered: the global model would have no
/// statistics of its own to evaluate or export with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormStats {
    /// Trained from batches and averaged.
    #[default]
    Averaged,
    /// Kept at their starting values, used in training, not sent.
    Frozen,
}

impl NormStats {
    /// The freeze patterns this policy implies (see [`crate::freeze`]).
    #[must_use]
    pub fn frozen_patterns(self) -> &'static [&'static str] {
        match self {
            NormStats::Averaged => &[],
            NormStats::Frozen => &["*.running_mean", "*.running_var"],
        }
    }
}

impl ConvBlock {
    fn default_pool() -> usize {
        2
    }
}

/// A convolutional classifier over `channels`×`height`×`width` images (rows of the data
/// are images flattened channel-major, as PyTorch lays out `[C, H, W]`): the `blocks` in
/// order, the feature map flattened, then linear layers through `hidden` to `classes`
/// with ReLU between them.
///
/// The NIID-Bench LeNet is `CnnSpec::lenet(1, 28, 28, 10)`: conv 5×5 → 6, pool,
/// conv 5×5 → 16, pool, 256 → 120 → 84 → 10.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CnnSpec {
    /// Input channels.
    pub channels: usize,
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Convolution blocks, in order (at least one).
    pub blocks: Vec<ConvBlock>,
    /// Widths of the head's hidden linear layers.
    #[serde(default)]
    pub hidden: Vec<usize>,
    /// Number of output classes.
    pub classes: usize,
    /// How batch-norm running statistics are treated (blocks with `batch_norm`).
    #[serde(default)]
    pub norm_stats: NormStats,
}

/// A transformer encoder classifier over token ids: a row is `max_len` token ids (as
/// floats; 0 is padding, ids below `vocab`), embedded (`embedding`, `[vocab, d_model]`)
/// plus a learned position embedding (`positions`, `[max_len, d_model]`), through `layers`
/// pre-norm encoder layers of burn-nn (`encoder.layers.{i}`: multi-head self-attention
/// with `heads` heads, a GELU feed-forward of width `d_ff`, two layer norms; padding is
/// masked), a final layer norm (`norm`), the mean over the non-padding positions, and a
/// linear head (`head`) to `classes` logits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransformerSpec {
    /// Token ids per row (sequence length).
    pub max_len: usize,
    /// Vocabulary size: token ids lie in `0..vocab`, 0 being padding.
    pub vocab: usize,
    /// Width of the embeddings and of every layer.
    pub d_model: usize,
    /// Attention heads per layer (`d_model` must be a multiple).
    pub heads: usize,
    /// Encoder layers.
    pub layers: usize,
    /// Width of each feed-forward block.
    pub d_ff: usize,
    /// Number of output classes.
    pub classes: usize,
    /// Dropout inside the encoder layers during training (0 for none).
    #[serde(default)]
    pub dropout: f64,
}

/// The deepest transformer a spec may ask for: the layer count is one number in a task,
/// and every layer adds a dozen tensors to the manifest an agent builds from it.
pub const MAX_TRANSFORMER_LAYERS: usize = 1024;

impl TransformerSpec {
    fn validate(&self) -> Result<(), ProtocolError> {
        let invalid = |what: String| Err(ProtocolError::InvalidModel(what));
        for (name, value) in [
            ("max_len", self.max_len),
            ("vocab", self.vocab),
            ("d_model", self.d_model),
            ("heads", self.heads),
            ("layers", self.layers),
            ("d_ff", self.d_ff),
            ("classes", self.classes),
        ] {
            if value == 0 {
                return invalid(format!("transformer {name} must be positive"));
            }
        }
        if self.vocab < 2 {
            return invalid(format!(
                "transformer vocab {} leaves no id beside padding (0)",
                self.vocab
            ));
        }
        // Checked before the manifest is built: each layer adds a dozen tensors.
        if self.layers > MAX_TRANSFORMER_LAYERS {
            return invalid(format!(
                "transformer layers must be at most {MAX_TRANSFORMER_LAYERS}, not {}",
                self.layers
            ));
        }
        if !self.d_model.is_multiple_of(self.heads) {
            return invalid(format!(
                "transformer d_model {} is not a multiple of heads {}",
                self.d_model, self.heads
            ));
        }
        if !(self.dropout.is_finite() && (0.0..1.0).contains(&self.dropout)) {
            return invalid(format!("transformer dropout {} must lie in [0, 1)", self.dropout));
        }
        // Token ids travel as f32 rows: every id must be exact.
        if self.vocab > 1 << 24 {
            return invalid(format!(
                "transformer vocab {} exceeds 2^24 (ids travel as f32)",
                self.vocab
            ));
        }
        Ok(())
    }

    /// Every tensor, named by module path, with how it starts: `(name, shape, init)`.
    fn tensors(&self) -> Vec<(String, Vec<usize>, Init)> {
        let d = self.d_model;
        let linear = |name: &str, fan_in: usize, fan_out: usize| {
            [
                (format!("{name}.weight"), vec![fan_in, fan_out], Init::Uniform(fan_in)),
                (format!("{name}.bias"), vec![fan_out], Init::Uniform(fan_in)),
            ]
        };
        let norm = |name: &str| {
            [
                (format!("{name}.gamma"), vec![d], Init::Constant(1.0)),
                (format!("{name}.beta"), vec![d], Init::Constant(0.0)),
            ]
        };
        let mut tensors = vec![
            ("embedding.weight".to_string(), vec![self.vocab, d], Init::Normal),
            ("positions.weight".to_string(), vec![self.max_len, d], Init::Normal),
        ];
        for i in 0..self.layers {
            let layer = format!("encoder.layers.{i}");
            for projection in ["query", "key", "value", "output"] {
                tensors.extend(linear(&format!("{layer}.mha.{projection}"), d, d));
            }
            tensors.extend(linear(&format!("{layer}.pwff.linear_inner"), d, self.d_ff));
            tensors.extend(linear(&format!("{layer}.pwff.linear_outer"), self.d_ff, d));
            tensors.extend(norm(&format!("{layer}.norm_1")));
            tensors.extend(norm(&format!("{layer}.norm_2")));
        }
        tensors.extend(norm("norm"));
        tensors.extend(linear("head", d, self.classes));
        tensors
    }
}

/// How a tensor of a built-in model starts.
#[derive(Debug, Clone, Copy)]
enum Init {
    /// `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`.
    Uniform(usize),
    /// `N(0, 1)` (embeddings).
    Normal,
    /// Every value the same.
    Constant(f32),
}

/// Low-rank adapters (LoRA, Hu et al. 2021) on `base`'s 2-D weights: an adapted weight
/// `W` (`[in, out]`) acts as `W + (alpha / rank) · A·B` with `A` (`[in, rank]`) and `B`
/// (`[rank, out]`) trained and `W` frozen. Every other tensor of the base is frozen too,
/// so only the adapters train, travel and are averaged (see [`crate::freeze`]).
///
/// The manifest is the base's with `{weight}.lora.a` and `{weight}.lora.b` after each
/// adapted weight (Burn's module paths for `Module::apply_lora`). `A` starts from
/// `N(0, 1/rank)` and `B` from zero, so the adapted model starts as the base model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSpec {
    /// The model the adapters attach to (not itself a LoRA model).
    pub base: Box<ModelSpec>,
    /// Rank of each adapter.
    pub rank: usize,
    /// Scale numerator: the adapter's product is scaled by `alpha / rank`.
    pub alpha: f64,
    /// Patterns (as freeze patterns, see [`crate::freeze::matches`]) naming the weights
    /// to adapt, e.g. `["head.*"]`; empty adapts every 2-D weight. (Always written: the
    /// wire format is not self-describing.)
    #[serde(default)]
    pub targets: Vec<String>,
}

/// A batch norm's tensors under `convs.{i}.norm`, in Burn's traversal order.
pub const NORM_TENSORS: [&str; 4] = ["gamma", "beta", "running_mean", "running_var"];

impl LoraSpec {
    /// `alpha / rank`.
    #[must_use]
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// The base manifest's 2-D weights that get adapters: name, `in` and `out`.
    #[must_use]
    pub fn adapted(&self) -> Vec<(String, usize, usize)> {
        self.adapted_in(&self.base.manifest())
    }

    /// [`LoraSpec::adapted`] of an already-built base manifest.
    fn adapted_in(&self, base: &Manifest) -> Vec<(String, usize, usize)> {
        base.tensors
            .iter()
            .filter(|t| t.shape.len() == 2)
            .filter(|t| self.targets.is_empty() || self.targets.iter().any(|p| crate::freeze::matches(p, &t.name)))
            .map(|t| (t.name.clone(), t.shape[0], t.shape[1]))
            .collect()
    }

    fn validate(&self) -> Result<(), ProtocolError> {
        let invalid = |what: String| Err(ProtocolError::InvalidModel(what));
        if matches!(*self.base, ModelSpec::Lora(_)) {
            return invalid("a LoRA model's base cannot itself be a LoRA model".into());
        }
        self.base.validate()?;
        if self.rank == 0 {
            return invalid("LoRA rank must be positive".into());
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return invalid(format!("LoRA alpha must be positive and finite, not {}", self.alpha));
        }
        let base = self.base.manifest();
        let weights: Vec<_> = base.tensors.iter().filter(|t| t.shape.len() == 2).collect();
        if let Some(unused) = self
            .targets
            .iter()
            .find(|p| !weights.iter().any(|t| crate::freeze::matches(p, &t.name)))
        {
            return invalid(format!(
                "LoRA target `{unused}` names no 2-D weight of the base model (they are: {})",
                weights.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
        let adapted = self.adapted_in(&base);
        if adapted.is_empty() {
            return invalid("the LoRA base model has no 2-D weight to adapt".into());
        }
        if let Some((name, fan_in, fan_out)) = adapted.iter().find(|(_, i, o)| self.rank > *i.min(o)) {
            return invalid(format!(
                "LoRA rank {} exceeds the smaller side of `{name}` ({fan_in}×{fan_out})",
                self.rank
            ));
        }
        Ok(())
    }

    fn manifest(&self) -> Manifest {
        let base = self.base.manifest();
        let adapted = self.adapted_in(&base);
        let mut tensors = Vec::new();
        for tensor in base.tensors {
            let adapter = adapted.iter().find(|(name, _, _)| *name == tensor.name);
            let name = tensor.name.clone();
            tensors.push(tensor);
            if let Some((_, fan_in, fan_out)) = adapter {
                tensors.push(TensorSpec::new(format!("{name}.{LORA_A}"), vec![*fan_in, self.rank]));
                tensors.push(TensorSpec::new(format!("{name}.{LORA_B}"), vec![self.rank, *fan_out]));
            }
        }
        Manifest { tensors }
    }

    /// The LoRA model's parameters from the base model's: `base` with fresh adapters
    /// (`A` from `N(0, 1/rank)`, `B` zero) after each adapted weight.
    ///
    /// # Panics
    /// If `base` is not the base manifest's length.
    pub fn with_adapters(&self, base: &[f32], rng: &mut impl Rng) -> Vec<f32> {
        let base_manifest = self.base.manifest();
        assert_eq!(
            base.len(),
            base_manifest.numel(),
            "base parameters do not fit the base model"
        );
        let adapted = self.adapted_in(&base_manifest);
        let std = 1.0 / self.rank as f64;
        let mut params = Vec::with_capacity(self.manifest().numel());
        let mut offset = 0;
        for tensor in &base_manifest.tensors {
            let end = offset + tensor.numel();
            params.extend_from_slice(&base[offset..end]);
            offset = end;
            if let Some((_, fan_in, fan_out)) = adapted.iter().find(|(name, _, _)| *name == tensor.name) {
                params.extend((0..fan_in * self.rank).map(|_| (normal(rng) * std) as f32));
                params.extend(std::iter::repeat_n(0.0, self.rank * fan_out));
            }
        }
        params
    }

    /// The base model's parameters with every adapter merged in (`W + scale · A·B`): the
    /// adapted model as a plain one.
    ///
    /// # Panics
    /// If `params` is not this model's manifest length.
    #[must_use]
    pub fn merged(&self, params: &[f32]) -> Vec<f32> {
        let manifest = self.manifest();
        assert_eq!(params.len(), manifest.numel(), "parameters do not fit the LoRA model");
        let scale = self.scale() as f32;
        let mut base = Vec::with_capacity(self.base.manifest().numel());
        let mut offset = 0;
        let mut tensors = manifest.tensors.iter().peekable();
        while let Some(tensor) = tensors.next() {
            let weight = &params[offset..offset + tensor.numel()];
            offset += tensor.numel();
            if tensors.peek().is_some_and(|next| is_lora_factor(&next.name)) {
                let (fan_in, fan_out, rank) = (tensor.shape[0], tensor.shape[1], self.rank);
                let a = &params[offset..offset + fan_in * rank];
                let b = &params[offset + fan_in * rank..offset + fan_in * rank + rank * fan_out];
                offset += fan_in * rank + rank * fan_out;
                tensors.next();
                tensors.next();
                for i in 0..fan_in {
                    let row = &weight[i * fan_out..(i + 1) * fan_out];
                    let mut merged = row.to_vec();
                    for r in 0..rank {
                        let coefficient = scale * a[i * rank + r];
                        for (m, bv) in merged.iter_mut().zip(&b[r * fan_out..(r + 1) * fan_out]) {
                            *m += coefficient * bv;
                        }
                    }
                    base.extend_from_slice(&merged);
                }
            } else {
                base.extend_from_slice(weight);
            }
        }
        base
    }
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

impl CnnSpec {
    /// The NIID-Bench / LeNet-5 CNN for `channels`×`height`×`width` inputs: two 5×5
    /// convolutions (6 and 16 channels) each followed by a 2×2 max-pool, then a
    /// 120 → 84 → `classes` head.
    #[must_use]
    pub fn lenet(channels: usize, height: usize, width: usize, classes: usize) -> Self {
        let block = |channels| ConvBlock {
            channels,
            kernel: 5,
            padding: 0,
            pool: 2,
            batch_norm: false,
        };
        Self {
            channels,
            height,
            width,
            blocks: vec![block(6), block(16)],
            hidden: vec![120, 84],
            classes,
            norm_stats: NormStats::Averaged,
        }
    }

    /// Features per input row: `channels · height · width`.
    #[must_use]
    pub fn input_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// `(channels, height, width)` after each block, in order.
    ///
    /// # Errors
    /// [`ProtocolError::InvalidModel`] naming the block whose kernel or pool does not fit
    /// the feature map it gets, or a zero dimension.
    pub fn feature_maps(&self) -> Result<Vec<(usize, usize, usize)>, ProtocolError> {
        let invalid = |what: String| Err(ProtocolError::InvalidModel(what));
        if self.channels == 0 || self.height == 0 || self.width == 0 {
            return invalid(format!(
                "every CNN input dimension must be positive (channels {}, height {}, width {})",
                self.channels, self.height, self.width
            ));
        }
        if self.blocks.is_empty() {
            return invalid("a CNN needs at least one convolution block".into());
        }
        let (mut h, mut w) = (self.height, self.width);
        let mut maps = Vec::with_capacity(self.blocks.len());
        for (i, b) in self.blocks.iter().enumerate() {
            if b.channels == 0 || b.kernel == 0 || b.pool == 0 {
                return invalid(format!(
                    "CNN block {i}: channels {}, kernel {} and pool {} must be positive",
                    b.channels, b.kernel, b.pool
                ));
            }
            let (ph, pw) = (h + 2 * b.padding, w + 2 * b.padding);
            if b.kernel > ph || b.kernel > pw {
                return invalid(format!(
                    "CNN block {i}: a {k}×{k} kernel does not fit its {h}×{w} input (padding {p})",
                    k = b.kernel,
                    p = b.padding
                ));
            }
            let (ch, cw) = (ph - b.kernel + 1, pw - b.kernel + 1);
            if b.pool > ch || b.pool > cw {
                return invalid(format!(
                    "CNN block {i}: a {p}×{p} pool does not fit its {ch}×{cw} convolution output",
                    p = b.pool
                ));
            }
            (h, w) = (ch / b.pool, cw / b.pool);
            maps.push((b.channels, h, w));
        }
        Ok(maps)
    }

    /// `(fan_in, fan_out)` of the head's linear layers, from the flattened feature map.
    ///
    /// # Errors
    /// Those of [`CnnSpec::feature_maps`].
    pub fn head_dims(&self) -> Result<Vec<(usize, usize)>, ProtocolError> {
        let &(c, h, w) = self.feature_maps()?.last().expect("feature_maps refuses an empty CNN");
        let mut widths = Vec::with_capacity(self.hidden.len() + 2);
        widths.push(c * h * w);
        widths.extend_from_slice(&self.hidden);
        widths.push(self.classes);
        Ok(widths.windows(2).map(|w| (w[0], w[1])).collect())
    }

    /// The input channels of each block's convolution.
    fn block_inputs(&self) -> impl Iterator<Item = usize> + '_ {
        std::iter::once(self.channels).chain(self.blocks.iter().map(|b| b.channels))
    }
}

impl ModelSpec {
    /// A short human description, e.g. `MLP 64-64-10` or `CNN 1x28x28 c5:6 c5:16 256-120-84-10`.
    #[must_use]
    pub fn describe(&self) -> String {
        let join = |w: &[usize]| w.iter().map(ToString::to_string).collect::<Vec<_>>().join("-");
        match self {
            ModelSpec::Mlp(mlp) => {
                let mut widths = vec![mlp.input];
                widths.extend_from_slice(&mlp.hidden);
                widths.push(mlp.classes);
                format!("MLP {}", join(&widths))
            }
            ModelSpec::Cnn(cnn) => {
                let blocks: Vec<String> = cnn
                    .blocks
                    .iter()
                    .map(|b| {
                        format!(
                            "c{}:{}{}{}",
                            b.kernel,
                            b.channels,
                            if b.batch_norm { "+bn" } else { "" },
                            if b.pool > 1 { "/p" } else { "" }
                        )
                    })
                    .collect();
                let head = cnn.head_dims().map_or_else(
                    |_| "?".into(),
                    |dims| {
                        let mut widths = vec![dims[0].0];
                        widths.extend(dims.iter().map(|d| d.1));
                        join(&widths)
                    },
                );
                format!(
                    "CNN {}x{}x{} {} {head}",
                    cnn.channels,
                    cnn.height,
                    cnn.width,
                    blocks.join(" ")
                )
            }
            ModelSpec::Transformer(t) => format!(
                "transformer {}x{} vocab {} d{} h{} ff{} → {}",
                t.layers, t.max_len, t.vocab, t.d_model, t.heads, t.d_ff, t.classes
            ),
            ModelSpec::Lora(lora) => format!(
                "{} + LoRA r{} α{} on {} weights",
                lora.base.describe(),
                lora.rank,
                lora.alpha,
                lora.adapted().len()
            ),
            ModelSpec::Custom { name, .. } => format!("custom `{name}`"),
        }
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
        let scale = |n: usize| ((n as f64 * width).round() as usize).max(1);
        Ok(match self {
            ModelSpec::Mlp(mlp) => ModelSpec::Mlp(MlpSpec {
                hidden: mlp.hidden.iter().map(|&h| scale(h)).collect(),
                ..mlp.clone()
            }),
            ModelSpec::Cnn(cnn) => ModelSpec::Cnn(CnnSpec {
                blocks: cnn
                    .blocks
                    .iter()
                    .map(|b| ConvBlock {
                        channels: scale(b.channels),
                        ..b.clone()
                    })
                    .collect(),
                hidden: cnn.hidden.iter().map(|&h| scale(h)).collect(),
                ..cnn.clone()
            }),
            ModelSpec::Transformer(t) => ModelSpec::Transformer(TransformerSpec {
                d_model: (scale(t.d_model).div_ceil(t.heads) * t.heads).max(t.heads),
                d_ff: scale(t.d_ff),
                ..t.clone()
            }),
            ModelSpec::Lora(lora) => ModelSpec::Lora(LoraSpec {
                base: Box::new(lora.base.scaled(width)?),
                ..lora.clone()
            }),
            ModelSpec::Custom { name, .. } => {
                return Err(ProtocolError::InvalidModel(format!(
                    "custom model `{name}` has no widths to scale"
                )));
            }
        })
    }

    /// The same architecture with dropout `p` where it has dropout (the transformer's
    /// encoder layers).
    ///
    /// # Errors
    /// [`ProtocolError::InvalidModel`] for a model without dropout or `p` outside [0, 1).
    pub fn with_dropout(&self, p: f64) -> Result<ModelSpec, ProtocolError> {
        match self {
            ModelSpec::Transformer(t) => {
                let spec = ModelSpec::Transformer(TransformerSpec {
                    dropout: p,
                    ..t.clone()
                });
                spec.validate()?;
                Ok(spec)
            }
            ModelSpec::Lora(lora) => Ok(ModelSpec::Lora(LoraSpec {
                base: Box::new(lora.base.with_dropout(p)?),
                ..lora.clone()
            })),
            other => Err(ProtocolError::InvalidModel(format!(
                "{} has no dropout (the transformer does)",
                other.describe()
            ))),
        }
    }

    /// Freeze patterns the architecture itself implies: the running statistics of batch
    /// norms under [`NormStats::Frozen`]. A task's `frozen` list includes them.
    #[must_use]
    pub fn implied_frozen(&self) -> Vec<String> {
        match self {
            ModelSpec::Cnn(cnn) if cnn.blocks.iter().any(|b| b.batch_norm) => cnn
                .norm_stats
                .frozen_patterns()
                .iter()
                .map(ToString::to_string)
                .collect(),
            ModelSpec::Lora(lora) => lora.base.implied_frozen(),
            _ => Vec::new(),
        }
    }

    /// Checks that every dimension is positive and the layout is small enough to address.
    ///
    /// # Errors
    /// [`ProtocolError::InvalidModel`] naming the offending dimension.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        match self {
            ModelSpec::Mlp(mlp) => {
                if mlp.input == 0 || mlp.classes == 0 || mlp.hidden.contains(&0) {
                    return Err(ProtocolError::InvalidModel(format!(
                        "every MLP width must be positive (input {}, hidden {:?}, classes {})",
                        mlp.input, mlp.hidden, mlp.classes
                    )));
                }
                self.manifest().validate()
            }
            ModelSpec::Cnn(cnn) => {
                if cnn.classes == 0 || cnn.hidden.contains(&0) {
                    return Err(ProtocolError::InvalidModel(format!(
                        "every CNN head width must be positive (hidden {:?}, classes {})",
                        cnn.hidden, cnn.classes
                    )));
                }
                cnn.head_dims()?;
                self.manifest().validate()
            }
            ModelSpec::Transformer(t) => {
                t.validate()?;
                self.manifest().validate()
            }
            ModelSpec::Lora(lora) => {
                lora.validate()?;
                self.manifest().validate()
            }
            ModelSpec::Custom { manifest, .. } => manifest.validate(),
        }
    }

    /// The parameter layout, named by module path: for an MLP, `layers.{i}.weight` with
    /// shape `[in, out]` and `layers.{i}.bias` with shape `[out]`, layer by layer; for a CNN,
    /// `convs.{i}.conv.weight` (`[out, in, k, k]`) and `convs.{i}.conv.bias` (then, with a
    /// batch norm, `convs.{i}.norm.{gamma,beta,running_mean,running_var}`) block by block,
    /// then the head's `head.{j}.weight` (`[in, out]`) and `head.{j}.bias`; for the
    /// transformer, see [`TransformerSpec`]; for LoRA, see [`LoraSpec`]. An invalid CNN (see [`ModelSpec::validate`]) has an empty head.
    pub fn manifest(&self) -> Manifest {
        match self {
            ModelSpec::Mlp(mlp) => Manifest {
                tensors: mlp
                    .layer_dims()
                    .into_iter()
                    .enumerate()
                    .flat_map(|(i, (fan_in, fan_out))| {
                        [
                            TensorSpec::new(format!("layers.{i}.weight"), vec![fan_in, fan_out]),
                            TensorSpec::new(format!("layers.{i}.bias"), vec![fan_out]),
                        ]
                    })
                    .collect(),
            },
            ModelSpec::Cnn(cnn) => {
                let mut tensors = Vec::new();
                for (i, (block, fan_in)) in cnn.blocks.iter().zip(cnn.block_inputs()).enumerate() {
                    tensors.push(TensorSpec::new(
                        format!("convs.{i}.conv.weight"),
                        vec![block.channels, fan_in, block.kernel, block.kernel],
                    ));
                    tensors.push(TensorSpec::new(format!("convs.{i}.conv.bias"), vec![block.channels]));
                    if block.batch_norm {
                        for stat in NORM_TENSORS {
                            tensors.push(TensorSpec::new(format!("convs.{i}.norm.{stat}"), vec![block.channels]));
                        }
                    }
                }
                for (j, (fan_in, fan_out)) in cnn.head_dims().unwrap_or_default().into_iter().enumerate() {
                    tensors.push(TensorSpec::new(format!("head.{j}.weight"), vec![fan_in, fan_out]));
                    tensors.push(TensorSpec::new(format!("head.{j}.bias"), vec![fan_out]));
                }
                Manifest { tensors }
            }
            ModelSpec::Transformer(t) => Manifest {
                tensors: t
                    .tensors()
                    .into_iter()
                    .map(|(name, shape, _)| TensorSpec::new(name, shape))
                    .collect(),
            },
            ModelSpec::Lora(lora) => lora.manifest(),
            ModelSpec::Custom { manifest, .. } => manifest.clone(),
        }
    }

    /// Fresh parameters in manifest order. Every MLP and CNN layer draws its weights and
    /// biases from `U(-1/sqrt(fan_in), 1/sqrt(fan_in))` (PyTorch's default for linear and
    /// convolution layers; a convolution's fan-in is `in · k · k`); a transformer's
    /// embeddings from `N(0, 1)`, its linear layers likewise and its layer norms at
    /// `gamma` 1, `beta` 0; LoRA adapters start as
    /// [`LoraSpec::with_adapters`] says; custom layouts start at zero.
    pub fn init_params(&self, rng: &mut impl Rng) -> Vec<f32> {
        match self {
            ModelSpec::Mlp(mlp) => {
                let mut params = Vec::with_capacity(self.manifest().numel());
                for (fan_in, fan_out) in mlp.layer_dims() {
                    let bound = 1.0 / (fan_in as f32).sqrt();
                    params.extend((0..fan_in * fan_out + fan_out).map(|_| rng.random_range(-bound..bound)));
                }
                params
            }
            ModelSpec::Cnn(cnn) => {
                let mut params = Vec::with_capacity(self.manifest().numel());
                let mut uniform = |params: &mut Vec<f32>, fan_in: usize, n: usize| {
                    let bound = 1.0 / (fan_in as f32).sqrt();
                    params.extend((0..n).map(|_| rng.random_range(-bound..bound)));
                };
                for (block, fan_in) in cnn.blocks.iter().zip(cnn.block_inputs()) {
                    let fan_in = fan_in * block.kernel * block.kernel;
                    uniform(&mut params, fan_in, fan_in * block.channels);
                    uniform(&mut params, fan_in, block.channels);
                    if block.batch_norm {
                        // gamma 1, beta 0, running mean 0, running variance 1.
                        for value in [1.0, 0.0, 0.0, 1.0] {
                            params.extend(std::iter::repeat_n(value, block.channels));
                        }
                    }
                }
                for (fan_in, fan_out) in cnn.head_dims().unwrap_or_default() {
                    uniform(&mut params, fan_in, fan_in * fan_out);
                    uniform(&mut params, fan_in, fan_out);
                }
                params
            }
            ModelSpec::Transformer(t) => {
                let mut params = Vec::with_capacity(self.manifest().numel());
                for (_, shape, init) in t.tensors() {
                    let n: usize = shape.iter().product();
                    match init {
                        Init::Uniform(fan_in) => {
                            let bound = 1.0 / (fan_in as f32).sqrt();
                            params.extend((0..n).map(|_| rng.random_range(-bound..bound)));
                        }
                        Init::Normal => params.extend((0..n).map(|_| normal(rng) as f32)),
                        Init::Constant(value) => params.extend(std::iter::repeat_n(value, n)),
                    }
                }
                params
            }
            ModelSpec::Lora(lora) => {
                let base = lora.base.init_params(rng);
                lora.with_adapters(&base, rng)
            }
            ModelSpec::Custom { manifest, .. } => vec![0.0; manifest.numel()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn lenet_has_the_niid_bench_layout() {
        let spec = ModelSpec::Cnn(CnnSpec::lenet(1, 28, 28, 10));
        spec.validate().unwrap();
        let ModelSpec::Cnn(cnn) = &spec else { unreachable!() };
        assert_eq!(cnn.feature_maps().unwrap(), vec![(6, 12, 12), (16, 4, 4)]);
        assert_eq!(cnn.head_dims().unwrap(), vec![(256, 120), (120, 84), (84, 10)]);
        let shapes: Vec<(String, Vec<usize>)> =
            spec.manifest().tensors.into_iter().map(|t| (t.name, t.shape)).collect();
        assert_eq!(
            shapes,
            vec![
                ("convs.0.conv.weight".into(), vec![6, 1, 5, 5]),
                ("convs.0.conv.bias".into(), vec![6]),
                ("convs.1.conv.weight".into(), vec![16, 6, 5, 5]),
                ("convs.1.conv.bias".into(), vec![16]),
                ("head.0.weight".into(), vec![256, 120]),
                ("head.0.bias".into(), vec![120]),
                ("head.1.weight".into(), vec![120, 84]),
                ("head.1.bias".into(), vec![84]),
                ("head.2.weight".into(), vec![84, 10]),
                ("head.2.bias".into(), vec![10]),
            ]
        );
        // 156 + 2,416 + 30,840 + 10,164 + 850: NIID-Bench's 44,426 parameters.
        assert_eq!(spec.manifest().numel(), 44_426);
        let params = spec.init_params(&mut StdRng::seed_from_u64(0));
        assert_eq!(params.len(), 44_426);
        // conv 0's fan-in is 25: its values lie within 1/5.
        assert!(params[..156].iter().all(|v| v.abs() <= 0.2));
        assert!(params[..156].iter().any(|v| v.abs() > 0.1));
        assert_eq!(spec.describe(), "CNN 1x28x28 c5:6/p c5:16/p 256-120-84-10");
    }

    #[test]
    fn a_cnn_that_does_not_fit_its_input_names_the_block() {
        let mut cnn = CnnSpec::lenet(1, 12, 12, 10);
        let err = ModelSpec::Cnn(cnn.clone()).validate().unwrap_err().to_string();
        assert!(err.contains("CNN block 1") && err.contains("5×5 kernel"), "{err}");
        cnn.height = 28;
        cnn.width = 28;
        cnn.blocks[0].pool = 0;
        let err = ModelSpec::Cnn(cnn.clone()).validate().unwrap_err().to_string();
        assert!(err.contains("CNN block 0") && err.contains("pool 0"), "{err}");
        cnn.blocks[0].pool = 2;
        cnn.hidden = vec![120, 0];
        let err = ModelSpec::Cnn(cnn.clone()).validate().unwrap_err().to_string();
        assert!(err.contains("hidden [120, 0]"), "{err}");
        cnn.hidden.clear();
        cnn.blocks.clear();
        let err = ModelSpec::Cnn(cnn).validate().unwrap_err().to_string();
        assert!(err.contains("at least one convolution block"), "{err}");
    }

    #[test]
    fn a_cnn_reads_from_toml_with_default_padding_and_pool() {
        #[derive(Deserialize)]
        struct Config {
            model: ModelSpec,
        }
        let config: Config = toml::from_str(
            "[model.cnn]\nchannels = 1\nheight = 28\nwidth = 28\nclasses = 10\nhidden = [120, 84]\n\
             blocks = [{ channels = 6, kernel = 5 }, { channels = 16, kernel = 5 }]\n",
        )
        .unwrap();
        assert_eq!(config.model, ModelSpec::Cnn(CnnSpec::lenet(1, 28, 28, 10)));
    }

    #[test]
    fn batch_norm_blocks_add_their_four_tensors_and_frozen_statistics_are_implied_frozen() {
        let text = "[model.cnn]\nchannels = 1\nheight = 28\nwidth = 28\nclasses = 10\nhidden = [120, 84]\n\
                    norm_stats = \"frozen\"\n\
                    blocks = [{ channels = 6, kernel = 5, batch_norm = true }, { channels = 16, kernel = 5 }]\n";
        #[derive(Deserialize)]
        struct Config {
            model: ModelSpec,
        }
        let spec = toml::from_str::<Config>(text).unwrap().model;
        spec.validate().unwrap();
        let manifest = spec.manifest();
        let names: Vec<&str> = manifest.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            &names[..7],
            &[
                "convs.0.conv.weight",
                "convs.0.conv.bias",
                "convs.0.norm.gamma",
                "convs.0.norm.beta",
                "convs.0.norm.running_mean",
                "convs.0.norm.running_var",
                "convs.1.conv.weight"
            ]
        );
        assert_eq!(manifest.numel(), 44_426 + 4 * 6);
        let params = spec.init_params(&mut StdRng::seed_from_u64(0));
        assert_eq!(
            &params[156..180],
            &[[1.0; 6], [0.0; 6], [0.0; 6], [1.0; 6]].concat()[..]
        );
        assert!(spec.describe().contains("c5:6+bn/p"), "{}", spec.describe());
        assert_eq!(spec.implied_frozen(), vec!["*.running_mean", "*.running_var"]);
        let trainable = crate::freeze::Trainable::new(&manifest, &spec.implied_frozen()).unwrap();
        assert_eq!(trainable.numel(), manifest.numel() - 12);
        // Averaged statistics, or no batch norm at all, imply nothing.
        assert!(
            ModelSpec::Cnn(CnnSpec::lenet(1, 28, 28, 10))
                .implied_frozen()
                .is_empty()
        );
    }

    #[test]
    fn a_transformer_lays_out_burn_nn_encoder_layers_and_names_a_bad_dimension() {
        let t = TransformerSpec {
            max_len: 32,
            vocab: 8_192,
            d_model: 64,
            heads: 4,
            layers: 2,
            d_ff: 128,
            classes: 10,
            dropout: 0.1,
        };
        let spec = ModelSpec::Transformer(t.clone());
        spec.validate().unwrap();
        let manifest = spec.manifest();
        let names: Vec<&str> = manifest.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            &names[..4],
            &[
                "embedding.weight",
                "positions.weight",
                "encoder.layers.0.mha.query.weight",
                "encoder.layers.0.mha.query.bias"
            ]
        );
        assert_eq!(
            &names[names.len() - 4..],
            &["norm.gamma", "norm.beta", "head.weight", "head.bias"]
        );
        // Embeddings, then per layer 4 attention projections, the feed-forward and two norms.
        let layer = 4 * (64 * 64 + 64) + (64 * 128 + 128) + (128 * 64 + 64) + 4 * 64;
        assert_eq!(
            manifest.numel(),
            8_192 * 64 + 32 * 64 + 2 * layer + 2 * 64 + 64 * 10 + 10
        );
        assert_eq!(spec.init_params(&mut StdRng::seed_from_u64(0)).len(), manifest.numel());
        let err = |t: TransformerSpec| ModelSpec::Transformer(t).validate().unwrap_err().to_string();
        assert!(err(TransformerSpec { heads: 3, ..t.clone() }).contains("d_model 64 is not a multiple of heads 3"));
        assert!(err(TransformerSpec { layers: 0, ..t.clone() }).contains("layers must be positive"));
        assert!(
            err(TransformerSpec {
                dropout: 1.0,
                ..t.clone()
            })
            .contains("dropout 1 must lie in [0, 1)")
        );
        assert!(err(TransformerSpec { vocab: 1, ..t }).contains("no id beside padding"));
    }

    fn lora(targets: &[&str], rank: usize) -> LoraSpec {
        LoraSpec {
            base: Box::new(ModelSpec::Cnn(CnnSpec::lenet(1, 28, 28, 10))),
            rank,
            alpha: 8.0,
            targets: targets.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn lora_adds_two_factors_after_each_adapted_weight_and_trains_only_them() {
        let spec = ModelSpec::Lora(lora(&["head.*"], 4));
        spec.validate().unwrap();
        let manifest = spec.manifest();
        let names: Vec<&str> = manifest.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            &names[4..9],
            &[
                "head.0.weight",
                "head.0.weight.lora.a",
                "head.0.weight.lora.b",
                "head.0.bias",
                "head.1.weight"
            ]
        );
        assert_eq!(manifest.tensors[5].shape, vec![256, 4]);
        assert_eq!(manifest.tensors[6].shape, vec![4, 120]);
        // (256 + 120) · 4 + (120 + 84) · 4 + (84 + 10) · 4 adapter values.
        let adapters = (256 + 120 + 120 + 84 + 84 + 10) * 4;
        assert_eq!(manifest.numel(), 44_426 + adapters);
        let trainable = crate::freeze::Trainable::new(&manifest, &[]).unwrap();
        assert_eq!(trainable.numel(), adapters);
        // A pattern may freeze adapters too.
        let fewer = crate::freeze::Trainable::new(&manifest, &["head.2".to_string()]).unwrap();
        assert_eq!(fewer.numel(), adapters - (84 + 10) * 4);
        assert!(
            spec.describe().ends_with("LoRA r4 α8 on 3 weights"),
            "{}",
            spec.describe()
        );

        // Fresh adapters leave the base as it was: B is zero.
        let params = spec.init_params(&mut StdRng::seed_from_u64(3));
        let ModelSpec::Lora(l) = &spec else { unreachable!() };
        let base = l.base.init_params(&mut StdRng::seed_from_u64(3));
        assert_eq!(l.merged(&params), base);
        assert_eq!(
            l.with_adapters(&base, &mut StdRng::seed_from_u64(9)).len(),
            params.len()
        );
    }

    #[test]
    fn a_merged_lora_weight_is_the_base_plus_the_scaled_product() {
        let spec = LoraSpec {
            base: Box::new(ModelSpec::Mlp(MlpSpec {
                input: 2,
                hidden: vec![],
                classes: 2,
            })),
            rank: 1,
            alpha: 2.0,
            targets: vec![],
        };
        // W = [[1, 2], [3, 4]], A = [[1], [2]], B = [[10, 20]], bias [5, 6]; scale 2.
        let params = [1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 10.0, 20.0, 5.0, 6.0];
        assert_eq!(spec.merged(&params), vec![21.0, 42.0, 43.0, 84.0, 5.0, 6.0]);
    }

    #[test]
    fn an_invalid_lora_names_what_is_wrong() {
        let err = |spec: LoraSpec| ModelSpec::Lora(spec).validate().unwrap_err().to_string();
        assert!(err(lora(&[], 0)).contains("rank must be positive"));
        let e = err(lora(&["convs.*"], 4));
        assert!(
            e.contains("`convs.*` names no 2-D weight") && e.contains("head.2.weight"),
            "{e}"
        );
        let e = err(lora(&["head.2"], 11));
        assert!(
            e.contains("rank 11 exceeds") && e.contains("head.2.weight` (84×10)"),
            "{e}"
        );
        let mut nan = lora(&[], 2);
        nan.alpha = f64::NAN;
        assert!(err(nan).contains("alpha"));
        let nested = LoraSpec {
            base: Box::new(ModelSpec::Lora(lora(&[], 2))),
            ..lora(&[], 2)
        };
        assert!(err(nested).contains("cannot itself be a LoRA model"));
    }
}
