//! An agent that the TLS handshake refuses stops at once and says why, instead of
//! retrying as if the network had failed: its certificate is another CA's, revoked or
//! expired (the aggregator refuses it), or it cannot verify the aggregator's. As
//! processes: the agent daemon exits non-zero with the reason, and `serve`'s log names the
//! refused agent and the reason.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fedtune::agent::client::{AgentError, Reconnect};
use fedtune::agent::refusal::Refusal;
use fedtune::aggregator::identity::{FederationPki, issue_agent_dated};
use fedtune::aggregator::revocation::{RevocationList, fingerprint};
use fedtune::aggregator::service::bind_with_revocation;
use fedtune::aggregator::transport::TransportTuning;
use fedtune::aggregator::{Hooks, run};
use fedtune::sim::{ephemeral_pki, spawn_agents_with};
use rustls::AlertDescription;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// Far below what 20 attempts with backoff take (over a minute), far above a handshake.
const PROMPTLY: Duration = Duration::from_secs(5);

fn days_since_epoch() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    (now.as_secs() / 86_400) as i64
}

/// Runs the agents of `agents` (certificates and trusted CA as given there) against an
/// aggregator of `pki` that revokes what `revoked` lists, with the default reconnection
/// policy (20 attempts); the agents' errors, as they came, and how long the slowest took.
async fn refused(
    pki: &FederationPki,
    agents: &FederationPki,
    revoked: &[&str],
    edit: impl Fn(usize, &mut fedtune::agent::client::AgentOptions),
) -> (Vec<AgentError>, Duration) {
    let dir = common::scratch_dir("refused");
    let list = dir.join("revoked.txt");
    let lines: String = revoked
        .iter()
        .map(|pem| format!("{}\n", fingerprint(&der(pem))))
        .collect();
    std::fs::write(&list, lines).unwrap();
    let revocation = Arc::new(RevocationList::open(&list).unwrap());
    let endpoint = bind_with_revocation(
        ([127, 0, 0, 1], 0).into(),
        &pki.ca_cert_pem,
        &pki.server,
        &TransportTuning::default(),
        Some(revocation),
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    let n = agents.agents.len();
    // Waits for one agent more than there are: none is ever let in.
    let mut config = common::config(n + 1, 1);
    config.listen = addr;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let aggregator = tokio::spawn(run(endpoint, config, Hooks::default(), stopped.clone()));
    let data = common::digits();
    let started = Instant::now();
    let mut running = spawn_agents_with(
        agents,
        addr,
        common::digits_trainers(&data, n),
        false,
        stopped,
        |i, o| {
            o.reconnect = Reconnect::default();
            edit(i, o);
        },
    )
    .unwrap();
    let mut errors = Vec::new();
    while let Some(exit) = tokio::time::timeout(Duration::from_secs(30), running.join_next())
        .await
        .expect("every agent stops")
    {
        errors.push(exit.unwrap().expect_err("a refused agent ends with an error"));
    }
    let took = started.elapsed();
    let _ = stop.send(true);
    let _ = aggregator.await;
    (errors, took)
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

fn refused_by_aggregator(error: &AgentError) -> AlertDescription {
    match error {
        AgentError::Handshake(refusal @ Refusal::ByAggregator { alert, .. }) => {
            let text = error.to_string();
            assert!(
                text.starts_with("the aggregator refused this agent's certificate"),
                "{text}"
            );
            assert_eq!(refusal.alert(), *alert);
            *alert
        }
        other => panic!("not refused by the aggregator: {other}"),
    }
}

#[tokio::test]
async fn agents_whose_certificate_the_aggregator_refuses_stop_at_once_saying_why() {
    let pki = ephemeral_pki(3).unwrap();
    let other_ca = ephemeral_pki(1).unwrap();
    // Five years' validity, issued six years ago.
    let expired = issue_agent_dated(
        &pki.ca_cert_pem,
        &pki.ca_key_pem,
        "agent-2",
        days_since_epoch() - 6 * 365,
    )
    .unwrap();
    let mut agents = pki.clone();
    agents.agents[0].1 = other_ca.agents[0].1.clone();
    agents.agents[2].1 = expired;
    let revoked = pki.agents[1].1.cert_pem.clone();

    let (errors, took) = refused(&pki, &agents, &[&revoked], |_, _| {}).await;
    let mut seen = Vec::new();
    for error in &errors {
        let text = error.to_string();
        let alert = refused_by_aggregator(error);
        let words = match alert {
            AlertDescription::UnknownCA => "it was issued by a CA that is not trusted",
            AlertDescription::CertificateRevoked => "it has been revoked",
            AlertDescription::CertificateExpired => "it has expired",
            other => panic!("unexpected alert {other:?}: {text}"),
        };
        assert!(text.contains(words), "{text}");
        seen.push(format!("{alert:?}"));
    }
    seen.sort();
    assert_eq!(seen, ["CertificateExpired", "CertificateRevoked", "UnknownCA"]);
    assert!(took < PROMPTLY, "the agents took {took:?} to stop");
}

#[tokio::test]
async fn an_agent_that_cannot_verify_the_aggregator_stops_at_once() {
    let pki = ephemeral_pki(2).unwrap();
    let other_ca = ephemeral_pki(1).unwrap();
    // Agent 0 trusts another CA only; agent 1 trusts the right CA but expects a name the
    // aggregator's certificate does not hold.
    let mut agents = pki.clone();
    agents.ca_cert_pem = other_ca.ca_cert_pem.clone();
    let mut trusting = pki.clone();
    trusting.agents.truncate(1);
    let (errors, took) = refused(&pki, &agents, &[], |_, _| {}).await;
    let (mismatched, took_too) = refused(&pki, &trusting, &[], |_, o| o.server_name = "elsewhere".into()).await;
    let expected = [
        (&errors[0], AlertDescription::UnknownCA),
        (&errors[1], AlertDescription::UnknownCA),
        (&mismatched[0], AlertDescription::BadCertificate),
    ];
    for (error, alert) in expected {
        let text = error.to_string();
        assert!(
            matches!(error, AgentError::Handshake(Refusal::OfAggregator { alert: a, .. }) if *a == alert),
            "{text}"
        );
        assert!(text.starts_with("cannot verify the aggregator's certificate"), "{text}");
    }
    assert!(
        took.max(took_too) < PROMPTLY,
        "the agents took {took:?} and {took_too:?} to stop"
    );
}

#[test]
fn the_agent_daemon_exits_non_zero_and_serve_names_the_refused_agents() {
    let dir = common::scratch_dir("refused-daemons");
    let pki = common::init_pki(&dir, 3);
    let other_ca = common::init_pki(&dir.join("other"), 1);
    let revoke = Command::new(common::binary("fedtune-aggregator"))
        .args(["revoke", "--pki"])
        .arg(&pki)
        .args(["--agent", "agent-1"])
        .output()
        .unwrap();
    assert!(revoke.status.success());
    let port = common::free_udp_port();
    let config = common::serve_config(&dir, port, |toml| {
        toml.replace("min_agents = 3", "min_agents = 4")
            .replace("# revoked = \"pki/revoked.txt\"", "revoked = \"pki/revoked.txt\"")
    });
    let serve = common::Serve::start(&config);
    common::wait_until(Duration::from_secs(30), "serve to listen", || {
        !serve.seen("serving on").is_empty()
    });
    // agent-0 with the other CA's certificate (the same name), agent-1 revoked.
    let foreign = common::agent_config(&dir, port, 0);
    let text = std::fs::read_to_string(&foreign).unwrap();
    let moved = other_ca.join("agents/agent-0");
    std::fs::write(&foreign, text.replace("pki/agents/agent-0", moved.to_str().unwrap())).unwrap();
    let revoked = common::agent_config(&dir, port, 1);
    for config in [&foreign, &revoked] {
        // The shipped policy: 20 attempts, not `agent_config`'s forever.
        let text = std::fs::read_to_string(config).unwrap();
        std::fs::write(config, text.replace("max_attempts = 0", "max_attempts = 20")).unwrap();
    }
    for (config, agent, says, logged) in [
        (
            foreign,
            "agent-0",
            "the aggregator refused this agent's certificate: it was issued by a CA that is not trusted",
            "its certificate was issued by a CA this federation does not trust",
        ),
        (
            revoked,
            "agent-1",
            "the aggregator refused this agent's certificate: it has been revoked",
            "its certificate is revoked",
        ),
    ] {
        let (ok, stderr, took) = agent_daemon(&dir, &config);
        assert!(!ok, "{agent} exited successfully: {stderr}");
        assert!(stderr.contains(says), "{agent}: {stderr}");
        assert!(took < Duration::from_secs(10), "{agent} took {took:?}");
        let named = format!("refused agent \"{agent}\" at the handshake: {logged}");
        common::wait_until(Duration::from_secs(5), "serve's log line", || {
            !serve.seen(&named).is_empty()
        });
    }
}

/// Runs `fedtune-agent run --config CONFIG` for at most 20 s; whether it succeeded, its
/// stderr, and how long it ran.
fn agent_daemon(dir: &std::path::Path, config: &std::path::Path) -> (bool, String, Duration) {
    let log = dir.join(format!("{}.log", config.file_stem().unwrap().to_string_lossy()));
    let started = Instant::now();
    let mut child = Command::new(common::binary("fedtune-agent"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut status = None;
    while status.is_none() && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
        status = child.try_wait().unwrap();
    }
    let took = started.elapsed();
    if status.is_none() {
        let _ = child.kill();
    }
    let _ = child.wait();
    let stderr = std::fs::read_to_string(&log).unwrap();
    (status.is_some_and(|s| s.success()), stderr, took)
}
