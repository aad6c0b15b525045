//! The aggregator's side of mutual TLS: its QUIC server configuration, and the agent id
//! an accepted connection's certificate carries.

use std::sync::Arc;

use quinn::crypto::rustls::QuicServerConfig;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;

use crate::identity::{Identity, IdentityError, bad, certificate_chain, private_key, validate_agent_id};
use crate::revocation::RevocationList;
use crate::transport::TransportTuning;
use crate::verifier::NamingVerifier;
use fedtune_protocol::transport::ALPN;

/// The aggregator's QUIC server configuration: TLS 1.3 with the *ring* provider, ALPN
/// [`ALPN`], and client certificates **required** and verified against the federation CA.
///
/// 0-RTT stays disabled: early data could be replayed by anyone who captured it.
/// Certificates on `revoked` are refused before the CA is asked; expired and
/// not-yet-valid ones are refused by the CA's verifier.
///
/// # Errors
/// [`IdentityError::InvalidTransport`] for bad tuning; [`IdentityError::Pem`],
/// [`IdentityError::MissingPem`] for unreadable PEM; [`IdentityError::Tls`] if rustls rejects
/// the CA, the certificate or the key (e.g. a key that does not match the certificate).
pub fn server_config(
    ca_cert_pem: &str,
    identity: &Identity,
    transport: &TransportTuning,
    revoked: Option<Arc<RevocationList>>,
) -> Result<quinn::ServerConfig, IdentityError> {
    transport.validate()?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = client_verifier(ca_cert_pem, revoked)?;
    let chain = certificate_chain(&identity.cert_pem, "server certificate")?;
    let key = private_key(&identity.key_pem, "server key")?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(Arc::new(transport.transport_config()));
    Ok(config)
}

/// The verifier of agents' certificates: chained to the federation CA, inside their
/// validity period, and not on `revoked`. Each refusal is logged naming the agent and the
/// reason ([`NamingVerifier`]).
///
/// # Errors
/// [`IdentityError::Pem`], [`IdentityError::MissingPem`] or [`IdentityError::Tls`] for a
/// CA certificate that cannot be used.
pub fn client_verifier(
    ca_cert_pem: &str,
    revoked: Option<Arc<RevocationList>>,
) -> Result<Arc<dyn ClientCertVerifier>, IdentityError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in certificate_chain(ca_cert_pem, "CA certificate")? {
        roots.add(ca)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
    Ok(Arc::new(NamingVerifier::new(verifier, revoked)))
}

/// The agent id of an accepted connection: the subject common name of the certificate the
/// peer authenticated with, checked with [`validate_agent_id`].
///
/// Trustworthy only on connections accepted by an endpoint built with [`server_config`],
/// which has already verified the certificate against the federation CA.
///
/// # Errors
/// [`IdentityError::NoPeerCertificate`] if the peer presented no certificate;
/// [`IdentityError::BadCertificate`] if it has no (or several) common names;
/// [`IdentityError::InvalidAgentId`] if the name is not a valid agent id.
pub fn peer_agent_id(connection: &quinn::Connection) -> Result<String, IdentityError> {
    let chain = connection
        .peer_identity()
        .ok_or(IdentityError::NoPeerCertificate)?
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| IdentityError::NoPeerCertificate)?;
    let leaf = chain.first().ok_or(IdentityError::NoPeerCertificate)?;
    agent_id_from_certificate(leaf)
}

/// The agent id in a DER certificate: its single subject common name, validated.
///
/// # Errors
/// [`IdentityError::BadCertificate`] if the certificate cannot be parsed or has no (or
/// several) common names; [`IdentityError::InvalidAgentId`] if the name is not a valid id.
pub fn agent_id_from_certificate(der: &[u8]) -> Result<String, IdentityError> {
    let what = "peer certificate";
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| bad(what, e))?;
    let mut names = cert.subject().iter_common_name();
    let name = names
        .next()
        .ok_or_else(|| bad(what, "its subject has no common name (CN)"))?;
    if names.next().is_some() {
        return Err(bad(
            what,
            "its subject has several common names (CN); expected exactly one",
        ));
    }
    let id = name
        .as_str()
        .map_err(|e| bad(what, format!("its common name is not a text string: {e}")))?;
    validate_agent_id(id)?;
    Ok(id.to_owned())
}
