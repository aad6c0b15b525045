//! A real text-classification task: WordNet 3.0's noun definitions, labelled by the
//! category (lexicographer file) WordNet's editors filed each noun under.
//!
//! The data is Debian's `wordnet-base` package (`/usr/share/wordnet/data.noun`, WordNet
//! 3.0, © 2006 Princeton University, under the WordNet licence: use, copying and
//! redistribution for any purpose, keeping its copyright notice). Each entry of
//! `data.noun` is one synset: `offset lex_filenum n …words… | gloss`. The text is the
//! gloss up to its quoted usage examples (`; "…"`, which often contain the noun itself);
//! the label is the category. "a long noosed rope used to catch animals" is an
//! `artifact`, "ground beef patty usually with a sauce" is `food`.
//!
//! [`WordnetTask::default`] takes ten categories, 2,000 distinct definitions each
//! (20,000 in all, mean 11.5 words), and splits each category 80 / 20 into the
//! [`Split::Train`] the agents share and a [`Split::Test`] none of them holds. Words are
//! lower-cased runs of letters and digits, hashed (FNV-1a) to ids `1..vocab` (0 is
//! padding), so agents need no shared vocabulary file; a row is the first `max_len` ids,
//! padded with 0.

use std::collections::HashSet;
use std::path::Path;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::data::{DataError, Dataset};

/// Where Debian's `wordnet-base` installs WordNet 3.0's database files.
pub const WORDNET_DIR: &str = "/usr/share/wordnet";

/// WordNet's noun categories, by lexicographer file number (3 = `Tops` … 28 = `time`).
pub const NOUN_CATEGORIES: [&str; 26] = [
    "Tops",
    "act",
    "animal",
    "artifact",
    "attribute",
    "body",
    "cognition",
    "communication",
    "event",
    "feeling",
    "food",
    "group",
    "location",
    "motive",
    "object",
    "person",
    "phenomenon",
    "plant",
    "possession",
    "process",
    "quantity",
    "relation",
    "shape",
    "state",
    "substance",
    "time",
];

/// Lexicographer file number of the first noun category.
const FIRST_NOUN_FILE: usize = 3;

/// Which half of the task to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The 80% the agents share.
    Train,
    /// The 20% held out for evaluation.
    Test,
}

/// How the WordNet task is drawn and tokenised. Every agent and the aggregator must use
/// the same settings (the defaults, unless all are configured alike).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WordnetTask {
    /// Categories, in label order (names from [`NOUN_CATEGORIES`]).
    pub categories: Vec<String>,
    /// Distinct definitions drawn per category (fewer if a category has fewer).
    pub per_class: usize,
    /// Token ids per row.
    pub max_len: usize,
    /// Id range: words hash to `1..vocab`.
    pub vocab: usize,
    /// Seed of the draw and of the train / test split.
    pub seed: u64,
}

impl Default for WordnetTask {
    fn default() -> Self {
        Self {
            categories: [
                "person",
                "animal",
                "plant",
                "artifact",
                "food",
                "location",
                "body",
                "substance",
                "act",
                "communication",
            ]
            .map(String::from)
            .to_vec(),
            per_class: 2_000,
            max_len: 32,
            vocab: 8_192,
            seed: 0,
        }
    }
}

/// The word ids of `text`: lower-cased runs of ASCII letters and digits, each hashed with
/// 64-bit FNV-1a into `1..vocab`.
///
/// # Panics
/// If `vocab < 2`.
#[must_use]
pub fn tokenize(text: &str, vocab: usize) -> Vec<u32> {
    assert!(vocab >= 2, "a vocabulary needs an id beside padding");
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|word| {
            let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
            for byte in word.bytes() {
                hash ^= u64::from(byte.to_ascii_lowercase());
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
            1 + (hash % (vocab as u64 - 1)) as u32
        })
        .collect()
}

/// One `data.noun` line as `(lexicographer file, definition)`; `None` for the licence
/// header (lines starting with spaces) and for lines that are not entries.
fn parse_line(line: &str) -> Option<(usize, &str)> {
    if line.starts_with(' ') {
        return None;
    }
    let (head, gloss) = line.split_once(" | ")?;
    let file: usize = head.split(' ').nth(1)?.parse().ok()?;
    let definition = gloss.split("; \"").next()?.trim();
    (!definition.is_empty()).then_some((file, definition))
}

impl WordnetTask {
    /// Loads `split` of the task from the `wordnet-base` files in `dir`.
    ///
    /// # Errors
    /// [`DataError::WordnetMissing`] when `data.noun` is not there (with how to install
    /// it), [`DataError::Io`], [`DataError::Wordnet`] for an unknown category or settings
    /// that leave nothing to train on, [`DataError::InFile`] for a category with too few
    /// definitions.
    pub fn load(&self, dir: impl AsRef<Path>, split: Split) -> Result<Dataset, DataError> {
        let (texts, labels) = self.texts(dir, split)?;
        let mut features = Vec::with_capacity(texts.len() * self.max_len);
        for definition in &texts {
            let mut ids = tokenize(definition, self.vocab);
            ids.resize(self.max_len, 0);
            features.extend(ids.iter().map(|&id| id as f32));
        }
        Dataset::from_parts(features, labels, self.max_len, self.categories.len())
    }

    /// The definitions of `split` as text, with their labels (category indices), in
    /// category order: what [`WordnetTask::load`] tokenises, for a model with its own
    /// tokenizer.
    ///
    /// # Errors
    /// As [`WordnetTask::load`].
    pub fn texts(&self, dir: impl AsRef<Path>, split: Split) -> Result<(Vec<String>, Vec<u32>), DataError> {
        let path = dir.as_ref().join("data.noun");
        if !path.is_file() {
            return Err(DataError::WordnetMissing { path });
        }
        let text = std::fs::read_to_string(&path).map_err(|error| DataError::Io {
            path: path.clone(),
            error,
        })?;
        self.parse(&text, &path, split)
    }

    fn parse(&self, text: &str, path: &Path, split: Split) -> Result<(Vec<String>, Vec<u32>), DataError> {
        let shape = DataError::Wordnet;
        if self.max_len == 0 || self.vocab < 2 || self.per_class < 5 {
            return Err(shape(format!(
                "the WordNet task needs max_len ≥ 1, vocab ≥ 2 and per_class ≥ 5 (got {}, {}, {})",
                self.max_len, self.vocab, self.per_class
            )));
        }
        let files: Vec<usize> = self
            .categories
            .iter()
            .map(|name| {
                NOUN_CATEGORIES
                    .iter()
                    .position(|c| c == name)
                    .map(|i| i + FIRST_NOUN_FILE)
                    .ok_or_else(|| {
                        shape(format!(
                            "`{name}` is not a WordNet noun category ({})",
                            NOUN_CATEGORIES.join(", ")
                        ))
                    })
            })
            .collect::<Result<_, _>>()?;
        if files.len() < 2 {
            return Err(shape("the WordNet task needs at least two categories".into()));
        }
        // Distinct definitions per category, in file order; a definition filed under two
        // categories is dropped from both (its label would be a coin toss).
        let mut by_class: Vec<Vec<&str>> = vec![Vec::new(); files.len()];
        let mut seen: HashSet<&str> = HashSet::new();
        let mut ambiguous: HashSet<&str> = HashSet::new();
        for (file, definition) in text.lines().filter_map(parse_line) {
            let Some(class) = files.iter().position(|&f| f == file) else {
                continue;
            };
            if !seen.insert(definition) {
                ambiguous.insert(definition);
                continue;
            }
            by_class[class].push(definition);
        }
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut texts = Vec::new();
        let mut labels = Vec::new();
        for (class, definitions) in by_class.iter_mut().enumerate() {
            definitions.retain(|d| !ambiguous.contains(d));
            if definitions.len() < 5 {
                return Err(DataError::InFile {
                    path: path.to_path_buf(),
                    error: Box::new(DataError::Wordnet(format!(
                        "WordNet category `{}` has {} definitions; it needs at least 5",
                        self.categories[class],
                        definitions.len()
                    ))),
                });
            }
            definitions.shuffle(&mut rng);
            definitions.truncate(self.per_class);
            let test = definitions.len() / 5;
            let rows = match split {
                Split::Test => &definitions[..test],
                Split::Train => &definitions[test..],
            };
            texts.extend(rows.iter().map(|d| (*d).to_string()));
            labels.extend(std::iter::repeat_n(class as u32, rows.len()));
        }
        Ok((texts, labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "  1 This software and database is being provided to you, the LICENSEE, by  \n\
        02084071 05 n 01 dog 0 001 @ 02083346 n 0000 | a member of the genus Canis; \"the dog barked all night\"  \n\
        03800933 06 n 01 rope 0 000 | a long noosed rope used to catch animals  \n\
        07697100 13 n 01 hamburger 0 000 | ground beef patty usually with a sauce  \n\
        99999999 06 n 01 thing 0 000 | a member of the genus Canis  \n";

    #[test]
    fn lines_give_their_category_and_definition_without_examples() {
        let entries: Vec<(usize, &str)> = SAMPLE.lines().filter_map(parse_line).collect();
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[0], (5, "a member of the genus Canis"));
        assert_eq!(entries[2], (13, "ground beef patty usually with a sauce"));
    }

    #[test]
    fn tokens_are_case_blind_hashed_ids_above_padding() {
        let ids = tokenize("A long-noosed Rope; rope!", 50);
        assert_eq!(ids.len(), 5);
        assert_eq!(ids[3], ids[4], "case does not matter");
        assert!(ids.iter().all(|&id| (1..50).contains(&id)));
        assert_ne!(tokenize("rope", 8_192), tokenize("ropes", 8_192));
    }

    #[test]
    fn a_definition_filed_twice_and_bad_settings_are_refused_or_dropped() {
        let task = WordnetTask {
            categories: vec!["animal".into(), "artifact".into()],
            ..WordnetTask::default()
        };
        // Only one animal definition, and it is ambiguous: too few.
        let err = task
            .parse(SAMPLE, Path::new("data.noun"), Split::Train)
            .unwrap_err()
            .to_string();
        assert!(err.contains("category `animal` has 0 definitions"), "{err}");
        let unknown = WordnetTask {
            categories: vec!["animal".into(), "dragons".into()],
            ..WordnetTask::default()
        };
        let err = unknown
            .parse(SAMPLE, Path::new("x"), Split::Train)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`dragons` is not a WordNet noun category"), "{err}");
    }
}
