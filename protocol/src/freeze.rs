//! Frozen parameters: which tensors of a manifest train, and which stay as they are.
//!
//! A freeze pattern names tensors by module path. `*` matches any run of characters
//! (dots included), so `convs.*` freezes every convolution block and `*.bias` every bias.
//! A pattern names a module (`convs.0` freezes the first block, `*.attention.self.query`
//! every query projection) or one tensor.
//! Agents and the aggregator compute the same [`Trainable`] from the task's manifest and
//! patterns: updates carry only the trainable values, in manifest order, and only those
//! are averaged.
//!
//! A manifest with LoRA factors (`….lora.a`, `….lora.b`, see [`crate::model::LoraSpec`])
//! trains those factors only: every other tensor is frozen without a pattern, and
//! patterns may freeze some factors too. An unfreeze pattern, `!` then a pattern
//! (`!classifier`), trains the base tensors it names beside the factors (a LoRA spec's
//! `train` list becomes such patterns); a freeze pattern naming the same tensor wins.

use std::ops::Range;

use crate::ProtocolError;
use crate::tensor::Manifest;
use crate::tensor::is_lora_factor;

/// The prefix of an unfreeze pattern: `!classifier` trains `classifier.*` in a LoRA model.
pub const UNFREEZE: &str = "!";

/// Whether the patterns freeze `tensor` (`Some(true)`), unfreeze it (`Some(false)`), or
/// say nothing of it (`None`); a freeze pattern wins over an unfreeze pattern.
#[must_use]
pub fn verdict(patterns: &[String], tensor: &str) -> Option<bool> {
    let mut verdict = None;
    for pattern in patterns {
        match pattern.strip_prefix(UNFREEZE) {
            Some(unfrozen) if matches(unfrozen, tensor) => verdict = verdict.or(Some(false)),
            Some(_) => {}
            None if matches(pattern, tensor) => return Some(true),
            None => {}
        }
    }
    verdict
}

/// Whether `pattern` names `tensor`: the whole path, or a module the path lies in.
#[must_use]
pub fn matches(pattern: &str, tensor: &str) -> bool {
    if pattern.contains('*') {
        let named = |path: &str| glob(pattern.as_bytes(), path.as_bytes());
        return named(tensor) || tensor.match_indices('.').any(|(end, _)| named(&tensor[..end]));
    }
    tensor == pattern || tensor.strip_prefix(pattern).is_some_and(|rest| rest.starts_with('.'))
}

/// `*` matches any run of bytes; everything else itself. Iterative, with one backtrack
/// point, so a pattern costs O(pattern × name) at worst.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The trainable part of a flat parameter buffer: ranges of it, in manifest order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trainable {
    ranges: Vec<Range<usize>>,
    numel: usize,
    total: usize,
}

impl Trainable {
    /// Everything trains.
    #[must_use]
    pub fn all(total: usize) -> Self {
        Self {
            ranges: std::iter::once(0..total).filter(|r| !r.is_empty()).collect(),
            numel: total,
            total,
        }
    }

    /// The tensors of `manifest` that no pattern in `frozen` names (and, when the manifest
    /// has LoRA factors, only those and the tensors an unfreeze pattern names).
    ///
    /// # Errors
    /// [`ProtocolError::InvalidModel`] when a pattern names no tensor (a typo would
    /// otherwise freeze nothing) or when every tensor is frozen.
    pub fn new(manifest: &Manifest, frozen: &[String]) -> Result<Self, ProtocolError> {
        if let Some(unused) = frozen.iter().find(|p| {
            let pattern = p.strip_prefix(UNFREEZE).unwrap_or(p);
            !manifest.tensors.iter().any(|t| matches(pattern, &t.name))
        }) {
            return Err(ProtocolError::InvalidModel(format!(
                "freeze pattern `{unused}` names no tensor of the model (tensors are named by module path, e.g. `{}`)",
                manifest.tensors.first().map_or("", |t| t.name.as_str())
            )));
        }
        let adapters_only = manifest.tensors.iter().any(|t| is_lora_factor(&t.name));
        let mut ranges: Vec<Range<usize>> = Vec::new();
        let mut offset = 0;
        for tensor in &manifest.tensors {
            let end = offset + tensor.numel();
            let trains = match verdict(frozen, &tensor.name) {
                Some(frozen) => !frozen,
                None => !adapters_only || is_lora_factor(&tensor.name),
            };
            if trains {
                match ranges.last_mut() {
                    Some(last) if last.end == offset => last.end = end,
                    _ => ranges.push(offset..end),
                }
            }
            offset = end;
        }
        let numel = ranges.iter().map(ExactSizeIterator::len).sum();
        if numel == 0 && offset > 0 {
            return Err(ProtocolError::InvalidModel(
                "the freeze patterns freeze every tensor: nothing would train".into(),
            ));
        }
        Ok(Self {
            ranges,
            numel,
            total: offset,
        })
    }

    /// Trainable values.
    #[must_use]
    pub fn numel(&self) -> usize {
        self.numel
    }

    /// Values in the whole buffer.
    #[must_use]
    pub fn total(&self) -> usize {
        self.total
    }

    /// Whether every value of `range` (of the whole buffer) trains.
    #[must_use]
    pub fn contains(&self, range: Range<usize>) -> bool {
        range.is_empty() || self.ranges.iter().any(|r| r.start <= range.start && range.end <= r.end)
    }

    /// Whether nothing is frozen.
    #[must_use]
    pub fn is_all(&self) -> bool {
        self.numel == self.total
    }

    /// A checksum (CRC-32 of the little-endian bytes) of `full`'s frozen values: what a
    /// task names when it sends only the trainable part.
    ///
    /// # Panics
    /// If `full` is not [`Trainable::total`] long.
    #[must_use]
    pub fn frozen_checksum(&self, full: &[f32]) -> u32 {
        assert_eq!(full.len(), self.total, "buffer does not fit the manifest");
        let mut hasher = crc32fast::Hasher::new();
        let mut start = 0;
        for range in self
            .ranges
            .iter()
            .cloned()
            .chain(std::iter::once(self.total..self.total))
        {
            hasher.update(&crate::tensor::f32_to_le_bytes(&full[start..range.start]));
            start = range.end;
        }
        hasher.finalize()
    }

    /// The trainable values of `full`, in order.
    ///
    /// # Panics
    /// If `full` is not [`Trainable::total`] long.
    #[must_use]
    pub fn gather(&self, full: &[f32]) -> Vec<f32> {
        assert_eq!(full.len(), self.total, "buffer does not fit the manifest");
        let mut out = Vec::with_capacity(self.numel);
        for range in &self.ranges {
            out.extend_from_slice(&full[range.clone()]);
        }
        out
    }

    /// The frozen values of `full`, in order: what [`Trainable::frozen_checksum`] sums.
    ///
    /// # Panics
    /// If `full` is not [`Trainable::total`] long.
    #[must_use]
    pub fn gather_frozen(&self, full: &[f32]) -> Vec<f32> {
        assert_eq!(full.len(), self.total, "buffer does not fit the manifest");
        let mut out = Vec::with_capacity(self.total - self.numel);
        let mut start = 0;
        for range in self.ranges.iter().chain(std::iter::once(&(self.total..self.total))) {
            out.extend_from_slice(&full[start..range.start]);
            start = range.end;
        }
        out
    }

    /// The whole buffer of `part` (trainable values, in order) and `frozen` (frozen
    /// values, in order, as [`Trainable::gather_frozen`] gives them): `None` when either
    /// is not as long as this layout needs. Frozen values kept from one layout fill any
    /// other whose frozen tensors hold the same values (the same base under adapters of
    /// another rank, say).
    #[must_use]
    pub fn assemble(&self, part: &[f32], frozen: &[f32]) -> Option<Vec<f32>> {
        if part.len() != self.numel || frozen.len() != self.total - self.numel {
            return None;
        }
        let mut full = Vec::with_capacity(self.total);
        let (mut at_part, mut at_frozen) = (0, 0);
        for range in self.ranges.iter().chain(std::iter::once(&(self.total..self.total))) {
            let gap = range.start - full.len();
            full.extend_from_slice(&frozen[at_frozen..at_frozen + gap]);
            at_frozen += gap;
            full.extend_from_slice(&part[at_part..at_part + range.len()]);
            at_part += range.len();
        }
        Some(full)
    }

    /// Writes `part` (trainable values, in order) into their places in `full`.
    ///
    /// # Panics
    /// If `full` is not [`Trainable::total`] long or `part` not [`Trainable::numel`].
    pub fn scatter(&self, part: &[f32], full: &mut [f32]) {
        assert_eq!(full.len(), self.total, "buffer does not fit the manifest");
        assert_eq!(part.len(), self.numel, "part does not fit the trainable tensors");
        let mut at = 0;
        for range in &self.ranges {
            full[range.clone()].copy_from_slice(&part[at..at + range.len()]);
            at += range.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::TensorSpec;

    fn manifest() -> Manifest {
        Manifest {
            tensors: vec![
                TensorSpec::new("convs.0.conv.weight", vec![2, 1, 1, 1]),
                TensorSpec::new("convs.0.conv.bias", vec![2]),
                TensorSpec::new("convs.1.conv.weight", vec![1, 2, 1, 1]),
                TensorSpec::new("convs.1.conv.bias", vec![1]),
                TensorSpec::new("head.0.weight", vec![1, 3]),
                TensorSpec::new("head.0.bias", vec![3]),
            ],
        }
    }

    #[test]
    fn patterns_name_paths_modules_and_globs() {
        assert!(matches("convs.*", "convs.0.conv.weight"));
        assert!(matches("convs.0", "convs.0.conv.weight"));
        assert!(!matches("convs.0", "convs.01.conv.weight"));
        assert!(matches("*.bias", "head.0.bias"));
        assert!(!matches("*.bias", "head.0.weight"));
        assert!(matches("conv*", "convs.1.conv.bias"));
        assert!(matches("head.0.weight", "head.0.weight"));
        assert!(!matches("head", "heads.0.weight"));
        assert!(matches("*", "anything"));
        assert!(matches("a*b*c", "aXXbYYc") && !matches("a*b*c", "aXXbYY"));
        // A glob names modules too: every tensor under a module it matches.
        assert!(matches(
            "*.attention.self.query",
            "bert.encoder.layer.0.attention.self.query.weight"
        ));
        assert!(matches("*.value", "encoder.layer.1.attention.self.value.bias"));
        assert!(!matches("*.value", "encoder.layer.1.attention.self.values.bias"));
        assert!(!matches("*.query", "encoder.query_proj.weight"));
    }

    #[test]
    fn an_unfreeze_pattern_trains_a_lora_models_head_beside_its_factors() {
        let manifest = Manifest {
            tensors: vec![
                TensorSpec::new("body.weight", vec![2, 2]),
                TensorSpec::new("body.weight.lora.a", vec![2, 1]),
                TensorSpec::new("body.weight.lora.b", vec![1, 2]),
                TensorSpec::new("classifier.weight", vec![2, 3]),
                TensorSpec::new("classifier.bias", vec![3]),
            ],
        };
        let factors = Trainable::new(&manifest, &[]).unwrap();
        assert_eq!(factors.numel(), 4);
        let head = Trainable::new(&manifest, &["!classifier".into()]).unwrap();
        assert_eq!(head.numel(), 4 + 9);
        // A freeze pattern wins over an unfreeze pattern.
        let bias_frozen = Trainable::new(&manifest, &["!classifier".into(), "*.bias".into()]).unwrap();
        assert_eq!(bias_frozen.numel(), 4 + 6);
        assert_eq!(verdict(&["!classifier".into()], "classifier.bias"), Some(false));
        assert_eq!(verdict(&["!classifier".into()], "body.weight"), None);
        let err = Trainable::new(&manifest, &["!head".into()]).unwrap_err().to_string();
        assert!(err.contains("`!head` names no tensor"), "{err}");
    }

    #[test]
    fn gather_and_scatter_move_only_the_trainable_values() {
        let m = manifest();
        let full: Vec<f32> = (0..m.numel()).map(|i| i as f32).collect();
        let t = Trainable::new(&m, &["convs.*".into()]).unwrap();
        // 2 + 2 + 2 + 1 values of convolutions, then the head's 3 + 3.
        assert_eq!((t.numel(), t.total(), t.is_all()), (6, 13, false));
        assert_eq!(t.gather(&full), vec![7.0, 8.0, 9.0, 10.0, 11.0, 12.0]);
        let t = Trainable::new(&m, &["*.bias".into()]).unwrap();
        assert_eq!(t.gather(&full), vec![0.0, 1.0, 4.0, 5.0, 7.0, 8.0, 9.0]);
        let mut back = vec![-1.0; 13];
        t.scatter(&t.gather(&full), &mut back);
        assert_eq!(
            back,
            vec![0.0, 1.0, -1.0, -1.0, 4.0, 5.0, -1.0, 7.0, 8.0, 9.0, -1.0, -1.0, -1.0]
        );
        assert!(Trainable::new(&m, &[]).unwrap().is_all());
        assert_eq!(Trainable::new(&m, &[]).unwrap(), Trainable::all(13));
        // The checksum covers the frozen values only.
        let mut moved = full.clone();
        moved[0] += 1.0;
        assert_eq!(t.frozen_checksum(&moved), t.frozen_checksum(&full));
        moved[2] += 1.0;
        assert_ne!(t.frozen_checksum(&moved), t.frozen_checksum(&full));
        // Frozen values and trainable ones make the whole buffer again; lengths that do
        // not fit make nothing.
        let frozen = t.gather_frozen(&full);
        assert_eq!(frozen, vec![2.0, 3.0, 6.0, 10.0, 11.0, 12.0]);
        assert_eq!(t.assemble(&t.gather(&full), &frozen), Some(full.clone()));
        assert_eq!(t.assemble(&t.gather(&full), &frozen[1..]), None);
        assert_eq!(t.assemble(&[], &frozen), None);
        let everything = Trainable::all(13);
        assert!(everything.gather_frozen(&full).is_empty());
        assert_eq!(everything.assemble(&full, &[]), Some(full.clone()));
    }

    #[test]
    fn a_pattern_that_names_nothing_or_freezes_everything_is_refused() {
        let m = manifest();
        let err = Trainable::new(&m, &["conv.*".into()]).unwrap_err().to_string();
        assert!(err.contains("`conv.*` names no tensor"), "{err}");
        let err = Trainable::new(&m, &["convs".into(), "head".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("nothing would train"), "{err}");
    }
}
