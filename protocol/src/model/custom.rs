//! A bare parameter layout, for trainers that bring their own model.

use serde::{Deserialize, Serialize};

use super::{Architecture, Init, ModelSpec};
use crate::ProtocolError;
use crate::tensor::{Manifest, TensorSpec};

/// A flat parameter layout with no architecture behind it (see [`ModelSpec::Custom`]):
/// the name a custom trainer recognises and its manifest. Its parameters start at zero.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomSpec {
    /// Name the custom trainer recognises.
    pub name: String,
    /// Parameter layout.
    pub manifest: Manifest,
}

impl Architecture for CustomSpec {
    fn tensors(&self) -> Vec<(TensorSpec, Init)> {
        self.manifest
            .tensors
            .iter()
            .map(|tensor| (tensor.clone(), Init::Constant(0.0)))
            .collect()
    }

    /// Nothing beyond the manifest's own checks.
    fn check(&self) -> Result<(), ProtocolError> {
        Ok(())
    }

    fn describe(&self) -> String {
        format!("custom `{}`", self.name)
    }

    fn scaled(&self, _width: f64) -> Result<ModelSpec, ProtocolError> {
        Err(ProtocolError::InvalidModel(format!(
            "custom model `{}` has no widths to scale",
            self.name
        )))
    }

    fn manifest(&self) -> Manifest {
        self.manifest.clone()
    }

    fn init_params(&self, _rng: &mut dyn rand::Rng) -> Vec<f32> {
        vec![0.0; self.manifest.numel()]
    }
}
