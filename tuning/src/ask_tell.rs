//! Ask/tell over JSON lines, for objectives that run outside fedtune (the engine of
//! `fedtune-aggregator tune`).
//!
//! Out, one object per line:
//! - `{"trial": 0, "params": {"lr": 0.01, "optimizer": "adam"}}` — run this trial;
//! - `{"trial": 0, "step": 3, "prune": false}` — the answer to an intermediate report;
//! - `{"error": "…", "line": 7}` — an input line was refused (the study goes on);
//! - `{"done": true, "best": {…}, "pareto_front": [0, 4], "trials": 20}` — last line.
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
//! ends once all of them are told.

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
    /// The study could not ask a trial.
    #[error(transparent)]
    Study(#[from] StudyError),
    /// Input ended while trials were still open.
    #[error("input ended with {open} trial(s) still running: {numbers:?}")]
    Unfinished {
        /// How many.
        open: usize,
        /// Which.
        numbers: Vec<u64>,
    },
}

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
/// `parallel` open, and reads their results from `input` until all are told.
///
/// # Errors
/// [`AskTellError`] on I/O failure, when the sampler cannot ask, or when the input
/// ends early. Trials told before the error stay in `study`.
pub fn run(
    study: &mut Study,
    trials: usize,
    parallel: usize,
    input: impl BufRead,
    mut output: impl Write,
) -> Result<(), AskTellError> {
    let parallel = parallel.max(1);
    let mut asked = study.trials().len();
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
    while !open.is_empty() {
        let Some(line) = lines.next() else {
            return Err(AskTellError::Unfinished {
                open: open.len(),
                numbers: open.into_iter().collect(),
            });
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
    writeln!(
        output,
        "{}",
        json!({"done": true, "best": best, "pareto_front": front, "trials": study.trials().len()})
    )?;
    output.flush()?;
    Ok(())
}

enum Handled {
    Told(u64),
    Reported { trial: u64, step: u64, prune: bool },
}

fn handle(study: &mut Study, open: &std::collections::BTreeSet<u64>, line: &str) -> Result<Handled, String> {
    let told: Told = serde_json::from_str(line).map_err(|e| format!("not a result line: {e}"))?;
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
        (None | Some("complete"), None) => return Err("a complete trial needs `value` or `values`".into()),
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
        assert_eq!(out.len(), 4, "{out:?}");
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
        let out = lines(&out);
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
    fn early_end_of_input_is_an_error_that_keeps_what_was_told() {
        let mut s = study();
        let mut out = Vec::new();
        let err = run(&mut s, 3, 1, "{\"trial\": 0, \"value\": 1.0}\n".as_bytes(), &mut out).unwrap_err();
        assert!(matches!(err, AskTellError::Unfinished { open: 1, .. }), "{err}");
        assert!(s.trials()[0].value().is_some());
    }

    #[test]
    fn a_line_that_is_not_utf8_gets_an_error_and_the_study_goes_on() {
        let mut s = study();
        let mut input = b"{\"trial\": 0, \"value\": \xff}\n".to_vec();
        input.extend_from_slice(b"{\"trial\": 0, \"value\": 1.0}\n");
        let mut out = Vec::new();
        run(&mut s, 1, 1, input.as_slice(), &mut out).unwrap();
        let out = lines(&out);
        assert!(out[1]["error"].as_str().unwrap().contains("UTF-8"), "{out:?}");
        assert_eq!(out[2]["done"], true);
    }
}
