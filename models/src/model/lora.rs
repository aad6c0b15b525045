//! Low-rank adapters on any module, and the blueprint of a LoRA spec.

use burn::module::{Lora, Module, ModuleVisitor, Param, ParamGroup};
use burn::tensor::Tensor;
use fedtune_protocol::model::Architecture;
use fedtune_protocol::{LoraSpec, Manifest};

use super::{Blueprint, Device, ModelShape, path_segment};

/// Attaches LoRA adapters of `rank` (scaled by `alpha / rank`) to `model`'s 2-D weights
/// that a pattern in `targets` names (all of them when `targets` is empty), with Burn's
/// `Module::apply_lora`: every base parameter is frozen and each adapted weight gains
/// `….lora.a` and `….lora.b` factors in the model's [`manifest_of`](super::manifest_of). Works on any module,
/// the zoo's or your own.
pub fn with_lora<M: Module>(model: M, rank: usize, alpha: f64, targets: &[String]) -> M {
    /// Burn's own path of each 2-D weight a target names (Burn matches its paths, which
    /// spell keyword fields as declared; targets name [`super::path_segment`]'s).
    struct Targets<'a> {
        targets: &'a [String],
        path: Vec<String>,
        paths: Vec<String>,
    }
    impl ModuleVisitor for Targets<'_> {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_owned());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, _param: &Param<Tensor<D>>) {
            let name = self.path.iter().map(|s| path_segment(s)).collect::<Vec<_>>().join(".");
            if D == 2
                && (self.targets.is_empty() || self.targets.iter().any(|p| fedtune_protocol::freeze::matches(p, &name)))
            {
                self.paths.push(self.path.join("."));
            }
        }
    }
    let mut found = Targets {
        targets,
        path: Vec::new(),
        paths: Vec::new(),
    };
    model.visit(&mut found);
    model.apply_lora(Lora::new(rank, alpha).set_param_group(ParamGroup::from_paths(found.paths)))
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
