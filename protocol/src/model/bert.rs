//! BERT-family encoders (Hugging Face's `BertModel`) with a classification head.

use serde::{Deserialize, Serialize};

use super::{Architecture, Init, MAX_TRANSFORMER_LAYERS, ModelSpec};
use crate::ProtocolError;
use crate::tensor::TensorSpec;

/// A BERT encoder as Hugging Face's `BertModel` computes it, then a classification head:
/// the `BertForSequenceClassification` of a pretrained checkpoint (see fedtune-models'
/// `pretrained` module), or a fresh head on one.
///
/// A row is `max_len` token ids as floats (0 is `[PAD]`, which attention never looks at),
/// all of segment 0. The ids are embedded (word + position + token type, then a layer
/// norm), go through `layers` post-norm encoder layers (self-attention with `heads` heads,
/// exact erf GELU in a feed-forward of width `intermediate`), are pooled as
/// [`Pooling`] says and go through dropout and a linear `classifier` to `classes` logits.
///
/// The manifest names follow `BertForSequenceClassification`'s state dict (`bert.`
/// prefix, `classifier.*`) in Burn's conventions: linear weights `[in, out]`, layer norms
/// `gamma` / `beta` (Hugging Face's `weight` / `bias`). Fresh tensors start as BERT's
/// do: weights and embeddings from `N(0, 0.02²)`, biases 0, layer norms 1 and 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertSpec {
    /// Vocabulary size (`vocab_size`): token ids lie in `0..vocab`, 0 being padding.
    pub vocab: usize,
    /// Width of the embeddings and every layer (`hidden_size`).
    pub hidden: usize,
    /// Encoder layers (`num_hidden_layers`).
    pub layers: usize,
    /// Attention heads per layer (`num_attention_heads`); `hidden` must be a multiple.
    pub heads: usize,
    /// Width of each feed-forward block (`intermediate_size`).
    pub intermediate: usize,
    /// Rows of the position embedding (`max_position_embeddings`).
    pub max_positions: usize,
    /// Rows of the token-type embedding (`type_vocab_size`).
    pub type_vocab: usize,
    /// The layer norms' ε (`layer_norm_eps`, 1e-12 for BERT).
    pub layer_norm_eps: f64,
    /// Token ids per row: texts are truncated or padded to this (at most `max_positions`).
    pub max_len: usize,
    /// How the encoded tokens become one vector per row.
    pub pooling: Pooling,
    /// Number of output classes.
    pub classes: usize,
    /// Dropout after the embeddings, in each layer's outputs and before the classifier
    /// while training (`hidden_dropout_prob`).
    #[serde(default)]
    pub dropout: f64,
    /// Dropout on the attention probabilities while training
    /// (`attention_probs_dropout_prob`).
    #[serde(default)]
    pub attention_dropout: f64,
    /// The SHA-256 (hex) of the `tokenizer.json` the model's ids come from: an agent
    /// tokenizing its own text checks it holds the same tokenizer.
    #[serde(default)]
    pub tokenizer: Option<String>,
}

/// How a [`BertSpec`] turns the encoded tokens into one vector per row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// BERT's pooler: a dense layer and tanh on the `[CLS]` token (`bert.pooler.dense`),
    /// as `BertForSequenceClassification` does.
    Cls,
    /// The mean over the tokens that are not padding, as sentence-transformers does; no
    /// pooler.
    Mean,
}

impl std::str::FromStr for Pooling {
    type Err = String;

    /// `cls` or `mean`, as configuration writes it.
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "cls" => Ok(Self::Cls),
            "mean" => Ok(Self::Mean),
            other => Err(format!("pooling `{other}`: expected cls or mean")),
        }
    }
}

/// BERT's initializer range: fresh weights are drawn from `N(0, 0.02²)`.
const INIT_STD: f64 = 0.02;

impl Architecture for BertSpec {
    fn tensors(&self) -> Vec<(TensorSpec, Init)> {
        let h = self.hidden;
        let embedding = |name: &str, rows: usize| (TensorSpec::new(name, vec![rows, h]), Init::Normal(INIT_STD));
        let linear = |name: &str, fan_in: usize, fan_out: usize| {
            [
                (
                    TensorSpec::new(format!("{name}.weight"), vec![fan_in, fan_out]),
                    Init::Normal(INIT_STD),
                ),
                (
                    TensorSpec::new(format!("{name}.bias"), vec![fan_out]),
                    Init::Constant(0.0),
                ),
            ]
        };
        let norm = |name: &str| {
            [
                (TensorSpec::new(format!("{name}.gamma"), vec![h]), Init::Constant(1.0)),
                (TensorSpec::new(format!("{name}.beta"), vec![h]), Init::Constant(0.0)),
            ]
        };
        let mut tensors = vec![
            embedding("bert.embeddings.word_embeddings.weight", self.vocab),
            embedding("bert.embeddings.position_embeddings.weight", self.max_positions),
            embedding("bert.embeddings.token_type_embeddings.weight", self.type_vocab),
        ];
        tensors.extend(norm("bert.embeddings.LayerNorm"));
        for i in 0..self.layers {
            let layer = format!("bert.encoder.layer.{i}");
            for projection in ["query", "key", "value"] {
                tensors.extend(linear(&format!("{layer}.attention.self.{projection}"), h, h));
            }
            tensors.extend(linear(&format!("{layer}.attention.output.dense"), h, h));
            tensors.extend(norm(&format!("{layer}.attention.output.LayerNorm")));
            tensors.extend(linear(&format!("{layer}.intermediate.dense"), h, self.intermediate));
            tensors.extend(linear(&format!("{layer}.output.dense"), self.intermediate, h));
            tensors.extend(norm(&format!("{layer}.output.LayerNorm")));
        }
        if self.pooling == Pooling::Cls {
            tensors.extend(linear("bert.pooler.dense", h, h));
        }
        tensors.extend(linear("classifier", h, self.classes));
        tensors
    }

    fn check(&self) -> Result<(), ProtocolError> {
        let invalid = |what: String| Err(ProtocolError::InvalidModel(what));
        for (name, value) in [
            ("vocab", self.vocab),
            ("hidden", self.hidden),
            ("layers", self.layers),
            ("heads", self.heads),
            ("intermediate", self.intermediate),
            ("max_positions", self.max_positions),
            ("type_vocab", self.type_vocab),
            ("max_len", self.max_len),
            ("classes", self.classes),
        ] {
            if value == 0 {
                return invalid(format!("bert {name} must be positive"));
            }
        }
        if self.vocab < 2 {
            return invalid(format!("bert vocab {} leaves no id beside padding (0)", self.vocab));
        }
        // Checked before the manifest is built: each layer adds sixteen tensors.
        if self.layers > MAX_TRANSFORMER_LAYERS {
            return invalid(format!(
                "bert layers must be at most {MAX_TRANSFORMER_LAYERS}, not {}",
                self.layers
            ));
        }
        if !self.hidden.is_multiple_of(self.heads) {
            return invalid(format!(
                "bert hidden {} is not a multiple of heads {}",
                self.hidden, self.heads
            ));
        }
        if self.max_len > self.max_positions {
            return invalid(format!(
                "bert max_len {} exceeds the {} position embeddings",
                self.max_len, self.max_positions
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return invalid(format!("bert layer_norm_eps {} must be positive", self.layer_norm_eps));
        }
        for (name, p) in [("dropout", self.dropout), ("attention_dropout", self.attention_dropout)] {
            if !(p.is_finite() && (0.0..1.0).contains(&p)) {
                return invalid(format!("bert {name} {p} must lie in [0, 1)"));
            }
        }
        // Token ids travel as f32 rows: every id must be exact.
        if self.vocab > 1 << 24 {
            return invalid(format!("bert vocab {} exceeds 2^24 (ids travel as f32)", self.vocab));
        }
        Ok(())
    }

    fn classes(&self) -> Option<usize> {
        Some(self.classes)
    }

    fn describe(&self) -> String {
        let pooling = match self.pooling {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
        };
        format!(
            "BERT {}x{} h{} heads {} ff{} vocab {}, {pooling} pooling → {}",
            self.layers, self.max_len, self.hidden, self.heads, self.intermediate, self.vocab, self.classes
        )
    }

    /// A pretrained encoder's widths are what its weights are.
    fn scaled(&self, _width: f64) -> Result<ModelSpec, ProtocolError> {
        Err(ProtocolError::InvalidModel(
            "a BERT encoder's widths are fixed by its checkpoint; it cannot be scaled".into(),
        ))
    }

    /// The hidden dropout (embeddings, layer outputs, before the classifier).
    fn with_dropout(&self, p: f64) -> Result<ModelSpec, ProtocolError> {
        let spec = ModelSpec::Bert(BertSpec {
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

    fn tiny() -> BertSpec {
        BertSpec {
            vocab: 100,
            hidden: 32,
            layers: 2,
            heads: 4,
            intermediate: 64,
            max_positions: 64,
            type_vocab: 2,
            layer_norm_eps: 1e-12,
            max_len: 16,
            pooling: Pooling::Cls,
            classes: 3,
            dropout: 0.1,
            attention_dropout: 0.1,
            tokenizer: None,
        }
    }

    #[test]
    fn bert_lays_out_hugging_face_names_in_state_dict_order() {
        let spec = ModelSpec::Bert(tiny());
        spec.validate().unwrap();
        let manifest = spec.manifest();
        let names: Vec<&str> = manifest.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            &names[..6],
            &[
                "bert.embeddings.word_embeddings.weight",
                "bert.embeddings.position_embeddings.weight",
                "bert.embeddings.token_type_embeddings.weight",
                "bert.embeddings.LayerNorm.gamma",
                "bert.embeddings.LayerNorm.beta",
                "bert.encoder.layer.0.attention.self.query.weight",
            ]
        );
        assert_eq!(
            &names[names.len() - 4..],
            &[
                "bert.pooler.dense.weight",
                "bert.pooler.dense.bias",
                "classifier.weight",
                "classifier.bias"
            ]
        );
        assert_eq!(manifest.tensors[5].shape, vec![32, 32]);
        let layer = 4 * (32 * 32 + 32) + 2 * (32 * 64) + 64 + 32 + 4 * 32;
        let embeddings = (100 + 64 + 2) * 32 + 2 * 32;
        assert_eq!(manifest.numel(), embeddings + 2 * layer + (32 * 32 + 32) + (32 * 3 + 3));
        let params = spec.init_params(&mut StdRng::seed_from_u64(0));
        assert_eq!(params.len(), manifest.numel());

        let mean = ModelSpec::Bert(BertSpec {
            pooling: Pooling::Mean,
            ..tiny()
        });
        assert_eq!(mean.manifest().numel(), manifest.numel() - (32 * 32 + 32));
        assert!(!mean.manifest().tensors.iter().any(|t| t.name.contains("pooler")));
    }

    #[test]
    fn a_bad_bert_dimension_is_named() {
        let err = |b: BertSpec| ModelSpec::Bert(b).validate().unwrap_err().to_string();
        assert!(err(BertSpec { heads: 5, ..tiny() }).contains("hidden 32 is not a multiple of heads 5"));
        assert!(err(BertSpec { max_len: 65, ..tiny() }).contains("max_len 65 exceeds the 64 position embeddings"));
        assert!(err(BertSpec { layers: 0, ..tiny() }).contains("layers must be positive"));
        assert!(
            err(BertSpec {
                layer_norm_eps: 0.0,
                ..tiny()
            })
            .contains("layer_norm_eps 0 must be positive")
        );
        assert!(
            err(BertSpec {
                attention_dropout: 1.0,
                ..tiny()
            })
            .contains("attention_dropout 1 must lie in [0, 1)")
        );
        assert!(ModelSpec::Bert(tiny()).scaled(0.5).is_err());
        assert!("max".parse::<Pooling>().unwrap_err().contains("expected cls or mean"));
    }
}
