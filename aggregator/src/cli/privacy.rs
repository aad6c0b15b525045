//! `fedtune-aggregator privacy`: plan a differentially private run with the RDP
//! accountant of the sampled Gaussian mechanism, as Opacus computes it.

use clap::Subcommand;
use fedtune_federation::privacy::{epsilon, noise_multiplier};

/// The arguments of `privacy`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    question: Question,
}

/// What `privacy` is asked.
#[derive(Subcommand, Debug)]
enum Question {
    /// ε at δ after `steps` rounds at a noise multiplier and sampling rate.
    Epsilon {
        /// σ: the noise's standard deviation over the clipping norm.
        #[arg(long)]
        noise_multiplier: f64,
        /// q: the chance an agent is in a round (cohort / agents).
        #[arg(long)]
        sample_rate: f64,
        /// Rounds.
        #[arg(long)]
        steps: u64,
        /// δ.
        #[arg(long)]
        delta: f64,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The smallest noise multiplier (to Opacus's 0.01 tolerance in ε) that keeps ε at
    /// most `--epsilon` after `steps` rounds.
    Noise {
        /// The ε budget.
        #[arg(long)]
        epsilon: f64,
        /// δ.
        #[arg(long)]
        delta: f64,
        /// q: the chance an agent is in a round (cohort / agents).
        #[arg(long)]
        sample_rate: f64,
        /// Rounds.
        #[arg(long)]
        steps: u64,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Answers the question, as a line of text or one JSON object.
pub fn run(args: Args) -> anyhow::Result<()> {
    let (spent, json) = match args.question {
        Question::Epsilon {
            noise_multiplier,
            sample_rate,
            steps,
            delta,
            json,
        } => (epsilon(noise_multiplier, sample_rate, steps, delta)?, json),
        Question::Noise {
            epsilon,
            delta,
            sample_rate,
            steps,
            json,
        } => (noise_multiplier(epsilon, delta, sample_rate, steps)?, json),
    };
    if json {
        println!("{}", serde_json::to_string(&spent)?);
    } else {
        println!(
            "ε = {:.5} at δ = {} after {} rounds, noise multiplier σ = {:.4}, sampling rate q = {} (RDP order {})",
            spent.epsilon, spent.delta, spent.steps, spent.noise_multiplier, spent.sample_rate, spent.order
        );
    }
    Ok(())
}
