//! Your own model in an agent: [`ModelTrainer`] runs any Burn module that implements
//! [`Classifier`] with fedtune's training loop, parameter layout, freezing, evaluation and
//! metrics. The aggregator names the model with [`custom_spec`] and starts it from
//! [`initial_params`], so neither side needs to know the architecture beyond its
//! manifest.
//!
//! ```ignore
//! #[derive(Module, Debug)]
//! struct Mine { a: Linear, b: Linear }
//! impl Classifier for Mine { fn forward(&self, x: Tensor<2>) -> Tensor<2> { ... } }
//!
//! let build = |device: &Device| Mine { a: ..., b: ... };
//! let spec = custom_spec("mine", &build(&device));          // aggregator: [model]
//! let trainer = ModelTrainer::new("mine", build, 64, 10, train, validation, device);
//! ```

use std::marker::PhantomData;

use fedtune_protocol::{Capabilities, CustomSpec, Evaluate, Evaluation, ModelSpec, Task};

use crate::cancel::Cancel;
use crate::data::Dataset;
use crate::model::{Blueprint, Classifier, CustomModel, Device, ModelShape, flatten, manifest_of};
use crate::train::{TrainJob, evaluate_with, train_model};
use crate::trainer::{FitOutcome, Trainer, TrainerError};

/// The [`ModelSpec::Custom`] that names a model of your own: its name and its layout.
pub fn custom_spec<M: Classifier>(name: &str, model: &M) -> ModelSpec {
    ModelSpec::Custom(CustomSpec {
        name: name.to_owned(),
        manifest: manifest_of(model),
    })
}

/// A model's parameters in manifest order: what the global model starts from.
pub fn initial_params<M: Classifier>(model: &M) -> Vec<f32> {
    flatten(model)
}

/// Trains a model of your own on local data: `build` makes it on a device (Burn's
/// initialisation; the task's global parameters are loaded into it).
pub struct ModelTrainer<M, F> {
    name: String,
    blueprint: CustomModel<F>,
    train: Dataset,
    validation: Dataset,
    device: Device,
    model: PhantomData<fn() -> M>,
}

impl<M: Classifier, F: Fn(&Device) -> M + Send + 'static> ModelTrainer<M, F> {
    /// A trainer for the custom model `name`, taking rows of `input` features and
    /// giving `classes` logits, over local `train` and `validation` splits.
    pub fn new(
        name: &str,
        build: F,
        input: usize,
        classes: usize,
        train: Dataset,
        validation: Dataset,
        device: Device,
    ) -> Self {
        Self {
            name: name.to_owned(),
            blueprint: CustomModel::new(build, ModelShape { input, classes }, &device),
            train,
            validation,
            device,
            model: PhantomData,
        }
    }

    /// Refuses a task for another model than this trainer's.
    fn check(&self, model: &ModelSpec) -> Result<(), TrainerError> {
        let manifest = self.blueprint.manifest();
        match model {
            ModelSpec::Custom(custom) if custom.name == self.name && custom.manifest == manifest => Ok(()),
            ModelSpec::Custom(custom) if custom.name == self.name => Err(TrainerError::UnsupportedModel(format!(
                "custom model `{}` has manifest {} here, the task's is {}",
                custom.name,
                manifest.hash(),
                custom.manifest.hash()
            ))),
            other => Err(TrainerError::UnsupportedModel(format!(
                "this agent trains custom model `{}`, not {}",
                self.name,
                other.describe()
            ))),
        }
    }
}

impl<M: Classifier, F: Fn(&Device) -> M + Send + 'static> Trainer for ModelTrainer<M, F> {
    fn capabilities(&self) -> Capabilities {
        crate::trainer::capabilities(&self.train, &self.validation)
    }

    fn fit(&mut self, task: &Task, global: &[f32], cancel: &Cancel) -> Result<FitOutcome, TrainerError> {
        self.check(&task.model)?;
        let job = TrainJob {
            frozen: &task.frozen,
            global,
            hp: &task.hyperparameters,
            train: &self.train,
            validation: &self.validation,
            seed: task.seed,
            device: &self.device,
            cancel,
        };
        let local = train_model(&self.blueprint, &job)?;
        Ok(FitOutcome::from_local(local, None))
    }

    fn evaluate(&mut self, request: &Evaluate, params: &[f32]) -> Result<Evaluation, TrainerError> {
        self.check(&request.model)?;
        let e = evaluate_with(&self.blueprint, params, &self.validation, &self.device)?;
        Ok(crate::trainer::answer(request, e))
    }
}
