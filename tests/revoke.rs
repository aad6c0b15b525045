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
