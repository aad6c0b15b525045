//! The convolutional classifier: its blocks and how its batch norms keep statistics.

use serde::{Deserialize, Serialize};

use super::{Architecture, Init, ModelSpec, linear, scale_width};
use crate::ProtocolError;
use crate::tensor::TensorSpec;

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
/// Its parameters are `convs.{i}.conv.weight` (`[out, in, k, k]`) and `convs.{i}.conv.bias`
/// (then, with a batch norm, `convs.{i}.norm.{gamma,beta,running_mean,running_var}`) block
/// by block, then the head's `head.{j}.weight` (`[in, out]`) and `head.{j}.bias`.
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

/// A batch norm's tensors under `convs.{i}.norm`, in Burn's traversal order.
pub const NORM_TENSORS: [&str; 4] = ["gamma", "beta", "running_mean", "running_var"];

/// How each of [`NORM_TENSORS`] starts: `gamma` 1, `beta` 0, running mean 0, running
/// variance 1.
const NORM_INITS: [f32; 4] = [1.0, 0.0, 0.0, 1.0];

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

impl Architecture for CnnSpec {
    /// Convolutions (fan-in `in · k · k`) and the head draw from `U(-1/sqrt(fan_in),
    /// 1/sqrt(fan_in))`; batch norms start as [`NORM_TENSORS`]' identity. An invalid CNN
    /// (see [`ModelSpec::validate`]) has an empty head.
    fn tensors(&self) -> Vec<(TensorSpec, Init)> {
        let mut tensors = Vec::new();
        for (i, (block, inputs)) in self.blocks.iter().zip(self.block_inputs()).enumerate() {
            let fan_in = inputs * block.kernel * block.kernel;
            tensors.push((
                TensorSpec::new(
                    format!("convs.{i}.conv.weight"),
                    vec![block.channels, inputs, block.kernel, block.kernel],
                ),
                Init::Uniform(fan_in),
            ));
            tensors.push((
                TensorSpec::new(format!("convs.{i}.conv.bias"), vec![block.channels]),
                Init::Uniform(fan_in),
            ));
            if block.batch_norm {
                for (stat, value) in NORM_TENSORS.into_iter().zip(NORM_INITS) {
                    tensors.push((
                        TensorSpec::new(format!("convs.{i}.norm.{stat}"), vec![block.channels]),
                        Init::Constant(value),
                    ));
                }
            }
        }
        for (j, (fan_in, fan_out)) in self.head_dims().unwrap_or_default().into_iter().enumerate() {
            tensors.extend(linear(&format!("head.{j}"), fan_in, fan_out));
        }
        tensors
    }

    fn check(&self) -> Result<(), ProtocolError> {
        if self.classes == 0 || self.hidden.contains(&0) {
            return Err(ProtocolError::InvalidModel(format!(
                "every CNN head width must be positive (hidden {:?}, classes {})",
                self.hidden, self.classes
            )));
        }
        self.head_dims().map(drop)
    }

    fn classes(&self) -> Option<usize> {
        Some(self.classes)
    }

    fn describe(&self) -> String {
        let blocks: Vec<String> = self
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
        let head = self.head_dims().map_or_else(
            |_| "?".into(),
            |dims| {
                let widths: Vec<String> = std::iter::once(dims[0].0)
                    .chain(dims.iter().map(|d| d.1))
                    .map(|w| w.to_string())
                    .collect();
                widths.join("-")
            },
        );
        format!(
            "CNN {}x{}x{} {} {head}",
            self.channels,
            self.height,
            self.width,
            blocks.join(" ")
        )
    }

    fn scaled(&self, width: f64) -> Result<ModelSpec, ProtocolError> {
        Ok(ModelSpec::Cnn(CnnSpec {
            blocks: self
                .blocks
                .iter()
                .map(|b| ConvBlock {
                    channels: scale_width(b.channels, width),
                    ..b.clone()
                })
                .collect(),
            hidden: self.hidden.iter().map(|&h| scale_width(h, width)).collect(),
            ..self.clone()
        }))
    }

    /// The running statistics of the batch norms, when [`NormStats::Frozen`] keeps them.
    fn implied_frozen(&self) -> Vec<String> {
        if !self.blocks.iter().any(|b| b.batch_norm) {
            return Vec::new();
        }
        self.norm_stats
            .frozen_patterns()
            .iter()
            .map(ToString::to_string)
            .collect()
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
}
