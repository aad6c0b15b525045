//! `fedtune-aggregator runs`: the runs and studies in a store, as a table or JSON.

use std::io::Write;
use std::path::PathBuf;

use fedtune_store::open_read_only;

/// The arguments of `runs`.
#[derive(clap::Args)]
pub struct Args {
    /// The store (`[state] db`): a SQLite file or a `postgres://` URL.
    #[arg(long)]
    db: PathBuf,
    /// A JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

/// Lists the store's runs and studies (blocks on the store).
pub fn run(args: Args) -> anyhow::Result<()> {
    let store = open_read_only(&args.db)?;
    let runs = store.runs()?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &runs)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:>4}  {:<5}  {:<11}  {:>7}  {:<24}  name",
        "id", "kind", "status", "rounds", "updated"
    )?;
    for r in &runs {
        writeln!(
            out,
            "{:>4}  {:<5}  {:<11}  {:>7}  {:<24}  {}",
            r.id,
            r.kind.as_str(),
            r.status.as_str(),
            format!("{}/{}", r.rounds_committed, r.rounds_planned),
            r.updated_at,
            r.name
        )?;
    }
    Ok(())
}
