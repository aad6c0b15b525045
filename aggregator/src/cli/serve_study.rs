//! `serve` with a `[tuning]` section: a federated study, one line per committed round
//! and per finished trial (a failed one with its reason).

use std::path::PathBuf;

use anyhow::Context;
use fedtune_aggregator::AggregatorConfig;
use fedtune_aggregator::progress::Progress;
use fedtune_aggregator::tune::{TuneConfig, TuneEvent, TuneHooks, tune};
use fedtune_aggregator::tune_stored;
use fedtune_store::{self as store, RunStatus};
use fedtune_tuning::TrialState;

use super::run_state::{open_store, start_dashboard};
use super::trials::one_line;

/// Runs `study` on `endpoint` until it ends or `shutdown` stops it; prints the best
/// trial and writes the report to `report_path`.
pub async fn run(
    endpoint: quinn::Endpoint,
    config: AggregatorConfig,
    study: TuneConfig,
    shutdown: tokio::sync::watch::Receiver<bool>,
    report_path: Option<PathBuf>,
) -> anyhow::Result<()> {
    println!(
        "study: {} trials of up to {} rounds, sampler {}, pruner {}",
        study.trials,
        study.rounds,
        study.sampler,
        study.pruner.name()
    );
    // Rounds and trials are printed as they commit (stdout is line-buffered), above a
    // bar of finished trials when stdout is a terminal.
    let progress = Progress::stdout(study.trials as u64, "trial");
    let on_event = progress.clone();
    let mut finished = 0;
    let mut hooks = TuneHooks {
        evaluator: None,
        on_event: Some(Box::new(move |event: &TuneEvent| match event {
            TuneEvent::Round {
                number, round, values, ..
            } => {
                on_event.line(&format!("trial {number:>3}  round {round:>3}  values {}", list(values)));
                on_event.advance(finished, &format!("trial {number} at round {round}"));
            }
            TuneEvent::TrialFinished(t) => {
                finished += 1;
                let params = serde_json::to_string(&t.params).unwrap_or_default();
                let line = match (t.state, &t.fail_reason) {
                    (TrialState::Failed, reason) => format!(
                        "trial {:>3}  failed    rounds {:>3}  params {params}  reason: {}",
                        t.number,
                        t.rounds,
                        one_line(reason.as_deref().unwrap_or("not recorded"))
                    ),
                    (state, _) => format!(
                        "trial {:>3}  {:<8}  values {}  rounds {:>3}  params {params}",
                        t.number,
                        state.as_str(),
                        t.values.as_deref().map_or_else(|| "none".to_owned(), list),
                        t.rounds,
                    ),
                };
                on_event.line(&line);
                on_event.advance(finished, "");
            }
            TuneEvent::TrialStarted { number, .. } => on_event.advance(finished, &format!("trial {number} started")),
        })),
        metrics: None,
    };
    let (report, json) = match config.state.db.clone() {
        Some(db) => {
            if study.storage.is_some() {
                tracing::warn!("[state] db keeps the study; [tuning] storage (the JSON-lines journal) is not used");
            }
            let store = open_store(&db).await?;
            hooks.metrics = start_dashboard(&config, &db, shutdown.clone()).await?;
            let location = store::display_location(&db);
            let keep = config.state.keep_checkpoints;
            let stored = tune_stored(endpoint, config, study, store, keep, hooks, shutdown).await?;
            let done = stored
                .report
                .trials
                .iter()
                .filter(|t| t.state != TrialState::Running)
                .count();
            match stored.status {
                RunStatus::Finished => println!("study {}: finished, {done} trials in {location}", stored.study),
                status => println!(
                    "study {}: {} with {done} trials done (in {location}); serve again with the same configuration to resume",
                    stored.study,
                    status.as_str(),
                ),
            }
            let json = serde_json::to_vec_pretty(&stored)?;
            (stored.report, json)
        }
        None => {
            let report = tune(endpoint, config, study, hooks, shutdown).await?;
            let json = serde_json::to_vec_pretty(&report)?;
            (report, json)
        }
    };
    progress.finish();
    match report.best_trial() {
        Some(best) => {
            println!(
                "best trial {}: values {}, params {}",
                best.number,
                best.values.as_deref().map_or_else(|| "none".to_owned(), list),
                serde_json::to_string(&best.params)?
            );
            if let Some(model) = &best.model {
                println!("best trial's final model written to {}", model.display());
            }
        }
        None => println!("no trial completed"),
    }
    let front: Vec<String> = report.pareto_front.iter().map(u64::to_string).collect();
    println!(
        "rounds spent {}, Pareto front: trial(s) {}",
        report.rounds_spent,
        front.join(", ")
    );
    if let Some(path) = report_path {
        std::fs::write(&path, json).with_context(|| format!("writing report {}", path.display()))?;
        println!("report written to {}", path.display());
    }
    Ok(())
}

/// Objective values for a person: four significant digits, comma-separated.
fn list(values: &[f64]) -> String {
    let one = |v: &f64| {
        let a = v.abs();
        if a != 0.0 && !(1e-3..1e5).contains(&a) {
            format!("{v:.3e}")
        } else {
            format!("{v:.4}")
        }
    };
    values.iter().map(one).collect::<Vec<_>>().join(", ")
}
