//! `fedtune-aggregator export`: the per-agent rows of a run, or of every trial of a
//! study, as CSV or JSON.

use std::io::Write;
use std::path::Path;

use fedtune_store::{AgentRow, RunId, RunKind, agent_rows, open_read_only};

use super::RunInStore;

/// The arguments of `export`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: RunInStore,
    /// `csv` or `json`.
    #[arg(long)]
    format: Format,
}

/// What `export` writes.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Csv,
    Json,
}

/// Writes the rows on stdout (blocks on the store).
pub fn run(args: Args) -> anyhow::Result<()> {
    let json = matches!(args.format, Format::Json);
    let (id, study) = args.target.id()?;
    export(&args.target.db, id, study.then_some(RunKind::Study), json)
}

/// One row per cohort member and round (of every trial, for a study). `kind` asks that
/// the id be of that kind.
fn export(db: &Path, run: RunId, kind: Option<RunKind>, json: bool) -> anyhow::Result<()> {
    let store = open_read_only(db)?;
    let found = store.run(run)?.kind;
    if let Some(kind) = kind
        && kind != found
    {
        anyhow::bail!("{run} is a {}, not a {} (see `runs`)", found.as_str(), kind.as_str());
    }
    let rows: Vec<(String, AgentRow)> = store
        .rounds(run, None)?
        .iter()
        .flat_map(|r| {
            agent_rows(r.trial, &r.record)
                .into_iter()
                .map(|row| (r.committed_at.clone(), row))
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if json {
        let rows: Vec<serde_json::Value> = rows
            .into_iter()
            .map(|(committed_at, row)| {
                let mut v = serde_json::to_value(row).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("run".into(), run.into());
                    o.insert("committed_at".into(), committed_at.into());
                }
                v
            })
            .collect();
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "run,trial,round,agent,outcome,accuracy,detail,committed_at")?;
    for (committed_at, row) in rows {
        writeln!(
            out,
            "{run},{},{},{},{},{},{},{}",
            row.trial,
            row.round,
            csv_field(&row.agent),
            csv_field(&row.outcome),
            row.accuracy.map(|a| a.to_string()).unwrap_or_default(),
            csv_field(row.detail.as_deref().unwrap_or("")),
            committed_at
        )?;
    }
    Ok(())
}

/// A CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}
