//! The client side of mutual TLS: an agent trusts only the federation CA and proves its
//! identity with the certificate the federation issued it (its subject common name is the
//! agent id).
//!
//! TLS 1.3 only, with the *ring* provider passed explicitly (never a process-wide default).
//! The aggregator's side, and the tool that issues these certificates, live in
//! `fedtune_aggregator::identity`; the transport numbers here mirror its `TransportTuning`
//! because this crate does not depend on the aggregator.

use std::sync::Arc;

use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub use fedtune_protocol::transport::{ALPN, LOOPBACK_UDP_PAYLOAD};
use fedtune_protocol::transport::{
    DISCOVERY_UPPER_BOUND, IDLE_TIMEOUT, KEEP_ALIVE_INTERVAL, LINUX_MAX_UDP_SEND, MAX_CONCURRENT_BIDI_STREAMS,
    MIN_UDP_PAYLOAD, SOCKET_BUFFER_BYTES, windows,
};

/// What can go wrong building the agent's TLS configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// PEM text could not be decoded.
    #[error("{what}: not valid PEM: {source}")]
    Pem {
        /// Which input: `CA certificate`, `agent certificate` or `agent key`.
        what: &'static str,
        /// The decoder's reason.
        source: rustls::pki_types::pem::Error,
    },
    /// PEM text holds no block of the expected kind.
    #[error("{what}: no {expected} found in the PEM text")]
    MissingPem {
        /// Which input.
        what: &'static str,
        /// The PEM block that was expected, e.g. `CERTIFICATE`.
        expected: &'static str,
    },
    /// rustls rejected the CA, the certificate or the key (e.g. a key that does not belong
    /// to the certificate).
    #[error("building the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The TLS configuration lacks the cipher suite QUIC needs for its initial packets.
    #[error("the TLS configuration cannot be used for QUIC: {0}")]
    Quic(#[from] NoInitialCipherSuite),
    /// The UDP socket could not be bound or wrapped into an endpoint.
    #[error("binding the UDP socket {addr}: {source}")]
    Socket {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
}

/// The agent's QUIC client configuration: TLS 1.3 with the *ring* provider, the federation
/// CA as the only root, this agent's certificate for client authentication, ALPN [`ALPN`].
///
/// Connect with the server name that is in the aggregator's certificate (e.g. `localhost`).
///
/// # Errors
/// [`TlsError::Pem`] or [`TlsError::MissingPem`] for unreadable PEM; [`TlsError::Tls`] if
/// rustls rejects the CA, the certificate or the key.
pub fn client_config(
    ca_cert_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, TlsError> {
    let chain = certificates(cert_pem, "agent certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::MissingPem {
            what: "agent key",
            expected: "PRIVATE KEY",
        },
        source => TlsError::Pem {
            what: "agent key",
            source,
        },
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_cert_pem)?)
        .with_client_auth_cert(chain, key)?;
    finish(tls, transport)
}

/// Like [`client_config`] but presenting no client certificate. The aggregator refuses such
/// connections; this exists to test that it does.
///
/// # Errors
/// As [`client_config`], for the CA certificate.
pub fn client_config_without_certificate(
    ca_cert_pem: &str,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_cert_pem)?)
        .with_no_client_auth();
    finish(tls, transport)
}

/// The agent's transport settings, from [`fedtune_protocol::transport`]: 5 s idle timeout
/// and 1 s keep-alive (a dead aggregator is noticed within 5 s), the agent's receive
/// windows (16 MiB per stream, 64 MiB per connection; see `transport::windows` for why
/// they differ from the aggregator's), 64 bidirectional streams. With `loopback`, packets are fixed at
/// [`LOOPBACK_UDP_PAYLOAD`] bytes without MTU discovery; otherwise they start at 1200 bytes and
/// MTU discovery searches up to 1452.
///
/// As on the aggregator, two quinn settings follow from the packet size because quinn's
/// defaults break with large packets: the initial congestion window is 10 packets (quinn's
/// fixed 12,000 bytes is less than one large packet, and then not even the first handshake
/// packet is sent), and segmentation offload is off once 10 packets no longer fit in one
/// 64 KiB UDP send (Linux refuses the batch; black-hole detection then drops the MTU to 1200).
pub fn default_transport(loopback: bool) -> quinn::TransportConfig {
    let initial_mtu = if loopback {
        LOOPBACK_UDP_PAYLOAD
    } else {
        MIN_UDP_PAYLOAD
    };
    let largest_mtu = if loopback {
        LOOPBACK_UDP_PAYLOAD
    } else {
        DISCOVERY_UPPER_BOUND
    };
    let mut cubic = quinn::congestion::CubicConfig::default();
    cubic.initial_window(10 * u64::from(initial_mtu));
    let mut config = quinn::TransportConfig::default();
    config
        .max_idle_timeout(Some(quinn::VarInt::from_u32(IDLE_TIMEOUT.as_millis() as u32).into()))
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL))
        .stream_receive_window(varint(windows::AGENT_STREAM))
        .receive_window(varint(windows::AGENT_CONNECTION))
        .send_window(windows::SEND)
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_CONCURRENT_BIDI_STREAMS))
        .initial_mtu(initial_mtu)
        .congestion_controller_factory(Arc::new(cubic))
        .enable_segmentation_offload(usize::from(largest_mtu) * 10 <= LINUX_MAX_UDP_SEND);
    if loopback {
        config.mtu_discovery_config(None);
    } else {
        let mut mtud = quinn::MtuDiscoveryConfig::default();
        mtud.upper_bound(DISCOVERY_UPPER_BOUND);
        config.mtu_discovery_config(Some(mtud));
    }
    config
}

fn varint(n: u64) -> quinn::VarInt {
    quinn::VarInt::from_u64(n).unwrap_or(quinn::VarInt::MAX)
}

/// A client endpoint bound at `addr` (e.g. `0.0.0.0:0`) with [`default_endpoint_config`] and
/// 4 MiB socket buffers (the OS default, often 208 KiB, drops packets in bursts; Linux caps the
/// request at `net.core.rmem_max` / `wmem_max`). Must be called inside a tokio runtime.
///
/// # Errors
/// [`TlsError::Socket`] if the address cannot be bound or there is no tokio runtime.
pub fn client_endpoint(addr: std::net::SocketAddr, loopback: bool) -> Result<quinn::Endpoint, TlsError> {
    let socket_error = |source| TlsError::Socket { addr, source };
    let socket = std::net::UdpSocket::bind(addr).map_err(socket_error)?;
    // Best effort: a smaller buffer only costs throughput.
    if let Ok(state) = quinn::udp::UdpSocketState::new((&socket).into()) {
        if let Err(e) = state.set_recv_buffer_size((&socket).into(), SOCKET_BUFFER_BYTES) {
            tracing::debug!(error = %e, "cannot set UDP receive buffer");
        }
        if let Err(e) = state.set_send_buffer_size((&socket).into(), SOCKET_BUFFER_BYTES) {
            tracing::debug!(error = %e, "cannot set UDP send buffer");
        }
    }
    let runtime = quinn::default_runtime().ok_or_else(|| {
        socket_error(std::io::Error::other(
            "no async runtime: create endpoints inside a tokio runtime",
        ))
    })?;
    quinn::Endpoint::new(default_endpoint_config(loopback), None, socket, runtime).map_err(socket_error)
}

/// The agent's endpoint settings. With `loopback`, the endpoint accepts
/// [`LOOPBACK_UDP_PAYLOAD`]-byte packets; large packets flow in a direction only if the
/// receiving endpoint accepts them, so use this together with `default_transport(true)`.
/// Create the endpoint with `quinn::Endpoint::new(default_endpoint_config(..), None, socket,
/// runtime)`.
pub fn default_endpoint_config(loopback: bool) -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    if loopback {
        // Cannot fail: the value is a constant inside quinn's 1200..=65527.
        let _ = config.max_udp_payload_size(LOOPBACK_UDP_PAYLOAD);
    }
    config
}

fn finish(
    mut tls: rustls::ClientConfig,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, TlsError> {
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport);
    Ok(config)
}

fn roots(ca_cert_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in certificates(ca_cert_pem, "CA certificate")? {
        roots.add(ca)?;
    }
    Ok(roots)
}

fn certificates(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { what, source })?;
    if chain.is_empty() {
        return Err(TlsError::MissingPem {
            what,
            expected: "CERTIFICATE",
        });
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport() -> Arc<quinn::TransportConfig> {
        Arc::new(default_transport(false))
    }

    #[test]
    fn missing_pem_is_reported_per_input() {
        let err = client_config_without_certificate("", transport()).expect_err("empty CA");
        assert!(
            matches!(
                err,
                TlsError::MissingPem {
                    what: "CA certificate",
                    ..
                }
            ),
            "{err}"
        );
        let err = client_config("", "", "", transport()).expect_err("empty cert");
        assert!(
            matches!(
                err,
                TlsError::MissingPem {
                    what: "agent certificate",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn broken_pem_is_reported() {
        let broken = "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n";
        let err = client_config_without_certificate(broken, transport()).expect_err("broken");
        assert!(matches!(err, TlsError::Pem { .. }), "{err}");
    }

    #[test]
    fn loopback_endpoint_accepts_large_packets() {
        assert_eq!(
            default_endpoint_config(true).get_max_udp_payload_size(),
            u64::from(LOOPBACK_UDP_PAYLOAD)
        );
        assert_eq!(default_endpoint_config(false).get_max_udp_payload_size(), 1472);
    }
}
