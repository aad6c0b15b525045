//! The multi-layer perceptron.

use serde::{Deserialize, Serialize};

use super::{Architecture, Init, ModelSpec, linear, scale_width};
use crate::ProtocolError;
use crate::tensor::TensorSpec;

/// A multi-layer perceptron: `input -> hidden[0] -> ... -> classes`.
///
/// Its parameters are `layers.{i}.weight` with shape `[in, out]` and `layers.{i}.bias`
/// with shape `[out]`, layer by layer, all drawn from `U(-1/sqrt(in), 1/sqrt(in))`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MlpSpec {
    /// Number of input features.
    pub input: usize,
    /// Widths of the hidden layers, in order (may be empty: a linear model).
    pub hidden: Vec<usize>,
    /// Number of output classes.
    pub classes: usize,
}

impl MlpSpec {
    /// `(fan_in, fan_out)` of every linear layer, in order.
    pub fn layer_dims(&self) -> Vec<(usize, usize)> {
        self.widths().windows(2).map(|w| (w[0], w[1])).collect()
    }

    /// Every layer's width, input to classes.
    fn widths(&self) -> Vec<usize> {
        let mut widths = Vec::with_capacity(self.hidden.len() + 2);
        widths.push(self.input);
        widths.extend_from_slice(&self.hidden);
        widths.push(self.classes);
        widths
    }
}

impl Architecture for MlpSpec {
    fn tensors(&self) -> Vec<(TensorSpec, Init)> {
        self.layer_dims()
            .into_iter()
            .enumerate()
            .flat_map(|(i, (fan_in, fan_out))| linear(&format!("layers.{i}"), fan_in, fan_out))
            .collect()
    }

    fn check(&self) -> Result<(), ProtocolError> {
        if self.input == 0 || self.classes == 0 || self.hidden.contains(&0) {
            return Err(ProtocolError::InvalidModel(format!(
                "every MLP width must be positive (input {}, hidden {:?}, classes {})",
                self.input, self.hidden, self.classes
            )));
        }
        Ok(())
    }

    fn classes(&self) -> Option<usize> {
        Some(self.classes)
    }

    fn describe(&self) -> String {
        let widths: Vec<String> = self.widths().iter().map(ToString::to_string).collect();
        format!("MLP {}", widths.join("-"))
    }

    fn scaled(&self, width: f64) -> Result<ModelSpec, ProtocolError> {
        Ok(ModelSpec::Mlp(MlpSpec {
            hidden: self.hidden.iter().map(|&h| scale_width(h, width)).collect(),
            ..self.clone()
        }))
    }
}
