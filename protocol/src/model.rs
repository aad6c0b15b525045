//! Model specifications: what architecture a task trains, and its parameter layout.

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
/// `channels` output channels (stride 1, zero `padding` on each side), ReLU, then a
/// `pool`×`pool` max-pool with stride `pool` (1 for none).
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
        };
        Self {
            channels,
            height,
            width,
            blocks: vec![block(6), block(16)],
            hidden: vec![120, 84],
            classes,
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
                    .map(|b| format!("c{}:{}{}", b.kernel, b.channels, if b.pool > 1 { "/p" } else { "" }))
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
            ModelSpec::Custom { name, .. } => format!("custom `{name}`"),
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
            ModelSpec::Custom { manifest, .. } => manifest.validate(),
        }
    }

    /// The parameter layout, named by module path: for an MLP, `layers.{i}.weight` with
    /// shape `[in, out]` and `layers.{i}.bias` with shape `[out]`, layer by layer; for a CNN,
    /// `convs.{i}.conv.weight` (`[out, in, k, k]`) and `convs.{i}.conv.bias` block by block,
    /// then the head's `head.{j}.weight` (`[in, out]`) and `head.{j}.bias`. An invalid CNN
    /// (see [`ModelSpec::validate`]) has an empty head.
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
                }
                for (j, (fan_in, fan_out)) in cnn.head_dims().unwrap_or_default().into_iter().enumerate() {
                    tensors.push(TensorSpec::new(format!("head.{j}.weight"), vec![fan_in, fan_out]));
                    tensors.push(TensorSpec::new(format!("head.{j}.bias"), vec![fan_out]));
                }
                Manifest { tensors }
            }
            ModelSpec::Custom { manifest, .. } => manifest.clone(),
        }
    }

    /// Fresh parameters in manifest order. Every MLP and CNN layer draws its weights and
    /// biases from `U(-1/sqrt(fan_in), 1/sqrt(fan_in))` (PyTorch's default for linear and
    /// convolution layers; a convolution's fan-in is `in · k · k`); custom layouts start at
    /// zero.
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
                let mut uniform = |fan_in: usize, n: usize| {
                    let bound = 1.0 / (fan_in as f32).sqrt();
                    params.extend((0..n).map(|_| rng.random_range(-bound..bound)));
                };
                for (block, fan_in) in cnn.blocks.iter().zip(cnn.block_inputs()) {
                    let fan_in = fan_in * block.kernel * block.kernel;
                    uniform(fan_in, fan_in * block.channels);
                    uniform(fan_in, block.channels);
                }
                for (fan_in, fan_out) in cnn.head_dims().unwrap_or_default() {
                    uniform(fan_in, fan_in * fan_out);
                    uniform(fan_in, fan_out);
                }
                params
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
}
