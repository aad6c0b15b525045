//! `fedtune-aggregator revoke`: an agent's certificate fingerprint appended to
//! `<pki>/revoked.txt`, which a running aggregator re-reads.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use fedtune_aggregator::identity::validate_agent_id;
use fedtune_aggregator::revocation::fingerprint;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// The arguments of `revoke`.
#[derive(clap::Args)]
pub struct Args {
    /// Directory made by `init`.
    #[arg(long)]
    pki: PathBuf,
    /// Agent id (its certificate is `<pki>/agents/<id>.pem`).
    #[arg(long)]
    agent: String,
}

/// Revokes `--agent`; says so, and changes nothing, when it already is.
pub fn run(args: Args) -> anyhow::Result<()> {
    let Args { pki, agent } = args;
    validate_agent_id(&agent)?;
    let cert = pki.join("agents").join(format!("{agent}.pem"));
    let pem = std::fs::read_to_string(&cert).with_context(|| format!("reading {}", cert.display()))?;
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .with_context(|| format!("{} holds no certificate", cert.display()))?
        .with_context(|| format!("{} holds no readable certificate", cert.display()))?;
    let entry = fingerprint(&der);
    let list = pki.join("revoked.txt");
    let existing = std::fs::read_to_string(&list).unwrap_or_default();
    if existing
        .lines()
        .any(|l| l.split('#').next().unwrap_or("").trim() == entry)
    {
        println!("{agent} is already revoked in {}", list.display());
    } else {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&list)
            .with_context(|| format!("writing {}", list.display()))?;
        writeln!(file, "{entry}  # {agent}")?;
        println!("revoked {agent} ({entry}) in {}", list.display());
    }
    println!(
        "an aggregator whose [pki] ca_cert is {} refuses {agent} at its next handshake, running or not \
         (unless its [pki] revoked names another file)",
        pki.join("ca.pem").display()
    );
    Ok(())
}
