//! Server-side evaluation on a held-out test set, with the agents' Burn model code.

use fedtune_agent::data::Dataset;
use fedtune_agent::model::Device;
use fedtune_agent::train::evaluate;
use fedtune_aggregator::{Evaluator, GlobalEvaluation};
use fedtune_federation::EvaluationError;
use fedtune_protocol::ModelSpec;

/// Evaluates global models on a test set the aggregator holds (as Flower's
/// `evaluate_fn`).
#[derive(Debug)]
pub struct TestSetEvaluator {
    test: Dataset,
    device: Device,
}

impl TestSetEvaluator {
    /// An evaluator over `test` on `device`.
    pub fn new(test: Dataset, device: Device) -> Self {
        Self { test, device }
    }
}

impl Evaluator for TestSetEvaluator {
    fn evaluate(&self, model: &ModelSpec, params: &[f32]) -> Result<GlobalEvaluation, EvaluationError> {
        if let ModelSpec::Custom(custom) = model {
            return Err(EvaluationError::UnsupportedModel(format!(
                "the test set evaluates the zoo's models (MLP, CNN), not custom model `{}`",
                custom.name
            )));
        }
        let e =
            evaluate(model, params, &self.test, &self.device).map_err(|e| EvaluationError::Failed(e.to_string()))?;
        Ok(GlobalEvaluation {
            loss: e.loss,
            accuracy: e.accuracy,
            samples: e.samples,
        })
    }
}
