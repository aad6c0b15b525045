//! The multi-layer perceptron of [`MlpSpec`].

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use fedtune_protocol::model::Architecture;
use fedtune_protocol::{Manifest, MlpSpec};

use super::{Blueprint, Classifier, Device, ModelError, ModelShape, load};

/// A multi-layer perceptron classifier: linear layers with ReLU between them and none
/// after the last, so it outputs logits.
#[derive(Module, Debug)]
pub struct Mlp {
    layers: Vec<Linear>,
}

impl Mlp {
    /// Builds the layers of `spec` on `device` (Burn's default initialisation; load
    /// parameters with [`load`] or build with [`Mlp::from_params`] to start from given
    /// values). Build on an autodiff device to train.
    pub fn init(spec: &MlpSpec, device: &Device) -> Self {
        let layers = spec
            .layer_dims()
            .into_iter()
            .map(|(fan_in, fan_out)| LinearConfig::new(fan_in, fan_out).init(device))
            .collect();
        Self { layers }
    }

    /// Builds `spec` on `device` with the parameters in `params` (manifest order).
    ///
    /// # Errors
    /// Those of [`load`].
    pub fn from_params(spec: &MlpSpec, params: &[f32], device: &Device) -> Result<Self, ModelError> {
        load(Self::init(spec, device), params, &Architecture::manifest(spec))
    }
}

impl Classifier for Mlp {
    /// # Panics
    /// If the last dimension of `x` is not the spec's `input` (Burn asserts shapes).
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len().saturating_sub(1);
        let mut x = x;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = relu(x);
            }
        }
        x
    }
}

impl Blueprint for MlpSpec {
    type Model = Mlp;

    fn build(&self, device: &Device) -> Mlp {
        Mlp::init(self, device)
    }

    fn manifest(&self) -> Manifest {
        Architecture::manifest(self)
    }

    fn shape(&self) -> ModelShape {
        ModelShape {
            input: self.input,
            classes: self.classes,
        }
    }
}
