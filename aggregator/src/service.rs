//! Starting the service from its configuration: PKI files to a bound QUIC endpoint.

use std::net::SocketAddr;

use crate::config::AggregatorConfig;
use crate::identity::{Identity, IdentityError, TransportTuning, load_ca_certificate, load_identity, server_config};

/// Binds a QUIC server endpoint on `addr` that requires agent certificates signed by
/// the CA in `ca_cert_pem`.
///
/// # Errors
/// [`IdentityError`] for bad certificates or tuning, or when the socket cannot be bound.
pub fn bind(
    addr: SocketAddr,
    ca_cert_pem: &str,
    identity: &Identity,
    tuning: &TransportTuning,
) -> Result<quinn::Endpoint, IdentityError> {
    tuning.endpoint(addr, Some(server_config(ca_cert_pem, identity, tuning)?))
}

/// Loads the PKI files a configuration names and binds its listen address.
///
/// # Errors
/// As [`bind`], plus unreadable PKI files.
pub fn bind_from_config(config: &AggregatorConfig) -> Result<quinn::Endpoint, IdentityError> {
    let ca = load_ca_certificate(&config.pki.ca_cert)?;
    let identity = load_identity(&config.pki.cert, &config.pki.key)?;
    let tuning = if config.federation.loopback {
        TransportTuning::loopback()
    } else {
        TransportTuning::default()
    };
    bind(config.listen, &ca, &identity, &tuning)
}
