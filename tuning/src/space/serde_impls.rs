//! Serde for the public enums, in the shapes text formats (JSON, TOML) read naturally:
//! choices and values untagged, distributions `"type"`-tagged and validated on the way in.
//!
//! These shapes need a self-describing format: bincode and other binary formats cannot
//! drive untagged or internally tagged enums. Nothing encodes these types in one: the
//! bincode-framed messages carry typed `ClientHyperparameters`, not [`ParamValue`]s.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::SpaceError;
use super::distribution::Distribution;
use super::value::{Choice, ParamValue};

/// The serde shape of a [`Distribution`] in text formats:
/// `{"type": "float", "low": .., "high": .., ..}`.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub(super) enum RawDistribution {
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

impl Serialize for Distribution {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        RawDistribution::from(self.clone()).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Distribution {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::try_from(RawDistribution::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum ChoiceText {
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

fn choice_text(c: &Choice) -> ChoiceText {
    match c.clone() {
        Choice::Bool(b) => ChoiceText::Bool(b),
        Choice::Int(i) => ChoiceText::Int(i),
        Choice::Float(x) => ChoiceText::Float(x),
        Choice::Str(s) => ChoiceText::Str(s),
    }
}

impl Serialize for Choice {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        choice_text(self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Choice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ChoiceText::deserialize(d).map(Into::into)
    }
}

/// Integers before floats, so that `64` reads back as an integer.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum ValueText {
    Int(i64),
    Float(f64),
    Categorical(Choice),
}

impl Serialize for ParamValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.clone() {
            Self::Float(x) => ValueText::Float(x).serialize(s),
            Self::Int(i) => ValueText::Int(i).serialize(s),
            Self::Categorical(c) => ValueText::Categorical(c).serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ParamValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match ValueText::deserialize(d)? {
            ValueText::Float(x) => Self::Float(x),
            ValueText::Int(i) => Self::Int(i),
            ValueText::Categorical(c) => Self::Categorical(c),
        })
    }
}
