//! Mutual TLS over real QUIC on 127.0.0.1: which clients the aggregator lets in, and how it
//! names them.
//!
//! The client side is built inline with rustls (the agent crate, which has the production
//! version in `fedtune_agent::tls`, is not a dependency of this crate).
//!
//! A client without an acceptable certificate may still see `connect()` succeed: in TLS 1.3
//! the client finishes its side of the handshake before the server has checked the client's
//! certificate. The refusal arrives as a connection close, so every refusal test opens a
//! stream and exchanges data before judging.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use fedtune_aggregator::identity::{self, ALPN, FederationPki, Identity};
use fedtune_aggregator::tls;
use fedtune_aggregator::transport::TransportTuning;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::mpsc;

const SERVER_NAME: &str = "localhost";
/// Generous bound so a refusal that never arrives fails the test instead of hanging it.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What the server saw of one incoming connection.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// Handshake completed; the agent id from the client certificate.
    Agent(String),
    /// Handshake failed; the reason.
    Refused(String),
}

struct Server {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<Seen>,
}

impl Server {
    async fn next_seen(&mut self) -> Result<Seen> {
        tokio::time::timeout(TIMEOUT, self.seen.recv())
            .await
            .context("server saw no connection")?
            .context("server stopped")
    }
}

fn federation(agents: &[&str]) -> Result<FederationPki> {
    let agents: Vec<String> = agents.iter().map(|s| (*s).to_owned()).collect();
    Ok(identity::generate(
        &agents,
        &[SERVER_NAME.to_owned(), "127.0.0.1".to_owned()],
    )?)
}

fn agent<'a>(pki: &'a FederationPki, id: &str) -> &'a Identity {
    &pki.agents
        .iter()
        .find(|(agent_id, _)| agent_id == id)
        .expect("agent in federation")
        .1
}

/// An aggregator endpoint that names each connection's agent and echoes every bi stream.
fn start_server(pki: &FederationPki, tuning: &TransportTuning) -> Result<Server> {
    start_server_revoking(pki, tuning, None)
}

/// As [`start_server`], refusing what `revoked` lists.
fn start_server_revoking(
    pki: &FederationPki,
    tuning: &TransportTuning,
    revoked: Option<Arc<fedtune_aggregator::revocation::RevocationList>>,
) -> Result<Server> {
    let config = tls::server_config(&pki.ca_cert_pem, &pki.server, tuning, revoked)?;
    let endpoint = tuning.endpoint(localhost(), Some(config))?;
    let addr = endpoint.local_addr()?;
    let (tx, seen) = mpsc::unbounded_channel();
    let accepting = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(connection) => {
                        let seen = match tls::peer_agent_id(&connection) {
                            Ok(id) => Seen::Agent(id),
                            Err(e) => Seen::Refused(format!("peer_agent_id: {e}")),
                        };
                        let _ = tx.send(seen);
                        while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                            let Ok(data) = recv.read_to_end(64 << 20).await else {
                                break;
                            };
                            if send.write_all(&data).await.is_err() || send.finish().is_err() {
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Seen::Refused(e.to_string()));
                    }
                }
            });
        }
    });
    Ok(Server { endpoint, addr, seen })
}

/// A client configuration like the agent's: ring, TLS 1.3, the given CA as the only root,
/// optionally a client certificate.
fn client_config(
    ca_cert_pem: &str,
    identity: Option<&Identity>,
    alpn: &[u8],
    tuning: &TransportTuning,
) -> Result<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_cert_pem.as_bytes()) {
        roots.add(ca?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut tls = match identity {
        Some(identity) => {
            let chain = CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(tuning.transport_config()));
    Ok(config)
}

fn client_endpoint(tuning: &TransportTuning) -> Result<quinn::Endpoint> {
    Ok(tuning.endpoint(localhost(), None)?)
}

fn localhost() -> SocketAddr {
    (Ipv4Addr::LOCALHOST, 0).into()
}

/// Connects, sends `payload` on a new bi stream and returns what comes back: the whole path
/// an agent takes, so a refusal anywhere along it shows up as an error.
async fn connect_and_echo(
    client: &quinn::Endpoint,
    config: quinn::ClientConfig,
    server: SocketAddr,
    payload: &[u8],
) -> Result<(quinn::Connection, Vec<u8>)> {
    let attempt = async {
        let connection = client.connect_with(config, server, SERVER_NAME)?.await?;
        let (mut send, mut recv) = connection.open_bi().await?;
        send.write_all(payload).await?;
        send.finish()?;
        let echoed = recv.read_to_end(payload.len() + 1).await?;
        anyhow::Ok((connection, echoed))
    };
    match tokio::time::timeout(TIMEOUT, attempt).await {
        Ok(result) => result,
        Err(_) => bail!("no answer within {TIMEOUT:?}: neither served nor refused"),
    }
}

/// Asserts the attempt failed because the connection was closed by TLS, not for some
/// unrelated reason (a timeout or a local misconfiguration would also be an `Err`).
fn assert_closed_by_tls(result: Result<(quinn::Connection, Vec<u8>)>) {
    let err = match result {
        Ok((_, echoed)) => panic!("the connection was served: {echoed:?}"),
        Err(err) => err,
    };
    let connection_error = err
        .chain()
        .find_map(|e| {
            e.downcast_ref::<quinn::ConnectionError>().cloned().or_else(|| {
                e.downcast_ref::<quinn::ReadToEndError>().and_then(|r| match r {
                    quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(c)) => Some(c.clone()),
                    _ => None,
                })
            })
        })
        .unwrap_or_else(|| panic!("not a connection error: {err:#}"));
    match &connection_error {
        quinn::ConnectionError::ConnectionClosed(close) => {
            let code = u64::from(close.error_code);
            // QUIC carries TLS alerts as CRYPTO_ERROR 0x100 + alert (RFC 9001 §4.8).
            assert!(
                (0x100..0x200).contains(&code),
                "closed, but not by a TLS alert: {connection_error}"
            );
        }
        quinn::ConnectionError::TransportError(e) => {
            // A locally detected TLS failure (the client refusing the server).
            let code = u64::from(e.code);
            assert!(
                (0x100..0x200).contains(&code),
                "local error, but not TLS: {connection_error}"
            );
        }
        other => panic!("connection failed for another reason: {other}"),
    }
}

/// Asserts the server's handshake failed for the expected reason.
fn assert_refused(seen: Seen, reason: &str) {
    assert!(
        matches!(&seen, Seen::Refused(why) if why.contains(reason)),
        "expected a refusal mentioning {reason:?}, server saw {seen:?}"
    );
}

#[tokio::test]
async fn agent_with_federation_certificate_is_served_and_named() -> Result<()> {
    let tuning = TransportTuning::default();
    let pki = federation(&["agent-1", "agent-2"])?;
    let mut server = start_server(&pki, &tuning)?;
    let client = client_endpoint(&tuning)?;

    let config = client_config(&pki.ca_cert_pem, Some(agent(&pki, "agent-2")), ALPN, &tuning)?;
    let (connection, echoed) = connect_and_echo(&client, config, server.addr, b"hello aggregator").await?;
    assert_eq!(echoed, b"hello aggregator");
    assert_eq!(server.next_seen().await?, Seen::Agent("agent-2".into()));
    assert_eq!(
        connection.handshake_data().and_then(|d| {
            d.downcast::<quinn::crypto::rustls::HandshakeData>()
                .ok()
                .and_then(|d| d.protocol)
        }),
        Some(ALPN.to_vec())
    );

    connection.close(0u32.into(), b"done");
    client.wait_idle().await;
    server.endpoint.close(0u32.into(), b"done");
    Ok(())
}

#[tokio::test]
async fn agent_issued_later_is_served_and_named() -> Result<()> {
    let tuning = TransportTuning::default();
    let pki = federation(&["agent-1"])?;
    let late = identity::issue_agent(&pki.ca_cert_pem, &pki.ca_key_pem, "late.joiner_3")?;
    let mut server = start_server(&pki, &tuning)?;
    let client = client_endpoint(&tuning)?;

    let config = client_config(&pki.ca_cert_pem, Some(&late), ALPN, &tuning)?;
    let (_, echoed) = connect_and_echo(&client, config, server.addr, b"ping").await?;
    assert_eq!(echoed, b"ping");
    assert_eq!(server.next_seen().await?, Seen::Agent("late.joiner_3".into()));
    Ok(())
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_at_the_handshake_and_the_list_is_reread() -> Result<()> {
    use fedtune_aggregator::revocation::{RevocationList, fingerprint};
    let tuning = TransportTuning::default();
    let pki = federation(&["agent-1", "agent-2"])?;
    let dir = std::env::temp_dir().join(format!("fedtune-mtls-revoked-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("revoked.txt");
    let der = |id: &str| -> Result<Vec<u8>> {
        let pem = &agent(&pki, id).cert_pem;
        Ok(CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .context("no certificate")??
            .to_vec())
    };
    std::fs::write(&path, format!("# revoked\n{}\n", fingerprint(&der("agent-2")?)))?;
    let list = Arc::new(RevocationList::open(&path)?);
    let mut server = start_server_revoking(&pki, &tuning, Some(list))?;
    let client = client_endpoint(&tuning)?;

    let one = || client_config(&pki.ca_cert_pem, Some(agent(&pki, "agent-1")), ALPN, &tuning);
    let two = client_config(&pki.ca_cert_pem, Some(agent(&pki, "agent-2")), ALPN, &tuning)?;
    let (_, echoed) = connect_and_echo(&client, one()?, server.addr, b"ping").await?;
    assert_eq!(echoed, b"ping");
    assert_eq!(server.next_seen().await?, Seen::Agent("agent-1".into()));
    assert_closed_by_tls(connect_and_echo(&client, two, server.addr, b"let me in").await);
    assert_refused(server.next_seen().await?, "invalid peer certificate: Revoked");

    // Revoking agent-1 too takes effect at its next handshake, without a restart.
    let mut text = std::fs::read_to_string(&path)?;
    text.push_str(&format!("{}  # agent-1\n", fingerprint(&der("agent-1")?)));
    std::fs::write(&path, text)?;
    assert_closed_by_tls(connect_and_echo(&client, one()?, server.addr, b"again").await);
    assert_refused(server.next_seen().await?, "invalid peer certificate: Revoked");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test]
async fn client_without_certificate_is_refused_on_first_stream() -> Result<()> {
    let tuning = TransportTuning::default();
    let pki = federation(&["agent-1"])?;
    let mut server = start_server(&pki, &tuning)?;
    let client = client_endpoint(&tuning)?;

    let config = client_config(&pki.ca_cert_pem, None, ALPN, &tuning)?;
    assert_closed_by_tls(connect_and_echo(&client, config, server.addr, b"let me in").await);
    assert_refused(server.next_seen().await?, "peer sent no certificates");
    Ok(())
}

#[tokio::test]
async fn client_with_certificate_from_another_ca_is_refused() -> Result<()> {
    let tuning = TransportTuning::default();
    let pki = federation(&["agent-1"])?;
    let intruder = federation(&["agent-1"])?;
    let mut server = start_server(&pki, &tuning)?;
    let client = client_endpoint(&tuning)?;

    // Trusts the real server, but its certificate (same agent id!) comes from another CA.
    let config = client_config(&pki.ca_cert_pem, Some(agent(&intruder, "agent-1")), ALPN, &tuning)?;
    assert_closed_by_tls(connect_and_echo(&client, config, server.addr, b"let me in").await);
    assert_refused(server.next_seen().await?, "UnknownIssuer");
    Ok(())
}

#[tokio::test]
async fn server_certificate_cannot_pose_as_an_agent() -> Result<()> {
    let tuning = TransportTuning::default();
    let pki = federation(&["agent-1"])?;
    let mut server = start_server(&pki, &tuning)?;
    let client = client_endpoint(&tuning)?;

    // Issued by the right CA, but for server authentication only.
    let config = client_config(&pki.ca_cert_pem, Some(&pki.server), ALPN, &tuning)?;
    assert_closed_by_tls(connect_and_echo(&client, config, server.addr, b"let me in").await);
    assert_refused(
        server.next_seen().await?,
        "does not allow extended key usage for client authentication",
    );
    Ok(())
}

#[tokio::test]
async fn client_speaking_another_protocol_is_refused() -> Result<()> {
    let tuning = TransportTuning::default();
    let pki = federation(&["agent-1"])?;
    let mut server = start_server(&pki, &tuning)?;
    let client = client_endpoint(&tuning)?;

    let config = client_config(&pki.ca_cert_pem, Some(agent(&pki, "agent-1")), b"h3", &tuning)?;
    assert_closed_by_tls(connect_and_echo(&client, config, server.addr, b"GET /").await);
    assert_refused(server.next_seen().await?, "protocol");
    Ok(())
}

#[tokio::test]
async fn agent_refuses_an_aggregator_from_another_federation() -> Result<()> {
    let tuning = TransportTuning::default();
    let pki = federation(&["agent-1"])?;
    let impostor = federation(&["agent-1"])?;
    let server = start_server(&impostor, &tuning)?;
    let client = client_endpoint(&tuning)?;

    let config = client_config(&pki.ca_cert_pem, Some(agent(&pki, "agent-1")), ALPN, &tuning)?;
    let result = connect_and_echo(&client, config, server.addr, b"secret").await;
    let message = match &result {
        Ok(_) => String::new(),
        Err(e) => format!("{e:#}"),
    };
    assert!(message.contains("UnknownIssuer"), "{message}");
    assert_closed_by_tls(result);
    Ok(())
}

/// Simulations rely on this: with the loopback tuning on both ends, 1 MiB moves in
/// near-64 KiB packets each way, and the packet size survives the transfer (no loss-triggered
/// fallback to 1200 bytes).
#[tokio::test]
async fn loopback_tuning_uses_large_packets_both_ways() -> Result<()> {
    let pki = federation(&["agent-1"])?;
    let payload: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();

    // Whatever size `loopback()` picks, the largest packet loopback carries must work too:
    // it needs the congestion-window and segmentation-offload settings to be right.
    let largest = TransportTuning {
        initial_mtu: 65_488,
        max_udp_payload_size: 65_488,
        ..TransportTuning::loopback()
    };
    for tuning in [TransportTuning::loopback(), largest, TransportTuning::default()] {
        let mut server = start_server(&pki, &tuning)?;
        let client = client_endpoint(&tuning)?;
        let config = client_config(&pki.ca_cert_pem, Some(agent(&pki, "agent-1")), ALPN, &tuning)?;
        let (connection, echoed) = connect_and_echo(&client, config, server.addr, &payload).await?;
        assert!(echoed == payload, "echo differs");
        assert_eq!(server.next_seen().await?, Seen::Agent("agent-1".into()));

        let stats = connection.stats();
        let sent_mtu = stats.path.current_mtu;
        let received_average = stats.udp_rx.bytes / stats.udp_rx.datagrams.max(1);
        if tuning.mtu_discovery_upper_bound.is_none() {
            assert_eq!(sent_mtu, tuning.initial_mtu, "{stats:?}");
            // Far above Ethernet-size packets (ACKs and handshake packets pull the average
            // down, so the packet size itself is not a usable bound).
            assert!(received_average > 3 * 1500, "{stats:?}");
        } else {
            assert!(sent_mtu <= 1452, "{stats:?}");
            assert!(received_average <= 1452, "{stats:?}");
        }
    }
    Ok(())
}
