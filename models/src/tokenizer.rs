//! A pretrained model's tokenizer: Hugging Face's `tokenizers` reading the model's
//! `tokenizer.json`, so an agent turns its own text into exactly the ids the model was
//! trained on. A folder with only BERT's `vocab.txt` gets the tokenizer transformers'
//! `BertTokenizerFast` builds from it: WordPiece (`##` continuations, `[UNK]`), BERT's
//! normalizer and pre-tokenizer, `[CLS] … [SEP]`, with `do_lower_case`,
//! `strip_accents`, `tokenize_chinese_chars` and the special tokens read from a
//! `tokenizer_config.json` beside it (transformers' defaults without one).
//!
//! Rows are `max_len` ids: the tokenizer's own special tokens (`[CLS] … [SEP]` for BERT),
//! truncated to `max_len` as Hugging Face's `truncation=True` does, then padded with 0,
//! the id a BERT vocabulary gives `[PAD]` and the one fedtune's models mask. The file's
//! SHA-256 names the tokenizer, so agents and the aggregator can check they hold the same
//! (for a `vocab.txt`: the SHA-256 of the vocabulary and the options it was built with).

use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

use fedtune_protocol::ModelSpec;

use crate::data::Dataset;

/// Why a tokenizer could not be read or a text not encoded.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The file could not be read or is not a tokenizer.
    #[error("{path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Tokenized texts and their labels do not make a dataset.
    #[error("{0}")]
    Data(String),
    /// The tokenizer failed on a text.
    #[error("tokenizing `{text}`: {reason}")]
    Encode {
        /// The start of the text.
        text: String,
        /// What the tokenizer said.
        reason: String,
    },
}

/// A `tokenizer.json`, ready to make rows of token ids.
pub struct TextTokenizer {
    inner: Tokenizer,
    hash: String,
    vocab: usize,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("hash", &self.hash)
            .field("vocab", &self.vocab)
            .finish_non_exhaustive()
    }
}

impl TextTokenizer {
    /// The tokenizer of a Hugging Face model folder: its `tokenizer.json`, or else its
    /// `vocab.txt` ([`TextTokenizer::from_vocab`]).
    ///
    /// # Errors
    /// [`TokenizerError::Read`] when the folder holds neither, or the one it holds
    /// cannot be read.
    pub fn in_folder(dir: &Path) -> Result<Self, TokenizerError> {
        let json = dir.join("tokenizer.json");
        let vocab = dir.join("vocab.txt");
        if json.is_file() || !vocab.is_file() {
            return Self::from_file(&json).map_err(|e| match e {
                TokenizerError::Read { path, reason } if !path.exists() => TokenizerError::Read {
                    path: dir.to_path_buf(),
                    reason: format!("no tokenizer.json or vocab.txt ({reason})"),
                },
                e => e,
            });
        }
        Self::from_vocab(&vocab)
    }

    /// A `tokenizer.json` ([`TextTokenizer::from_file`]), or a file named `*.txt` as a
    /// BERT vocabulary ([`TextTokenizer::from_vocab`]).
    ///
    /// # Errors
    /// As those.
    pub fn from_path(path: &Path) -> Result<Self, TokenizerError> {
        if path.extension().is_some_and(|e| e == "txt") {
            Self::from_vocab(path)
        } else {
            Self::from_file(path)
        }
    }

    /// BERT's tokenizer built from a `vocab.txt` (one token per line, its id the line
    /// number) and the `tokenizer_config.json` beside it, if any (see the module docs).
    ///
    /// # Errors
    /// [`TokenizerError::Read`] when a file cannot be read, the configuration is not
    /// JSON, or the vocabulary lacks a special token or pads with an id other than 0.
    pub fn from_vocab(path: &Path) -> Result<Self, TokenizerError> {
        use tokenizers::models::wordpiece::WordPiece;
        use tokenizers::normalizers::bert::BertNormalizer;
        use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
        use tokenizers::processors::bert::BertProcessing;
        let read = |path: &Path, reason: String| TokenizerError::Read {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| read(path, e.to_string()))?;
        let vocab = WordPiece::read_bytes(&bytes).map_err(|e| read(path, format!("not a vocab.txt: {e}")))?;
        let config_path = path.with_file_name("tokenizer_config.json");
        let config: serde_json::Value = match std::fs::read(&config_path) {
            Ok(text) => serde_json::from_slice(&text).map_err(|e| read(&config_path, e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::Value::Null,
            Err(e) => return Err(read(&config_path, e.to_string())),
        };
        let flag = |key: &str, default: bool| config.get(key).and_then(serde_json::Value::as_bool).unwrap_or(default);
        let token = |key: &str, default: &str| {
            config
                .get(key)
                .and_then(serde_json::Value::as_str)
                .unwrap_or(default)
                .to_string()
        };
        let lowercase = flag("do_lower_case", true);
        let chinese = flag("tokenize_chinese_chars", true);
        let strip_accents = config.get("strip_accents").and_then(serde_json::Value::as_bool);
        let [unk, cls, sep, pad] = [
            ("unk_token", "[UNK]"),
            ("cls_token", "[CLS]"),
            ("sep_token", "[SEP]"),
            ("pad_token", "[PAD]"),
        ]
        .map(|(key, default)| token(key, default));
        let id = |token: &str| {
            vocab
                .get(token)
                .copied()
                .ok_or_else(|| read(path, format!("the vocabulary has no {token}")))
        };
        let (cls_id, sep_id, pad_id) = (id(&cls)?, id(&sep)?, id(&pad)?);
        id(&unk)?;
        if pad_id != 0 {
            return Err(read(
                path,
                format!("its padding token {pad} has id {pad_id}; fedtune's models take id 0 as padding"),
            ));
        }
        let model = WordPiece::builder()
            .vocab(vocab)
            .unk_token(unk.clone())
            .build()
            .map_err(|e| read(path, e.to_string()))?;
        let mut inner = Tokenizer::new(model);
        inner
            .with_normalizer(Some(BertNormalizer::new(true, chinese, strip_accents, lowercase)))
            .with_pre_tokenizer(Some(BertPreTokenizer))
            .with_post_processor(Some(BertProcessing::new((sep.clone(), sep_id), (cls.clone(), cls_id))));
        let vocab = inner.get_vocab_size(true);
        let options = format!(
            "vocab.txt {} lowercase={lowercase} strip_accents={strip_accents:?} chinese={chinese} unk={unk} cls={cls} sep={sep} pad={pad}",
            hex_sha256(&bytes)
        );
        Ok(Self {
            inner,
            hash: hex_sha256(options.as_bytes()),
            vocab,
        })
    }

    /// Reads a Hugging Face `tokenizer.json`.
    ///
    /// # Errors
    /// [`TokenizerError::Read`] when the file cannot be read, is not a tokenizer, or pads
    /// with an id other than 0.
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let read = |reason: String| TokenizerError::Read {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| read(e.to_string()))?;
        let mut inner = Tokenizer::from_bytes(&bytes).map_err(|e| read(format!("not a tokenizer.json: {e}")))?;
        let pad = match inner.get_padding() {
            Some(padding) => Some((padding.pad_token.clone(), padding.pad_id)),
            None => inner.token_to_id("[PAD]").map(|id| ("[PAD]".to_string(), id)),
        };
        if let Some((token, id)) = pad
            && id != 0
        {
            return Err(read(format!(
                "its padding token {token} has id {id}; fedtune's models take id 0 as padding"
            )));
        }
        // Rows are cut and padded here, to the model's length, not as the file says.
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| read(format!("not a tokenizer.json: {e}")))?;
        let vocab = inner.get_vocab_size(true);
        Ok(Self {
            inner,
            hash: hex_sha256(&bytes),
            vocab,
        })
    }

    /// The SHA-256 of the `tokenizer.json` file (or of a `vocab.txt` and its options), in
    /// hex.
    #[must_use]
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Ids the tokenizer gives (its vocabulary with added tokens).
    #[must_use]
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// The ids of `text` with the tokenizer's special tokens, untruncated.
    ///
    /// # Errors
    /// [`TokenizerError::Encode`] when the tokenizer fails on it.
    pub fn ids(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self.inner.encode(text, true).map_err(|e| encode_error(text, &e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// How many tokens `text` gives besides the special ones (0: it tokenizes to nothing).
    ///
    /// # Errors
    /// [`TokenizerError::Encode`] when the tokenizer fails on it.
    pub fn content_tokens(&self, text: &str) -> Result<usize, TokenizerError> {
        let encoding = self.inner.encode(text, true).map_err(|e| encode_error(text, &e))?;
        Ok(encoding.get_special_tokens_mask().iter().filter(|&&s| s == 0).count())
    }

    /// The row of `text`: its ids with the special tokens, truncated to `max_len` as
    /// Hugging Face's `truncation=True` does (the text's tokens are cut, the special
    /// tokens around them kept), then padded with 0.
    ///
    /// # Errors
    /// [`TokenizerError::Encode`] when the tokenizer fails on it or `max_len` leaves no
    /// room beside the special tokens.
    pub fn row(&self, text: &str, max_len: usize) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self.inner.encode(text, true).map_err(|e| encode_error(text, &e))?;
        let (ids, special) = (encoding.get_ids(), encoding.get_special_tokens_mask());
        let mut row = if ids.len() <= max_len {
            ids.to_vec()
        } else {
            let leading = special.iter().take_while(|&&s| s == 1).count();
            let trailing = special.iter().rev().take_while(|&&s| s == 1).count();
            if leading + trailing >= max_len {
                return Err(encode_error(
                    text,
                    &format!(
                        "{max_len} ids leave no room beside {} special tokens",
                        leading + trailing
                    ),
                ));
            }
            let keep = max_len - leading - trailing;
            let mut row = Vec::with_capacity(max_len);
            row.extend_from_slice(&ids[..leading + keep]);
            row.extend_from_slice(&ids[ids.len() - trailing..]);
            row
        };
        row.resize(max_len, 0);
        Ok(row)
    }

    /// A dataset of `texts` as rows of `max_len` ids ([`TextTokenizer::row`]) with their
    /// `labels` (class ids below `classes`).
    ///
    /// # Errors
    /// [`TokenizerError::Encode`] for a text the tokenizer fails on, and
    /// [`TokenizerError::Data`] when the labels do not fit the texts or the classes.
    pub fn dataset<S: AsRef<str>>(
        &self,
        texts: &[S],
        labels: Vec<u32>,
        max_len: usize,
        classes: usize,
    ) -> Result<Dataset, TokenizerError> {
        let mut features = Vec::with_capacity(texts.len() * max_len);
        for text in texts {
            features.extend(self.row(text.as_ref(), max_len)?.into_iter().map(|id| id as f32));
        }
        Dataset::from_parts(features, labels, max_len, classes).map_err(|e| TokenizerError::Data(e.to_string()))
    }
}

/// How a text model makes its rows from text: a BERT through its tokenizer, to its
/// `max_len` ids; the transformer from hashed words ([`crate::text::tokenize`]).
#[derive(Debug, Clone, Copy)]
pub enum TextInput<'a> {
    /// A pretrained model's tokenizer, to `max_len` ids.
    Tokenizer {
        /// The tokenizer.
        tokenizer: &'a TextTokenizer,
        /// Ids per row.
        max_len: usize,
    },
    /// Hashed words, to `max_len` ids below `vocab`.
    Hashed {
        /// Ids words hash to are below this.
        vocab: usize,
        /// Ids per row.
        max_len: usize,
    },
}

impl<'a> TextInput<'a> {
    /// The text input of `model` (through LoRA adapters), `Ok(None)` for a model that
    /// reads features.
    ///
    /// # Errors
    /// A message when a BERT has no `tokenizer` to read text with.
    pub fn of(model: &ModelSpec, tokenizer: Option<&'a TextTokenizer>) -> Result<Option<Self>, String> {
        Ok(match model {
            ModelSpec::Lora(lora) => return Self::of(&lora.base, tokenizer),
            ModelSpec::Bert(bert) => Some(Self::Tokenizer {
                tokenizer: tokenizer.ok_or("a BERT reads text with its tokenizer, and there is none")?,
                max_len: bert.max_len,
            }),
            ModelSpec::Transformer(t) => Some(Self::Hashed {
                vocab: t.vocab,
                max_len: t.max_len,
            }),
            _ => None,
        })
    }

    /// The row of `text`, ids as floats.
    ///
    /// # Errors
    /// [`TokenizerError::Encode`] when the tokenizer fails on it.
    pub fn row(&self, text: &str) -> Result<Vec<f32>, TokenizerError> {
        let ids = match *self {
            Self::Tokenizer { tokenizer, max_len } => tokenizer.row(text, max_len)?,
            Self::Hashed { vocab, max_len } => {
                let mut ids = crate::text::tokenize(text, vocab);
                ids.resize(max_len, 0);
                ids
            }
        };
        Ok(ids.into_iter().map(|id| id as f32).collect())
    }
}

fn encode_error(text: &str, error: &dyn std::fmt::Display) -> TokenizerError {
    TokenizerError::Encode {
        text: text.chars().take(60).collect(),
        reason: error.to_string(),
    }
}

/// Lower-case hex SHA-256 of `bytes`.
fn hex_sha256(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
