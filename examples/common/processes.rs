//! Benchmarks that run the aggregator and the agents in separate processes, as in a
//! deployment: the PKI they share on disk, and the aggregator's port handed over in a file
//! next to its result.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::bail;
use fedtune::aggregator::identity::{FederationPki, Identity, load_ca_certificate, load_identity};

/// How long an aggregator process may take to bind and announce its port.
const PORT_TIMEOUT: Duration = Duration::from_secs(30);

/// The CA certificate and the server's identity in `dir`, as
/// [`FederationPki::write_to_dir`] lays them out.
pub fn pki_files(dir: &Path) -> anyhow::Result<(String, Identity)> {
    Ok((
        load_ca_certificate(&dir.join("ca.pem"))?,
        load_identity(&dir.join("server.pem"), &dir.join("server.key"))?,
    ))
}

/// The CA, the server and the first `n` agents' identities from `dir`; agents need no CA
/// key, so it is left empty.
pub fn load_agents(dir: &Path, n: usize) -> anyhow::Result<FederationPki> {
    let (ca, server) = pki_files(dir)?;
    let agents = (0..n)
        .map(|i| {
            let id = fedtune::sim::agent_id(i);
            let agents = dir.join("agents");
            Ok((
                id.clone(),
                load_identity(&agents.join(format!("{id}.pem")), &agents.join(format!("{id}.key")))?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(FederationPki {
        ca_cert_pem: ca,
        ca_key_pem: String::new(),
        server,
        agents,
    })
}

fn port_file(out: &Path) -> PathBuf {
    out.with_extension("port")
}

/// Called by the aggregator process that will write its result to `out`: tells the parent
/// which port it listens on. Written aside and renamed, so the parent never reads half.
pub fn announce_port(out: &Path, port: u16) -> anyhow::Result<()> {
    let aside = out.with_extension("port.tmp");
    std::fs::write(&aside, port.to_string())?;
    std::fs::rename(&aside, port_file(out))?;
    Ok(())
}

/// Waits for the port announced by `aggregator`, the child process that will write its
/// result to `out`; kills it when it does not announce one in time.
pub fn wait_for_port(out: &Path, aggregator: &mut Child) -> anyhow::Result<u16> {
    let started = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(port_file(out))
            && let Ok(port) = text.trim().parse()
        {
            return Ok(port);
        }
        if let Some(status) = aggregator.try_wait()? {
            bail!("the aggregator exited with {status} before listening");
        }
        if started.elapsed() > PORT_TIMEOUT {
            let _ = aggregator.kill();
            bail!("the aggregator did not listen within {PORT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
