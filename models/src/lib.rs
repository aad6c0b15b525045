//! fedtune's models: what both an agent and the aggregator run when they touch a model.
//! Agents train with it; the aggregator evaluates global models, starts them from weight
//! files and writes them out. It does no networking.
//!
//! # Layout
//! - [`model`]: the Burn models a [`fedtune_protocol::ModelSpec`] describes (MLP, CNN,
//!   transformer, LoRA on any of them), the [`model::Classifier`] trait for your own, flat
//!   parameter I/O by module path.
//! - [`data`]: in-memory datasets and loaders for CSV and IDX files.
//! - [`table`]: rows a user or a device holds (CSV, JSON Lines) as text or features
//!   with labels.
//! - [`image_folder`]: images a device holds, one subfolder per class, as a model's
//!   input.
//! - [`text`]: a real text task (WordNet noun definitions by category), tokenised.
//! - [`pretrained`]: Hugging Face model folders (BERT-family checkpoints) as a spec,
//!   starting weights, class names and tokenizer.
//! - [`tokenizer`]: a pretrained model's Hugging Face tokenizer (`tokenizer.json`).
//! - [`train`]: local training and evaluation (of the zoo's models or your own).
//! - [`weights`]: weight files in (safetensors, PyTorch `.pt`, burnpack) and out.
//! - [`cancel`]: abandoning training at a deadline or on request.

#![forbid(unsafe_code)]

pub mod cancel;
pub mod data;
pub mod image_folder;
pub mod model;
pub mod pretrained;
pub mod table;
pub mod text;
pub mod tokenizer;
pub mod train;
pub mod weights;
