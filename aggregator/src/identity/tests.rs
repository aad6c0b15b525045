use std::time::Duration;

use super::*;
use crate::tls::{agent_id_from_certificate, server_config};
use crate::transport::TransportTuning;

fn ids(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "fedtune-identity-{name}-{}-{}",
        std::process::id(),
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
    ));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn parse(pem: &str) -> CertificateDer<'static> {
    first_certificate(pem, "test").expect("a certificate")
}

#[test]
fn agent_ids_follow_the_naming_rule() {
    for good in ["a", "agent-1", "edge_07.site-b", "A.B_C-d9", &"x".repeat(64)] {
        assert!(validate_agent_id(good).is_ok(), "{good:?} should be valid");
    }
    for bad in [
        "",
        &"x".repeat(65),
        "agent 1",
        "agent/1",
        "../ca",
        "agent\n",
        "agént",
        "a:b",
    ] {
        let err = validate_agent_id(bad).expect_err(bad);
        assert!(matches!(err, IdentityError::InvalidAgentId { .. }), "{bad:?}: {err}");
    }
}

#[test]
fn generate_issues_cn_per_agent_and_server_sans() {
    let pki = generate(&ids(&["agent-1", "agent_2"]), &ids(&["localhost", "127.0.0.1"])).expect("generate");
    assert_eq!(pki.agents.len(), 2);
    for (id, identity) in &pki.agents {
        let der = parse(&identity.cert_pem);
        assert_eq!(&agent_id_from_certificate(&der).expect("agent id"), id);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
        let eku = cert.extended_key_usage().expect("eku").expect("eku present");
        assert!(eku.value.client_auth && !eku.value.server_auth);
    }

    let ca_der = parse(&pki.ca_cert_pem);
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).expect("ca");
    assert!(ca.is_ca());
    let ku = ca.key_usage().expect("ku").expect("ku present");
    assert!(ku.value.key_cert_sign());
    let server_der = parse(&pki.server.cert_pem);
    let (_, server) = x509_parser::parse_x509_certificate(&server_der).expect("server");
    assert_eq!(server.issuer().as_raw(), ca.subject().as_raw());
    let sans = server.subject_alternative_name().expect("san").expect("san present");
    use x509_parser::extensions::GeneralName;
    let names = &sans.value.general_names;
    assert!(names.contains(&GeneralName::DNSName("localhost")), "{names:?}");
    assert!(names.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])), "{names:?}");
    // The server certificate must not be usable as an agent identity.
    assert!(agent_id_from_certificate(&parse(&pki.server.cert_pem)).is_err());
    // Debug output never leaks private keys.
    let debug = format!("{pki:?}");
    assert!(!debug.contains("PRIVATE KEY"), "{debug}");
}

#[test]
fn generate_rejects_bad_input() {
    let names = ids(&["localhost"]);
    assert!(matches!(
        generate(&ids(&["a", "b", "a"]), &names),
        Err(IdentityError::DuplicateAgentId(id)) if id == "a"
    ));
    assert!(matches!(
        generate(&ids(&["bad id"]), &names),
        Err(IdentityError::InvalidAgentId { .. })
    ));
    assert!(matches!(generate(&ids(&["a"]), &[]), Err(IdentityError::NoServerNames)));
    assert!(matches!(
        generate(&ids(&["a"]), &ids(&["bad name\u{e9}"])),
        Err(IdentityError::InvalidServerName { .. })
    ));
}

#[test]
fn write_then_reload_round_trips_and_never_overwrites() {
    let dir = temp_dir("roundtrip");
    let pki = generate(&ids(&["a1", "a2"]), &ids(&["localhost"])).expect("generate");
    pki.write_to_dir(&dir).expect("write");

    let server = load_identity(&dir.join("server.pem"), &dir.join("server.key")).expect("load server");
    assert_eq!(server, pki.server);
    let a2 = load_identity(&dir.join("agents/a2.pem"), &dir.join("agents/a2.key")).expect("load agent");
    assert_eq!(a2, pki.agents[1].1);
    assert_eq!(load_ca_certificate(&dir.join("ca.pem")).expect("ca"), pki.ca_cert_pem);
    assert!(load_ca_certificate(&dir.join("server.pem")).is_err());

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        for key in ["ca.key", "server.key", "agents/a1.key"] {
            let mode = fs::metadata(dir.join(key)).expect("key").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
    }

    // A second federation must not replace the first: every issued certificate would
    // stop working.
    let other = generate(&ids(&["a1"]), &ids(&["localhost"])).expect("generate");
    let err = other.write_to_dir(&dir).expect_err("must refuse");
    assert!(matches!(&err, IdentityError::AlreadyExists(p) if p.ends_with("ca.pem")));
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");
    assert_eq!(fs::read_to_string(dir.join("ca.pem")).expect("ca"), pki.ca_cert_pem);
    assert_eq!(
        fs::read_to_string(dir.join("agents/a1.key")).expect("key"),
        pki.agents[0].1.key_pem
    );

    // Writing one more agent also refuses to clobber an existing one.
    let err = pki.agents[0]
        .1
        .write_to(&dir.join("agents/a1.pem"), &dir.join("agents/a1.key"))
        .expect_err("must refuse");
    assert!(matches!(err, IdentityError::AlreadyExists(_)));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn load_errors_name_the_file() {
    let dir = temp_dir("load-errors");
    fs::create_dir_all(&dir).expect("dir");
    let cert = dir.join("cert.pem");
    let key = dir.join("cert.key");
    fs::write(&cert, "not pem at all").expect("write");
    fs::write(&key, "").expect("write");
    let err = load_identity(&cert, &key).expect_err("garbage");
    assert!(err.to_string().contains("certificate file"), "{err}");
    assert!(err.to_string().contains("cert.pem"), "{err}");

    let pki = generate(&ids(&["a"]), &ids(&["localhost"])).expect("generate");
    fs::write(&cert, &pki.agents[0].1.cert_pem).expect("write");
    let err = load_identity(&cert, &key).expect_err("empty key");
    assert!(err.to_string().contains("cert.key"), "{err}");
    assert!(err.to_string().contains("PRIVATE KEY"), "{err}");

    let err = load_identity(&dir.join("missing.pem"), &key).expect_err("missing");
    assert!(matches!(err, IdentityError::Io { .. }));
    assert!(err.to_string().contains("missing.pem"), "{err}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn issue_agent_chains_to_the_existing_ca() {
    let pki = generate(&ids(&["a1"]), &ids(&["localhost"])).expect("generate");
    let later = issue_agent(&pki.ca_cert_pem, &pki.ca_key_pem, "late-joiner").expect("issue");
    let der = parse(&later.cert_pem);
    assert_eq!(agent_id_from_certificate(&der).expect("id"), "late-joiner");

    let (_, leaf) = x509_parser::parse_x509_certificate(&der).expect("leaf");
    let ca_der = parse(&pki.ca_cert_pem);
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).expect("ca");
    // Signature and chain are checked by a real handshake in tests/mtls.rs.
    assert_eq!(leaf.issuer().as_raw(), ca.subject().as_raw());
    let aki = leaf
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.clone(),
            _ => None,
        })
        .expect("authority key identifier");
    let ski = ca
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(ski) => Some(ski.clone()),
            _ => None,
        })
        .expect("subject key identifier");
    assert_eq!(aki.0, ski.0);
}

#[test]
fn issue_agent_refuses_mismatched_or_non_ca_input() {
    let pki = generate(&ids(&["a1"]), &ids(&["localhost"])).expect("generate");
    let other = generate(&ids(&["a1"]), &ids(&["localhost"])).expect("generate");
    assert!(matches!(
        issue_agent(&pki.ca_cert_pem, &other.ca_key_pem, "x"),
        Err(IdentityError::CaKeyMismatch)
    ));
    assert!(matches!(
        issue_agent(&pki.agents[0].1.cert_pem, &pki.agents[0].1.key_pem, "x"),
        Err(IdentityError::BadCertificate { .. })
    ));
    assert!(matches!(
        issue_agent(&pki.ca_cert_pem, &pki.ca_key_pem, "no spaces please"),
        Err(IdentityError::InvalidAgentId { .. })
    ));
}

#[test]
fn tuning_is_validated_and_applied() {
    assert!(TransportTuning::default().validate().is_ok());
    assert!(TransportTuning::loopback().validate().is_ok());
    let bad = [
        TransportTuning {
            keep_alive_interval: Duration::from_secs(60),
            ..TransportTuning::default()
        },
        TransportTuning {
            max_idle_timeout: Duration::ZERO,
            ..TransportTuning::default()
        },
        TransportTuning {
            initial_mtu: 1000,
            ..TransportTuning::default()
        },
        TransportTuning {
            max_udp_payload_size: 65_535,
            ..TransportTuning::default()
        },
        TransportTuning {
            stream_receive_window: 1 << 30,
            ..TransportTuning::default()
        },
        TransportTuning {
            max_concurrent_bidi_streams: 0,
            ..TransportTuning::default()
        },
    ];
    for tuning in bad {
        assert!(
            matches!(tuning.validate(), Err(IdentityError::InvalidTransport { .. })),
            "{tuning:?}"
        );
    }
    let endpoint = TransportTuning::loopback().endpoint_config().expect("endpoint");
    assert_eq!(endpoint.get_max_udp_payload_size(), u64::from(LOOPBACK_UDP_PAYLOAD));
}

#[test]
fn server_config_rejects_mismatched_key() {
    let pki = generate(&ids(&["a1"]), &ids(&["localhost"])).expect("generate");
    let wrong = Identity {
        cert_pem: pki.server.cert_pem.clone(),
        key_pem: pki.agents[0].1.key_pem.clone(),
    };
    assert!(matches!(
        server_config(&pki.ca_cert_pem, &wrong, &TransportTuning::default(), None),
        Err(IdentityError::Tls(_))
    ));
    assert!(server_config(&pki.ca_cert_pem, &pki.server, &TransportTuning::default(), None).is_ok());
}

#[test]
fn agents_are_refused_when_expired_not_yet_valid_revoked_or_from_another_ca() {
    use crate::revocation::{RevocationList, fingerprint};
    use rustls::pki_types::UnixTime;
    use rustls::{CertificateError, Error};
    let pki = generate(&ids(&["a1"]), &ids(&["localhost"])).expect("generate");
    let today = days_since_epoch_now();
    let issue = |id: &str, day: i64| {
        parse(
            &issue_agent_dated(&pki.ca_cert_pem, &pki.ca_key_pem, id, day)
                .unwrap()
                .cert_pem,
        )
    };
    let dir = temp_dir("verifier");
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("revoked.txt");
    let revoked_cert = issue("revoked", today);
    std::fs::write(&path, fingerprint(&revoked_cert)).unwrap();
    let list = std::sync::Arc::new(RevocationList::open(&path).unwrap());
    let verifier = crate::tls::client_verifier(&pki.ca_cert_pem, Some(list)).unwrap();
    let verify = |der: &CertificateDer<'_>| verifier.verify_client_cert(der, &[], UnixTime::now());
    assert!(verify(&parse(&pki.agents[0].1.cert_pem)).is_ok());
    assert!(verify(&issue("fresh", today)).is_ok());
    // Issued six years ago with five years' validity; issued a year from now.
    assert!(matches!(
        verify(&issue("old", today - 6 * 365)),
        Err(Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. }
        ))
    ));
    assert!(matches!(
        verify(&issue("early", today + 365)),
        Err(Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }
        ))
    ));
    assert!(matches!(
        verify(&revoked_cert),
        Err(Error::InvalidCertificate(CertificateError::Revoked))
    ));
    let other = generate(&ids(&["a1"]), &ids(&["localhost"])).expect("generate");
    assert!(matches!(
        verify(&parse(&other.agents[0].1.cert_pem)),
        Err(Error::InvalidCertificate(CertificateError::UnknownIssuer))
    ));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn civil_dates() {
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    assert_eq!(civil_from_days(20_000), (2024, 10, 4));
    assert_eq!(civil_from_days(-1), (1969, 12, 31));
}
