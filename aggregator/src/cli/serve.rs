//! `fedtune-aggregator serve`: a federation as its configuration says, one line per
//! committed round; with `[tuning]`, a federated study ([`super::serve_study`]). With
//! `[state] db` the run commits to a store and resumes from it when served again.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use fedtune_aggregator::progress::Progress;
use fedtune_aggregator::{AggregatorConfig, Hooks, run_stored, service};
use fedtune_models::weights::Layout;
use fedtune_store::{self as store, RunStatus};

use super::run_state::{open_store, start_dashboard};
use super::serve_study;
use super::signal::stop_signal;

/// The arguments of `serve`.
#[derive(clap::Args)]
pub struct Args {
    /// TOML configuration (see config/aggregator.toml).
    #[arg(long)]
    config: PathBuf,
    /// The layout of the final model file: `burn` (the default, or `[model] save_layout`)
    /// or `pytorch` (linear weights `[out, in]`, for `load_state_dict`).
    #[arg(long, value_parser = parse_layout)]
    layout: Option<Layout>,
    /// Hold the driver this many milliseconds after each committed round of a run (a
    /// study ignores it). Hidden from `--help`: it is there so a crash test can kill the
    /// process between rounds at a moment it chooses, and a browser test can watch
    /// rounds arrive.
    #[arg(long, value_name = "MS", hide = true)]
    hold_after_commit_ms: Option<u64>,
}

/// Serves until the run or study ends, or Ctrl-C or SIGTERM interrupts it after the
/// current step (agents are told it was interrupted, and wait for serve to start again);
/// writes the final model and the report the configuration names.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut config = AggregatorConfig::load(&args.config)?;
    if let Some(layout) = args.layout {
        config.model.save_layout = layout;
    }
    // The starting weights are read once, off the runtime, before anything is bound.
    let config = tokio::task::spawn_blocking(move || service::load_initial_model(&mut config).map(|()| config))
        .await?
        .context("[model] init")?;
    if let Some(init) = &config.model.init {
        println!(
            "global model starts from {} ({} parameters)",
            init.path.display(),
            config.model.manifest().numel()
        );
    }
    // A study's space file is read and checked before anything is bound.
    let study = match &config.tuning {
        Some(tuning) => {
            let study = tuning.study(config.federation.rounds)?;
            fedtune_aggregator::tune::check_space_fits(&config, &study.space)?;
            Some(study)
        }
        None => None,
    };
    let endpoint = service::bind_from_config(&config)?;
    tracing::info!("serving on {}", endpoint.local_addr()?);
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let signal = stop_signal().await;
        tracing::warn!(
            "{signal}: interrupted; finishing the current step, then telling agents to wait for serve to start again"
        );
        let _ = stop.send(true);
    });
    let report_path = config.report.clone();
    let model_path = config.model.save_path(report_path.as_deref());
    let model_spec = config.model.spec.clone();
    let model_config = config.model.clone();
    let layout = config.model.save_layout;
    if let Some(study) = study {
        return serve_study::run(endpoint, config, study, shutdown, report_path).await;
    }
    // Each round is printed as it commits (stdout is line-buffered), so the log of a
    // killed run shows where it was.
    let hold = args.hold_after_commit_ms.map(Duration::from_millis);
    let progress = Progress::stdout(config.federation.rounds, "round");
    let on_round = progress.clone();
    let on_waiting = progress.clone();
    let mut hooks = Hooks {
        on_round: Some(Box::new(move |r| {
            // After a restart, agents answer the round the last process did not commit
            // with the update they had trained: no training, so a short round.
            let replayed = r.contributions.values().filter(|c| c.replayed).count();
            let replayed = if replayed > 0 {
                format!("  ({replayed} replayed from before the restart)")
            } else {
                String::new()
            };
            on_round.line(&format!(
                "round {:>3}  updates {:>3}  failures {:>2}  train loss {:.4}  federated accuracy {:.4}  {:.2}s{replayed}",
                r.round,
                r.updates,
                r.failures.len(),
                r.train_loss,
                r.federated_accuracy,
                r.seconds
            ));
            on_round.advance(r.round + 1, &format!("federated accuracy {:.4}", r.federated_accuracy));
            if let Some(hold) = hold {
                std::thread::sleep(hold);
            }
        })),
        on_waiting: Some(Box::new(move |connected, needed| on_waiting.waiting(connected, needed))),
        ..Hooks::default()
    };
    let (report, json) = match config.state.db.clone() {
        Some(db) => {
            let store = open_store(&db).await?;
            hooks.metrics = start_dashboard(&config, &db, shutdown.clone()).await?;
            let location = store::display_location(&db);
            let rounds = config.federation.rounds;
            let keep = config.state.keep_checkpoints;
            let stored = run_stored(endpoint, config, store, keep, hooks, shutdown).await?;
            let committed = stored.report.rounds.len();
            match stored.status {
                RunStatus::Finished => println!("run {}: finished, {committed} rounds in {location}", stored.run),
                status => println!(
                    "run {}: {} after {committed} of {rounds} rounds (in {location}); serve again with the same configuration to resume",
                    stored.run,
                    status.as_str(),
                ),
            }
            let json = serde_json::to_vec_pretty(&stored)?;
            (stored.report, json)
        }
        None => {
            let rounds = config.federation.rounds;
            let report = fedtune_aggregator::run(endpoint, config, hooks, shutdown).await?;
            if report.interrupted {
                println!(
                    "run interrupted after {} of {rounds} rounds (no [state] db: serving again starts a new run)",
                    report.rounds.len()
                );
            }
            let json = serde_json::to_vec_pretty(&report)?;
            (report, json)
        }
    };
    progress.finish();
    // A run stopped before its first round has no model of its own to write.
    if let Some(path) = model_path.filter(|_| !report.global.is_empty()) {
        let spec = model_spec.clone();
        let global = report.global.clone();
        let written = path.clone();
        let files = tokio::task::spawn_blocking(move || {
            let mut files = service::save_model(&spec, &global, &written, layout)?;
            files.extend(service::save_pretrained(&model_config, &global, &written)?);
            Ok::<_, fedtune_models::weights::WeightsError>(files)
        })
        .await?
        .with_context(|| format!("writing the final model to {}", path.display()))?;
        for file in files {
            println!("final model written to {}", file.display());
        }
    }
    if !report.final_agent_evaluation.is_empty() {
        let accs: Vec<f64> = report.final_agent_evaluation.values().map(|e| e.accuracy).collect();
        let mean = accs.iter().sum::<f64>() / accs.len() as f64;
        let worst = accs.iter().copied().fold(f64::INFINITY, f64::min);
        println!("final model on agents' validation splits: mean accuracy {mean:.4}, worst {worst:.4}");
    }
    if let Some(path) = report_path {
        std::fs::write(&path, json).with_context(|| format!("writing report {}", path.display()))?;
        println!("report written to {}", path.display());
    }
    Ok(())
}

/// A layout to write a file in: `burn` or `pytorch` (`auto` is for reading).
fn parse_layout(text: &str) -> Result<Layout, String> {
    match text.parse()? {
        Layout::Auto => Err("`auto` is for reading files; write burn or pytorch".into()),
        layout => Ok(layout),
    }
}
