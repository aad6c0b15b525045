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

use std::collections::BTreeSet;
use std::fmt;

use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

/// Why a search space or one of its distributions was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpaceError {
    /// The textual form does not parse.
    #[error("at column {column} of `{text}`: {message}")]
    Syntax {
        /// The text being parsed.
        text: String,
        /// 1-based column (in characters) where the problem was found.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The bounds, step or choices make no valid distribution.
    #[error("{0}")]
    Invalid(String),
    /// The problem concerns one named parameter.
    #[error("parameter `{name}`: {source}")]
    Param {
        /// The parameter's name.
        name: String,
        /// What is wrong with it.
        #[source]
        source: Box<SpaceError>,
    },
    /// Two parameters share a name.
    #[error("parameter `{0}` is defined twice")]
    DuplicateName(String),
    /// A parameter has an empty name or one that cannot be sent as a key.
    #[error("parameter name {0:?} is empty or has whitespace")]
    BadName(String),
}

impl SpaceError {
    /// Wraps `self` so that its message names the parameter `name`.
    #[must_use]
    pub fn for_param(self, name: &str) -> Self {
        match self {
            already @ Self::Param { .. } => already,
            other => Self::Param {
                name: name.to_string(),
                source: Box::new(other),
            },
        }
    }
}

fn invalid(message: impl Into<String>) -> SpaceError {
    SpaceError::Invalid(message.into())
}

/// One value of a categorical distribution: a string, an integer, a float or a boolean.
///
/// Serialised untagged, so `choices = ["adam", "sgd"]` and `choices = [16, 32]` both read
/// naturally from TOML and JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    /// `true` or `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A finite float.
    Float(f64),
    /// A string.
    Str(String),
}

impl Choice {
    /// The choice as a number, when it is one (booleans are not numbers).
    #[must_use]
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Int(i) => Some(*i as f64),
            Self::Float(f) => Some(*f),
            Self::Bool(_) | Self::Str(_) => None,
        }
    }

    /// The choice as a string slice, when it is a string.
    #[must_use]
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }
}

impl From<&str> for Choice {
    fn from(s: &str) -> Self {
        Self::Str(s.to_string())
    }
}

impl From<i64> for Choice {
    fn from(i: i64) -> Self {
        Self::Int(i)
    }
}

/// Writes a float so that it reads back as a float (never as an integer) and exactly.
fn write_float(f: &mut fmt::Formatter<'_>, x: f64) -> fmt::Result {
    // Debug prints the shortest exact representation and keeps a `.0` or exponent.
    write!(f, "{x:?}")
}

fn is_bare_word(s: &str) -> bool {
    let mut chars = s.chars();
    let Some(first) = chars.next() else { return false };
    (first.is_alphabetic() || first == '_')
        && s.chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
        && s != "true"
        && s != "false"
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bool(b) => write!(f, "{b}"),
            Self::Int(i) => write!(f, "{i}"),
            Self::Float(x) => write_float(f, *x),
            Self::Str(s) if is_bare_word(s) => f.write_str(s),
            Self::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// A hyperparameter distribution (Optuna's closed set).
///
/// The variants' fields are public for matching; build them with [`Distribution::float`],
/// [`Distribution::int`], [`Distribution::categorical`] or [`Distribution::parse`], which
/// validate, or call [`Distribution::validate`] on a hand-built one.
#[derive(Debug, Clone, PartialEq)]
pub enum Distribution {
    /// A float in `[low, high]`.
    Float {
        /// Lower bound (inclusive).
        low: f64,
        /// Upper bound (inclusive).
        high: f64,
        /// Search on a log scale (needs `low > 0`; excludes `step`).
        log: bool,
        /// When set, values lie on the grid `low + k * step`.
        step: Option<f64>,
    },
    /// An integer in `[low, high]` on the grid `low + k * step`.
    Int {
        /// Lower bound (inclusive).
        low: i64,
        /// Upper bound (inclusive).
        high: i64,
        /// Search on a log scale (needs `low >= 1` and `step == 1`).
        log: bool,
        /// Grid spacing (`>= 1`).
        step: i64,
    },
    /// One of a non-empty list of distinct values.
    Categorical {
        /// The values, in order; samplers refer to them by index.
        choices: Vec<Choice>,
    },
}

/// The serde shape of a [`Distribution`] in text formats:
/// `{"type": "float", "low": .., "high": .., ..}`.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum RawDistribution {
    Float {
        low: f64,
        high: f64,
        #[serde(default)]
        log: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<f64>,
    },
    Int {
        low: i64,
        high: i64,
        #[serde(default)]
        log: bool,
        #[serde(default = "one")]
        step: i64,
    },
    Categorical {
        choices: Vec<Choice>,
    },
}

fn one() -> i64 {
    1
}

impl TryFrom<RawDistribution> for Distribution {
    type Error = SpaceError;

    fn try_from(raw: RawDistribution) -> Result<Self, SpaceError> {
        match raw {
            RawDistribution::Float { low, high, log, step } => Self::float(low, high, log, step),
            RawDistribution::Int { low, high, log, step } => Self::int(low, high, log, step),
            RawDistribution::Categorical { choices } => Self::categorical(choices),
        }
    }
}

impl From<Distribution> for RawDistribution {
    fn from(d: Distribution) -> Self {
        match d {
            Distribution::Float { low, high, log, step } => Self::Float { low, high, log, step },
            Distribution::Int { low, high, log, step } => Self::Int { low, high, log, step },
            Distribution::Categorical { choices } => Self::Categorical { choices },
        }
    }
}

/// Relative tolerance when checking that a float range is a whole number of steps.
const STEP_RTOL: f64 = 1e-9;

impl Distribution {
    /// A float distribution on `[low, high]`.
    ///
    /// # Errors
    /// [`SpaceError::Invalid`] unless both bounds are finite and `low < high`; with `log`,
    /// unless `low > 0` and there is no step; with a step, unless it is positive and
    /// `high - low` is a whole number of steps.
    pub fn float(low: f64, high: f64, log: bool, step: Option<f64>) -> Result<Self, SpaceError> {
        let d = Self::Float { low, high, log, step };
        d.validate()?;
        Ok(d)
    }

    /// An integer distribution on `[low, high]` with grid spacing `step`.
    ///
    /// # Errors
    /// [`SpaceError::Invalid`] unless `low < high` and `step >= 1` divides `high - low`;
    /// with `log`, unless `low >= 1` and `step == 1`.
    pub fn int(low: i64, high: i64, log: bool, step: i64) -> Result<Self, SpaceError> {
        let d = Self::Int { low, high, log, step };
        d.validate()?;
        Ok(d)
    }

    /// A categorical distribution over `choices`.
    ///
    /// # Errors
    /// [`SpaceError::Invalid`] when `choices` is empty, holds a duplicate or a non-finite
    /// float.
    pub fn categorical(choices: Vec<Choice>) -> Result<Self, SpaceError> {
        let d = Self::Categorical { choices };
        d.validate()?;
        Ok(d)
    }

    /// Checks the invariants the constructors enforce.
    ///
    /// # Errors
    /// [`SpaceError::Invalid`] describing the first violated invariant.
    pub fn validate(&self) -> Result<(), SpaceError> {
        match self {
            Self::Float { low, high, log, step } => {
                if !low.is_finite() || !high.is_finite() {
                    return Err(invalid(format!(
                        "bounds must be finite numbers, got low={low}, high={high}"
                    )));
                }
                if low >= high {
                    return Err(invalid(format!("low ({low}) must be below high ({high})")));
                }
                if *log && *low <= 0.0 {
                    return Err(invalid(format!("a log-scale range needs low > 0, got low={low}")));
                }
                if let Some(step) = step {
                    if *log {
                        return Err(invalid("a log-scale range cannot have a step"));
                    }
                    if !step.is_finite() || *step <= 0.0 {
                        return Err(invalid(format!("step must be a positive number, got {step}")));
                    }
                    let k = (high - low) / step;
                    if (k - k.round()).abs() > STEP_RTOL * k.max(1.0) {
                        return Err(invalid(format!(
                            "high - low ({}) is not a whole number of steps of {step}",
                            high - low
                        )));
                    }
                }
                Ok(())
            }
            Self::Int { low, high, log, step } => {
                if low >= high {
                    return Err(invalid(format!("low ({low}) must be below high ({high})")));
                }
                if *step < 1 {
                    return Err(invalid(format!("step must be at least 1, got {step}")));
                }
                if *log && *low < 1 {
                    return Err(invalid(format!(
                        "a log-scale integer range needs low >= 1, got low={low}"
                    )));
                }
                if *log && *step != 1 {
                    return Err(invalid("a log-scale integer range cannot have a step other than 1"));
                }
                let span = high.checked_sub(*low).ok_or_else(|| invalid("the range is too wide"))?;
                if span % step != 0 {
                    return Err(invalid(format!("high - low ({span}) is not a multiple of step {step}")));
                }
                Ok(())
            }
            Self::Categorical { choices } => {
                if choices.is_empty() {
                    return Err(invalid("a choice needs at least one value"));
                }
                for (i, c) in choices.iter().enumerate() {
                    if let Choice::Float(x) = c
                        && !x.is_finite()
                    {
                        return Err(invalid(format!("choice {x} is not a finite number")));
                    }
                    if choices[..i].contains(c) {
                        return Err(invalid(format!("choice `{c}` is listed twice")));
                    }
                }
                Ok(())
            }
        }
    }

    /// Parses the textual form (see the module documentation).
    ///
    /// # Errors
    /// [`SpaceError::Syntax`] saying where the text stops making sense, or
    /// [`SpaceError::Invalid`] when it parses but the distribution is invalid.
    pub fn parse(text: &str) -> Result<Self, SpaceError> {
        Parser::new(text).distribution()
    }

    /// Whether `value` is a possible draw of this distribution.
    #[must_use]
    pub fn contains(&self, value: &ParamValue) -> bool {
        match (self, value) {
            (Self::Float { low, high, step, .. }, ParamValue::Float(x)) => {
                if !(low <= x && x <= high) {
                    return false;
                }
                match step {
                    None => true,
                    Some(s) => {
                        let k = (x - low) / s;
                        (k - k.round()).abs() <= STEP_RTOL * k.abs().max(1.0)
                    }
                }
            }
            (Self::Int { low, high, step, .. }, ParamValue::Int(i)) => low <= i && i <= high && (i - low) % step == 0,
            (Self::Categorical { choices }, ParamValue::Categorical(c)) => choices.contains(c),
            _ => false,
        }
    }

    /// Whether samplers see this distribution on a log scale.
    #[must_use]
    pub fn is_log(&self) -> bool {
        matches!(self, Self::Float { log: true, .. } | Self::Int { log: true, .. })
    }

    /// Number of categorical choices, or `None` for numeric distributions.
    #[must_use]
    pub fn n_choices(&self) -> Option<usize> {
        match self {
            Self::Categorical { choices } => Some(choices.len()),
            _ => None,
        }
    }

    /// Bounds of the internal representation: `(ln low, ln high)` on a log scale,
    /// `(low, high)` otherwise, `(0, n - 1)` for a categorical with `n` choices.
    #[must_use]
    pub fn internal_bounds(&self) -> (f64, f64) {
        match self {
            Self::Float {
                low, high, log: true, ..
            } => (low.ln(), high.ln()),
            Self::Float { low, high, .. } => (*low, *high),
            Self::Int {
                low, high, log: true, ..
            } => ((*low as f64).ln(), (*high as f64).ln()),
            Self::Int { low, high, .. } => (*low as f64, *high as f64),
            Self::Categorical { choices } => (0.0, (choices.len() - 1) as f64),
        }
    }

    /// The internal representation of `value`, or `None` when the value has the wrong kind
    /// or is not one of the choices.
    #[must_use]
    pub fn to_internal(&self, value: &ParamValue) -> Option<f64> {
        match (self, value) {
            (Self::Float { log, .. }, ParamValue::Float(x)) => Some(if *log { x.ln() } else { *x }),
            (Self::Int { log, .. }, ParamValue::Int(i)) => Some(if *log { (*i as f64).ln() } else { *i as f64 }),
            (Self::Categorical { choices }, ParamValue::Categorical(c)) => {
                choices.iter().position(|x| x == c).map(|i| i as f64)
            }
            _ => None,
        }
    }

    /// The value whose internal representation is nearest to `internal`: clamped to the
    /// bounds, snapped to the step grid, rounded for integers and choice indices.
    #[must_use]
    pub fn from_internal(&self, internal: f64) -> ParamValue {
        let (lo, hi) = self.internal_bounds();
        let t = if internal.is_nan() { lo } else { internal.clamp(lo, hi) };
        match self {
            Self::Float { low, high, log, step } => {
                // Exact bounds at the ends: exp(ln(x)) need not give x back.
                let x = if t <= lo {
                    *low
                } else if t >= hi {
                    *high
                } else if *log {
                    t.exp()
                } else {
                    t
                };
                let x = match step {
                    Some(s) => low + ((x - low) / s).round() * s,
                    None => x,
                };
                ParamValue::Float(x.clamp(*low, *high))
            }
            Self::Int { low, high, log, step } => {
                let x = if *log { t.exp() } else { t };
                let k = ((x - *low as f64) / *step as f64).round() as i64;
                ParamValue::Int((low + k * step).clamp(*low, *high))
            }
            Self::Categorical { choices } => {
                let i = (t.round() as usize).min(choices.len() - 1);
                ParamValue::Categorical(choices[i].clone())
            }
        }
    }

    /// `value`'s internal representation scaled onto \[0, 1\] (a categorical's index `i`
    /// of `n` maps to `i / (n - 1)`, and to 0 when `n == 1`).
    #[must_use]
    pub fn to_unit(&self, value: &ParamValue) -> Option<f64> {
        let (lo, hi) = self.internal_bounds();
        let t = self.to_internal(value)?;
        Some(if hi > lo { (t - lo) / (hi - lo) } else { 0.0 })
    }

    /// The value nearest to the point `u` of \[0, 1\] (the inverse of [`Self::to_unit`]).
    #[must_use]
    pub fn from_unit(&self, u: f64) -> ParamValue {
        let (lo, hi) = self.internal_bounds();
        self.from_internal(lo + u * (hi - lo))
    }

    /// A uniform draw: uniform on the grid for integers and stepped floats, uniform in
    /// the internal (log) space for log-scale numbers, uniform over the choices.
    pub fn sample_uniform<R: Rng + ?Sized>(&self, rng: &mut R) -> ParamValue {
        match self {
            Self::Float {
                low,
                high,
                log: false,
                step: None,
            } => ParamValue::Float((low + rng.random::<f64>() * (high - low)).min(*high)),
            Self::Float {
                low,
                high,
                log: false,
                step: Some(s),
            } => {
                let n = ((high - low) / s).round() as u64;
                ParamValue::Float((low + rng.random_range(0..=n) as f64 * s).min(*high))
            }
            Self::Float { .. } => {
                let (lo, hi) = self.internal_bounds();
                self.from_internal(lo + rng.random::<f64>() * (hi - lo))
            }
            Self::Int {
                low,
                high,
                log: false,
                step,
            } => {
                let n = (high - low) / step;
                ParamValue::Int(low + rng.random_range(0..=n) * step)
            }
            Self::Int {
                low, high, log: true, ..
            } => {
                // Widen by half a unit so the end values get their share of the mass.
                let (lo, hi) = ((*low as f64 - 0.5).ln(), (*high as f64 + 0.5).ln());
                let x = (lo + rng.random::<f64>() * (hi - lo)).exp().round() as i64;
                ParamValue::Int(x.clamp(*low, *high))
            }
            Self::Categorical { choices } => {
                ParamValue::Categorical(choices[rng.random_range(0..choices.len())].clone())
            }
        }
    }
}

impl fmt::Display for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Float { low, high, log, step } => {
                f.write_str(if *log { "loguniform(" } else { "uniform(" })?;
                write_float(f, *low)?;
                f.write_str(", ")?;
                write_float(f, *high)?;
                if let Some(s) = step {
                    f.write_str(", step=")?;
                    write_float(f, *s)?;
                }
                f.write_str(")")
            }
            Self::Int {
                low, high, log: true, ..
            } => write!(f, "intlog({low}, {high})"),
            Self::Int { low, high, step: 1, .. } => write!(f, "int({low}, {high})"),
            Self::Int { low, high, step, .. } => write!(f, "int({low}, {high}, step={step})"),
            Self::Categorical { choices } => {
                f.write_str("choice(")?;
                for (i, c) in choices.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{c}")?;
                }
                f.write_str(")")
            }
        }
    }
}

impl std::str::FromStr for Distribution {
    type Err = SpaceError;

    fn from_str(s: &str) -> Result<Self, SpaceError> {
        Self::parse(s)
    }
}

/// A value drawn from a [`Distribution`]. Serialised untagged: `0.001`, `64`, `"adam"`.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// Drawn from a [`Distribution::Float`].
    Float(f64),
    /// Drawn from a [`Distribution::Int`].
    Int(i64),
    /// Drawn from a [`Distribution::Categorical`].
    Categorical(Choice),
}

impl ParamValue {
    /// The value as a number: floats, integers, and numeric choices.
    #[must_use]
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Float(x) => Some(*x),
            Self::Int(i) => Some(*i as f64),
            Self::Categorical(c) => c.as_f64(),
        }
    }

    /// The value as a string slice, when it is a string choice.
    #[must_use]
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Categorical(c) => c.as_str(),
            _ => None,
        }
    }
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Float(x) => write!(f, "{x}"),
            Self::Int(i) => write!(f, "{i}"),
            Self::Categorical(c) => write!(f, "{c}"),
        }
    }
}

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

/// A token's value in the textual form.
#[derive(Debug, Clone, PartialEq)]
enum Atom {
    Int(i64),
    Float(f64),
    Word(String),
    Quoted(String),
}

impl Atom {
    fn into_choice(self) -> Choice {
        match self {
            Self::Int(i) => Choice::Int(i),
            Self::Float(x) => Choice::Float(x),
            Self::Word(w) if w == "true" => Choice::Bool(true),
            Self::Word(w) if w == "false" => Choice::Bool(false),
            Self::Word(w) | Self::Quoted(w) => Choice::Str(w),
        }
    }
}

/// One argument: positional or `key=value`, with the column it starts at.
struct Arg {
    key: Option<String>,
    value: Atom,
    column: usize,
}

/// Recursive-descent parser over the characters of one distribution's text.
struct Parser<'a> {
    text: &'a str,
    chars: Vec<char>,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            chars: text.chars().collect(),
            pos: 0,
        }
    }

    fn err_at(&self, pos: usize, message: impl Into<String>) -> SpaceError {
        SpaceError::Syntax {
            text: self.text.to_string(),
            column: pos + 1,
            message: message.into(),
        }
    }

    fn skip_ws(&mut self) {
        while self.chars.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn found(&self) -> String {
        match self.peek() {
            Some(c) => format!("`{c}`"),
            None => "the end of the text".to_string(),
        }
    }

    fn expect(&mut self, c: char) -> Result<(), SpaceError> {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err_at(self.pos, format!("expected `{c}`, found {}", self.found())))
        }
    }

    fn word(&mut self) -> String {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
        {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    fn atom(&mut self) -> Result<Atom, SpaceError> {
        self.skip_ws();
        let start = self.pos;
        match self.peek() {
            Some(q @ ('"' | '\'')) => {
                self.pos += 1;
                let mut s = String::new();
                loop {
                    match self.peek() {
                        None => return Err(self.err_at(start, "unterminated quoted string")),
                        Some('\\') => {
                            self.pos += 1;
                            let Some(c) = self.peek() else {
                                return Err(self.err_at(start, "unterminated quoted string"));
                            };
                            s.push(c);
                            self.pos += 1;
                        }
                        Some(c) if c == q => {
                            self.pos += 1;
                            return Ok(Atom::Quoted(s));
                        }
                        Some(c) => {
                            s.push(c);
                            self.pos += 1;
                        }
                    }
                }
            }
            Some(c) if c.is_ascii_digit() || matches!(c, '-' | '+' | '.') => {
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '+' | '.' | '_'))
                {
                    // A sign is only part of the number at the start or after an exponent.
                    if matches!(self.peek(), Some('-' | '+'))
                        && self.pos > start
                        && !matches!(self.chars[self.pos - 1], 'e' | 'E')
                    {
                        break;
                    }
                    self.pos += 1;
                }
                let lexeme: String = self.chars[start..self.pos].iter().collect();
                let clean = lexeme.replace('_', "");
                if let Ok(i) = clean.parse::<i64>() {
                    return Ok(Atom::Int(i));
                }
                match clean.parse::<f64>() {
                    Ok(x) if x.is_finite() => Ok(Atom::Float(x)),
                    _ => Err(self.err_at(start, format!("`{lexeme}` is not a number"))),
                }
            }
            Some(c) if c.is_alphabetic() || c == '_' => Ok(Atom::Word(self.word())),
            _ => Err(self.err_at(start, format!("expected a value, found {}", self.found()))),
        }
    }

    fn arg(&mut self) -> Result<Arg, SpaceError> {
        self.skip_ws();
        let column = self.pos;
        let first = self.atom()?;
        self.skip_ws();
        if self.peek() == Some('=') {
            let Atom::Word(key) = first else {
                return Err(self.err_at(column, "only a name can come before `=`"));
            };
            self.pos += 1;
            let value_column = {
                self.skip_ws();
                self.pos
            };
            let value = self.atom()?;
            return Ok(Arg {
                key: Some(key),
                value,
                column: value_column,
            });
        }
        Ok(Arg {
            key: None,
            value: first,
            column,
        })
    }

    fn distribution(&mut self) -> Result<Distribution, SpaceError> {
        self.skip_ws();
        let name_at = self.pos;
        if !self.peek().is_some_and(char::is_alphabetic) {
            return Err(self.err_at(
                name_at,
                format!(
                    "expected a distribution (uniform, loguniform, int, intlog, choice), found {}",
                    self.found()
                ),
            ));
        }
        let name = self.word();
        self.expect('(')?;
        let mut args = Vec::new();
        self.skip_ws();
        if self.peek() == Some(')') {
            self.pos += 1;
        } else {
            loop {
                args.push(self.arg()?);
                self.skip_ws();
                match self.peek() {
                    Some(',') => self.pos += 1,
                    Some(')') => {
                        self.pos += 1;
                        break;
                    }
                    _ => {
                        return Err(self.err_at(self.pos, format!("expected `,` or `)`, found {}", self.found())));
                    }
                }
            }
        }
        self.skip_ws();
        if self.pos < self.chars.len() {
            return Err(self.err_at(self.pos, format!("unexpected {} after the closing `)`", self.found())));
        }
        self.build(&name, name_at, args)
    }

    fn number(&self, arg: &Arg, what: &str) -> Result<f64, SpaceError> {
        match arg.value {
            Atom::Int(i) => Ok(i as f64),
            Atom::Float(x) => Ok(x),
            _ => Err(self.err_at(arg.column, format!("{what} must be a number"))),
        }
    }

    fn integer(&self, arg: &Arg, what: &str) -> Result<i64, SpaceError> {
        match arg.value {
            Atom::Int(i) => Ok(i),
            _ => Err(self.err_at(arg.column, format!("{what} must be an integer"))),
        }
    }

    fn build(&self, name: &str, name_at: usize, args: Vec<Arg>) -> Result<Distribution, SpaceError> {
        if name == "choice" || name == "categorical" {
            if let Some(a) = args.iter().find(|a| a.key.is_some()) {
                return Err(self.err_at(a.column, "choice takes values only, no `key=value`"));
            }
            if args.is_empty() {
                return Err(self.err_at(name_at, "choice needs at least one value"));
            }
            return Distribution::categorical(args.into_iter().map(|a| a.value.into_choice()).collect());
        }
        let (log_default, integer) = match name {
            "uniform" | "float" => (false, false),
            "loguniform" => (true, false),
            "int" => (false, true),
            "intlog" | "logint" => (true, true),
            other => {
                return Err(self.err_at(
                    name_at,
                    format!("unknown distribution `{other}` (expected uniform, loguniform, int, intlog or choice)"),
                ));
            }
        };
        let (positional, named): (Vec<&Arg>, Vec<&Arg>) = args.iter().partition(|a| a.key.is_none());
        if positional.len() != 2 {
            let at = positional
                .get(2)
                .map_or(self.chars.len().saturating_sub(1), |a| a.column);
            return Err(self.err_at(
                at,
                format!("{name} takes two bounds (low, high), got {}", positional.len()),
            ));
        }
        let mut step = None;
        let mut log = log_default;
        for a in named {
            match a.key.as_deref() {
                Some("step") => step = Some(a),
                Some("log") => {
                    log = match &a.value {
                        Atom::Word(w) if w == "true" => true,
                        Atom::Word(w) if w == "false" => false,
                        _ => return Err(self.err_at(a.column, "log must be true or false")),
                    }
                }
                Some(other) => {
                    return Err(self.err_at(a.column, format!("unknown option `{other}` (expected step or log)")));
                }
                None => {}
            }
        }
        if integer {
            let low = self.integer(positional[0], "low")?;
            let high = self.integer(positional[1], "high")?;
            let step = step.map(|a| self.integer(a, "step")).transpose()?.unwrap_or(1);
            Distribution::int(low, high, log, step)
        } else {
            let low = self.number(positional[0], "low")?;
            let high = self.number(positional[1], "high")?;
            let step = step.map(|a| self.number(a, "step")).transpose()?;
            Distribution::float(low, high, log, step)
        }
    }
}

/// Serde for the public enums: text formats (JSON, TOML) get the natural untagged or
/// `"type"`-tagged shapes; binary formats such as bincode, which cannot drive untagged or
/// internally tagged enums, get externally tagged mirrors.
mod serde_impls {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{Choice, Distribution, ParamValue, RawDistribution};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum ChoiceText {
        Bool(bool),
        Int(i64),
        Float(f64),
        Str(String),
    }

    #[derive(Serialize, Deserialize)]
    enum ChoiceBin {
        Bool(bool),
        Int(i64),
        Float(f64),
        Str(String),
    }

    impl From<ChoiceText> for Choice {
        fn from(c: ChoiceText) -> Self {
            match c {
                ChoiceText::Bool(b) => Self::Bool(b),
                ChoiceText::Int(i) => Self::Int(i),
                ChoiceText::Float(x) => Self::Float(x),
                ChoiceText::Str(s) => Self::Str(s),
            }
        }
    }

    impl From<ChoiceBin> for Choice {
        fn from(c: ChoiceBin) -> Self {
            match c {
                ChoiceBin::Bool(b) => Self::Bool(b),
                ChoiceBin::Int(i) => Self::Int(i),
                ChoiceBin::Float(x) => Self::Float(x),
                ChoiceBin::Str(s) => Self::Str(s),
            }
        }
    }

    fn choice_text(c: &Choice) -> ChoiceText {
        match c.clone() {
            Choice::Bool(b) => ChoiceText::Bool(b),
            Choice::Int(i) => ChoiceText::Int(i),
            Choice::Float(x) => ChoiceText::Float(x),
            Choice::Str(s) => ChoiceText::Str(s),
        }
    }

    fn choice_bin(c: &Choice) -> ChoiceBin {
        match c.clone() {
            Choice::Bool(b) => ChoiceBin::Bool(b),
            Choice::Int(i) => ChoiceBin::Int(i),
            Choice::Float(x) => ChoiceBin::Float(x),
            Choice::Str(s) => ChoiceBin::Str(s),
        }
    }

    impl Serialize for Choice {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            if s.is_human_readable() {
                choice_text(self).serialize(s)
            } else {
                choice_bin(self).serialize(s)
            }
        }
    }

    impl<'de> Deserialize<'de> for Choice {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            if d.is_human_readable() {
                ChoiceText::deserialize(d).map(Into::into)
            } else {
                ChoiceBin::deserialize(d).map(Into::into)
            }
        }
    }

    #[derive(Serialize, Deserialize)]
    enum DistributionBin {
        Float {
            low: f64,
            high: f64,
            log: bool,
            step: Option<f64>,
        },
        Int {
            low: i64,
            high: i64,
            log: bool,
            step: i64,
        },
        Categorical {
            choices: Vec<Choice>,
        },
    }

    impl Serialize for Distribution {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            if s.is_human_readable() {
                RawDistribution::from(self.clone()).serialize(s)
            } else {
                match self.clone() {
                    Self::Float { low, high, log, step } => DistributionBin::Float { low, high, log, step },
                    Self::Int { low, high, log, step } => DistributionBin::Int { low, high, log, step },
                    Self::Categorical { choices } => DistributionBin::Categorical { choices },
                }
                .serialize(s)
            }
        }
    }

    impl<'de> Deserialize<'de> for Distribution {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let raw = if d.is_human_readable() {
                RawDistribution::deserialize(d)?
            } else {
                match DistributionBin::deserialize(d)? {
                    DistributionBin::Float { low, high, log, step } => RawDistribution::Float { low, high, log, step },
                    DistributionBin::Int { low, high, log, step } => RawDistribution::Int { low, high, log, step },
                    DistributionBin::Categorical { choices } => RawDistribution::Categorical { choices },
                }
            };
            Self::try_from(raw).map_err(serde::de::Error::custom)
        }
    }

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum ValueText {
        Int(i64),
        Float(f64),
        Categorical(Choice),
    }

    #[derive(Serialize, Deserialize)]
    enum ValueBin {
        Float(f64),
        Int(i64),
        Categorical(Choice),
    }

    impl Serialize for ParamValue {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            match (s.is_human_readable(), self.clone()) {
                (true, Self::Float(x)) => ValueText::Float(x).serialize(s),
                (true, Self::Int(i)) => ValueText::Int(i).serialize(s),
                (true, Self::Categorical(c)) => ValueText::Categorical(c).serialize(s),
                (false, Self::Float(x)) => ValueBin::Float(x).serialize(s),
                (false, Self::Int(i)) => ValueBin::Int(i).serialize(s),
                (false, Self::Categorical(c)) => ValueBin::Categorical(c).serialize(s),
            }
        }
    }

    impl<'de> Deserialize<'de> for ParamValue {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            Ok(if d.is_human_readable() {
                match ValueText::deserialize(d)? {
                    ValueText::Float(x) => Self::Float(x),
                    ValueText::Int(i) => Self::Int(i),
                    ValueText::Categorical(c) => Self::Categorical(c),
                }
            } else {
                match ValueBin::deserialize(d)? {
                    ValueBin::Float(x) => Self::Float(x),
                    ValueBin::Int(i) => Self::Int(i),
                    ValueBin::Categorical(c) => Self::Categorical(c),
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn p(text: &str) -> Distribution {
        Distribution::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn parses_the_seed_forms() {
        assert_eq!(
            p("uniform(0, 0.5)"),
            Distribution::Float {
                low: 0.0,
                high: 0.5,
                log: false,
                step: None
            }
        );
        assert_eq!(
            p(" loguniform( 1e-5 ,1e-2 ) "),
            Distribution::Float {
                low: 1e-5,
                high: 1e-2,
                log: true,
                step: None
            }
        );
        assert_eq!(
            p("int(1, 5)"),
            Distribution::Int {
                low: 1,
                high: 5,
                log: false,
                step: 1
            }
        );
        assert_eq!(
            p("int(16, 512, step=16)"),
            Distribution::Int {
                low: 16,
                high: 512,
                log: false,
                step: 16
            }
        );
        assert_eq!(
            p("intlog(16, 512)"),
            Distribution::Int {
                low: 16,
                high: 512,
                log: true,
                step: 1
            }
        );
        assert_eq!(
            p("choice(16, 32, 64)"),
            Distribution::Categorical {
                choices: vec![16.into(), 32.into(), 64.into()]
            }
        );
        assert_eq!(
            p("choice(adam, sgd)"),
            Distribution::Categorical {
                choices: vec!["adam".into(), "sgd".into()]
            }
        );
        assert_eq!(
            p("choice(true, 0.5, \"a b\", -3)"),
            Distribution::Categorical {
                choices: vec![Choice::Bool(true), Choice::Float(0.5), "a b".into(), Choice::Int(-3)]
            }
        );
        assert_eq!(
            p("uniform(-1,1,step=0.5)"),
            Distribution::Float {
                low: -1.0,
                high: 1.0,
                log: false,
                step: Some(0.5)
            }
        );
    }

    #[test]
    fn display_is_the_textual_form() {
        for text in [
            "uniform(0.0, 0.5)",
            "loguniform(1e-5, 0.01)",
            "int(1, 5)",
            "int(16, 512, step=16)",
            "intlog(16, 512)",
            "choice(16, 32, 64)",
            "choice(adam, sgd, \"two words\", \"true\", false, 1.0)",
        ] {
            assert_eq!(p(text).to_string(), text);
        }
    }

    fn err(text: &str) -> String {
        match Distribution::parse(text) {
            Ok(d) => panic!("{text} parsed as {d:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_specs_say_what_and_where() {
        let cases = [
            ("uniform(1, 0)", None, "low (1) must be below high (0)"),
            ("loguniform(0, 1)", None, "needs low > 0"),
            ("int(1.5, 4)", Some(5), "low must be an integer"),
            ("int(0, 10, step=3)", None, "not a multiple of step 3"),
            ("int(0, 10, step=0)", None, "step must be at least 1"),
            ("intlog(0, 10)", None, "needs low >= 1"),
            ("choice()", Some(1), "choice needs at least one value"),
            ("choice(a, b, a)", None, "choice `a` is listed twice"),
            ("gauss(0, 1)", Some(1), "unknown distribution `gauss`"),
            ("uniform(0 1)", Some(11), "expected `,` or `)`, found `1`"),
            (
                "uniform(0, 1",
                Some(13),
                "expected `,` or `)`, found the end of the text",
            ),
            ("uniform(0, 1) x", Some(15), "unexpected `x`"),
            ("uniform(0, 1, 2)", Some(15), "takes two bounds (low, high), got 3"),
            ("uniform(0, 1, stp=0.1)", Some(19), "unknown option `stp`"),
            ("uniform(0, abc)", Some(12), "high must be a number"),
            ("uniform(0, 1e999)", Some(12), "`1e999` is not a number"),
            ("uniform(0, 1, step=0.3)", None, "not a whole number of steps"),
            ("choice(\"abc)", Some(8), "unterminated quoted string"),
            ("", Some(1), "expected a distribution"),
        ];
        for (text, column, want) in cases {
            let got = err(text);
            assert!(got.contains(want), "{text}: got `{got}`, want `{want}`");
            if let Some(c) = column {
                assert!(
                    got.starts_with(&format!("at column {c} of `{text}`: ")),
                    "{text}: got `{got}`"
                );
            }
        }
        let named = ParamSpec::parse("lr", "loguniform(-1, 1)").unwrap_err().to_string();
        assert!(named.starts_with("parameter `lr`: "), "{named}");
    }

    #[test]
    fn space_rejects_duplicates_and_bad_names() {
        let d = p("uniform(0, 1)");
        let dup = SearchSpace::new(vec![ParamSpec::new("x", d.clone()), ParamSpec::new("x", d.clone())]);
        assert_eq!(dup.unwrap_err(), SpaceError::DuplicateName("x".into()));
        assert!(matches!(
            SearchSpace::new(vec![ParamSpec::new("a b", d.clone())]),
            Err(SpaceError::BadName(_))
        ));
        let bad = ParamSpec::new(
            "lr",
            Distribution::Float {
                low: 1.0,
                high: 0.0,
                log: false,
                step: None,
            },
        );
        assert!(
            SearchSpace::new(vec![bad])
                .unwrap_err()
                .to_string()
                .starts_with("parameter `lr`")
        );
    }

    #[test]
    fn internal_representation_handles_log_steps_and_choices() {
        let lr = p("loguniform(1e-5, 1e-2)");
        assert!((lr.to_internal(&ParamValue::Float(1e-3)).unwrap() - (1e-3f64).ln()).abs() < 1e-12);
        assert_eq!(lr.from_internal(10.0), ParamValue::Float(1e-2));
        let bs = p("int(16, 512, step=16)");
        assert_eq!(bs.from_internal(40.0), ParamValue::Int(48));
        assert_eq!(bs.from_internal(-100.0), ParamValue::Int(16));
        assert!(bs.contains(&ParamValue::Int(32)) && !bs.contains(&ParamValue::Int(33)));
        assert!(!bs.contains(&ParamValue::Float(32.0)));
        let opt = p("choice(adam, sgd, rmsprop)");
        assert_eq!(opt.to_internal(&ParamValue::Categorical("sgd".into())), Some(1.0));
        assert_eq!(opt.from_unit(1.0), ParamValue::Categorical("rmsprop".into()));
        assert_eq!(opt.to_internal(&ParamValue::Categorical("lion".into())), None);
    }

    #[test]
    fn serde_validates() {
        let json_ok = Distribution::Int {
            low: 16,
            high: 512,
            log: true,
            step: 1,
        };
        let raw: RawDistribution = json_ok.clone().into();
        let back = Distribution::try_from(raw).unwrap();
        assert_eq!(back, json_ok);
        let bad = RawDistribution::Float {
            low: 2.0,
            high: 1.0,
            log: false,
            step: None,
        };
        assert!(Distribution::try_from(bad).is_err());
        let bytes = bincode::serde::encode_to_vec(&json_ok, bincode::config::standard()).unwrap();
        let (decoded, _): (Distribution, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(decoded, json_ok);
        let space = SearchSpace::new(vec![
            ParamSpec::parse("opt", "choice(adam, 1, 2.5, true)")
                .unwrap()
                .with_scope(Scope::Server),
            ParamSpec::parse("lr", "uniform(0, 1, step=0.25)").unwrap(),
        ])
        .unwrap();
        let bytes = bincode::serde::encode_to_vec(&space, bincode::config::standard()).unwrap();
        let (decoded, _): (SearchSpace, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(decoded, space);
        let values = vec![
            ParamValue::Float(1.0),
            ParamValue::Int(3),
            ParamValue::Categorical("adam".into()),
        ];
        let bytes = bincode::serde::encode_to_vec(&values, bincode::config::standard()).unwrap();
        let (decoded, _): (Vec<ParamValue>, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(decoded, values);
    }

    fn arb_choice() -> impl Strategy<Value = Choice> {
        prop_oneof![
            any::<bool>().prop_map(Choice::Bool),
            any::<i64>().prop_map(Choice::Int),
            (-1e6f64..1e6).prop_map(Choice::Float),
            "[a-z][a-z0-9_]{0,6}".prop_map(Choice::Str),
            "[ -~]{0,8}".prop_map(Choice::Str),
        ]
    }

    fn arb_distribution() -> impl Strategy<Value = Distribution> {
        prop_oneof![
            (-1e6f64..1e6, 1e-6f64..1e6, any::<bool>()).prop_map(|(low, w, log)| if log {
                Distribution::Float {
                    low: w,
                    high: w * 7.5,
                    log,
                    step: None,
                }
            } else {
                Distribution::Float {
                    low,
                    high: low + w,
                    log,
                    step: None,
                }
            }),
            (-1000i64..1000, 1i64..50, 1i64..20).prop_map(|(low, k, step)| Distribution::Int {
                low,
                high: low + k * step,
                log: false,
                step
            }),
            (1i64..1000, 1i64..1000).prop_map(|(low, w)| Distribution::Int {
                low,
                high: low + w,
                log: true,
                step: 1
            }),
            proptest::collection::vec(arb_choice(), 1..6).prop_map(|mut choices| {
                let mut unique: Vec<Choice> = Vec::new();
                choices.retain(|c| {
                    let new = !unique.contains(c);
                    unique.push(c.clone());
                    new
                });
                Distribution::Categorical { choices }
            }),
        ]
    }

    proptest! {
        #[test]
        fn print_parse_round_trip(d in arb_distribution()) {
            prop_assert!(d.validate().is_ok());
            let text = d.to_string();
            prop_assert_eq!(Distribution::parse(&text).map_err(|e| e.to_string()), Ok(d));
        }

        #[test]
        fn internal_round_trip(d in arb_distribution(), seed in any::<u64>()) {
            let mut rng = StdRng::seed_from_u64(seed);
            let v = d.sample_uniform(&mut rng);
            prop_assert!(d.contains(&v), "{v:?} outside {d}");
            let t = d.to_internal(&v).unwrap();
            let back = d.from_internal(t);
            match (&v, &back) {
                (ParamValue::Float(a), ParamValue::Float(b)) => prop_assert!((a - b).abs() <= 1e-9 * a.abs().max(1.0)),
                _ => prop_assert_eq!(&v, &back),
            }
            let u = d.to_unit(&v).unwrap();
            prop_assert!((0.0..=1.0).contains(&u));
            prop_assert!(d.contains(&d.from_unit(u)));
        }

        #[test]
        fn parser_never_panics(s in "[ -~]{0,30}") {
            let _ = Distribution::parse(&s);
        }
    }
}
