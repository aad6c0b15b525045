//! Agents that skip training: every task is answered with the same fixed perturbation, so
//! a benchmark measures what the system costs and nothing of Burn.

use std::sync::Arc;

use fedtune::agent::cancel::Cancel;
use fedtune::agent::trainer::{FitOutcome, Trainer, TrainerError};
use fedtune::protocol::{
    Capabilities, CustomSpec, Evaluate, Evaluation, Manifest, ModelSpec, Task, TensorSpec, TrainMetrics,
};

/// A model of `params` f32 parameters in one tensor.
pub fn model(params: usize) -> ModelSpec {
    ModelSpec::Custom(CustomSpec {
        name: "perturbation".into(),
        manifest: Manifest {
            tensors: vec![TensorSpec::new("weights", vec![params])],
        },
    })
}

/// Skips training: answers every task with the same small perturbation.
pub struct Perturb {
    /// Shared by every agent of a process, so a thousand agents hold one copy.
    delta: Arc<[f32]>,
}

/// `agents` trainers that all answer with one shared perturbation of `params` parameters.
pub fn perturbations(agents: usize, params: usize) -> Vec<Perturb> {
    let delta: Arc<[f32]> = vec![1e-3; params].into();
    (0..agents).map(|_| Perturb { delta: delta.clone() }).collect()
}

impl Trainer for Perturb {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            train_samples: 100,
            ..Capabilities::default()
        }
    }
    fn fit(&mut self, _: &Task, global: &[f32], _: &Cancel) -> Result<FitOutcome, TrainerError> {
        if global.len() != self.delta.len() {
            return Err(TrainerError::Declined(format!(
                "expected {} parameters, got {}",
                self.delta.len(),
                global.len()
            )));
        }
        Ok(FitOutcome {
            delta: self.delta.to_vec(),
            num_samples: 100,
            metrics: TrainMetrics::default(),
            proposal: None,
        })
    }
    fn evaluate(&mut self, _: &Evaluate, _: &[f32]) -> Result<Evaluation, TrainerError> {
        Err(TrainerError::Declined("nothing to evaluate".into()))
    }
}
