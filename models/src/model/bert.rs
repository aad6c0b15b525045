//! The BERT encoder classifier of [`BertSpec`], built as Hugging Face builds
//! `BertForSequenceClassification`: the same modules under the same names, so module
//! paths are the checkpoint's keys (`bert.encoder.layer.0.attention.self.query.weight`).
//!
//! Field names are Hugging Face's, `LayerNorm` included. Its `attention.self` is the
//! field `self_` (a Rust keyword cannot name a field), which module paths spell `self`
//! (see [`super::path_segment`]).
#![allow(non_snake_case)]

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, softmax, tanh};
use burn::tensor::{Bool, Int, Tensor};
use fedtune_protocol::model::Architecture;
use fedtune_protocol::{BertSpec, Manifest, Pooling};

use super::{Blueprint, Classifier, Device, ModelShape};

/// Added to the attention scores of padding keys: their probability is exactly 0, as
/// Hugging Face's `finfo(float32).min` makes it.
const MASKED: f32 = -1.0e30;

/// `BertForSequenceClassification`: the encoder, dropout and a linear head.
#[derive(Module, Debug)]
pub struct BertClassifier {
    bert: BertModel,
    dropout: Dropout,
    classifier: Linear,
}

/// `BertModel`: embeddings, encoder layers and, for [`Pooling::Cls`], the pooler.
#[derive(Module, Debug)]
struct BertModel {
    embeddings: BertEmbeddings,
    encoder: BertEncoder,
    pooler: Option<BertPooler>,
}

#[derive(Module, Debug)]
struct BertEmbeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    LayerNorm: LayerNorm,
    dropout: Dropout,
}

#[derive(Module, Debug)]
struct BertEncoder {
    layer: Vec<BertLayer>,
}

#[derive(Module, Debug)]
struct BertLayer {
    attention: BertAttention,
    intermediate: BertIntermediate,
    output: BertOutput,
}

#[derive(Module, Debug)]
struct BertAttention {
    self_: BertSelfAttention,
    output: BertSelfOutput,
}

#[derive(Module, Debug)]
struct BertSelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    dropout: Dropout,
    heads: usize,
}

#[derive(Module, Debug)]
struct BertSelfOutput {
    dense: Linear,
    LayerNorm: LayerNorm,
    dropout: Dropout,
}

#[derive(Module, Debug)]
struct BertIntermediate {
    dense: Linear,
}

#[derive(Module, Debug)]
struct BertOutput {
    dense: Linear,
    LayerNorm: LayerNorm,
    dropout: Dropout,
}

#[derive(Module, Debug)]
struct BertPooler {
    dense: Linear,
}

impl BertClassifier {
    /// Builds the layers of `spec` on `device` (Burn's initialisation; load a checkpoint's
    /// parameters with [`super::load`]). Build on an autodiff device to train.
    ///
    /// # Panics
    /// If `spec` is invalid (see [`fedtune_protocol::ModelSpec::validate`]).
    pub fn init(spec: &BertSpec, device: &Device) -> Self {
        let h = spec.hidden;
        let norm = || LayerNormConfig::new(h).with_epsilon(spec.layer_norm_eps).init(device);
        let dropout = || DropoutConfig::new(spec.dropout).init();
        let layer = || BertLayer {
            attention: BertAttention {
                self_: BertSelfAttention {
                    query: LinearConfig::new(h, h).init(device),
                    key: LinearConfig::new(h, h).init(device),
                    value: LinearConfig::new(h, h).init(device),
                    dropout: DropoutConfig::new(spec.attention_dropout).init(),
                    heads: spec.heads,
                },
                output: BertSelfOutput {
                    dense: LinearConfig::new(h, h).init(device),
                    LayerNorm: norm(),
                    dropout: dropout(),
                },
            },
            intermediate: BertIntermediate {
                dense: LinearConfig::new(h, spec.intermediate).init(device),
            },
            output: BertOutput {
                dense: LinearConfig::new(spec.intermediate, h).init(device),
                LayerNorm: norm(),
                dropout: dropout(),
            },
        };
        Self {
            bert: BertModel {
                embeddings: BertEmbeddings {
                    word_embeddings: EmbeddingConfig::new(spec.vocab, h).init(device),
                    position_embeddings: EmbeddingConfig::new(spec.max_positions, h).init(device),
                    token_type_embeddings: EmbeddingConfig::new(spec.type_vocab, h).init(device),
                    LayerNorm: norm(),
                    dropout: dropout(),
                },
                encoder: BertEncoder {
                    layer: (0..spec.layers).map(|_| layer()).collect(),
                },
                pooler: (spec.pooling == Pooling::Cls).then(|| BertPooler {
                    dense: LinearConfig::new(h, h).init(device),
                }),
            },
            dropout: dropout(),
            classifier: LinearConfig::new(h, spec.classes).init(device),
        }
    }

    /// The pooled vector of each row, before dropout and the classifier: the pooler's
    /// `tanh(dense([CLS]))`, or the mean of the non-padding tokens' last hidden states.
    ///
    /// # Shapes
    /// - `ids`: `[batch, len]`
    /// - output: `[batch, hidden]`
    pub fn pooled(&self, ids: Tensor<2, Int>) -> Tensor<2> {
        let [batch, len] = ids.dims();
        let padding = ids.clone().equal_elem(0);
        let hidden = self.bert.encode(ids, padding.clone());
        let width = hidden.dims()[2];
        match &self.bert.pooler {
            Some(pooler) => {
                let first = hidden.narrow(1, 0, 1).reshape([batch, width]);
                tanh(pooler.dense.forward(first))
            }
            None => {
                let keep = padding.bool_not().float();
                let count = keep.clone().sum_dim(1).clamp_min(1.0);
                let sum = (hidden * keep.reshape([batch, len, 1]))
                    .sum_dim(1)
                    .reshape([batch, width]);
                sum / count
            }
        }
    }
}

impl BertModel {
    /// The last hidden states of every token.
    fn encode(&self, ids: Tensor<2, Int>, padding: Tensor<2, Bool>) -> Tensor<3> {
        let mut hidden = self.embeddings.forward(ids);
        for layer in &self.encoder.layer {
            hidden = layer.forward(hidden, padding.clone());
        }
        hidden
    }
}

impl BertEmbeddings {
    /// Word + position + token type (every token is of segment 0), layer norm, dropout.
    fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let len = ids.dims()[1];
        let positions = self
            .position_embeddings
            .weight
            .val()
            .narrow(0, 0, len)
            .unsqueeze_dim::<3>(0);
        let segment = self
            .token_type_embeddings
            .weight
            .val()
            .narrow(0, 0, 1)
            .unsqueeze_dim::<3>(0);
        let embedded = self.word_embeddings.forward(ids) + positions + segment;
        self.dropout.forward(self.LayerNorm.forward(embedded))
    }
}

impl BertLayer {
    /// Self-attention with its residual and norm, then the feed-forward with its own.
    fn forward(&self, x: Tensor<3>, padding: Tensor<2, Bool>) -> Tensor<3> {
        let context = self.attention.self_.forward(x.clone(), padding);
        let attended = self.attention.output.forward(context, x);
        let inner = gelu(self.intermediate.dense.forward(attended.clone()));
        self.output.forward(inner, attended)
    }
}

impl BertSelfAttention {
    /// Scaled dot-product attention over the heads; padding keys get no weight.
    fn forward(&self, x: Tensor<3>, padding: Tensor<2, Bool>) -> Tensor<3> {
        let [batch, len, width] = x.dims();
        let head = width / self.heads;
        let split = |t: Tensor<3>| t.reshape([batch, len, self.heads, head]).swap_dims(1, 2);
        let query = split(self.query.forward(x.clone()));
        let key = split(self.key.forward(x.clone()));
        let value = split(self.value.forward(x));
        let scores = query
            .matmul(key.transpose())
            .div_scalar((head as f32).sqrt())
            .mask_fill(padding.reshape([batch, 1, 1, len]), MASKED);
        let probabilities = self.dropout.forward(softmax(scores, 3));
        probabilities.matmul(value).swap_dims(1, 2).reshape([batch, len, width])
    }
}

impl BertSelfOutput {
    fn forward(&self, context: Tensor<3>, residual: Tensor<3>) -> Tensor<3> {
        self.LayerNorm
            .forward(self.dropout.forward(self.dense.forward(context)) + residual)
    }
}

impl BertOutput {
    fn forward(&self, inner: Tensor<3>, residual: Tensor<3>) -> Tensor<3> {
        self.LayerNorm
            .forward(self.dropout.forward(self.dense.forward(inner)) + residual)
    }
}

/// `rows` without the trailing columns that are padding (0) in every row: they change
/// nothing (attention never looks at padding, pooling leaves it out, positions count
/// from the start) and would cost as much as the text. At least one column stays.
fn without_trailing_padding(rows: Tensor<2>) -> Tensor<2> {
    let len = rows.dims()[1];
    let Ok(values) = rows.clone().into_data().try_to_vec::<f32>() else {
        return rows;
    };
    let used = values
        .chunks(len.max(1))
        .map(|row| row.iter().rposition(|&id| id != 0.0).map_or(0, |last| last + 1))
        .max()
        .unwrap_or(0)
        .max(1);
    if used == len { rows } else { rows.narrow(1, 0, used) }
}

impl Classifier for BertClassifier {
    /// Rows are `max_len` token ids as floats (0 for padding), of segment 0; the columns
    /// that are padding in every row of the batch are cut first.
    ///
    /// # Panics
    /// If the rows are longer than the position embeddings, or hold an id outside the
    /// vocabulary (Burn asserts both); the data loaders check ids against the vocabulary
    /// first.
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let pooled = self.pooled(without_trailing_padding(x).int());
        self.classifier.forward(self.dropout.forward(pooled))
    }
}

impl Blueprint for BertSpec {
    type Model = BertClassifier;

    fn build(&self, device: &Device) -> BertClassifier {
        BertClassifier::init(self, device)
    }

    fn manifest(&self) -> Manifest {
        Architecture::manifest(self)
    }

    /// Rows of `max_len` token ids.
    fn shape(&self) -> ModelShape {
        ModelShape {
            input: self.max_len,
            classes: self.classes,
        }
    }

    fn vocab(&self) -> Option<usize> {
        Some(self.vocab)
    }
}
