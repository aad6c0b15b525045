//! The transformer encoder classifier over token ids.

use serde::{Deserialize, Serialize};

use super::{Architecture, Init, ModelSpec, linear, scale_width};
use crate::ProtocolError;
use crate::tensor::TensorSpec;

/// A transformer encoder classifier over token ids: a row is `max_len` token ids (as
/// floats; 0 is padding, ids below `vocab`), embedded (`embedding`, `[vocab, d_model]`)
/// plus a learned position embedding (`positions`, `[max_len, d_model]`), through `layers`
/// pre-norm encoder layers of burn-nn (`encoder.layers.{i}`: multi-head self-attention
/// with `heads` heads, a GELU feed-forward of width `d_ff`, two layer norms; padding is
/// masked), a final layer norm (`norm`), the mean over the non-padding positions, and a
/// linear head (`head`) to `classes` logits.
///
/// The embeddings start from `N(0, 1)`, the linear layers from `U(-1/sqrt(in),
/// 1/sqrt(in))`, the layer norms at `gamma` 1, `beta` 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransformerSpec {
    /// Token ids per row (sequence length).
    pub max_len: usize,
    /// Vocabulary size: token ids lie in `0..vocab`, 0 being padding.
    pub vocab: usize,
    /// Width of the embeddings and of every layer.
    pub d_model: usize,
    /// Attention heads per layer (`d_model` must be a multiple).
    pub heads: usize,
    /// Encoder layers.
    pub layers: usize,
    /// Width of each feed-forward block.
    pub d_ff: usize,
    /// Number of output classes.
    pub classes: usize,
    /// Dropout inside the encoder layers during training (0 for none).
    #[serde(default)]
    pub dropout: f64,
}

/// The deepest transformer a spec may ask for: the layer count is one number in a task,
/// and every layer adds a dozen tensors to the manifest an agent builds from it.
pub const MAX_TRANSFORMER_LAYERS: usize = 1024;

impl Architecture for TransformerSpec {
    fn tensors(&self) -> Vec<(TensorSpec, Init)> {
        let d = self.d_model;
        let norm = |name: &str| {
            [
                (TensorSpec::new(format!("{name}.gamma"), vec![d]), Init::Constant(1.0)),
                (TensorSpec::new(format!("{name}.beta"), vec![d]), Init::Constant(0.0)),
            ]
        };
        let mut tensors = vec![
            (
                TensorSpec::new("embedding.weight", vec![self.vocab, d]),
                Init::Normal(1.0),
            ),
            (
                TensorSpec::new("positions.weight", vec![self.max_len, d]),
                Init::Normal(1.0),
            ),
        ];
        for i in 0..self.layers {
            let layer = format!("encoder.layers.{i}");
            for projection in ["query", "key", "value", "output"] {
                tensors.extend(linear(&format!("{layer}.mha.{projection}"), d, d));
            }
            tensors.extend(linear(&format!("{layer}.pwff.linear_inner"), d, self.d_ff));
            tensors.extend(linear(&format!("{layer}.pwff.linear_outer"), self.d_ff, d));
            tensors.extend(norm(&format!("{layer}.norm_1")));
            tensors.extend(norm(&format!("{layer}.norm_2")));
        }
        tensors.extend(norm("norm"));
        tensors.extend(linear("head", d, self.classes));
        tensors
    }

    fn check(&self) -> Result<(), ProtocolError> {
        let invalid = |what: String| Err(ProtocolError::InvalidModel(what));
        for (name, value) in [
            ("max_len", self.max_len),
            ("vocab", self.vocab),
            ("d_model", self.d_model),
            ("heads", self.heads),
            ("layers", self.layers),
            ("d_ff", self.d_ff),
            ("classes", self.classes),
        ] {
            if value == 0 {
                return invalid(format!("transformer {name} must be positive"));
            }
        }
        if self.vocab < 2 {
            return invalid(format!(
                "transformer vocab {} leaves no id beside padding (0)",
                self.vocab
            ));
        }
        // Checked before the manifest is built: each layer adds a dozen tensors.
        if self.layers > MAX_TRANSFORMER_LAYERS {
            return invalid(format!(
                "transformer layers must be at most {MAX_TRANSFORMER_LAYERS}, not {}",
                self.layers
            ));
        }
        if !self.d_model.is_multiple_of(self.heads) {
            return invalid(format!(
                "transformer d_model {} is not a multiple of heads {}",
                self.d_model, self.heads
            ));
        }
        if !(self.dropout.is_finite() && (0.0..1.0).contains(&self.dropout)) {
            return invalid(format!("transformer dropout {} must lie in [0, 1)", self.dropout));
        }
        // Token ids travel as f32 rows: every id must be exact.
        if self.vocab > 1 << 24 {
            return invalid(format!(
                "transformer vocab {} exceeds 2^24 (ids travel as f32)",
                self.vocab
            ));
        }
        Ok(())
    }

    fn classes(&self) -> Option<usize> {
        Some(self.classes)
    }

    fn describe(&self) -> String {
        format!(
            "transformer {}x{} vocab {} d{} h{} ff{} → {}",
            self.layers, self.max_len, self.vocab, self.d_model, self.heads, self.d_ff, self.classes
        )
    }

    /// `d_model` stays a multiple of the heads.
    fn scaled(&self, width: f64) -> Result<ModelSpec, ProtocolError> {
        Ok(ModelSpec::Transformer(TransformerSpec {
            d_model: (scale_width(self.d_model, width).div_ceil(self.heads) * self.heads).max(self.heads),
            d_ff: scale_width(self.d_ff, width),
            ..self.clone()
        }))
    }

    /// Dropout inside the encoder layers.
    fn with_dropout(&self, p: f64) -> Result<ModelSpec, ProtocolError> {
        let spec = ModelSpec::Transformer(TransformerSpec {
            dropout: p,
            ..self.clone()
        });
        spec.validate()?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn a_transformer_lays_out_burn_nn_encoder_layers_and_names_a_bad_dimension() {
        let t = TransformerSpec {
            max_len: 32,
            vocab: 8_192,
            d_model: 64,
            heads: 4,
            layers: 2,
            d_ff: 128,
            classes: 10,
            dropout: 0.1,
        };
        let spec = ModelSpec::Transformer(t.clone());
        spec.validate().unwrap();
        let manifest = spec.manifest();
        let names: Vec<&str> = manifest.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            &names[..4],
            &[
                "embedding.weight",
                "positions.weight",
                "encoder.layers.0.mha.query.weight",
                "encoder.layers.0.mha.query.bias"
            ]
        );
        assert_eq!(
            &names[names.len() - 4..],
            &["norm.gamma", "norm.beta", "head.weight", "head.bias"]
        );
        // Embeddings, then per layer 4 attention projections, the feed-forward and two norms.
        let layer = 4 * (64 * 64 + 64) + (64 * 128 + 128) + (128 * 64 + 64) + 4 * 64;
        assert_eq!(
            manifest.numel(),
            8_192 * 64 + 32 * 64 + 2 * layer + 2 * 64 + 64 * 10 + 10
        );
        assert_eq!(spec.init_params(&mut StdRng::seed_from_u64(0)).len(), manifest.numel());
        let err = |t: TransformerSpec| ModelSpec::Transformer(t).validate().unwrap_err().to_string();
        assert!(err(TransformerSpec { heads: 3, ..t.clone() }).contains("d_model 64 is not a multiple of heads 3"));
        assert!(err(TransformerSpec { layers: 0, ..t.clone() }).contains("layers must be positive"));
        assert!(
            err(TransformerSpec {
                dropout: 1.0,
                ..t.clone()
            })
            .contains("dropout 1 must lie in [0, 1)")
        );
        assert!(err(TransformerSpec { vocab: 1, ..t }).contains("no id beside padding"));
    }
}
