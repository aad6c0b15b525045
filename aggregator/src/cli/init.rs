//! `fedtune-aggregator init`: a new federation's CA, server certificate and agent
//! certificates.

use std::path::PathBuf;

use fedtune_aggregator::identity::generate;

/// The arguments of `init`.
#[derive(clap::Args)]
pub struct Args {
    /// Directory to write the PKI into (must not already hold one).
    #[arg(long)]
    out: PathBuf,
    /// Number of agent certificates (ids `agent-0` … `agent-{N-1}`).
    #[arg(long, default_value_t = 3)]
    agents: usize,
    /// Names the server certificate is valid for.
    #[arg(long = "server-name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
    server_names: Vec<String>,
}

/// Writes the PKI into `--out`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let Args {
        out,
        agents,
        server_names,
    } = args;
    let ids: Vec<String> = (0..agents).map(|i| format!("agent-{i}")).collect();
    let pki = generate(&ids, &server_names)?;
    pki.write_to_dir(&out)?;
    println!("wrote CA, server and {agents} agent certificates to {}", out.display());
    Ok(())
}
