//! Low-rank adapters on any module, and the blueprint of a LoRA spec.

use burn::module::{Lora, Module, ParamGroup};
use fedtune_protocol::model::Architecture;
use fedtune_protocol::{LoraSpec, Manifest};

use super::{Blueprint, Device, ModelShape, manifest_of};

/// Attaches LoRA adapters of `rank` (scaled by `alpha / rank`) to `model`'s 2-D weights
/// that a pattern in `targets` names (all of them when `targets` is empty), with Burn's
/// `Module::apply_lora`: every base parameter is frozen and each adapted weight gains
/// `….lora.a` and `….lora.b` factors in the model's [`manifest_of`]. Works on any module,
/// the zoo's or your own.
pub fn with_lora<M: Module>(model: M, rank: usize, alpha: f64, targets: &[String]) -> M {
    let paths: Vec<String> = manifest_of(&model)
        .tensors
        .into_iter()
        .filter(|t| t.shape.len() == 2)
        .filter(|t| targets.is_empty() || targets.iter().any(|p| fedtune_protocol::freeze::matches(p, &t.name)))
        .map(|t| t.name)
        .collect();
    model.apply_lora(Lora::new(rank, alpha).set_param_group(ParamGroup::from_paths(paths)))
}

/// The blueprint of a [`LoraSpec`]: its base's module with the adapters attached.
pub struct Adapted<'a, B> {
    base: &'a B,
    lora: &'a LoraSpec,
}

impl<'a, B: Blueprint> Adapted<'a, B> {
    /// `lora`'s adapters on `base`, the blueprint of `lora.base`.
    pub fn new(base: &'a B, lora: &'a LoraSpec) -> Self {
        Self { base, lora }
    }
}

impl<B: Blueprint> Blueprint for Adapted<'_, B> {
    type Model = B::Model;

    fn build(&self, device: &Device) -> B::Model {
        with_lora(
            self.base.build(device),
            self.lora.rank,
            self.lora.alpha,
            &self.lora.targets,
        )
    }

    fn manifest(&self) -> Manifest {
        Architecture::manifest(self.lora)
    }

    fn shape(&self) -> ModelShape {
        self.base.shape()
    }

    fn vocab(&self) -> Option<usize> {
        self.base.vocab()
    }
}
