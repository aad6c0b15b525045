//! The Burn models a task's [`ModelSpec`] describes, and their flat parameter vector.
//!
//! Agents and the aggregator exchange parameters as one flat `f32` buffer laid out by a
//! [`Manifest`] whose names are module paths (`layers.0.weight`, `convs.1.conv.bias`), so
//! weight files map onto models by name. [`flatten`] and [`load`] convert between that
//! buffer and any Burn [`Module`]; they walk the module in traversal order and check each
//! tensor's path and shape against the manifest, since Burn's parameter ids are random per
//! model and mean nothing across agents. [`manifest_of`] reads a module's layout.
//!
//! A model an agent trains is a [`Classifier`]: a module with a forward pass from a batch
//! of feature rows to logits. The zoo's are [`Mlp`], [`Cnn`] and [`TextTransformer`], each
//! built from its spec through that spec's [`Blueprint`] impl, with LoRA adapters on any of
//! them ([`Adapted`]); any other Burn module that implements the trait trains through the
//! same code as a [`CustomModel`] (see [`crate::train::train_model`]).
//!
//! # Layout
//! - `zoo`: the [`Blueprint`] trait, [`CustomModel`], and [`with_zoo_model`], the one
//!   place that picks the architecture a [`ModelSpec`] names.
//! - `mlp`, `cnn`, `transformer`, `bert`: each architecture's module and blueprint.
//! - `lora`: adapters on any module ([`with_lora`]) and the blueprint of a LoRA spec.
//! - here: the flat parameter vector ([`flatten`], [`load`], [`manifest_of`]), freezing and
//!   FedProx's distance.
//!
//! [`ModelSpec`]: fedtune_protocol::ModelSpec

mod bert;
mod cnn;
mod lora;
mod mlp;
mod transformer;
mod zoo;

pub use bert::BertClassifier;
pub use cnn::Cnn;
pub use lora::{Adapted, with_lora};
pub use mlp::Mlp;
pub use transformer::TextTransformer;
pub use zoo::{Blueprint, CustomModel, ModelShape, NotInZoo, ZooTask, with_zoo_model};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Tensor, TensorData};
use fedtune_protocol::{Manifest, TensorSpec};

/// A classifier an agent can train: a Burn module whose forward pass maps a batch of
/// feature rows to logits. Rows arrive as the dataset holds them (an image flattened
/// channel-major, token ids as floats...); the model reshapes what it needs.
pub trait Classifier: Module + 'static {
    /// Logits of a batch.
    ///
    /// # Shapes
    /// - `x`: `[batch, features]`
    /// - output: `[batch, classes]`
    fn forward(&self, x: Tensor<2>) -> Tensor<2>;
}

/// The handle that picks the backend Burn runs on (CPU, GPU; with or without autodiff).
pub use burn::tensor::Device;

/// The CPU device binaries use by default: Burn's flex backend (pure Rust, SIMD
/// convolutions), without autodiff (training enables autodiff on the device it is given).
#[must_use]
pub fn default_device() -> Device {
    Device::flex()
}

/// Why a model could not be built, or a parameter vector not loaded into it.
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

/// A module path's segment for a field: its name, but a field named after a Rust keyword
/// with an underscore appended (`self_`, for Hugging Face's `attention.self`) is spelled
/// as the keyword, so paths are the names a checkpoint uses.
#[must_use]
pub fn path_segment(field: &str) -> &str {
    match field {
        "self_" => "self",
        other => other,
    }
}

/// The layout of `model`'s float parameters in traversal order, named by module path.
pub fn manifest_of<M: Module>(model: &M) -> Manifest {
    struct Layout {
        path: Vec<String>,
        tensors: Vec<TensorSpec>,
    }
    impl ModuleVisitor for Layout {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(path_segment(name).to_owned());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.tensors
                .push(TensorSpec::new(self.path.join("."), param.lazy_shape().to_vec()));
        }
    }
    let mut layout = Layout {
        path: Vec::new(),
        tensors: Vec::new(),
    };
    model.visit(&mut layout);
    Manifest {
        tensors: layout.tensors,
    }
}

/// Reads every parameter into one flat buffer, in manifest order (row-major tensors in
/// traversal order: for a linear layer its `[in, out]` weight, then its bias).
///
/// # Panics
/// If the backend cannot read a tensor back, which only a failing device does (never the
/// CPU backends).
pub fn flatten<M: Module>(model: &M) -> Vec<f32> {
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

/// The values of `model`'s parameters that `trainable` names, in order
/// ([`fedtune_protocol::freeze::Trainable::gather`] of [`flatten`], without reading the
/// frozen ones: a LoRA model's base is never copied out).
pub fn flatten_trainable<M: Module>(model: &M, trainable: &fedtune_protocol::freeze::Trainable) -> Vec<f32> {
    struct Gather<'a> {
        trainable: &'a fedtune_protocol::freeze::Trainable,
        offset: usize,
        out: Vec<f32>,
    }
    impl ModuleVisitor for Gather<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let numel = param.shape().num_elements();
            let range = self.offset..self.offset + numel;
            self.offset += numel;
            if self.trainable.contains(range) {
                let data = param.val().into_data_as::<f32>();
                let values = data.as_slice::<f32>().expect("tensor data was just converted to f32");
                self.out.extend_from_slice(values);
            }
        }
    }
    let mut visitor = Gather {
        trainable,
        offset: 0,
        out: Vec::with_capacity(trainable.numel()),
    };
    model.visit(&mut visitor);
    visitor.out
}

/// Replaces `model`'s parameters with `params`, laid out by `manifest`, keeping each
/// parameter's device and gradient setting (so a model built on an autodiff device stays
/// trainable).
///
/// # Errors
/// [`ModelError::Length`] when `params` is not `manifest.numel()` long;
/// [`ModelError::TensorCount`], [`ModelError::Name`] or [`ModelError::Shape`] when the
/// manifest does not describe this model.
pub fn load<M: Module>(model: M, params: &[f32], manifest: &Manifest) -> Result<M, ModelError> {
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

/// Stops gradients at every float parameter whose module path a freeze pattern names
/// (see [`fedtune_protocol::freeze`]), so an optimizer leaves it as it is, and lets them
/// flow again where an unfreeze pattern (`!classifier`) names one (a LoRA base tensor
/// that trains).
pub fn freeze_paths<M: Module>(model: M, frozen: &[String]) -> M {
    struct Freeze<'a> {
        frozen: &'a [String],
        path: Vec<String>,
    }
    impl ModuleMapper for Freeze<'_> {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(path_segment(name).to_owned());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            match fedtune_protocol::freeze::verdict(self.frozen, &self.path.join(".")) {
                Some(frozen) => param.set_require_grad(!frozen),
                None => param,
            }
        }
    }
    if frozen.is_empty() {
        return model;
    }
    model.map(&mut Freeze {
        frozen,
        path: Vec::new(),
    })
}

/// FedProx's proximal term `Σ ‖w − w_anchor‖²` over every float parameter of `model`,
/// where `anchor` is the same architecture holding the round's global parameters (no
/// gradient flows into it).
///
/// # Shapes
/// - output: `[1]`
pub fn squared_distance<M: Module>(model: &M, anchor: &M) -> Tensor<1> {
    /// Every parameter as a detached 1-D tensor.
    struct Collect(Vec<Tensor<1>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.val().detach().reshape([-1]));
        }
    }
    /// The sum of squared differences against the collected anchor, in the same order.
    struct Distance {
        anchor: std::vec::IntoIter<Tensor<1>>,
        total: Option<Tensor<1>>,
    }
    impl ModuleVisitor for Distance {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let Some(fixed) = self.anchor.next() else { return };
            let term = (param.val().reshape([-1]) - fixed).powi_scalar(2).sum();
            self.total = Some(match self.total.take() {
                Some(t) => t + term,
                None => term,
            });
        }
    }
    let mut fixed = Collect(Vec::new());
    anchor.visit(&mut fixed);
    let mut distance = Distance {
        anchor: fixed.0.into_iter(),
        total: None,
    };
    model.visit(&mut distance);
    distance
        .total
        .unwrap_or_else(|| Tensor::zeros([1], &model.devices()[0]))
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
        self.path.push(path_segment(name).to_owned());
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
    use fedtune_protocol::{CnnSpec, MlpSpec, ModelSpec};
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

    #[test]
    fn every_zoo_model_has_the_layout_its_spec_promises() {
        let device = default_device();
        let mlp = MlpSpec {
            input: 64,
            hidden: vec![32, 16],
            classes: 10,
        };
        assert_eq!(manifest_of(&Mlp::init(&mlp, &device)), ModelSpec::Mlp(mlp).manifest());
        let mut cnn = CnnSpec::lenet(1, 28, 28, 10);
        assert_eq!(
            manifest_of(&Cnn::init(&cnn, &device)),
            ModelSpec::Cnn(cnn.clone()).manifest()
        );
        cnn.blocks[0].padding = 2;
        cnn.blocks[1].pool = 1;
        cnn.channels = 3;
        cnn.height = 32;
        cnn.width = 32;
        assert_eq!(manifest_of(&Cnn::init(&cnn, &device)), ModelSpec::Cnn(cnn).manifest());
    }

    #[test]
    fn a_cnn_round_trips_its_parameters_and_gives_logits_per_row() {
        let spec = CnnSpec::lenet(1, 28, 28, 10);
        let model_spec = ModelSpec::Cnn(spec.clone());
        let params = model_spec.init_params(&mut StdRng::seed_from_u64(4));
        for device in [default_device(), default_device().autodiff()] {
            let model = Cnn::from_params(&spec, &params, &device).unwrap();
            assert_eq!(flatten(&model), params);
        }
        let device = default_device();
        let model = Cnn::from_params(&spec, &params, &device).unwrap();
        let rows: Vec<f32> = (0..3 * 784).map(|i| ((i % 97) as f32) / 97.0).collect();
        let x = Tensor::<2>::from_data(TensorData::new(rows.clone(), [3, 784]), &device);
        let logits = model.forward(x).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(logits.len(), 30);
        // Each row's logits depend on that row only.
        let one = Tensor::<2>::from_data(TensorData::new(rows[784..1568].to_vec(), [1, 784]), &device);
        let alone = model.forward(one).into_data().try_to_vec::<f32>().unwrap();
        for (a, b) in alone.iter().zip(&logits[10..20]) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn a_transformer_and_a_lora_model_round_trip_their_parameters() {
        use fedtune_protocol::{LoraSpec, TransformerSpec};
        let transformer = ModelSpec::Transformer(TransformerSpec {
            max_len: 6,
            vocab: 20,
            d_model: 8,
            heads: 2,
            layers: 2,
            d_ff: 16,
            classes: 3,
            dropout: 0.0,
        });
        let lora = ModelSpec::Lora(LoraSpec {
            base: Box::new(transformer.clone()),
            rank: 2,
            alpha: 4.0,
            targets: vec!["head".into(), "*.pwff.*".into()],
            train: Vec::new(),
        });
        struct RoundTrip(Vec<f32>, Manifest);
        impl ZooTask for RoundTrip {
            type Output = Vec<f32>;
            fn run<B: Blueprint>(self, model: &B) -> Vec<f32> {
                flatten(&load(model.build(&default_device().autodiff()), &self.0, &self.1).unwrap())
            }
        }
        for spec in [transformer, lora] {
            spec.validate().unwrap();
            let params = spec.init_params(&mut StdRng::seed_from_u64(8));
            assert_eq!(
                with_zoo_model(&spec, RoundTrip(params.clone(), spec.manifest())).unwrap(),
                params
            );
        }
    }

    #[test]
    fn the_proximal_distance_is_the_squared_parameter_gap() {
        let spec = MlpSpec {
            input: 3,
            hidden: vec![2],
            classes: 2,
        };
        let model_spec = ModelSpec::Mlp(spec.clone());
        let a = model_spec.init_params(&mut StdRng::seed_from_u64(1));
        let b = model_spec.init_params(&mut StdRng::seed_from_u64(2));
        let expected: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
        let device = default_device();
        let (ma, mb) = (
            Mlp::from_params(&spec, &a, &device).unwrap(),
            Mlp::from_params(&spec, &b, &device).unwrap(),
        );
        let got = squared_distance(&ma, &mb).into_scalar::<f32>();
        assert!((got - expected).abs() < 1e-5 * expected.max(1.0), "{got} vs {expected}");
        assert_eq!(squared_distance(&ma, &ma.clone()).into_scalar::<f32>(), 0.0);
    }
}
