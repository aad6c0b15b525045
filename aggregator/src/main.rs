//! `fedtune-aggregator`: create a federation's certificates, serve one, or run an
//! ask/tell study over JSON lines.
//!
//! This file parses the command line, sets up logging and hands each subcommand to its
//! module in [`cli`].

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

use cli::blocking;

#[derive(Parser)]
#[command(name = "fedtune-aggregator", version, about = "fedtune aggregator service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a federation CA, a server certificate and agent certificates.
    Init(cli::init::Args),
    /// Issue one more agent certificate from an existing federation CA.
    Issue(cli::issue::Args),
    /// Revoke an agent's certificate: append its SHA-256 fingerprint to `<pki>/revoked.txt`,
    /// which an aggregator with its CA in `<pki>` reads by default (`[pki] revoked`), re-reading
    /// it while running: the agent is refused at its next handshake.
    Revoke(cli::revoke::Args),
    /// Serve a federation as the configuration says.
    Serve(cli::serve::Args),
    /// Ask/tell over JSON lines for an objective run outside fedtune: writes trials on
    /// stdout, reads results on stdin (see the README).
    Tune(cli::tune::Args),
    /// List the runs and studies in a store (works while a run is live).
    Runs(cli::runs::Args),
    /// Show a run's committed rounds.
    Rounds(cli::rounds::Args),
    /// Show a study's trials.
    Trials(cli::trials::Args),
    /// Serve the web dashboard over a store, read-only (a finished run, or one that
    /// another process is running).
    Dashboard(cli::dashboard::Args),
    /// Export the per-agent rows (one per cohort member and round) of a run, or of every
    /// trial of a study.
    Export(cli::export::Args),
    /// Print the test accuracy and loss of a weights file (a fedtune run's final model,
    /// or one exported from PyTorch) on a dataset's test split.
    Evaluate(cli::evaluate::Args),
    /// Print each row's predicted class and class probabilities under a model fedtune
    /// produced (rows of a CSV or JSON Lines file: text for text models, features
    /// otherwise).
    Predict(cli::predict::Args),
    /// Plan a differentially private run: ε after some rounds at a noise multiplier, or
    /// the noise multiplier an ε budget needs (the RDP accountant of the sampled Gaussian
    /// mechanism, as Opacus computes it).
    Privacy(cli::privacy::Args),
    /// Write a run's charts (accuracy, loss, fairness by round) or a study's (optimisation
    /// history, intermediate values, Pareto front) as SVG and PNG files.
    Plot(cli::plot::Args),
}

fn main() -> ExitCode {
    cli::exit::init_logging();
    let command = Cli::parse().command;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return cli::exit::exit(Err(anyhow::Error::new(e).context("cannot start the async runtime"))),
    };
    cli::exit::exit(runtime.block_on(run(command)))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Init(args) => cli::init::run(args),
        Command::Issue(args) => cli::issue::run(args),
        Command::Revoke(args) => cli::revoke::run(args),
        Command::Serve(args) => cli::serve::run(args).await,
        Command::Tune(args) => cli::tune::run(args),
        // The store's clients block (PostgreSQL's on a runtime of its own), and so does
        // evaluating a model: off this runtime.
        Command::Runs(args) => blocking(move || cli::runs::run(args)).await,
        Command::Rounds(args) => blocking(move || cli::rounds::run(args)).await,
        Command::Trials(args) => blocking(move || cli::trials::run(args)).await,
        Command::Dashboard(args) => cli::dashboard::run(args).await,
        Command::Export(args) => blocking(move || cli::export::run(args)).await,
        Command::Evaluate(args) => blocking(move || cli::evaluate::run(args)).await,
        Command::Predict(args) => blocking(move || cli::predict::run(args)).await,
        Command::Privacy(args) => cli::privacy::run(args),
        Command::Plot(args) => blocking(move || cli::plot::run(args)).await,
    }
}
