//! `fedtune-aggregator rounds`: a run's committed rounds, as a table or JSON lines.

use std::io::Write;
use std::path::PathBuf;

use fedtune_store::{RunId, open_read_only};

/// The arguments of `rounds`.
#[derive(clap::Args)]
pub struct Args {
    /// The store.
    #[arg(long)]
    db: PathBuf,
    /// The run's id (see `runs`).
    #[arg(long)]
    run: RunId,
    /// One JSON object per round and line instead of a table.
    #[arg(long)]
    json: bool,
}

/// Prints the run's rounds (blocks on the store).
pub fn run(args: Args) -> anyhow::Result<()> {
    let Args { db, run, json } = args;
    let store = open_read_only(&db)?;
    store.run(run)?;
    let rounds = store.rounds(run, None)?;
    let mut out = std::io::stdout().lock();
    if json {
        for r in &rounds {
            let mut line = serde_json::to_value(&r.record)?;
            if let Some(object) = line.as_object_mut() {
                object.insert("trial".into(), r.trial.into());
                object.insert("committed_at".into(), r.committed_at.clone().into());
                object.insert("test_accuracy".into(), r.record.test.map(|t| t.accuracy).into());
            }
            serde_json::to_writer(&mut out, &line)?;
            writeln!(out)?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:>5}  {:>7}  {:>8}  {:>10}  {:>8}  {:>8}  {:>7}  committed",
        "round", "updates", "failures", "train loss", "fed acc", "test acc", "seconds"
    )?;
    for r in &rounds {
        let rec = &r.record;
        let test = rec
            .test
            .map_or_else(|| "-".to_owned(), |t| format!("{:.4}", t.accuracy));
        writeln!(
            out,
            "{:>5}  {:>7}  {:>8}  {:>10.4}  {:>8.4}  {:>8}  {:>7.2}  {}",
            rec.round,
            rec.updates,
            rec.failures.len(),
            rec.train_loss,
            rec.federated_accuracy,
            test,
            rec.seconds,
            r.committed_at
        )?;
    }
    Ok(())
}
