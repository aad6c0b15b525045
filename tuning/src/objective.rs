//! What a study optimises: objectives, each a name and a direction.

use serde::{Deserialize, Serialize};

/// Whether the objective is to be minimised or maximised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Lower is better.
    #[default]
    Minimize,
    /// Higher is better.
    Maximize,
}

impl Direction {
    /// The name as written in configuration: `minimize` or `maximize`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Minimize => "minimize",
            Self::Maximize => "maximize",
        }
    }

    /// `value` turned into a loss: itself when minimising, its negation when maximising.
    #[must_use]
    pub fn loss(self, value: f64) -> f64 {
        match self {
            Self::Minimize => value,
            Self::Maximize => -value,
        }
    }
}

impl std::str::FromStr for Direction {
    type Err = String;

    /// `minimize` or `maximize` (also spelt `minimise`, `maximise`; any case, trimmed).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "minimize" | "minimise" => Ok(Self::Minimize),
            "maximize" | "maximise" => Ok(Self::Maximize),
            _ => Err(format!("`{}` is neither \"minimize\" nor \"maximize\"", s.trim())),
        }
    }
}

/// One objective of a study: a name and whether to minimise or maximise it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Objective {
    /// The name results are reported under (e.g. `accuracy`, `bytes`).
    pub name: String,
    /// Whether lower or higher is better.
    pub direction: Direction,
}

impl Objective {
    /// An objective named `name`.
    #[must_use]
    pub fn new(name: impl Into<String>, direction: Direction) -> Self {
        Self {
            name: name.into(),
            direction,
        }
    }
}
