//! The verifier of agents' certificates that [`crate::tls::server_config`] installs: the
//! federation CA's verdict (and the revocation list's), and a log line for every refusal
//! that names the agent and says why.
//!
//! A refused agent never reaches the accept loop: rustls ends its handshake, and quinn
//! reports no more than the TLS alert and the remote address. The certificate is at hand
//! only here, so this is where a refusal is logged: the agent id the certificate was issued
//! to (its subject common name — as the certificate claims it, since a refused certificate
//! proves nothing), its issuer, serial and fingerprint, and the reason in words.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::revocation::{RevocationList, fingerprint};

/// Wraps the federation CA's verifier (which also refuses expired and not-yet-valid
/// certificates): refuses what `revoked` lists before asking it, and logs, as a warning,
/// each certificate refused.
#[derive(Debug)]
pub struct NamingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Option<Arc<RevocationList>>,
}

impl NamingVerifier {
    /// Refuses what `revoked` lists, then what `inner` refuses, logging every refusal.
    #[must_use]
    pub fn new(inner: Arc<dyn ClientCertVerifier>, revoked: Option<Arc<RevocationList>>) -> Self {
        Self { inner, revoked }
    }
}

/// What a certificate says of itself, for a log line. Every field is text the certificate
/// carries: printed with `{:?}`, so control characters are escaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The subject common name: the agent id it was issued to.
    pub agent: String,
    /// The issuer's distinguished name.
    pub issuer: String,
    /// The serial number, as colon-separated hex.
    pub serial: String,
}

impl Claimed {
    /// Reads `der`; `None` when it does not parse as X.509.
    #[must_use]
    pub fn of(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let agent = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or("")
            .to_owned();
        Some(Self {
            agent,
            issuer: cert.issuer().to_string(),
            serial: cert.tbs_certificate.raw_serial_as_string(),
        })
    }
}

/// Why a certificate was refused, in words an operator can act on (rustls's own text
/// follows in parentheses).
#[must_use]
pub fn refusal_reason(error: &rustls::Error) -> String {
    use CertificateError as C;
    let words = match error {
        rustls::Error::InvalidCertificate(e) => match e {
            C::UnknownIssuer => "its certificate was issued by a CA this federation does not trust",
            C::Revoked => "its certificate is revoked: [pki] revoked lists it",
            C::Expired | C::ExpiredContext { .. } => "its certificate has expired: issue it a new one",
            C::NotValidYet | C::NotValidYetContext { .. } => "its certificate is not valid yet: is a clock wrong?",
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => "its certificate is not for client authentication",
            _ => "its certificate is not acceptable",
        },
        _ => "the TLS handshake failed",
    };
    format!("{words} ({error})")
}

impl ClientCertVerifier for NamingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verdict = if self.revoked.as_ref().is_some_and(|r| r.is_revoked(end_entity)) {
            Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
        } else {
            self.inner.verify_client_cert(end_entity, intermediates, now)
        };
        if let Err(error) = &verdict {
            let reason = refusal_reason(error);
            let fingerprint = fingerprint(end_entity);
            match Claimed::of(end_entity) {
                Some(Claimed { agent, issuer, serial }) => tracing::warn!(
                    agent = ?agent,
                    %fingerprint,
                    "refused agent {agent:?} at the handshake: {reason}; issuer {issuer:?}, serial {serial}"
                ),
                None => {
                    tracing::warn!(%fingerprint, "refused a certificate that is not X.509 at the handshake: {reason}")
                }
            }
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::generate;
    use rustls::pki_types::pem::PemObject as _;

    #[test]
    fn a_certificate_names_the_agent_it_was_issued_to() {
        let pki = generate(&["agent-7".to_owned()], &["localhost".to_owned()]).unwrap();
        let der = CertificateDer::from_pem_slice(pki.agents[0].1.cert_pem.as_bytes()).unwrap();
        let claimed = Claimed::of(&der).unwrap();
        assert_eq!(claimed.agent, "agent-7");
        assert!(claimed.issuer.contains("fedtune federation CA"), "{claimed:?}");
        assert!(!claimed.serial.is_empty());
        assert_eq!(Claimed::of(b"not a certificate"), None);
    }

    #[test]
    fn refusals_are_worded_for_the_operator() {
        let reason = |e: CertificateError| refusal_reason(&rustls::Error::InvalidCertificate(e));
        assert!(
            reason(CertificateError::UnknownIssuer)
                .starts_with("its certificate was issued by a CA this federation does not trust")
        );
        assert!(reason(CertificateError::Revoked).starts_with("its certificate is revoked"));
        assert!(reason(CertificateError::Expired).starts_with("its certificate has expired"));
        assert!(reason(CertificateError::Expired).ends_with(&format!(
            "({})",
            rustls::Error::InvalidCertificate(CertificateError::Expired)
        )));
    }
}
