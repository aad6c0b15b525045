//! Model specifications: what architecture a task trains, and its parameter layout.

use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

use crate::ProtocolError;
use crate::tensor::{Manifest, TensorSpec};

/// The architecture an agent builds for a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelSpec {
    /// A multi-layer perceptron classifier with ReLU between layers.
    Mlp(MlpSpec),
    /// A flat parameter layout with no architecture behind it, for trainers that bring
    /// their own model (benchmarks, custom agents). The built-in trainer refuses it.
    Custom {
        /// Name the custom trainer recognises.
        name: String,
        /// Parameter layout.
        manifest: Manifest,
    },
}

/// A multi-layer perceptron: `input -> hidden[0] -> ... -> classes`.
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
        let mut widths = Vec::with_capacity(self.hidden.len() + 2);
        widths.push(self.input);
        widths.extend_from_slice(&self.hidden);
        widths.push(self.classes);
        widths.windows(2).map(|w| (w[0], w[1])).collect()
    }
}

impl ModelSpec {
    /// Checks that every dimension is positive and the layout is small enough to address.
    ///
    /// # Errors
    /// [`ProtocolError::InvalidModel`] naming the offending dimension.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        match self {
            ModelSpec::Mlp(mlp) => {
                if mlp.input == 0 || mlp.classes == 0 || mlp.hidden.contains(&0) {
                    return Err(ProtocolError::InvalidModel(format!(
                        "every MLP width must be positive (input {}, hidden {:?}, classes {})",
                        mlp.input, mlp.hidden, mlp.classes
                    )));
                }
                self.manifest().validate()
            }
            ModelSpec::Custom { manifest, .. } => manifest.validate(),
        }
    }

    /// The parameter layout: for an MLP, `layers.{i}.weight` with shape `[in, out]` and
    /// `layers.{i}.bias` with shape `[out]`, layer by layer.
    pub fn manifest(&self) -> Manifest {
        match self {
            ModelSpec::Mlp(mlp) => Manifest {
                tensors: mlp
                    .layer_dims()
                    .into_iter()
                    .enumerate()
                    .flat_map(|(i, (fan_in, fan_out))| {
                        [
                            TensorSpec::new(format!("layers.{i}.weight"), vec![fan_in, fan_out]),
                            TensorSpec::new(format!("layers.{i}.bias"), vec![fan_out]),
                        ]
                    })
                    .collect(),
            },
            ModelSpec::Custom { manifest, .. } => manifest.clone(),
        }
    }

    /// Fresh parameters in manifest order. MLP layers draw weights and biases from
    /// `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`; custom layouts start at zero.
    pub fn init_params(&self, rng: &mut impl Rng) -> Vec<f32> {
        match self {
            ModelSpec::Mlp(mlp) => {
                let mut params = Vec::with_capacity(self.manifest().numel());
                for (fan_in, fan_out) in mlp.layer_dims() {
                    let bound = 1.0 / (fan_in as f32).sqrt();
                    params.extend((0..fan_in * fan_out + fan_out).map(|_| rng.random_range(-bound..bound)));
                }
                params
            }
            ModelSpec::Custom { manifest, .. } => vec![0.0; manifest.numel()],
        }
    }
}
