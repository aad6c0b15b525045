//! What an agent does with a task: the [`Trainer`] seam and its Burn implementation.

use fedtune_protocol::{Capabilities, ClientHyperparameters, Evaluate, Evaluation, ModelSpec, Task, TrainMetrics};

use crate::cancel::{Abandoned, Cancel};
use crate::data::Dataset;
use crate::model::Device;
use crate::train::{self, LocalUpdate, TrainError, TrainJob, evaluate, train_local};

/// Why a trainer did not produce an update or an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    /// Local training or evaluation failed (bad task, bad data, divergence...).
    #[error(transparent)]
    Train(TrainError),
    /// The task was abandoned (its deadline passed, or the aggregator dropped it).
    #[error("the task was abandoned: {0}")]
    Abandoned(Abandoned),
    /// The trainer declines the task for its own reason (battery, policy...).
    #[error("{0}")]
    Declined(String),
    /// The trainer cannot build this kind of model.
    #[error("this agent cannot run the model: {0}")]
    UnsupportedModel(String),
}

impl From<TrainError> for TrainerError {
    fn from(e: TrainError) -> Self {
        match e {
            TrainError::Abandoned(why) => TrainerError::Abandoned(why),
            other => TrainerError::Train(other),
        }
    }
}

impl From<Abandoned> for TrainerError {
    fn from(why: Abandoned) -> Self {
        TrainerError::Abandoned(why)
    }
}

/// The result of local training.
#[derive(Debug, Clone)]
pub struct FitOutcome {
    /// `local - global` of the task's trainable tensors ([`Task::trainable`]), in
    /// manifest order.
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

    /// Trains from `global` as `task` says, until done or until `cancel` says the task
    /// was abandoned (a trainer should check it between batches).
    ///
    /// # Errors
    /// [`TrainerError`] saying why the task cannot be run (sent to the aggregator as a
    /// decline), or [`TrainerError::Abandoned`] when `cancel` fired.
    fn fit(&mut self, task: &Task, global: &[f32], cancel: &Cancel) -> Result<FitOutcome, TrainerError>;

    /// Evaluates `params` on the local validation split.
    ///
    /// # Errors
    /// [`TrainerError`] saying why the model cannot be evaluated.
    fn evaluate(&mut self, request: &Evaluate, params: &[f32]) -> Result<Evaluation, TrainerError>;
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
        capabilities(&self.train, &self.validation)
    }

    fn fit(&mut self, task: &Task, global: &[f32], cancel: &Cancel) -> Result<FitOutcome, TrainerError> {
        let hp = &task.hyperparameters;
        let train_loss_before = if task.measure_train_loss {
            Some(evaluate(&task.model, global, &self.train, &self.device)?.loss)
        } else {
            None
        };
        let job = TrainJob {
            frozen: &task.frozen,
            global,
            hp,
            train: &self.train,
            validation: &self.validation,
            seed: task.seed,
            device: &self.device,
            cancel,
        };
        let mut local = train_local(&task.model, &job)?;
        local.metrics.train_loss_before = train_loss_before;
        let plateau = self
            .last_loss
            .is_some_and(|last| local.metrics.loss_after > 0.999 * last);
        self.last_loss = Some(local.metrics.loss_after);
        let proposal = plateau.then(|| ClientHyperparameters {
            learning_rate: hp.learning_rate / 2.0,
            ..hp.clone()
        });
        Ok(FitOutcome::from_local(local, proposal))
    }

    fn evaluate(&mut self, request: &Evaluate, params: &[f32]) -> Result<Evaluation, TrainerError> {
        if let ModelSpec::Custom(custom) = &request.model {
            return Err(TrainerError::UnsupportedModel(format!(
                "this agent evaluates the zoo's models (MLP, CNN), not custom model `{}`",
                custom.name
            )));
        }
        let e = evaluate(&request.model, params, &self.validation, &self.device)?;
        Ok(answer(request, e))
    }
}

impl FitOutcome {
    /// A local training run's update, with the hyperparameters the trainer proposes.
    #[must_use]
    pub fn from_local(local: LocalUpdate, proposal: Option<ClientHyperparameters>) -> Self {
        Self {
            delta: local.delta,
            num_samples: local.num_samples,
            metrics: local.metrics,
            proposal,
        }
    }
}

/// The answer to `request` from a local evaluation.
pub(crate) fn answer(request: &Evaluate, e: train::Scores) -> Evaluation {
    Evaluation {
        trial: request.trial,
        round: request.round,
        loss: e.loss,
        accuracy: e.accuracy,
        samples: e.samples,
    }
}

/// What a device training with Burn's CPU backend on `train` and `validation` offers.
pub(crate) fn capabilities(train: &Dataset, validation: &Dataset) -> Capabilities {
    Capabilities {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        memory_bytes: 0,
        backend: "burn-flex-cpu".into(),
        train_samples: train.len() as u64,
        validation_samples: validation.len() as u64,
    }
}

impl Trainer for Box<dyn Trainer> {
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }

    fn fit(&mut self, task: &Task, global: &[f32], cancel: &Cancel) -> Result<FitOutcome, TrainerError> {
        (**self).fit(task, global, cancel)
    }

    fn evaluate(&mut self, request: &Evaluate, params: &[f32]) -> Result<Evaluation, TrainerError> {
        (**self).evaluate(request, params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::default_device;
    use fedtune_protocol::MlpSpec;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn data(n: usize, offset: f32) -> Dataset {
        let features = (0..n * 4).map(|i| ((i as f32) * 0.37 + offset).sin()).collect();
        let labels = (0..n as u32).map(|i| i % 3).collect();
        Dataset::from_parts(features, labels, 4, 3).unwrap()
    }

    fn task(measure_train_loss: bool) -> Task {
        let model = ModelSpec::Mlp(MlpSpec {
            input: 4,
            hidden: vec![8],
            classes: 3,
        });
        Task {
            study: "s".into(),
            trial: 0,
            round: 0,
            manifest_hash: model.manifest().hash(),
            model,
            hyperparameters: ClientHyperparameters::default(),
            deadline_ms: 10_000,
            seed: 1,
            measure_train_loss,
            secure: None,
            frozen: Vec::new(),
            base: None,
            classes: Vec::new(),
        }
    }

    #[test]
    fn the_training_loss_of_the_global_model_is_measured_when_asked() {
        let (train, validation) = (data(40, 0.0), data(12, 1.0));
        let mut trainer = BurnTrainer::new(train.clone(), validation.clone(), default_device());
        let task = task(true);
        let global = task.model.init_params(&mut StdRng::seed_from_u64(5));
        let spec = &task.model;
        let expected = evaluate(spec, &global, &train, &default_device()).unwrap().loss;
        let on_validation = evaluate(spec, &global, &validation, &default_device()).unwrap().loss;

        let outcome = trainer.fit(&task, &global, &Cancel::never()).unwrap();
        assert_eq!(outcome.metrics.train_loss_before, Some(expected));
        assert_eq!(outcome.metrics.loss_before, on_validation);
        assert_ne!(expected, on_validation, "the two splits differ");
        let outcome = trainer.fit(&self::task(false), &global, &Cancel::never()).unwrap();
        assert_eq!(outcome.metrics.train_loss_before, None, "not measured unless asked");
    }

    #[test]
    fn an_abandoned_task_stops_before_the_next_batch() {
        let mut trainer = BurnTrainer::new(data(40, 0.0), data(12, 1.0), default_device());
        let task = task(false);
        let global = task.model.init_params(&mut StdRng::seed_from_u64(5));
        let cancel = Cancel::until(std::time::Instant::now());
        let err = trainer.fit(&task, &global, &cancel).unwrap_err();
        assert!(matches!(err, TrainerError::Abandoned(Abandoned::Deadline)), "{err}");
        let dropped = Cancel::never();
        dropped.drop_task();
        let err = trainer.fit(&task, &global, &dropped).unwrap_err();
        assert!(matches!(err, TrainerError::Abandoned(Abandoned::Dropped)), "{err}");
    }
}
