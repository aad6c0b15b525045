//! Low-rank adapters (LoRA) on any other architecture.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{Architecture, Init, ModelSpec};
use crate::ProtocolError;
use crate::tensor::{LORA_A, LORA_B, TensorSpec, is_lora_factor};

/// Low-rank adapters (LoRA, Hu et al. 2021) on `base`'s 2-D weights: an adapted weight
/// `W` (`[in, out]`) acts as `W + (alpha / rank) · A·B` with `A` (`[in, rank]`) and `B`
/// (`[rank, out]`) trained and `W` frozen. Every other tensor of the base is frozen too,
/// so only the adapters train, travel and are averaged (see [`crate::freeze`]).
///
/// The manifest is the base's with `{weight}.lora.a` and `{weight}.lora.b` after each
/// adapted weight (Burn's module paths for `Module::apply_lora`). `A` starts from
/// a normal distribution of standard deviation `1/rank` and `B` from zero, so the adapted model starts as the base model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSpec {
    /// The model the adapters attach to (not itself a LoRA model).
    pub base: Box<ModelSpec>,
    /// Rank of each adapter.
    pub rank: usize,
    /// Scale numerator: the adapter's product is scaled by `alpha / rank`.
    pub alpha: f64,
    /// Patterns (as freeze patterns, see [`crate::freeze::matches`]) naming the weights
    /// to adapt, e.g. `["head.*"]`; empty adapts every 2-D weight. (Always written: the
    /// wire format is not self-describing.)
    #[serde(default)]
    pub targets: Vec<String>,
    /// Patterns naming base tensors that train in full beside the adapters (PEFT's
    /// `modules_to_save`), e.g. `["classifier"]` for a fresh classification head. They
    /// train, travel and are averaged as the adapters are (see [`crate::freeze`]'s `!`
    /// patterns).
    #[serde(default)]
    pub train: Vec<String>,
}

impl LoraSpec {
    /// `alpha / rank`.
    #[must_use]
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// The base manifest's 2-D weights that get adapters: name, `in` and `out`.
    #[must_use]
    pub fn adapted(&self) -> Vec<(String, usize, usize)> {
        self.adapted_in(&self.base.manifest().tensors)
    }

    /// [`LoraSpec::adapted`] of an already-built base layout.
    fn adapted_in<'a>(&self, base: impl IntoIterator<Item = &'a TensorSpec>) -> Vec<(String, usize, usize)> {
        base.into_iter()
            .filter(|t| t.shape.len() == 2)
            .filter(|t| self.targets.is_empty() || self.targets.iter().any(|p| crate::freeze::matches(p, &t.name)))
            .map(|t| (t.name.clone(), t.shape[0], t.shape[1]))
            .collect()
    }

    /// How the two factors of an adapter start: `A` normal with standard deviation
    /// `1/rank`, `B` zero.
    fn factor_inits(&self) -> [Init; 2] {
        [Init::Normal(1.0 / self.rank as f64), Init::Constant(0.0)]
    }

    /// The LoRA model's parameters from the base model's: `base` with fresh adapters
    /// (`A` from a normal of standard deviation `1/rank`, `B` zero) after each adapted weight.
    ///
    /// # Panics
    /// If `base` is not the base manifest's length.
    pub fn with_adapters(&self, base: &[f32], rng: &mut impl Rng) -> Vec<f32> {
        self.adapt(base, rng)
    }

    /// [`LoraSpec::with_adapters`] for any generator.
    fn adapt(&self, base: &[f32], rng: &mut dyn Rng) -> Vec<f32> {
        let base_manifest = self.base.manifest();
        assert_eq!(
            base.len(),
            base_manifest.numel(),
            "base parameters do not fit the base model"
        );
        let adapted = self.adapted_in(&base_manifest.tensors);
        let [a_init, b_init] = self.factor_inits();
        let mut params = Vec::with_capacity(self.manifest().numel());
        let mut offset = 0;
        for tensor in &base_manifest.tensors {
            let end = offset + tensor.numel();
            params.extend_from_slice(&base[offset..end]);
            offset = end;
            if let Some((_, fan_in, fan_out)) = adapted.iter().find(|(name, _, _)| *name == tensor.name) {
                a_init.fill(fan_in * self.rank, rng, &mut params);
                b_init.fill(self.rank * fan_out, rng, &mut params);
            }
        }
        params
    }

    /// The base model's parameters with every adapter merged in (`W + scale · A·B`): the
    /// adapted model as a plain one.
    ///
    /// # Panics
    /// If `params` is not this model's manifest length.
    #[must_use]
    pub fn merged(&self, params: &[f32]) -> Vec<f32> {
        let manifest = self.manifest();
        assert_eq!(params.len(), manifest.numel(), "parameters do not fit the LoRA model");
        let scale = self.scale() as f32;
        let mut base = Vec::with_capacity(self.base.manifest().numel());
        let mut offset = 0;
        let mut tensors = manifest.tensors.iter().peekable();
        while let Some(tensor) = tensors.next() {
            let weight = &params[offset..offset + tensor.numel()];
            offset += tensor.numel();
            if tensors.peek().is_some_and(|next| is_lora_factor(&next.name)) {
                let (fan_in, fan_out, rank) = (tensor.shape[0], tensor.shape[1], self.rank);
                let a = &params[offset..offset + fan_in * rank];
                let b = &params[offset + fan_in * rank..offset + fan_in * rank + rank * fan_out];
                offset += fan_in * rank + rank * fan_out;
                tensors.next();
                tensors.next();
                for i in 0..fan_in {
                    let row = &weight[i * fan_out..(i + 1) * fan_out];
                    let mut merged = row.to_vec();
                    for r in 0..rank {
                        let coefficient = scale * a[i * rank + r];
                        for (m, bv) in merged.iter_mut().zip(&b[r * fan_out..(r + 1) * fan_out]) {
                            *m += coefficient * bv;
                        }
                    }
                    base.extend_from_slice(&merged);
                }
            } else {
                base.extend_from_slice(weight);
            }
        }
        base
    }
}

impl Architecture for LoraSpec {
    /// The base's tensors, each adapted weight followed by its two factors.
    fn tensors(&self) -> Vec<(TensorSpec, Init)> {
        let base = self.base.architecture().tensors();
        let adapted = self.adapted_in(base.iter().map(|(tensor, _)| tensor));
        let [a_init, b_init] = self.factor_inits();
        let mut tensors = Vec::with_capacity(base.len() + 2 * adapted.len());
        for (tensor, init) in base {
            let adapter = adapted.iter().find(|(name, _, _)| *name == tensor.name);
            let name = tensor.name.clone();
            tensors.push((tensor, init));
            if let Some((_, fan_in, fan_out)) = adapter {
                tensors.push((
                    TensorSpec::new(format!("{name}.{LORA_A}"), vec![*fan_in, self.rank]),
                    a_init,
                ));
                tensors.push((
                    TensorSpec::new(format!("{name}.{LORA_B}"), vec![self.rank, *fan_out]),
                    b_init,
                ));
            }
        }
        tensors
    }

    fn check(&self) -> Result<(), ProtocolError> {
        let invalid = |what: String| Err(ProtocolError::InvalidModel(what));
        if matches!(*self.base, ModelSpec::Lora(_)) {
            return invalid("a LoRA model's base cannot itself be a LoRA model".into());
        }
        self.base.validate()?;
        if self.rank == 0 {
            return invalid("LoRA rank must be positive".into());
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return invalid(format!("LoRA alpha must be positive and finite, not {}", self.alpha));
        }
        let base = self.base.manifest();
        let weights: Vec<_> = base.tensors.iter().filter(|t| t.shape.len() == 2).collect();
        if let Some(unused) = self
            .targets
            .iter()
            .find(|p| !weights.iter().any(|t| crate::freeze::matches(p, &t.name)))
        {
            return invalid(format!(
                "LoRA target `{unused}` names no 2-D weight of the base model (they are: {})",
                weights.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
        if let Some(unused) = self
            .train
            .iter()
            .find(|p| !base.tensors.iter().any(|t| crate::freeze::matches(p, &t.name)))
        {
            return invalid(format!(
                "LoRA `train` pattern `{unused}` names no tensor of the base model"
            ));
        }
        let adapted = self.adapted_in(&base.tensors);
        if adapted.is_empty() {
            return invalid("the LoRA base model has no 2-D weight to adapt".into());
        }
        if let Some((name, fan_in, fan_out)) = adapted.iter().find(|(_, i, o)| self.rank > *i.min(o)) {
            return invalid(format!(
                "LoRA rank {} exceeds the smaller side of `{name}` ({fan_in}×{fan_out})",
                self.rank
            ));
        }
        Ok(())
    }

    fn classes(&self) -> Option<usize> {
        self.base.classes()
    }

    fn describe(&self) -> String {
        format!(
            "{} + LoRA r{} α{} on {} weights",
            self.base.describe(),
            self.rank,
            self.alpha,
            self.adapted().len()
        )
    }

    fn scaled(&self, width: f64) -> Result<ModelSpec, ProtocolError> {
        Ok(ModelSpec::Lora(LoraSpec {
            base: Box::new(self.base.scaled(width)?),
            ..self.clone()
        }))
    }

    fn with_dropout(&self, p: f64) -> Result<ModelSpec, ProtocolError> {
        Ok(ModelSpec::Lora(LoraSpec {
            base: Box::new(self.base.with_dropout(p)?),
            ..self.clone()
        }))
    }

    /// The base's, and an unfreeze pattern (`!…`) for each of `train`.
    fn implied_frozen(&self) -> Vec<String> {
        let mut patterns = self.base.implied_frozen();
        patterns.extend(self.train.iter().map(|p| format!("{}{p}", crate::freeze::UNFREEZE)));
        patterns
    }

    /// The base's fresh parameters, then the adapters' (so the base part is what the base
    /// model alone draws from the same generator).
    fn init_params(&self, rng: &mut dyn Rng) -> Vec<f32> {
        let base = self.base.architecture().init_params(rng);
        self.adapt(&base, rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CnnSpec, MlpSpec};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn lora(targets: &[&str], rank: usize) -> LoraSpec {
        LoraSpec {
            base: Box::new(ModelSpec::Cnn(CnnSpec::lenet(1, 28, 28, 10))),
            rank,
            alpha: 8.0,
            targets: targets.iter().map(ToString::to_string).collect(),
            train: Vec::new(),
        }
    }

    #[test]
    fn lora_adds_two_factors_after_each_adapted_weight_and_trains_only_them() {
        let spec = ModelSpec::Lora(lora(&["head.*"], 4));
        spec.validate().unwrap();
        let manifest = spec.manifest();
        let names: Vec<&str> = manifest.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            &names[4..9],
            &[
                "head.0.weight",
                "head.0.weight.lora.a",
                "head.0.weight.lora.b",
                "head.0.bias",
                "head.1.weight"
            ]
        );
        assert_eq!(manifest.tensors[5].shape, vec![256, 4]);
        assert_eq!(manifest.tensors[6].shape, vec![4, 120]);
        // (256 + 120) · 4 + (120 + 84) · 4 + (84 + 10) · 4 adapter values.
        let adapters = (256 + 120 + 120 + 84 + 84 + 10) * 4;
        assert_eq!(manifest.numel(), 44_426 + adapters);
        let trainable = crate::freeze::Trainable::new(&manifest, &[]).unwrap();
        assert_eq!(trainable.numel(), adapters);
        // A pattern may freeze adapters too.
        let fewer = crate::freeze::Trainable::new(&manifest, &["head.2".to_string()]).unwrap();
        assert_eq!(fewer.numel(), adapters - (84 + 10) * 4);
        assert!(
            spec.describe().ends_with("LoRA r4 α8 on 3 weights"),
            "{}",
            spec.describe()
        );

        // Fresh adapters leave the base as it was: B is zero.
        let params = spec.init_params(&mut StdRng::seed_from_u64(3));
        let ModelSpec::Lora(l) = &spec else { unreachable!() };
        let base = l.base.init_params(&mut StdRng::seed_from_u64(3));
        assert_eq!(l.merged(&params), base);
        assert_eq!(
            l.with_adapters(&base, &mut StdRng::seed_from_u64(9)).len(),
            params.len()
        );
    }

    #[test]
    fn a_merged_lora_weight_is_the_base_plus_the_scaled_product() {
        let spec = LoraSpec {
            base: Box::new(ModelSpec::Mlp(MlpSpec {
                input: 2,
                hidden: vec![],
                classes: 2,
            })),
            rank: 1,
            alpha: 2.0,
            targets: vec![],
            train: Vec::new(),
        };
        // W = [[1, 2], [3, 4]], A = [[1], [2]], B = [[10, 20]], bias [5, 6]; scale 2.
        let params = [1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 10.0, 20.0, 5.0, 6.0];
        assert_eq!(spec.merged(&params), vec![21.0, 42.0, 43.0, 84.0, 5.0, 6.0]);
    }

    #[test]
    fn an_invalid_lora_names_what_is_wrong() {
        let err = |spec: LoraSpec| ModelSpec::Lora(spec).validate().unwrap_err().to_string();
        assert!(err(lora(&[], 0)).contains("rank must be positive"));
        let e = err(lora(&["convs.*"], 4));
        assert!(
            e.contains("`convs.*` names no 2-D weight") && e.contains("head.2.weight"),
            "{e}"
        );
        let e = err(lora(&["head.2"], 11));
        assert!(
            e.contains("rank 11 exceeds") && e.contains("head.2.weight` (84×10)"),
            "{e}"
        );
        let mut nan = lora(&[], 2);
        nan.alpha = f64::NAN;
        assert!(err(nan).contains("alpha"));
        let nested = LoraSpec {
            base: Box::new(ModelSpec::Lora(lora(&[], 2))),
            ..lora(&[], 2)
        };
        assert!(err(nested).contains("cannot itself be a LoRA model"));
    }
}
