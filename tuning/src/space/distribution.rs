//! The closed set of distributions: validation, the internal representation samplers
//! work in, uniform draws, and the textual form.

use std::fmt;

use rand::{Rng, RngExt};

use super::error::SpaceError;
use super::value::{Choice, ParamValue, write_float};

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

fn invalid(message: impl Into<String>) -> SpaceError {
    SpaceError::Invalid(message.into())
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

    /// `value` as this distribution draws it. Values read back from JSON (a journal, a
    /// store) lose their kind: a numeric choice `32` comes back as an integer, a float
    /// `2.0` may come back as `2`. This gives them their kind again — the matching choice,
    /// the integer, the float — and leaves anything else as it is.
    #[must_use]
    pub fn canonical(&self, value: ParamValue) -> ParamValue {
        match (self, &value) {
            (Self::Categorical { choices }, ParamValue::Int(_) | ParamValue::Float(_)) => {
                let x = value.as_f64();
                choices
                    .iter()
                    .find(|c| c.as_f64().is_some() && c.as_f64() == x)
                    .map_or(value, |c| ParamValue::Categorical(c.clone()))
            }
            (Self::Float { .. }, ParamValue::Int(i)) => ParamValue::Float(*i as f64),
            (Self::Int { .. }, ParamValue::Float(x)) if x.fract() == 0.0 && x.abs() < 9.0e15 => {
                ParamValue::Int(*x as i64)
            }
            _ => value,
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
