//! The convolutional network of [`CnnSpec`].

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use fedtune_protocol::model::Architecture;
use fedtune_protocol::{CnnSpec, Manifest, NormStats};

use super::{Blueprint, Classifier, Device, ModelError, ModelShape, load};

/// One block: convolution, optional batch norm, ReLU, then an optional max-pool.
#[derive(Module, Debug)]
pub struct ConvLayer {
    conv: Conv2d,
    norm: Option<BatchNorm>,
    pool: Option<MaxPool2d>,
}

/// A convolutional classifier: conv / batch-norm / ReLU / max-pool blocks (`convs`), the feature map
/// flattened channel-major (as PyTorch's `flatten`), then linear layers (`head`) with ReLU
/// between them and none after the last, so it outputs logits.
#[derive(Module, Debug)]
pub struct Cnn {
    convs: Vec<ConvLayer>,
    head: Vec<Linear>,
    /// `[channels, height, width]` of an input row.
    input: [usize; 3],
}

impl Cnn {
    /// Builds the layers of `spec` on `device` (Burn's default initialisation). Build on
    /// an autodiff device to train.
    ///
    /// # Panics
    /// If `spec` is invalid (see [`fedtune_protocol::ModelSpec::validate`]): a kernel or pool larger than its
    /// feature map.
    pub fn init(spec: &CnnSpec, device: &Device) -> Self {
        let mut channels = spec.channels;
        let convs = spec
            .blocks
            .iter()
            .map(|block| {
                let p = block.padding;
                let conv = Conv2dConfig::new([channels, block.channels], [block.kernel; 2])
                    .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                    .init(device);
                let norm = block.batch_norm.then(|| {
                    let norm = BatchNormConfig::new(block.channels).init(device);
                    match spec.norm_stats {
                        NormStats::Averaged => norm,
                        // Normalise with the running statistics in training too, and never
                        // update them.
                        NormStats::Frozen => BatchNorm {
                            training: Param::from_bool(false),
                            ..norm
                        },
                    }
                });
                channels = block.channels;
                let pool = (block.pool > 1).then(|| {
                    MaxPool2dConfig::new([block.pool; 2])
                        .with_strides([block.pool; 2])
                        .init()
                });
                ConvLayer { conv, norm, pool }
            })
            .collect();
        let head = spec
            .head_dims()
            .expect("an invalid CNN spec reached Cnn::init")
            .into_iter()
            .map(|(fan_in, fan_out)| LinearConfig::new(fan_in, fan_out).init(device))
            .collect();
        Self {
            convs,
            head,
            input: [spec.channels, spec.height, spec.width],
        }
    }

    /// Builds `spec` on `device` with the parameters in `params` (manifest order).
    ///
    /// # Errors
    /// [`ModelError`] when `params` does not fit the spec's manifest.
    pub fn from_params(spec: &CnnSpec, params: &[f32], device: &Device) -> Result<Self, ModelError> {
        load(Self::init(spec, device), params, &Architecture::manifest(spec))
    }
}

impl Classifier for Cnn {
    /// Rows are images flattened channel-major (`[C, H, W]`, row-major within a channel).
    ///
    /// # Panics
    /// If the rows are not `channels · height · width` long (Burn asserts shapes).
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let [batch, _] = x.dims();
        let [c, h, w] = self.input;
        let mut maps: Tensor<4> = x.reshape([batch, c, h, w]);
        for layer in &self.convs {
            maps = layer.conv.forward(maps);
            if let Some(norm) = &layer.norm {
                maps = norm.forward(maps);
            }
            maps = relu(maps);
            if let Some(pool) = &layer.pool {
                maps = pool.forward(maps);
            }
        }
        let mut x: Tensor<2> = maps.flatten(1, 3);
        let last = self.head.len().saturating_sub(1);
        for (i, layer) in self.head.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = relu(x);
            }
        }
        x
    }
}

impl Blueprint for CnnSpec {
    type Model = Cnn;

    fn build(&self, device: &Device) -> Cnn {
        Cnn::init(self, device)
    }

    fn manifest(&self) -> Manifest {
        Architecture::manifest(self)
    }

    fn shape(&self) -> ModelShape {
        ModelShape {
            input: self.input_len(),
            classes: self.classes,
        }
    }
}
