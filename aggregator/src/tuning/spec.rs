//! Search spaces from files: TOML (`[params]`) and the JSON objective-spec format of the
//! shared HPO benchmark (`objectives_public.json`).
//!
//! In TOML a parameter is either the textual form or a table:
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
//! The JSON format lists objectives, each with `params` as an array of tables with a
//! `name` (the same keys as above) and an optional known `optimum`.

use std::path::{Path, PathBuf};

use fedtune_protocol::space::{Choice, Distribution, ParamSpec, Scope, SearchSpace, SpaceError};
use serde::Deserialize;

use super::sampler::Direction;

/// Why a spec could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML does not parse.
    #[error("invalid TOML: {0}")]
    Toml(#[from] toml::de::Error),
    /// The JSON does not parse or lacks the expected structure.
    #[error("invalid JSON spec: {0}")]
    Json(#[from] serde_json::Error),
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
    /// The problem is inside one objective of a JSON spec.
    #[error("objective `{objective}`: {source}")]
    Objective {
        /// The objective.
        objective: String,
        /// What is wrong in it.
        source: Box<SpecError>,
    },
    /// The spec holds no `[params]` table.
    #[error("the spec has no `params` table")]
    NoParams,
}

/// One parameter written as a table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ParamTable {
    name: Option<String>,
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

fn param_err(name: &str, message: impl Into<String>) -> SpecError {
    SpecError::Param {
        name: name.to_string(),
        message: message.into(),
    }
}

fn integer(name: &str, what: &str, x: f64) -> Result<i64, SpecError> {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        Ok(x as i64)
    } else {
        Err(param_err(
            name,
            format!("{what} of an int parameter must be an integer, got {x}"),
        ))
    }
}

impl ParamTable {
    fn into_spec(self, name: &str) -> Result<ParamSpec, SpecError> {
        let space_err = |e: SpaceError| param_err(name, e.to_string());
        let distribution = if let Some(text) = &self.spec {
            if self.kind.is_some() || self.low.is_some() || self.high.is_some() || self.choices.is_some() {
                return Err(param_err(
                    name,
                    "give either `spec` or `type`/`low`/`high`/`choices`, not both",
                ));
            }
            Distribution::parse(text).map_err(space_err)?
        } else {
            let kind = self
                .kind
                .as_deref()
                .ok_or_else(|| param_err(name, "missing `type` (float, int or categorical) or `spec`"))?;
            let bounds = || -> Result<(f64, f64), SpecError> {
                let low = self
                    .low
                    .ok_or_else(|| param_err(name, format!("a {kind} parameter needs `low`")))?;
                let high = self
                    .high
                    .ok_or_else(|| param_err(name, format!("a {kind} parameter needs `high`")))?;
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
                        return Err(param_err(name, "a categorical parameter takes `choices` only"));
                    }
                    let choices = self
                        .choices
                        .ok_or_else(|| param_err(name, "a categorical parameter needs `choices`"))?;
                    Distribution::categorical(choices).map_err(space_err)?
                }
                other => {
                    return Err(param_err(
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
/// [`SpecError::Toml`] when the text is not TOML, [`SpecError::NoParams`] without a
/// `params` table, [`SpecError::Param`] naming the first bad parameter, and
/// [`SpecError::Space`] for a space-level problem.
pub fn parse_space_toml(text: &str) -> Result<SearchSpace, SpecError> {
    let doc: toml::Table = toml::from_str(text)?;
    let Some(toml::Value::Table(params)) = doc.get("params") else {
        return Err(SpecError::NoParams);
    };
    space_from_toml(params)
}

/// Builds a search space from an already parsed `[params]` table.
///
/// # Errors
/// As [`parse_space_toml`].
pub fn space_from_toml(params: &toml::Table) -> Result<SearchSpace, SpecError> {
    let mut specs = Vec::with_capacity(params.len());
    for (name, value) in params {
        let spec = match value {
            toml::Value::String(text) => ParamSpec::parse(name, text).map_err(|e| match e {
                SpaceError::Param { source, .. } => param_err(name, source.to_string()),
                other => param_err(name, other.to_string()),
            })?,
            toml::Value::Table(t) => {
                let table: ParamTable = t
                    .clone()
                    .try_into()
                    .map_err(|e: toml::de::Error| param_err(name, e.message()))?;
                if table.name.as_ref().is_some_and(|n| n != name) {
                    return Err(param_err(name, "`name` differs from the table's key"));
                }
                table.into_spec(name)?
            }
            other => {
                return Err(param_err(
                    name,
                    format!("expected a string such as \"uniform(0, 1)\" or a table, got {other}"),
                ));
            }
        };
        specs.push(spec);
    }
    Ok(SearchSpace::new(specs)?)
}

/// Reads a TOML search-space file.
///
/// # Errors
/// [`SpecError::Io`] when the file cannot be read, otherwise as [`parse_space_toml`].
pub fn load_space_toml(path: &Path) -> Result<SearchSpace, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_space_toml(&text)
}

/// One objective of a JSON spec file.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectiveSpec {
    /// The objective's name.
    pub name: String,
    /// Its search space.
    pub space: SearchSpace,
    /// The known optimal value, when there is one.
    pub optimum: Option<f64>,
    /// Whether it is minimised or maximised (the file's `direction`, default minimise).
    pub direction: Direction,
}

#[derive(Deserialize)]
struct ObjectivesFile {
    #[serde(default)]
    direction: Option<String>,
    objectives: Vec<RawObjective>,
}

#[derive(Deserialize)]
struct RawObjective {
    name: String,
    params: Vec<serde_json::Value>,
    #[serde(default)]
    optimum: Option<f64>,
}

fn objective(raw: RawObjective, direction: Direction) -> Result<ObjectiveSpec, SpecError> {
    let mut specs = Vec::with_capacity(raw.params.len());
    for (i, value) in raw.params.into_iter().enumerate() {
        let name = value
            .get("name")
            .and_then(|n| n.as_str())
            .map_or_else(|| format!("#{i}"), str::to_string);
        let table: ParamTable = serde_json::from_value(value).map_err(|e| param_err(&name, e.to_string()))?;
        if table.name.is_none() {
            return Err(param_err(&name, "missing `name`"));
        }
        specs.push(table.into_spec(&name)?);
    }
    Ok(ObjectiveSpec {
        name: raw.name,
        space: SearchSpace::new(specs)?,
        optimum: raw.optimum,
        direction,
    })
}

/// Parses the JSON objective-spec format.
///
/// # Errors
/// [`SpecError::Json`] for malformed JSON or a bad `direction`, otherwise
/// [`SpecError::Objective`] wrapping what is wrong in the first bad objective.
pub fn parse_objectives(text: &str) -> Result<Vec<ObjectiveSpec>, SpecError> {
    let file: ObjectivesFile = serde_json::from_str(text)?;
    let direction = match file.direction.as_deref() {
        None | Some("minimize" | "minimise") => Direction::Minimize,
        Some("maximize" | "maximise") => Direction::Maximize,
        Some(other) => {
            return Err(SpecError::Json(serde::de::Error::custom(format!(
                "direction must be minimize or maximize, got `{other}`"
            ))));
        }
    };
    file.objectives
        .into_iter()
        .map(|raw| {
            let name = raw.name.clone();
            objective(raw, direction).map_err(|e| SpecError::Objective {
                objective: name,
                source: Box::new(e),
            })
        })
        .collect()
}

/// Reads a JSON objective-spec file such as `objectives_public.json`.
///
/// # Errors
/// [`SpecError::Io`] when the file cannot be read, otherwise as [`parse_objectives`].
pub fn load_objectives(path: &Path) -> Result<Vec<ObjectiveSpec>, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_objectives(&text)
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

    #[test]
    fn json_objectives_load() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/hpo/objectives_public.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            // The shared benchmark lives outside the repository; use an inline copy of one entry.
            Err(_) => r#"{"format": 1, "direction": "minimize", "objectives": [
                {"name": "hp_mlp", "optimum": 0.2, "optimum_x": {}, "params": [
                 {"name": "lr", "type": "float", "low": 1e-05, "high": 1.0, "log": true},
                 {"name": "batch_size", "type": "int", "low": 16, "high": 512, "log": true},
                 {"name": "optimizer", "type": "categorical", "choices": ["adam", "sgd", "rmsprop"]}]}]}"#
                .to_string(),
        };
        let objectives = parse_objectives(&text).unwrap();
        let mlp = objectives.iter().find(|o| o.name == "hp_mlp").unwrap();
        assert_eq!(
            mlp.space.get("batch_size").unwrap().distribution,
            Distribution::int(16, 512, true, 1).unwrap()
        );
        assert_eq!(mlp.space.get("optimizer").unwrap().distribution.n_choices(), Some(3));
        assert!(mlp.optimum.is_some_and(|o| (o - 0.2).abs() < 1e-6));
        assert_eq!(mlp.direction, Direction::Minimize);
    }

    #[test]
    fn json_errors_name_objective_and_parameter() {
        let text = r#"{"objectives": [{"name": "f", "params": [
            {"name": "x", "type": "float", "low": 2, "high": 1}]}]}"#;
        let got = parse_objectives(text).unwrap_err().to_string();
        assert_eq!(got, "objective `f`: parameter `x`: low (2) must be below high (1)");
    }
}
