//! Search spaces from files: TOML (`[params]`) and the JSON objective-spec format of the
//! shared HPO benchmark (`objectives_public.json`).
//!
//! The TOML form and its parameter tables are [`crate::space::file`]'s; this
//! module reads the file.
//!
//! The JSON format lists objectives, each with `params` as an array of tables with a
//! `name` (the same keys as above) and an optional known `optimum`.

use std::path::{Path, PathBuf};

use crate::space::SearchSpace;
use crate::space::file::ParamTable;
pub use crate::space::file::{SpaceFileError, parse_space_toml, space_from_toml};
use serde::Deserialize;

use crate::objective::Direction;

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
    /// The JSON does not parse or lacks the expected structure.
    #[error("invalid JSON spec: {0}")]
    Json(#[from] serde_json::Error),
    /// A parameter, or the space they form, is wrong.
    #[error(transparent)]
    Space(#[from] SpaceFileError),
    /// The problem is inside one objective of a JSON spec.
    #[error("objective `{objective}`: {source}")]
    Objective {
        /// The objective.
        objective: String,
        /// What is wrong in it.
        source: Box<SpecError>,
    },
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
    Ok(parse_space_toml(&text)?)
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
        let table: ParamTable =
            serde_json::from_value(value).map_err(|e| SpaceFileError::param(&name, e.to_string()))?;
        if table.name.is_none() {
            return Err(SpaceFileError::param(&name, "missing `name`").into());
        }
        specs.push(table.into_spec(&name)?);
    }
    Ok(ObjectiveSpec {
        name: raw.name,
        space: SearchSpace::new(specs).map_err(SpaceFileError::from)?,
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
        None => Direction::Minimize,
        Some(text) => text.parse().map_err(|_| {
            SpecError::Json(serde::de::Error::custom(format!(
                "direction must be minimize or maximize, got `{text}`"
            )))
        })?,
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
    use crate::space::Distribution;

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
