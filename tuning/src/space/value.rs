//! Values: what a distribution yields ([`ParamValue`]) and what a categorical lists
//! ([`Choice`]), with their textual forms.

use std::fmt;

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
pub(super) fn write_float(f: &mut fmt::Formatter<'_>, x: f64) -> fmt::Result {
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

/// A value drawn from a [`Distribution`](super::Distribution). Serialised untagged:
/// `0.001`, `64`, `"adam"`.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// Drawn from a [`Distribution::Float`](super::Distribution::Float).
    Float(f64),
    /// Drawn from a [`Distribution::Int`](super::Distribution::Int).
    Int(i64),
    /// Drawn from a [`Distribution::Categorical`](super::Distribution::Categorical).
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
