//! The WordNet definitions task as raw text for a pretrained Hugging Face encoder: the
//! model folder read with `[model] pretrained` semantics, the texts tokenized by its own
//! tokenizer, the training texts split among agents by Dirichlet(0.5).

use std::path::Path;

use anyhow::Context;
use fedtune::agent::config::FederatedData;
use fedtune::agent::data::Dataset;
use fedtune::agent::partition::{Dirichlet, SplitFile, stratified_holdout};
use fedtune::agent::pretrained::{Described, PretrainedOptions, describe};
use fedtune::agent::text::{Split, WORDNET_DIR, WordnetTask};
use fedtune::aggregator::config::LoraConfig;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// The LoRA paper's choice for an encoder: adapters of `rank` on the attention's query
/// and value projections, alpha twice the rank; the head trains beside them.
pub fn query_value_lora(rank: usize) -> LoraConfig {
    LoraConfig {
        rank,
        alpha: Some(2.0 * rank as f64),
        targets: vec!["*.attention.self.query".into(), "*.attention.self.value".into()],
        train: Vec::new(),
    }
}

/// A pretrained encoder and the WordNet texts it is tested on.
pub struct TextTask {
    /// The folder's spec, class names, tokenizer and notes.
    pub described: Described,
    /// The class names (WordNet's categories).
    pub classes: Vec<String>,
    /// Every test text, tokenized.
    pub test: Dataset,
    /// A fixed stratified sample of the test texts, for per-round curves.
    pub test_sample: Dataset,
}

/// Reads `pretrained` (its notes printed), tokenizes the WordNet task to `max_len` ids,
/// and splits its training texts among `agents` by Dirichlet(0.5), each keeping
/// `validation_fraction` for validation (the second value: every training text and its
/// split); `eval_sample` test texts form the sample.
pub fn wordnet_text(
    pretrained: &Path,
    max_len: usize,
    agents: usize,
    validation_fraction: f64,
    eval_sample: usize,
    seed: u64,
) -> anyhow::Result<(TextTask, FederatedData)> {
    let task = WordnetTask::default();
    let options = PretrainedOptions {
        max_len,
        pooling: None,
        classes: Some(task.categories.clone()),
        dropout: None,
        seed,
    };
    let described = describe(pretrained, &options).with_context(|| format!("reading {}", pretrained.display()))?;
    for note in &described.notes {
        println!("{}: {note}", pretrained.display());
    }
    let tokenize = |split| -> anyhow::Result<Dataset> {
        let (texts, labels) = task.texts(WORDNET_DIR, split)?;
        Ok(described
            .tokenizer
            .dataset(&texts, labels, max_len, task.categories.len())?)
    };
    let train = tokenize(Split::Train)?;
    let test = tokenize(Split::Test)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let partitioner = Dirichlet {
        alpha: 0.5,
        min_size: 10,
    };
    let split = SplitFile::generate(train.labels(), &partitioner, agents, 0.0, validation_fraction, &mut rng)?;
    let fraction = (eval_sample as f64 / test.len() as f64).min(1.0);
    let (_, sample_rows) = stratified_holdout(test.labels(), fraction, &mut rng)?;
    let test_sample = test.subset(&sample_rows)?;
    let task = TextTask {
        described,
        classes: task.categories,
        test,
        test_sample,
    };
    Ok((task, FederatedData { dataset: train, split }))
}
