//! The `fedtune-aggregator` subcommands, one module each. These are modules of the
//! binary, not of the library: they report errors with `anyhow`, which the library
//! leaves to its callers.
//!
//! # Layout
//! - [`init`], [`issue`], [`revoke`]: the federation's certificates.
//! - [`serve`]: a federation as its configuration says; [`serve_study`] when it has
//!   `[tuning]`.
//! - [`tune`]: ask/tell over JSON lines for an objective run outside fedtune.
//! - [`runs`], [`rounds`], [`trials`], [`export`], [`plot`]: read a store, read-only,
//!   while a run may be writing it (`--db` is a SQLite file or a `postgres://` URL). They
//!   block on the store: `main` runs them through [`blocking`].
//! - [`dashboard`]: the web dashboard over a store.
//! - [`evaluate`]: a weights file's accuracy and loss on a test split.
//! - [`predict`]: each row's class and class probabilities under a model.
//! - [`privacy`]: ε after some rounds, or the noise an ε budget needs.
//! - [`run_state`]: the store a served run writes and the dashboard over it.
//! - [`signal`]: Ctrl-C and SIGTERM, for the commands that serve until stopped.
//! - [`exit`]: logging set-up, and how an error is told and the command ends.

pub mod dashboard;
pub mod evaluate;
pub mod exit;
pub mod export;
pub mod init;
pub mod issue;
pub mod plot;
pub mod predict;
pub mod privacy;
pub mod revoke;
pub mod rounds;
pub mod run_state;
pub mod runs;
pub mod serve;
pub mod serve_study;
pub mod signal;
pub mod trials;
pub mod tune;

/// Runs `work` on a blocking thread.
pub async fn blocking(work: impl FnOnce() -> anyhow::Result<()> + Send + 'static) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(work).await?
}

/// `--db` and one run in it, as `export` and `plot` take them: `--run ID` or `--study ID`.
#[derive(clap::Args)]
pub struct RunInStore {
    /// The store.
    #[arg(long)]
    pub db: std::path::PathBuf,
    /// The run's id (see `runs`).
    #[arg(long, conflicts_with = "study", required_unless_present = "study")]
    run: Option<fedtune_store::RunId>,
    /// The study's id (see `runs`).
    #[arg(long)]
    study: Option<fedtune_store::RunId>,
}

impl RunInStore {
    /// The id given, and whether it was given as `--study`.
    ///
    /// # Errors
    /// When neither was given (clap refuses that before; this keeps the type honest).
    pub fn id(&self) -> anyhow::Result<(fedtune_store::RunId, bool)> {
        match (self.run, self.study) {
            (Some(run), _) => Ok((run, false)),
            (None, Some(study)) => Ok((study, true)),
            (None, None) => anyhow::bail!("give --run or --study"),
        }
    }
}
