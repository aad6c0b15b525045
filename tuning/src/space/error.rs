//! Why a search space or one of its distributions was refused.

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
