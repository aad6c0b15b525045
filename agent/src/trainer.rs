//! What an agent does with a task: the [`Trainer`] seam and its Burn implementation.

use fedtune_protocol::{Capabilities, ClientHyperparameters, Evaluate, Evaluation, ModelSpec, Task, TrainMetrics};

use crate::data::Dataset;
use crate::model::Device;
use crate::train::{evaluate, train_local};

/// The result of local training.
#[derive(Debug, Clone)]
pub struct FitOutcome {
    /// `local - global`, in manifest order.
    pub delta: Vec<f32>,
    /// Training samples used (FedAvg weight).
    pub num_samples: u64,
    /// What was measured.
    pub metrics: TrainMetrics,
    /// Hyperparameters proposed for the next task, if a local rule moved any.
    pub proposal: Option<ClientHyperparameters>,
}

/// Runs tasks for an agent. Called on a blocking thread, one task at a time.
pub trait Trainer: Send + 'static {
    /// What this device offers, sent in the hello.
    fn capabilities(&self) -> Capabilities;

    /// Trains from `global` as `task` says.
    ///
    /// # Errors
    /// Why the task cannot be run; sent to the aggregator as a decline.
    fn fit(&mut self, task: &Task, global: &[f32]) -> Result<FitOutcome, String>;

    /// Evaluates `params` on the local validation split.
    ///
    /// # Errors
    /// Why the model cannot be evaluated.
    fn evaluate(&mut self, request: &Evaluate, params: &[f32]) -> Result<Evaluation, String>;
}

/// Trains the task's model with Burn on local data.
///
/// Its local rule proposes halving the learning rate when local validation loss stops
/// improving from one task to the next; the aggregator decides whether to use it.
#[derive(Debug)]
pub struct BurnTrainer {
    train: Dataset,
    validation: Dataset,
    device: Device,
    last_loss: Option<f64>,
}

impl BurnTrainer {
    /// A trainer over local `train` and `validation` splits on `device`.
    pub fn new(train: Dataset, validation: Dataset, device: Device) -> Self {
        Self {
            train,
            validation,
            device,
            last_loss: None,
        }
    }
}

impl Trainer for BurnTrainer {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            memory_bytes: 0,
            backend: "burn-ndarray-cpu".into(),
            train_samples: self.train.len() as u64,
            validation_samples: self.validation.len() as u64,
        }
    }

    fn fit(&mut self, task: &Task, global: &[f32]) -> Result<FitOutcome, String> {
        let hp = &task.hyperparameters;
        let local = train_local(
            &task.model,
            global,
            hp,
            &self.train,
            &self.validation,
            task.seed,
            &self.device,
        )
        .map_err(|e| e.to_string())?;
        let plateau = self
            .last_loss
            .is_some_and(|last| local.metrics.loss_after > 0.999 * last);
        self.last_loss = Some(local.metrics.loss_after);
        let proposal = plateau.then(|| ClientHyperparameters {
            learning_rate: hp.learning_rate / 2.0,
            ..hp.clone()
        });
        Ok(FitOutcome {
            delta: local.delta,
            num_samples: local.num_samples,
            metrics: local.metrics,
            proposal,
        })
    }

    fn evaluate(&mut self, request: &Evaluate, params: &[f32]) -> Result<Evaluation, String> {
        let ModelSpec::Mlp(spec) = &request.model else {
            return Err("this agent only evaluates MLP models".into());
        };
        let e = evaluate(spec, params, &self.validation, &self.device).map_err(|e| e.to_string())?;
        Ok(Evaluation {
            trial: request.trial,
            round: request.round,
            loss: e.loss,
            accuracy: e.accuracy,
            samples: e.samples,
        })
    }
}

impl Trainer for Box<dyn Trainer> {
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }

    fn fit(&mut self, task: &Task, global: &[f32]) -> Result<FitOutcome, String> {
        (**self).fit(task, global)
    }

    fn evaluate(&mut self, request: &Evaluate, params: &[f32]) -> Result<Evaluation, String> {
        (**self).evaluate(request, params)
    }
}
