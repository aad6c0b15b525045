//! The zoo: how each architecture of a [`ModelSpec`] becomes a Burn module, and the one
//! place that picks the architecture a spec names ([`with_zoo_model`]).
//!
//! Each spec type is a [`Blueprint`] (`MlpSpec` builds an [`Mlp`](super::Mlp), `CnnSpec`
//! a [`Cnn`](super::Cnn), `TransformerSpec` a [`TextTransformer`](super::TextTransformer),
//! a LoRA spec an [`Adapted`] base); a model of your own is a [`CustomModel`]. Training,
//! evaluation and weight files take any blueprint.

use fedtune_protocol::{LoraSpec, Manifest, ModelSpec};

use super::{Adapted, Classifier, Device, manifest_of};

/// How to build one Burn model, and what it takes and gives.
pub trait Blueprint {
    /// The module it builds.
    type Model: Classifier;

    /// Builds the module on `device` with Burn's initialisation (load parameters with
    /// [`super::load`]). Build on an autodiff device to train.
    fn build(&self, device: &Device) -> Self::Model;

    /// The module's parameter layout: [`manifest_of`] what [`Blueprint::build`] makes.
    fn manifest(&self) -> Manifest;

    /// Features per input row and output classes.
    fn shape(&self) -> ModelShape;

    /// For a model whose features are token ids, its vocabulary: every feature must be an
    /// integer in `0..vocab` (Burn panics on one outside). `None` (the default) for any
    /// other model.
    fn vocab(&self) -> Option<usize> {
        None
    }
}

/// What a model takes and gives, checked against the data before any tensor is built (a
/// mismatch would otherwise be a panic inside Burn).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelShape {
    /// Features per input row.
    pub input: usize,
    /// Output classes.
    pub classes: usize,
}

/// A model of your own as a [`Blueprint`]: `build` makes the module on a device, taking
/// rows of `shape.input` features to `shape.classes` logits.
pub struct CustomModel<F> {
    build: F,
    shape: ModelShape,
    manifest: Manifest,
}

impl<M: Classifier, F: Fn(&Device) -> M> CustomModel<F> {
    /// The model `build` makes (its layout read from one built on `device`).
    pub fn new(build: F, shape: ModelShape, device: &Device) -> Self {
        let manifest = manifest_of(&build(&device.clone().without_autodiff()));
        Self { build, shape, manifest }
    }
}

impl<M: Classifier, F: Fn(&Device) -> M> Blueprint for CustomModel<F> {
    type Model = M;

    fn build(&self, device: &Device) -> M {
        (self.build)(device)
    }

    fn manifest(&self) -> Manifest {
        self.manifest.clone()
    }

    fn shape(&self) -> ModelShape {
        self.shape
    }
}

/// Work to do with a zoo model whatever its Rust type: [`with_zoo_model`] hands
/// [`ZooTask::run`] the blueprint a spec describes. (Closures cannot be generic over the
/// model type; this trait is that closure.)
pub trait ZooTask {
    /// What the work gives.
    type Output;
    /// Does the work with `model` (with its LoRA adapters attached, for a LoRA spec).
    fn run<B: Blueprint>(self, model: &B) -> Self::Output;
}

/// A spec the zoo has no architecture for: a custom model, which its own trainer builds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the zoo builds no custom model (`{name}`)")]
pub struct NotInZoo {
    /// The custom model's name.
    pub name: String,
}

/// Runs `task` with the blueprint of the model `spec` describes. `spec` must be valid
/// ([`ModelSpec::validate`]).
///
/// # Errors
/// [`NotInZoo`] for a custom spec (or LoRA on one), which names no architecture.
pub fn with_zoo_model<T: ZooTask>(spec: &ModelSpec, task: T) -> Result<T::Output, NotInZoo> {
    fn run<T: ZooTask>(model: &impl Blueprint, lora: Option<&LoraSpec>, task: T) -> T::Output {
        match lora {
            Some(lora) => task.run(&Adapted::new(model, lora)),
            None => task.run(model),
        }
    }
    fn dispatch<T: ZooTask>(spec: &ModelSpec, lora: Option<&LoraSpec>, task: T) -> Result<T::Output, NotInZoo> {
        match spec {
            ModelSpec::Mlp(mlp) => Ok(run(mlp, lora, task)),
            ModelSpec::Cnn(cnn) => Ok(run(cnn, lora, task)),
            ModelSpec::Transformer(transformer) => Ok(run(transformer, lora, task)),
            ModelSpec::Bert(bert) => Ok(run(bert, lora, task)),
            // `validate` refuses a LoRA base that is itself LoRA.
            ModelSpec::Lora(inner) => dispatch(&inner.base, Some(inner), task),
            ModelSpec::Custom(custom) => Err(NotInZoo {
                name: custom.name.clone(),
            }),
        }
    }
    dispatch(spec, None, task)
}
