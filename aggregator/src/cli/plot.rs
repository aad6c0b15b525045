//! `fedtune-aggregator plot`: a run's charts or a study's, as SVG and PNG files.

use std::io::Write;
use std::path::PathBuf;

use fedtune_aggregator::plot;
use fedtune_store::{RunKind, open_read_only};

use super::RunInStore;

/// The arguments of `plot`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: RunInStore,
    /// Directory to write into (made when missing; files in it are replaced).
    #[arg(long)]
    out: PathBuf,
}

/// Writes the charts into `--out` and prints each file's path (blocks on the store).
pub fn run(args: Args) -> anyhow::Result<()> {
    let Args { target, out } = args;
    let (id, study) = target.id()?;
    let kind = if study { RunKind::Study } else { RunKind::Run };
    let store = open_read_only(&target.db)?;
    let found = store.run(id)?.kind;
    if found != kind {
        anyhow::bail!("{id} is a {}, not a {} (see `runs`)", found.as_str(), kind.as_str());
    }
    let written = match kind {
        RunKind::Run => {
            let records: Vec<_> = store.rounds(id, None)?.into_iter().map(|r| r.record).collect();
            plot::run(&records, &out)?
        }
        RunKind::Study => {
            let Some(header) = store.study_header(id)? else {
                anyhow::bail!("study {id} has not started: nothing to plot");
            };
            let trials: Vec<_> = store.trials(id)?.into_iter().map(|t| t.trial).collect();
            plot::study(&header.objectives, &trials, &out)?
        }
    };
    let mut stdout = std::io::stdout().lock();
    for file in &written {
        writeln!(stdout, "{}", file.display())?;
    }
    Ok(())
}
