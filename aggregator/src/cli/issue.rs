//! `fedtune-aggregator issue`: one more agent certificate from an existing federation CA.

use std::path::PathBuf;

use anyhow::Context;
use fedtune_aggregator::identity::{issue_agent, load_ca_certificate, validate_agent_id};

/// The arguments of `issue`.
#[derive(clap::Args)]
pub struct Args {
    /// Directory made by `init`.
    #[arg(long)]
    pki: PathBuf,
    /// Agent id (the certificate's common name).
    #[arg(long)]
    agent: String,
}

/// Writes `<pki>/agents/<agent>.pem` and its key.
pub fn run(args: Args) -> anyhow::Result<()> {
    let Args { pki, agent } = args;
    validate_agent_id(&agent)?;
    let ca_cert = load_ca_certificate(&pki.join("ca.pem"))?;
    let ca_key = std::fs::read_to_string(pki.join("ca.key"))
        .with_context(|| format!("reading {}", pki.join("ca.key").display()))?;
    let identity = issue_agent(&ca_cert, &ca_key, &agent)?;
    let dir = pki.join("agents");
    std::fs::create_dir_all(&dir)?;
    identity.write_to(&dir.join(format!("{agent}.pem")), &dir.join(format!("{agent}.key")))?;
    println!("issued {agent} in {}", dir.display());
    Ok(())
}
