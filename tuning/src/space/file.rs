//! Search spaces as users write them in TOML: a `[params]` table whose entries are the
//! textual form or a table.
//!
//! ```toml
//! [params]
//! lr = "loguniform(1e-5, 1e-2)"
//! optimizer = "choice(adam, sgd)"
//!
//! [params.server_lr]
//! type = "float"        # float | int | categorical
//! low = 0.1
//! high = 1.0
//! log = true
//! scope = "server"      # client (default) | server
//!
//! [params.local_epochs]
//! spec = "int(1, 5)"    # the textual form, with a scope or adaptive flag
//! adaptive = true
//! ```
//!
//! [`ParamTable`] is the table form; the aggregator's JSON objective files use it too.

use serde::Deserialize;

use super::{Choice, Distribution, ParamSpec, Scope, SearchSpace, SpaceError};

/// Why a TOML search space was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpaceFileError {
    /// The TOML does not parse.
    #[error("invalid TOML: {0}")]
    Toml(#[from] toml::de::Error),
    /// A parameter's entry is wrong.
    #[error("parameter `{name}`: {message}")]
    Param {
        /// The parameter.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The parameters do not form a valid space (e.g. a duplicate name).
    #[error(transparent)]
    Space(#[from] SpaceError),
    /// The document holds no `[params]` table.
    #[error("the spec has no `params` table")]
    NoParams,
}

impl SpaceFileError {
    /// What is wrong with parameter `name`.
    pub fn param(name: &str, message: impl Into<String>) -> Self {
        Self::Param {
            name: name.to_string(),
            message: message.into(),
        }
    }
}

/// One parameter written as a table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamTable {
    /// The parameter's name, where the format does not key the table by it.
    pub name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    spec: Option<String>,
    low: Option<f64>,
    high: Option<f64>,
    log: Option<bool>,
    step: Option<f64>,
    choices: Option<Vec<Choice>>,
    #[serde(default)]
    scope: Scope,
    #[serde(default)]
    adaptive: bool,
}

fn integer(name: &str, what: &str, x: f64) -> Result<i64, SpaceFileError> {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        Ok(x as i64)
    } else {
        Err(SpaceFileError::param(
            name,
            format!("{what} of an int parameter must be an integer, got {x}"),
        ))
    }
}

impl ParamTable {
    /// The parameter `name` this table describes.
    ///
    /// # Errors
    /// [`SpaceFileError::Param`] naming what is missing, contradictory or invalid.
    pub fn into_spec(self, name: &str) -> Result<ParamSpec, SpaceFileError> {
        let space_err = |e: SpaceError| SpaceFileError::param(name, e.to_string());
        let distribution = if let Some(text) = &self.spec {
            if self.kind.is_some() || self.low.is_some() || self.high.is_some() || self.choices.is_some() {
                return Err(SpaceFileError::param(
                    name,
                    "give either `spec` or `type`/`low`/`high`/`choices`, not both",
                ));
            }
            Distribution::parse(text).map_err(space_err)?
        } else {
            let kind = self
                .kind
                .as_deref()
                .ok_or_else(|| SpaceFileError::param(name, "missing `type` (float, int or categorical) or `spec`"))?;
            let bounds = || -> Result<(f64, f64), SpaceFileError> {
                let low = self
                    .low
                    .ok_or_else(|| SpaceFileError::param(name, format!("a {kind} parameter needs `low`")))?;
                let high = self
                    .high
                    .ok_or_else(|| SpaceFileError::param(name, format!("a {kind} parameter needs `high`")))?;
                Ok((low, high))
            };
            match kind {
                "float" => {
                    let (low, high) = bounds()?;
                    Distribution::float(low, high, self.log.unwrap_or(false), self.step).map_err(space_err)?
                }
                "int" => {
                    let (low, high) = bounds()?;
                    let step = match self.step {
                        Some(s) => integer(name, "step", s)?,
                        None => 1,
                    };
                    Distribution::int(
                        integer(name, "low", low)?,
                        integer(name, "high", high)?,
                        self.log.unwrap_or(false),
                        step,
                    )
                    .map_err(space_err)?
                }
                "categorical" => {
                    if self.low.is_some() || self.high.is_some() || self.log.is_some() || self.step.is_some() {
                        return Err(SpaceFileError::param(
                            name,
                            "a categorical parameter takes `choices` only",
                        ));
                    }
                    let choices = self
                        .choices
                        .ok_or_else(|| SpaceFileError::param(name, "a categorical parameter needs `choices`"))?;
                    Distribution::categorical(choices).map_err(space_err)?
                }
                other => {
                    return Err(SpaceFileError::param(
                        name,
                        format!("unknown type `{other}` (expected float, int or categorical)"),
                    ));
                }
            }
        };
        Ok(ParamSpec::new(name, distribution)
            .with_scope(self.scope)
            .with_adaptive(self.adaptive))
    }
}

/// Reads a search space from the `[params]` table of a TOML document.
///
/// # Errors
/// [`SpaceFileError::Toml`] when the text is not TOML, [`SpaceFileError::NoParams`] without a
/// `params` table, [`SpaceFileError::Param`] naming the first bad parameter, and
/// [`SpaceFileError::Space`] for a space-level problem.
pub fn parse_space_toml(text: &str) -> Result<SearchSpace, SpaceFileError> {
    let doc: toml::Table = toml::from_str(text)?;
    let Some(toml::Value::Table(params)) = doc.get("params") else {
        return Err(SpaceFileError::NoParams);
    };
    space_from_toml(params)
}

/// Builds a search space from an already parsed `[params]` table.
///
/// # Errors
/// As [`parse_space_toml`].
pub fn space_from_toml(params: &toml::Table) -> Result<SearchSpace, SpaceFileError> {
    let mut specs = Vec::with_capacity(params.len());
    for (name, value) in params {
        let spec = match value {
            toml::Value::String(text) => ParamSpec::parse(name, text).map_err(|e| match e {
                SpaceError::Param { source, .. } => SpaceFileError::param(name, source.to_string()),
                other => SpaceFileError::param(name, other.to_string()),
            })?,
            toml::Value::Table(t) => {
                let table: ParamTable = t
                    .clone()
                    .try_into()
                    .map_err(|e: toml::de::Error| SpaceFileError::param(name, e.message()))?;
                if table.name.as_ref().is_some_and(|n| n != name) {
                    return Err(SpaceFileError::param(name, "`name` differs from the table's key"));
                }
                table.into_spec(name)?
            }
            other => {
                return Err(SpaceFileError::param(
                    name,
                    format!("expected a string such as \"uniform(0, 1)\" or a table, got {other}"),
                ));
            }
        };
        specs.push(spec);
    }
    Ok(SearchSpace::new(specs)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_text_and_table_forms() {
        let space = parse_space_toml(
            r#"
            [params]
            lr = "loguniform(1e-5, 1e-2)"
            optimizer = "choice(adam, sgd)"
            [params.server_lr]
            type = "float"
            low = 0.1
            high = 1
            log = true
            scope = "server"
            [params.batch]
            type = "int"
            low = 16
            high = 512
            step = 16
            [params.epochs]
            spec = "int(1, 5)"
            adaptive = true
            "#,
        )
        .unwrap();
        assert_eq!(space.len(), 5);
        assert_eq!(
            space.get("lr").unwrap().distribution,
            Distribution::float(1e-5, 1e-2, true, None).unwrap()
        );
        let server = space.get("server_lr").unwrap();
        assert_eq!((server.scope, server.distribution.is_log()), (Scope::Server, true));
        assert_eq!(
            space.get("batch").unwrap().distribution,
            Distribution::int(16, 512, false, 16).unwrap()
        );
        assert!(space.get("epochs").unwrap().adaptive);
        assert_eq!(space.get("optimizer").unwrap().scope, Scope::Client);
    }

    fn toml_err(text: &str) -> String {
        parse_space_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn toml_errors_name_the_parameter() {
        let cases = [
            (
                "[params]\nlr = \"loguniform(0, 1)\"",
                "parameter `lr`: a log-scale range needs low > 0",
            ),
            (
                "[params]\nlr = \"unform(0, 1)\"",
                "parameter `lr`: at column 1 of `unform(0, 1)`: unknown distribution",
            ),
            (
                "[params.bs]\ntype = \"int\"\nlow = 1.5\nhigh = 4",
                "parameter `bs`: low of an int parameter must be an integer",
            ),
            (
                "[params.bs]\ntype = \"int\"\nlow = 1",
                "parameter `bs`: a int parameter needs `high`",
            ),
            (
                "[params.bs]\ntype = \"integer\"",
                "parameter `bs`: unknown type `integer`",
            ),
            (
                "[params.bs]\ntype = \"int\"\nlo = 1",
                "parameter `bs`: unknown field `lo`",
            ),
            (
                "[params.o]\ntype = \"categorical\"\nchoices = []",
                "parameter `o`: a choice needs at least one value",
            ),
            ("[params]\nx = 3", "parameter `x`: expected a string"),
            ("[other]\nx = 3", "no `params` table"),
        ];
        for (text, want) in cases {
            let got = toml_err(text);
            assert!(got.contains(want), "{text:?}: got `{got}`, want `{want}`");
        }
    }
}
