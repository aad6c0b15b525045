//! The Burn model a task's [`MlpSpec`] describes, and its flat parameter vector.
//!
//! Agents and the aggregator exchange parameters as one flat `f32` buffer laid out by the
//! spec's [`Manifest`]: `layers.{i}.weight` (`[in, out]`) then `layers.{i}.bias` (`[out]`),
//! layer by layer. [`flatten`] and [`load`] convert between that buffer and a [`Mlp`]; they
//! walk the module in traversal order and check each tensor's path and shape against the
//! manifest, since Burn's parameter ids are random per model and mean nothing across agents.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Tensor, TensorData};
use fedtune_protocol::{Manifest, MlpSpec, ModelSpec};

/// The handle that picks the backend Burn runs on (CPU, GPU; with or without autodiff).
pub use burn::tensor::Device;

/// The CPU device binaries use by default: Burn's ndarray backend, without autodiff
/// (training enables autodiff on the device it is given).
#[must_use]
pub fn default_device() -> Device {
    // Burn 0.22 deprecates ndarray in favour of flex, but the workspace builds only the
    // ndarray backend (flex doubles the release build time; see STACK.md).
    #[allow(deprecated)]
    Device::ndarray()
}

/// Why a parameter vector could not be loaded into a model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// The buffer's length does not match the manifest.
    #[error("parameter buffer holds {got} values, the manifest needs {expected}")]
    Length {
        /// Values the manifest lays out.
        expected: usize,
        /// Values in the buffer.
        got: usize,
    },
    /// The model has a different number of tensors than the manifest.
    #[error("the model has {model} parameter tensors, the manifest lists {manifest}")]
    TensorCount {
        /// Tensors in the model.
        model: usize,
        /// Tensors in the manifest.
        manifest: usize,
    },
    /// The model's tensor at a position has another path than the manifest says.
    #[error("parameter tensor {index} is `{model}` in the model but `{manifest}` in the manifest")]
    Name {
        /// Position in traversal order.
        index: usize,
        /// Path in the model.
        model: String,
        /// Name in the manifest.
        manifest: String,
    },
    /// A tensor has another shape than the manifest says.
    #[error("tensor `{name}` has shape {model:?} in the model but {manifest:?} in the manifest")]
    Shape {
        /// Tensor path.
        name: String,
        /// Shape in the model.
        model: Vec<usize>,
        /// Shape in the manifest.
        manifest: Vec<usize>,
    },
}

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
        load(
            Self::init(spec, device),
            params,
            &ModelSpec::Mlp(spec.clone()).manifest(),
        )
    }

    /// Logits of a batch.
    ///
    /// # Shapes
    /// - `x`: `[batch, input]`
    /// - output: `[batch, classes]`
    ///
    /// # Panics
    /// If the last dimension of `x` is not the spec's `input` (Burn asserts shapes).
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
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

    /// FedProx's proximal term `Σ ‖w − w_anchor‖²` over every parameter, where `anchor`
    /// holds the round's global parameters (no gradient flows into it).
    ///
    /// # Shapes
    /// - output: `[1]`
    pub fn squared_distance(&self, anchor: &Mlp) -> Tensor<1> {
        let mut total: Option<Tensor<1>> = None;
        for (layer, fixed) in self.layers.iter().zip(&anchor.layers) {
            let mut terms = vec![(layer.weight.val() - fixed.weight.val().detach()).powi_scalar(2).sum()];
            if let (Some(b), Some(fb)) = (&layer.bias, &fixed.bias) {
                terms.push((b.val() - fb.val().detach()).powi_scalar(2).sum());
            }
            for term in terms {
                total = Some(match total {
                    Some(t) => t + term,
                    None => term,
                });
            }
        }
        total.unwrap_or_else(|| Tensor::zeros([1], &self.devices()[0]))
    }
}

/// Reads every parameter into one flat buffer, in manifest order (each layer's `[in, out]`
/// weight, row-major, then its bias).
///
/// # Panics
/// If the backend cannot read a tensor back, which only a failing device does (never the
/// CPU backends).
pub fn flatten(model: &Mlp) -> Vec<f32> {
    struct Flatten(Vec<f32>);
    impl ModuleVisitor for Flatten {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let data = param.val().into_data_as::<f32>();
            let values = data.as_slice::<f32>().expect("tensor data was just converted to f32");
            self.0.extend_from_slice(values);
        }
    }
    let mut visitor = Flatten(Vec::with_capacity(model.num_params()));
    model.visit(&mut visitor);
    visitor.0
}

/// Replaces `model`'s parameters with `params`, laid out by `manifest`, keeping each
/// parameter's device and gradient setting (so a model built on an autodiff device stays
/// trainable).
///
/// # Errors
/// [`ModelError::Length`] when `params` is not `manifest.numel()` long;
/// [`ModelError::TensorCount`], [`ModelError::Name`] or [`ModelError::Shape`] when the
/// manifest does not describe this model.
pub fn load(model: Mlp, params: &[f32], manifest: &Manifest) -> Result<Mlp, ModelError> {
    if params.len() != manifest.numel() {
        return Err(ModelError::Length {
            expected: manifest.numel(),
            got: params.len(),
        });
    }
    let mut mapper = Loader {
        params,
        manifest,
        path: Vec::new(),
        next: 0,
        offset: 0,
        error: None,
    };
    let model = model.map(&mut mapper);
    if let Some(error) = mapper.error {
        return Err(error);
    }
    if mapper.next != manifest.tensors.len() {
        return Err(ModelError::TensorCount {
            model: mapper.next,
            manifest: manifest.tensors.len(),
        });
    }
    Ok(model)
}

/// Writes consecutive manifest tensors into the parameters it visits; stops at the first
/// mismatch and records it.
struct Loader<'a> {
    params: &'a [f32],
    manifest: &'a Manifest,
    path: Vec<String>,
    /// Index of the next manifest tensor.
    next: usize,
    /// Offset of the next manifest tensor in `params`.
    offset: usize,
    error: Option<ModelError>,
}

impl Loader<'_> {
    fn tensor_for<const D: usize>(&mut self, param: &Param<Tensor<D>>) -> Result<Tensor<D>, ModelError> {
        let name = self.path.join(".");
        let index = self.next;
        self.next += 1;
        let Some(spec) = self.manifest.tensors.get(index) else {
            // Count the rest of the model's tensors so the error says how many it has.
            return Err(ModelError::TensorCount {
                model: index + 1,
                manifest: self.manifest.tensors.len(),
            });
        };
        if spec.name != name {
            return Err(ModelError::Name {
                index,
                model: name,
                manifest: spec.name.clone(),
            });
        }
        let shape = param.lazy_shape();
        if shape.as_slice() != spec.shape.as_slice() {
            return Err(ModelError::Shape {
                name,
                model: shape.to_vec(),
                manifest: spec.shape.clone(),
            });
        }
        // `load` checked the total length, so every tensor's range lies inside `params`.
        let end = self.offset + spec.numel();
        let values = self.params[self.offset..end].to_vec();
        self.offset = end;
        Ok(Tensor::from_data(
            TensorData::new(values, spec.shape.clone()),
            &param.lazy_device(),
        ))
    }
}

impl ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.error.is_some() {
            if let Some(ModelError::TensorCount { model, .. }) = &mut self.error {
                *model += 1;
            }
            return param;
        }
        match self.tensor_for(&param) {
            Ok(tensor) => {
                let id = param.id;
                // Not `Param::map`: a fresh tensor must inherit the parameter's autodiff
                // tracking, or the next `backward()` panics (STACK.md).
                param.transform_for_load(tensor, id)
            }
            Err(error) => {
                self.error = Some(error);
                param
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedtune_protocol::TensorSpec;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn spec() -> MlpSpec {
        MlpSpec {
            input: 4,
            hidden: vec![3],
            classes: 2,
        }
    }

    fn params(spec: &MlpSpec) -> (Manifest, Vec<f32>) {
        let model = ModelSpec::Mlp(spec.clone());
        (model.manifest(), model.init_params(&mut StdRng::seed_from_u64(1)))
    }

    #[test]
    fn flatten_of_load_is_identity_on_plain_and_autodiff_devices() {
        let spec = spec();
        let (manifest, params) = params(&spec);
        for device in [default_device(), default_device().autodiff()] {
            let model = load(Mlp::init(&spec, &device), &params, &manifest).unwrap();
            assert_eq!(flatten(&model), params);
        }
        let linear = ModelSpec::Mlp(MlpSpec {
            input: 3,
            hidden: vec![],
            classes: 2,
        });
        let p = linear.init_params(&mut StdRng::seed_from_u64(2));
        let model = load(
            Mlp::init(
                &MlpSpec {
                    input: 3,
                    hidden: vec![],
                    classes: 2,
                },
                &default_device(),
            ),
            &p,
            &linear.manifest(),
        )
        .unwrap();
        assert_eq!(flatten(&model), p);
    }

    #[test]
    fn manifest_order_is_weight_in_out_then_bias() {
        // Identity-like weights make the [in, out] layout observable through forward().
        let spec = MlpSpec {
            input: 2,
            hidden: vec![],
            classes: 3,
        };
        // weight [2, 3] row-major, then bias [3].
        let params = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.5, 0.0, -0.5];
        let device = default_device();
        let model = Mlp::from_params(&spec, &params, &device).unwrap();
        let x = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 0.0, 0.0, 1.0], [2, 2]), &device);
        let y = model.forward(x).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(y, vec![1.5, 2.0, 2.5, 4.5, 5.0, 5.5]);
    }

    #[test]
    fn relu_sits_between_layers_only() {
        // A hidden layer whose pre-activation is negative is cut to zero; the output layer
        // may be negative.
        let spec = MlpSpec {
            input: 1,
            hidden: vec![1],
            classes: 1,
        };
        let params = [-1.0, 0.0, 1.0, -3.0];
        let device = default_device();
        let model = Mlp::from_params(&spec, &params, &device).unwrap();
        let x = Tensor::<2>::from_data(TensorData::new(vec![2.0f32, -2.0], [2, 1]), &device);
        let y = model.forward(x).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(y, vec![-3.0, -1.0]);
    }

    #[test]
    fn load_rejects_wrong_length_shape_name_and_count() {
        let spec = spec();
        let (manifest, params) = params(&spec);
        let device = default_device();
        let model = || Mlp::init(&spec, &device);
        assert_eq!(
            load(model(), &params[1..], &manifest).unwrap_err(),
            ModelError::Length {
                expected: params.len(),
                got: params.len() - 1
            }
        );

        let mut transposed = manifest.clone();
        transposed.tensors[0].shape = vec![3, 4];
        assert!(matches!(
            load(model(), &params, &transposed),
            Err(ModelError::Shape { .. })
        ));

        let mut renamed = manifest.clone();
        renamed.tensors[2].name = "layers.1.w".into();
        assert!(matches!(
            load(model(), &params, &renamed),
            Err(ModelError::Name { index: 2, .. })
        ));

        let mut short = manifest.clone();
        short.tensors.truncate(3);
        let n = short.numel();
        assert_eq!(
            load(model(), &params[..n], &short).unwrap_err(),
            ModelError::TensorCount { model: 4, manifest: 3 }
        );

        let mut long = manifest.clone();
        long.tensors.push(TensorSpec::new("extra", vec![1]));
        let mut more = params.clone();
        more.push(0.0);
        assert_eq!(
            load(model(), &more, &long).unwrap_err(),
            ModelError::TensorCount { model: 4, manifest: 5 }
        );
    }
}
