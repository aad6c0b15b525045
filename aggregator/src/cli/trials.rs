//! `fedtune-aggregator trials`: a study's trials, as a table or JSON; a failed trial with
//! why it failed.

use std::io::Write;
use std::path::PathBuf;

use fedtune_store::{RunId, RunKind, open_read_only};

/// The arguments of `trials`.
#[derive(clap::Args)]
pub struct Args {
    /// The store.
    #[arg(long)]
    db: PathBuf,
    /// The study's id (see `runs`).
    #[arg(long)]
    study: RunId,
    /// A JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

/// Prints the study's trials (blocks on the store).
pub fn run(args: Args) -> anyhow::Result<()> {
    let Args { db, study, json } = args;
    let store = open_read_only(&db)?;
    if store.run(study)?.kind != RunKind::Study {
        anyhow::bail!("{study} is a run, not a study (see `runs`)");
    }
    let trials = store.trials(study)?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &trials)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:>5}  {:<8}  {:>6}  {:<24}  {:<24}  params",
        "trial", "state", "rounds", "values", "updated"
    )?;
    for t in &trials {
        let values = t.trial.values.as_ref().map_or_else(
            || "-".to_owned(),
            |v| v.iter().map(|x| format!("{x:.4}")).collect::<Vec<_>>().join(", "),
        );
        // A failed trial says why at the end of its row, so one line per trial still holds.
        let reason = t
            .trial
            .fail_reason
            .as_deref()
            .map_or_else(String::new, |reason| format!("  reason: {}", one_line(reason)));
        writeln!(
            out,
            "{:>5}  {:<8}  {:>6}  {:<24}  {:<24}  {}{reason}",
            t.trial.number,
            serde_json::to_value(t.trial.state)?.as_str().unwrap_or("?"),
            t.trial.last_intermediate().map_or(0, |(step, _)| step),
            values,
            t.updated_at,
            serde_json::to_string(&t.trial.params)?
        )?;
    }
    Ok(())
}

/// `text` on one line: a reason's line breaks as spaces.
pub(super) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
