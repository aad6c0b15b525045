//! The hyperparameter search space, shared by the aggregator (which samples it) and the
//! agents (which receive values drawn from it).
//!
//! A closed set of distributions, as in Optuna: [`Distribution::Float`] (uniform or
//! log-uniform, optionally on a step grid), [`Distribution::Int`] (linear or log, with a
//! step) and [`Distribution::Categorical`]. Every constructor validates; deserialising
//! validates too, so an invalid distribution never comes off the wire.
//!
//! Each distribution has a textual form, parsed by [`Distribution::parse`] and printed by
//! `Display` (the two round-trip):
//!
//! | text | distribution |
//! |---|---|
//! | `uniform(0, 0.5)` | float on \[0, 0.5\] |
//! | `uniform(0, 1, step=0.25)` | float on the grid 0, 0.25, …, 1 |
//! | `loguniform(1e-5, 1e-2)` | float, log scale |
//! | `int(1, 5)`, `int(16, 512, step=16)` | integer, linear scale |
//! | `intlog(16, 512)` | integer, log scale |
//! | `choice(16, 32, 64)`, `choice(adam, sgd)` | categorical (numbers, booleans or strings) |
//!
//! Samplers work in an *internal* representation: `ln(x)` for log-scale numbers, `x`
//! otherwise, and the choice index for categoricals ([`Distribution::to_internal`],
//! [`Distribution::from_internal`]); [`Distribution::to_unit`] maps that onto \[0, 1\].
//!
//! # Layout
//! - this file: [`SearchSpace`], its [`ParamSpec`]s and their [`Scope`].
//! - `error`: [`SpaceError`], why a space or a distribution was refused.
//! - `distribution`: [`Distribution`]: validation, the internal representation, draws, `Display`.
//! - `value`: [`ParamValue`] and [`Choice`].
//! - `parse`: the parser of the textual form ([`Distribution::parse`]).
//! - `serde_impls`: the serde shapes (text formats only).
//! - [`file`]: the `[params]` table users write in TOML.

mod distribution;
mod error;
pub mod file;
mod parse;
mod serde_impls;
#[cfg(test)]
mod tests;
mod value;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

pub use self::distribution::Distribution;
pub use self::error::SpaceError;
pub use self::value::{Choice, ParamValue};

/// Who applies a hyperparameter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Sent to agents with each task (learning rate, batch size, local epochs, …).
    #[default]
    Client,
    /// Applied by the aggregator (server learning rate, cohort size, …).
    Server,
}

/// One named hyperparameter of a search space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamSpec {
    /// Name, unique in its space; the key values are sent under.
    pub name: String,
    /// Where its values come from.
    pub distribution: Distribution,
    /// Who applies it.
    #[serde(default)]
    pub scope: Scope,
    /// Whether a policy may adapt it within a trial (client parameters only).
    #[serde(default)]
    pub adaptive: bool,
}

impl ParamSpec {
    /// A client-scoped, non-adaptive parameter.
    #[must_use]
    pub fn new(name: impl Into<String>, distribution: Distribution) -> Self {
        Self {
            name: name.into(),
            distribution,
            scope: Scope::Client,
            adaptive: false,
        }
    }

    /// Parses `name = text` where `text` is the textual form of the distribution.
    ///
    /// # Errors
    /// The parse error, wrapped in [`SpaceError::Param`] naming the parameter.
    pub fn parse(name: &str, text: &str) -> Result<Self, SpaceError> {
        Distribution::parse(text)
            .map(|d| Self::new(name, d))
            .map_err(|e| e.for_param(name))
    }

    /// Sets the scope.
    #[must_use]
    pub fn with_scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// Marks the parameter as adaptive within a trial.
    #[must_use]
    pub fn with_adaptive(mut self, adaptive: bool) -> Self {
        self.adaptive = adaptive;
        self
    }

    /// Checks the name and the distribution.
    ///
    /// # Errors
    /// [`SpaceError::BadName`], or the distribution's error naming the parameter.
    pub fn validate(&self) -> Result<(), SpaceError> {
        if self.name.is_empty() || self.name.chars().any(char::is_whitespace) {
            return Err(SpaceError::BadName(self.name.clone()));
        }
        self.distribution.validate().map_err(|e| e.for_param(&self.name))
    }
}

/// A set of named hyperparameters, in a fixed order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchSpace {
    /// The parameters; names are unique.
    pub params: Vec<ParamSpec>,
}

impl SearchSpace {
    /// Gives every value of `params` that this space names its distribution's kind (see
    /// [`Distribution::canonical`]): parameters as read back from JSON compare equal to
    /// the ones the samplers drew, and the samplers can use them.
    pub fn canonicalize(&self, params: &mut std::collections::BTreeMap<String, ParamValue>) {
        for p in &self.params {
            if let Some(value) = params.remove(&p.name) {
                params.insert(p.name.clone(), p.distribution.canonical(value));
            }
        }
    }

    /// A validated space.
    ///
    /// # Errors
    /// See [`SearchSpace::validate`].
    pub fn new(params: Vec<ParamSpec>) -> Result<Self, SpaceError> {
        let space = Self { params };
        space.validate()?;
        Ok(space)
    }

    /// Checks every parameter and that names are unique.
    ///
    /// # Errors
    /// [`SpaceError::DuplicateName`] or the first parameter's error.
    pub fn validate(&self) -> Result<(), SpaceError> {
        let mut seen = BTreeSet::new();
        for p in &self.params {
            p.validate()?;
            if !seen.insert(p.name.as_str()) {
                return Err(SpaceError::DuplicateName(p.name.clone()));
            }
        }
        Ok(())
    }

    /// The parameter called `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&ParamSpec> {
        self.params.iter().find(|p| p.name == name)
    }

    /// Number of parameters.
    #[must_use]
    pub fn len(&self) -> usize {
        self.params.len()
    }

    /// Whether the space has no parameter.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }
}
