//! `fedtune-aggregator revoke`: an agent's certificate fingerprint goes into the PKI's
//! revocation list, once; `tls` refuses it (aggregator/tests/mtls.rs checks the handshake).

mod common;

use std::process::Command;

#[test]
fn revoke_appends_the_agents_fingerprint_once_and_refuses_bad_ids() {
    let dir = common::scratch_dir("revoke");
    let pki = common::init_pki(&dir, 2);
    let revoke = |agent: &str| {
        Command::new(common::binary("fedtune-aggregator"))
            .args(["revoke", "--pki"])
            .arg(&pki)
            .args(["--agent", agent])
            .output()
            .unwrap()
    };
    assert!(revoke("agent-1").status.success());
    assert!(revoke("agent-1").status.success());
    let text = std::fs::read_to_string(pki.join("revoked.txt")).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    let pem = std::fs::read_to_string(pki.join("agents/agent-1.pem")).unwrap();
    let der = {
        use rustls::pki_types::pem::PemObject as _;
        rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .unwrap()
            .unwrap()
    };
    let revoked = fedtune::aggregator::revocation::Revoked::parse(&text, &pki).unwrap();
    assert!(revoked.contains(&der));
    for bad in ["../agent-0", "nobody"] {
        let out = revoke(bad);
        assert!(!out.status.success(), "{bad}");
        assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
    }
}

/// With the shipped config, which names no `[pki] revoked`, `revoke` still takes effect:
/// the revoked agent never joins, the other trains.
#[test]
fn revocation_applies_with_the_shipped_config() {
    let dir = common::scratch_dir("revoke-shipped");
    let pki = common::init_pki(&dir, 2);
    let out = Command::new(common::binary("fedtune-aggregator"))
        .args(["revoke", "--pki"])
        .arg(&pki)
        .args(["--agent", "agent-1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let port = common::free_udp_port();
    let report = dir.join("report.json");
    let toml = std::fs::read_to_string(common::repo().join("config/aggregator.toml"))
        .unwrap()
        .replace("127.0.0.1:4433", &format!("127.0.0.1:{port}"))
        .replace("rounds = 30", "rounds = 2")
        .replace("min_agents = 3", "min_agents = 1")
        .replace("final_evaluation = true", "final_evaluation = false")
        .replace("aggregator-report.json", report.to_str().unwrap());
    assert!(
        !toml.contains("\nrevoked ="),
        "the shipped config names no revocation file"
    );
    std::fs::write(dir.join("aggregator.toml"), toml).unwrap();
    // The revoked agent is up first, so it would be in every cohort if it were let in.
    let mut revoked = common::agent_process(&common::agent_config(&dir, port, 1));
    let mut serve = Command::new(common::binary("fedtune-aggregator"))
        .args(["serve", "--config"])
        .arg(dir.join("aggregator.toml"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let mut allowed = common::agent_process(&common::agent_config(&dir, port, 0));
    let (ok, _) = common::wait_for_exit(&mut serve, std::time::Duration::from_secs(60));
    let _ = allowed.kill();
    let _ = revoked.kill();
    let _ = allowed.wait();
    let _ = revoked.wait();
    assert!(ok, "serve finished its rounds");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    for round in report["rounds"].as_array().unwrap() {
        let agents = round.to_string();
        assert!(agents.contains("agent-0"), "{round}");
        assert!(!agents.contains("agent-1"), "the revoked agent took part: {round}");
    }
}
