//! The transformer encoder classifier of [`TransformerSpec`].

use burn::module::Module;
use burn::nn::transformer::{TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::Tensor;
use fedtune_protocol::model::Architecture;
use fedtune_protocol::{Manifest, TransformerSpec};

use super::{Blueprint, Classifier, Device, ModelShape};

/// Token and position embeddings, pre-norm encoder layers (burn-nn's), a final layer
/// norm, the mean over non-padding positions, and a linear head. Token id 0 is padding:
/// attention never looks at it and the mean leaves it out.
#[derive(Module, Debug)]
pub struct TextTransformer {
    embedding: Embedding,
    positions: Embedding,
    encoder: TransformerEncoder,
    norm: LayerNorm,
    head: Linear,
}

impl TextTransformer {
    /// Builds the layers of `spec` on `device` (Burn's default initialisation). Build on
    /// an autodiff device to train.
    ///
    /// # Panics
    /// If `spec` is invalid (see [`fedtune_protocol::ModelSpec::validate`]), e.g.
    /// `d_model` not a multiple of `heads`.
    pub fn init(spec: &TransformerSpec, device: &Device) -> Self {
        Self {
            embedding: EmbeddingConfig::new(spec.vocab, spec.d_model).init(device),
            positions: EmbeddingConfig::new(spec.max_len, spec.d_model).init(device),
            encoder: TransformerEncoderConfig::new(spec.d_model, spec.d_ff, spec.heads, spec.layers)
                .with_dropout(spec.dropout)
                .with_norm_first(true)
                .init(device),
            norm: LayerNormConfig::new(spec.d_model).init(device),
            head: LinearConfig::new(spec.d_model, spec.classes).init(device),
        }
    }
}

impl Classifier for TextTransformer {
    /// Rows are `max_len` token ids as floats (0 for padding).
    ///
    /// # Panics
    /// If the rows are not `max_len` long, or hold an id outside the vocabulary (Burn
    /// asserts both); the data loaders check ids against the vocabulary first.
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let [batch, len] = x.dims();
        let ids = x.int();
        let padding = ids.clone().equal_elem(0);
        // Every row has the same length, so the position table is added as it is.
        let positions = self.positions.weight.val().unsqueeze_dim::<3>(0);
        let embedded = self.embedding.forward(ids) + positions;
        let encoded = self
            .encoder
            .forward(TransformerEncoderInput::new(embedded).mask_pad(padding.clone()));
        let encoded = self.norm.forward(encoded);
        // Mean over the tokens that are not padding (a row of padding only pools to 0).
        let keep = padding.bool_not().float();
        let count = keep.clone().sum_dim(1).clamp_min(1.0);
        let pooled = (encoded * keep.reshape([batch, len, 1]))
            .sum_dim(1)
            .reshape([batch, self.norm.gamma.val().dims()[0]]);
        self.head.forward(pooled / count)
    }
}

impl Blueprint for TransformerSpec {
    type Model = TextTransformer;

    fn build(&self, device: &Device) -> TextTransformer {
        TextTransformer::init(self, device)
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
