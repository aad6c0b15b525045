//! Ask/tell over JSON lines, for objectives that run outside fedtune (the engine of
//! `fedtune-aggregator tune`).
//!
//! Out, one object per line:
//! - first, `{"study": {"directions": ["minimize"], "objectives": ["objective_0"],
//!   "trials": 20, "held": 0}}` — which way each objective counts as better, the trials
//!   the session runs to, and how many a resumed study already held;
//! - `{"trial": 0, "params": {"lr": 0.01, "optimizer": "adam"}}` — run this trial;
//! - `{"trial": 0, "step": 3, "prune": false}` — the answer to an intermediate report;
//! - `{"error": "…", "line": 7}` — an input line was refused (the study goes on);
//! - `{"done": true, "best": {…}, "pareto_front": [0, 4], "trials": 20}` — last line;
//!   with `"unfinished": [3]` when input ended while trials were still open (they are
//!   marked failed, and a resumed session asks new ones).
//!
//! In, one object per line:
//! - `{"trial": 0, "value": 1.23}` or `{"trial": 0, "values": [0.9, 1e6]}` — complete,
//!   optionally with `"feasible": false` when a constraint was violated;
//! - `{"trial": 0, "state": "pruned"}` or `{"trial": 0, "state": "failed"}`, the
//!   latter optionally with `"reason": "…"`;
//! - `{"trial": 0, "step": 3, "value": 0.8}` — an intermediate value, answered with
//!   the pruner's decision.
//!
//! The next trial is asked as soon as one is told, keeping `parallel` open, until the
//! study holds `trials` trials (counting those a resumed study already had); the run
//! ends once all of them are told, or when input ends.

use std::io::{BufRead, Write};

use serde::Deserialize;
use serde_json::{Value, json};

use super::study::{Outcome, Study, StudyError};
use super::trial::FrozenTrial;

/// Why the JSON-lines session ended without finishing.
#[derive(Debug, thiserror::Error)]
pub enum AskTellError {
    /// Reading stdin or writing stdout failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The study could not ask or store a trial.
    #[error(transparent)]
    Study(#[from] StudyError),
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ended {
    /// Trials still open when input ended, now marked failed (empty when every asked
    /// trial was told).
    pub unfinished: Vec<u64>,
}

/// The reason stored for a trial still open when input ended.
pub const INPUT_ENDED: &str = "input ended while the trial was running";

/// JSON has no NaN or infinity; a line that tries to send one gets this hint.
const NON_FINITE_HINT: &str =
    "JSON has no NaN or Infinity: tell a trial that produced no usable value as {\"trial\": N, \"state\": \"failed\"}";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Told {
    trial: u64,
    #[serde(default)]
    value: Option<f64>,
    #[serde(default)]
    values: Option<Vec<f64>>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    step: Option<u64>,
    #[serde(default)]
    feasible: Option<bool>,
    #[serde(default)]
    reason: Option<String>,
}

impl Told {
    fn values(&self) -> Result<Option<Vec<f64>>, String> {
        match (&self.value, &self.values) {
            (Some(_), Some(_)) => Err("give `value` or `values`, not both".into()),
            (Some(v), None) => Ok(Some(vec![*v])),
            (None, Some(vs)) => Ok(Some(vs.clone())),
            (None, None) => Ok(None),
        }
    }
}

/// The JSON form of a trial in the final line.
fn trial_json(t: &FrozenTrial) -> Value {
    json!({"trial": t.number, "params": t.params, "values": t.values, "feasible": t.feasible})
}

/// Runs an ask/tell session: asks trials until the study holds `trials`, keeping
/// `parallel` open, and reads their results from `input` until all are told. When
/// input ends first, the open trials are marked failed ([`INPUT_ENDED`]) and the
/// session ends as usual, with them listed in [`Ended::unfinished`].
///
/// # Errors
/// [`AskTellError`] on I/O failure or when the study cannot ask or store a trial.
/// Trials told before the error stay in `study`.
pub fn run(
    study: &mut Study,
    trials: usize,
    parallel: usize,
    input: impl BufRead,
    mut output: impl Write,
) -> Result<Ended, AskTellError> {
    let parallel = parallel.max(1);
    let mut asked = study.trials().len();
    let directions = study.directions();
    let objectives: Vec<&str> = study.objectives().iter().map(|o| o.name.as_str()).collect();
    writeln!(
        output,
        "{}",
        json!({"study": {"directions": directions, "objectives": objectives, "trials": trials, "held": asked}})
    )?;
    let mut open = std::collections::BTreeSet::new();
    let mut exhausted = false;
    let mut ask_more = |study: &mut Study,
                        open: &mut std::collections::BTreeSet<u64>,
                        output: &mut dyn Write|
     -> Result<(), AskTellError> {
        while !exhausted && asked < trials && open.len() < parallel {
            match study.ask() {
                Ok(t) => {
                    writeln!(output, "{}", json!({"trial": t.number, "params": t.params}))?;
                    open.insert(t.number);
                    asked += 1;
                }
                // A finished grid ends the session early, like an exhausted Optuna grid.
                Err(StudyError::Sampler(e)) => {
                    writeln!(output, "{}", json!({"error": e.to_string()}))?;
                    exhausted = true;
                }
                Err(e) => return Err(e.into()),
            }
        }
        output.flush()?;
        Ok(())
    };
    ask_more(study, &mut open, &mut output)?;
    let mut lines = input.split(b'\n');
    let mut line_number = 0u64;
    let mut ended = Ended::default();
    while !open.is_empty() {
        let Some(line) = lines.next() else {
            for &number in &open {
                study.tell(number, Outcome::failed(INPUT_ENDED))?;
            }
            ended.unfinished = std::mem::take(&mut open).into_iter().collect();
            break;
        };
        let line = line?;
        line_number += 1;
        let handled = match std::str::from_utf8(&line) {
            Ok(text) if text.trim().is_empty() => continue,
            Ok(text) => handle(study, &open, text),
            Err(e) => Err(format!("not UTF-8: {e}")),
        };
        let reply = match handled {
            Ok(Handled::Told(number)) => {
                open.remove(&number);
                None
            }
            Ok(Handled::Reported { trial, step, prune }) => Some(json!({"trial": trial, "step": step, "prune": prune})),
            Err(message) => Some(json!({"error": message, "line": line_number})),
        };
        if let Some(reply) = reply {
            writeln!(output, "{reply}")?;
        }
        ask_more(study, &mut open, &mut output)?;
    }
    let best = study.best_trial().map(trial_json);
    let front: Vec<u64> = study.pareto_front().iter().map(|t| t.number).collect();
    let mut done = json!({"done": true, "best": best, "pareto_front": front, "trials": study.trials().len()});
    if !ended.unfinished.is_empty() {
        done["unfinished"] = json!(ended.unfinished);
    }
    writeln!(output, "{done}")?;
    output.flush()?;
    Ok(ended)
}

enum Handled {
    Told(u64),
    Reported { trial: u64, step: u64, prune: bool },
}

fn handle(study: &mut Study, open: &std::collections::BTreeSet<u64>, line: &str) -> Result<Handled, String> {
    let told: Told = serde_json::from_str(line).map_err(|e| {
        let lower = line.to_ascii_lowercase();
        if lower.contains("nan") || lower.contains("infinity") {
            format!("not a result line: {e}; {NON_FINITE_HINT}")
        } else {
            format!("not a result line: {e}")
        }
    })?;
    if !open.contains(&told.trial) {
        return Err(format!("trial {} is not running", told.trial));
    }
    let values = told.values()?;
    if let Some(step) = told.step {
        let values = values.ok_or("an intermediate report needs `value` or `values`")?;
        if told.state.is_some() {
            return Err("an intermediate report takes no `state`".into());
        }
        let prune = study.report(told.trial, step, values).map_err(|e| e.to_string())?;
        return Ok(Handled::Reported {
            trial: told.trial,
            step,
            prune,
        });
    }
    let outcome = match (told.state.as_deref(), values) {
        (None | Some("complete"), Some(values)) => Outcome::Complete {
            values,
            feasible: told.feasible.unwrap_or(true),
        },
        (None | Some("complete"), None) => {
            return Err(format!(
                "a complete trial needs `value` or `values` (null is no value; {NON_FINITE_HINT})"
            ));
        }
        (Some("pruned"), _) => Outcome::Pruned,
        (Some("failed" | "fail"), _) => Outcome::failed(told.reason.unwrap_or_else(|| "told failed".into())),
        (Some(other), _) => return Err(format!("unknown state `{other}`; expected complete, pruned or failed")),
    };
    study.tell(told.trial, outcome).map_err(|e| e.to_string())?;
    Ok(Handled::Told(told.trial))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objective::Direction;
    use crate::objective::Objective;
    use crate::pruner::NopPruner;
    use crate::space::{ParamSpec, SearchSpace};
    use crate::study::SamplerKind;

    fn study() -> Study {
        let space = SearchSpace::new(vec![
            ParamSpec::parse("x", "uniform(-2, 2)").unwrap(),
            ParamSpec::parse("opt", "choice(adam, sgd)").unwrap(),
        ])
        .unwrap();
        Study::new(
            space,
            vec![Objective::new("f", Direction::Minimize)],
            SamplerKind::Tpe.build(1),
            Box::new(NopPruner),
        )
        .unwrap()
    }

    fn lines(out: &[u8]) -> Vec<Value> {
        String::from_utf8_lossy(out)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn a_session_asks_reads_and_ends_with_the_best_trial() {
        let mut s = study();
        let input =
            "{\"trial\": 0, \"value\": 3.0}\n{\"trial\": 1, \"value\": 1.0}\n{\"trial\": 2, \"state\": \"pruned\"}\n";
        let mut out = Vec::new();
        run(&mut s, 3, 1, input.as_bytes(), &mut out).unwrap();
        let out = lines(&out);
        assert_eq!(out.len(), 5, "{out:?}");
        assert_eq!(
            out[0]["study"]["directions"],
            json!(["minimize"]),
            "the direction comes first"
        );
        assert_eq!(out[0]["study"]["trials"], 3);
        let out = &out[1..];
        for (i, line) in out[..3].iter().enumerate() {
            assert_eq!(line["trial"], i);
            assert!(line["params"]["x"].is_f64() && line["params"]["opt"].is_string());
        }
        assert_eq!(out[3]["done"], true);
        assert_eq!(out[3]["best"]["trial"], 1);
    }

    #[test]
    fn parallel_keeps_k_trials_open_and_bad_lines_get_errors() {
        let mut s = study();
        let input = [
            "garbage",
            "{\"trial\": 7, \"value\": 1.0}",
            "{\"trial\": 0, \"value\": \"high\"}",
            "{\"trial\": 1, \"value\": 1.0, \"values\": [1.0]}",
            "{\"trial\": 1, \"step\": 1, \"value\": 0.5}",
            "{\"trial\": 1, \"value\": 0.5}",
            "{\"trial\": 0, \"values\": [2.0, 3.0]}",
            "{\"trial\": 0, \"state\": \"exploded\"}",
            "{\"trial\": 0, \"state\": \"failed\"}",
            "{\"trial\": 2, \"value\": 0.1}",
        ]
        .join("\n");
        let mut out = Vec::new();
        run(&mut s, 3, 2, input.as_bytes(), &mut out).unwrap();
        let out = lines(&out)[1..].to_vec();
        // Two asked at once, then one per tell.
        assert_eq!(out[0]["trial"], 0);
        assert_eq!(out[1]["trial"], 1);
        let errors: Vec<&Value> = out.iter().filter(|l| l.get("error").is_some()).collect();
        assert_eq!(errors.len(), 6, "{out:?}");
        assert!(errors[1]["error"].as_str().unwrap().contains("not running"));
        assert!(errors[4]["error"].as_str().unwrap().contains("expected 1 value"));
        let report = out.iter().find(|l| l.get("step").is_some()).unwrap();
        assert_eq!(report["prune"], false);
        assert_eq!(out.last().unwrap()["best"]["trial"], 2);
        assert_eq!(s.trials().len(), 3);
    }

    #[test]
    fn end_of_input_fails_the_open_trials_and_ends_the_session_cleanly() {
        let mut s = study();
        let mut out = Vec::new();
        let ended = run(&mut s, 3, 2, "{\"trial\": 0, \"value\": 1.0}\n".as_bytes(), &mut out).unwrap();
        assert_eq!(ended.unfinished, vec![1, 2]);
        assert!(s.trials()[0].value().is_some(), "what was told is kept");
        for t in &s.trials()[1..] {
            assert_eq!(t.state, crate::TrialState::Failed);
            assert_eq!(t.fail_reason.as_deref(), Some(INPUT_ENDED));
        }
        let done = lines(&out).pop().unwrap();
        assert_eq!(done["done"], true);
        assert_eq!(done["unfinished"], json!([1, 2]));
    }

    #[test]
    fn a_nan_or_null_value_gets_a_hint_to_tell_the_trial_failed() {
        let mut s = study();
        let input = "{\"trial\": 0, \"value\": NaN}\n{\"trial\": 0, \"value\": null}\n{\"trial\": 0, \"state\": \"failed\", \"reason\": \"diverged\"}\n";
        let mut out = Vec::new();
        run(&mut s, 1, 1, input.as_bytes(), &mut out).unwrap();
        let errors: Vec<String> = lines(&out)
            .iter()
            .filter_map(|l| l["error"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        for e in &errors {
            assert!(e.contains("\"state\": \"failed\""), "{e}");
        }
        assert_eq!(s.trials()[0].fail_reason.as_deref(), Some("diverged"));
    }

    #[test]
    fn a_line_that_is_not_utf8_gets_an_error_and_the_study_goes_on() {
        let mut s = study();
        let mut input = b"{\"trial\": 0, \"value\": \xff}\n".to_vec();
        input.extend_from_slice(b"{\"trial\": 0, \"value\": 1.0}\n");
        let mut out = Vec::new();
        run(&mut s, 1, 1, input.as_slice(), &mut out).unwrap();
        let out = lines(&out);
        assert!(out[2]["error"].as_str().unwrap().contains("UTF-8"), "{out:?}");
        assert_eq!(out[3]["done"], true);
    }
}
