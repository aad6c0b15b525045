//! The federation's identities: one CA, one aggregator (server) certificate and one client
//! certificate per agent. The TLS configuration built from them is in `crate::tls`, the
//! QUIC transport settings in `crate::transport`.
//!
//! Trust model: the federation CA is the only root either side trusts. The aggregator requires
//! every agent to present a certificate issued by that CA (mutual TLS) and takes the agent's
//! identity from the certificate's subject common name, see `crate::tls::peer_agent_id`. Server and agent
//! certificates carry different extended key usages, so an agent's key cannot pose as the
//! aggregator and the aggregator's key cannot pose as an agent.
//!
//! Every TLS configuration here uses the *ring* provider explicitly and speaks TLS 1.3 only
//! (QUIC requires it); nothing depends on a process-wide default provider.
//!
//! On disk ([`FederationPki::write_to_dir`]):
//!
//! ```text
//! <dir>/ca.pem  ca.key  server.pem  server.key  agents/<id>.pem  agents/<id>.key
//! ```
//!
//! Key files are created with mode 0600 on Unix. Nothing is ever overwritten: re-running
//! generation over an existing federation would invalidate every certificate it issued.

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use quinn::crypto::rustls::NoInitialCipherSuite;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer};
use rustls::server::VerifierBuilderError;
use x509_parser::asn1_rs::Tag;
use x509_parser::extensions::ParsedExtension;

/// ALPN protocol identifier spoken between agents and the aggregator. Both sides insist
/// on it, so a client of some other QUIC protocol fails the handshake instead of reaching
/// the federation's message layer.
pub use fedtune_protocol::transport::{ALPN, LOOPBACK_UDP_PAYLOAD};

/// Longest accepted agent id, in bytes (ids are ASCII).
pub const MAX_AGENT_ID_LEN: usize = 64;

/// Common name of the aggregator's certificate (never a valid agent id: it has spaces).
const SERVER_COMMON_NAME: &str = "fedtune aggregator";
/// Validity of the federation CA.
const CA_VALIDITY_DAYS: i64 = 10 * 365;
/// Validity of server and agent certificates; re-issue with [`issue_agent`].
const LEAF_VALIDITY_DAYS: i64 = 5 * 365;
/// Certificates start one day in the past so a device whose clock lags a little still
/// accepts a certificate issued just now.
const BACKDATE_DAYS: i64 = 1;

/// What can go wrong creating, loading or using the federation's identities.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The revocation file (`[pki] revoked`) does not parse.
    #[error("revocation list: {0}")]
    Revocation(String),
    /// An agent id breaks the naming rule.
    #[error("invalid agent id {id:?}: {reason} (use 1-{MAX_AGENT_ID_LEN} characters from A-Z a-z 0-9 . _ -)")]
    InvalidAgentId {
        /// The offending id (possibly truncated by the caller's display).
        id: String,
        /// Which part of the rule it breaks.
        reason: &'static str,
    },
    /// The same agent id was requested twice.
    #[error("agent id {0:?} is listed more than once")]
    DuplicateAgentId(String),
    /// No DNS name or IP address was given for the aggregator certificate.
    #[error(
        "no server names given: the aggregator certificate needs at least one DNS name or IP \
         address that agents will connect to (e.g. \"localhost\", \"127.0.0.1\")"
    )]
    NoServerNames,
    /// A server name is neither an IP address nor a usable DNS name.
    #[error("server name {name:?} is neither an IP address nor a valid DNS name: {source}")]
    InvalidServerName {
        /// The offending name.
        name: String,
        /// rcgen's reason.
        source: rcgen::Error,
    },
    /// rcgen failed to build, sign or parse a certificate or key.
    #[error("{what}: {source}")]
    Certificate {
        /// Which certificate or key was being handled.
        what: String,
        /// rcgen's reason.
        source: rcgen::Error,
    },
    /// A file that would be written already exists.
    #[error(
        "{0} already exists; refusing to overwrite it (certificates already issued would stop \
         working). Move it away or choose another directory"
    )]
    AlreadyExists(PathBuf),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// PEM text could not be decoded.
    #[error("{what}: not valid PEM: {source}")]
    Pem {
        /// Which certificate or key, e.g. `certificate file agents/a1.pem`.
        what: String,
        /// The decoder's reason.
        source: rustls::pki_types::pem::Error,
    },
    /// PEM text holds no block of the expected kind.
    #[error("{what}: no {expected} found in the PEM text")]
    MissingPem {
        /// Which certificate or key.
        what: String,
        /// The PEM block that was expected, e.g. `CERTIFICATE`.
        expected: &'static str,
    },
    /// A certificate could not be parsed as X.509 or lacks something required.
    #[error("{what}: {reason}")]
    BadCertificate {
        /// Which certificate.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The CA key does not belong to the CA certificate.
    #[error(
        "the CA private key does not match the CA certificate (were ca.pem and ca.key taken from \
         different federations?)"
    )]
    CaKeyMismatch,
    /// A private key that does not belong to the certificate it is configured with.
    #[error(
        "the key in {} does not belong to the certificate in {} (use the .key file written next to that \
         certificate)",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// A file named by a configuration setting could not be used.
    #[error("{setting}: {source}")]
    Setting {
        /// The setting, e.g. `[pki] cert`.
        setting: &'static str,
        /// What is wrong with the file it names.
        source: Box<IdentityError>,
    },
    /// rustls rejected the certificate, key or configuration.
    #[error("building the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built.
    #[error("building the client-certificate verifier: {0}")]
    Verifier(#[from] VerifierBuilderError),
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
    /// A transport tuning value is out of range.
    #[error("transport tuning: {field} {reason}")]
    InvalidTransport {
        /// The `TransportTuning` field.
        field: &'static str,
        /// Why the value is refused.
        reason: String,
    },
    /// The peer presented no certificate chain.
    #[error(
        "the peer presented no certificate (the server endpoint must be built with \
         tls::server_config, which requires client certificates)"
    )]
    NoPeerCertificate,
}

/// A certificate (PEM, leaf first) with its private key (PEM, PKCS#8).
///
/// `Debug` never prints the private key.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    /// PEM `CERTIFICATE` block(s), the leaf first.
    pub cert_pem: String,
    /// PEM private key.
    pub key_pem: String,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl Identity {
    /// Writes the certificate and key to two new files; the key file gets mode 0600 on Unix.
    ///
    /// # Errors
    /// [`IdentityError::AlreadyExists`] if either file exists (nothing is written then), or
    /// [`IdentityError::Io`] if a file cannot be created or written.
    pub fn write_to(&self, cert_path: &Path, key_path: &Path) -> Result<(), IdentityError> {
        refuse_existing(&[cert_path, key_path])?;
        write_new(key_path, &self.key_pem, true)?;
        write_new(cert_path, &self.cert_pem, false)
    }
}

/// Everything a new federation needs: the CA, the aggregator's identity and one identity per
/// agent. `Debug` never prints private keys.
#[derive(Clone, PartialEq, Eq)]
pub struct FederationPki {
    /// The CA certificate, PEM. Distributed to every agent and to the aggregator.
    pub ca_cert_pem: String,
    /// The CA private key, PEM. Needed only to issue more certificates: keep it offline.
    pub ca_key_pem: String,
    /// The aggregator's certificate and key.
    pub server: Identity,
    /// `(agent id, identity)` in the order the ids were given.
    pub agents: Vec<(String, Identity)>,
}

impl fmt::Debug for FederationPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FederationPki")
            .field("ca_cert_pem", &self.ca_cert_pem)
            .field("ca_key_pem", &"<redacted>")
            .field("server", &self.server)
            .field("agents", &self.agents)
            .finish()
    }
}

impl FederationPki {
    /// Writes the federation to `dir` (created if missing):
    /// `ca.pem`, `ca.key`, `server.pem`, `server.key`, `agents/<id>.pem`, `agents/<id>.key`.
    ///
    /// Key files get mode 0600 on Unix. `ca.pem` is written last, so its presence marks a
    /// complete federation directory.
    ///
    /// # Errors
    /// [`IdentityError::AlreadyExists`] if `ca.pem` or any other target file already exists
    /// (checked before anything is written), [`IdentityError::InvalidAgentId`] if an agent
    /// id is not a safe file name, or [`IdentityError::Io`] on a file-system failure.
    pub fn write_to_dir(&self, dir: &Path) -> Result<(), IdentityError> {
        for (id, _) in &self.agents {
            // The id becomes a file name: never let one escape `agents/`.
            validate_agent_id(id)?;
        }
        let agents_dir = dir.join("agents");
        let ca_cert = dir.join("ca.pem");
        let ca_key = dir.join("ca.key");
        let server_cert = dir.join("server.pem");
        let server_key = dir.join("server.key");
        let agent_files: Vec<(PathBuf, PathBuf, &Identity)> = self
            .agents
            .iter()
            .map(|(id, identity)| {
                (
                    agents_dir.join(format!("{id}.pem")),
                    agents_dir.join(format!("{id}.key")),
                    identity,
                )
            })
            .collect();

        let mut targets: Vec<&Path> = vec![&ca_cert, &ca_key, &server_cert, &server_key];
        for (cert, key, _) in &agent_files {
            targets.push(cert);
            targets.push(key);
        }
        refuse_existing(&targets)?;

        fs::create_dir_all(&agents_dir).map_err(|source| IdentityError::Io {
            path: agents_dir.clone(),
            source,
        })?;
        write_new(&ca_key, &self.ca_key_pem, true)?;
        self.server.write_to(&server_cert, &server_key)?;
        for (cert, key, identity) in &agent_files {
            identity.write_to(cert, key)?;
        }
        write_new(&ca_cert, &self.ca_cert_pem, false)
    }
}

/// Checks an agent id: 1 to 64 characters, each one of `A-Z a-z 0-9 . _ -`.
///
/// Ids become certificate common names and file names, hence the narrow alphabet.
///
/// # Errors
/// [`IdentityError::InvalidAgentId`] saying which part of the rule the id breaks.
pub fn validate_agent_id(id: &str) -> Result<(), IdentityError> {
    let invalid = |reason| IdentityError::InvalidAgentId {
        id: id.chars().take(MAX_AGENT_ID_LEN + 8).collect(),
        reason,
    };
    if id.is_empty() {
        return Err(invalid("it is empty"));
    }
    if id.len() > MAX_AGENT_ID_LEN {
        return Err(invalid("it is longer than 64 characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(invalid("it contains a character outside A-Z a-z 0-9 . _ -"));
    }
    Ok(())
}

/// Creates a new federation: a CA, an aggregator certificate valid for `server_names` (DNS
/// names and/or IP addresses such as `"localhost"`, `"127.0.0.1"`) and one client certificate
/// per agent id, whose subject common name is the id.
///
/// Keys are ECDSA P-256. The CA may sign leaf certificates only (path length 0); the
/// aggregator certificate is for server authentication only and agent certificates for client
/// authentication only.
///
/// # Errors
/// [`IdentityError::InvalidAgentId`] or [`IdentityError::DuplicateAgentId`] for a bad agent
/// list, [`IdentityError::NoServerNames`] or [`IdentityError::InvalidServerName`] for bad
/// server names, [`IdentityError::Certificate`] if key generation or signing fails.
pub fn generate(agent_ids: &[String], server_names: &[String]) -> Result<FederationPki, IdentityError> {
    let mut seen = HashSet::new();
    for id in agent_ids {
        validate_agent_id(id)?;
        if !seen.insert(id.as_str()) {
            return Err(IdentityError::DuplicateAgentId(id.clone()));
        }
    }
    if server_names.is_empty() {
        return Err(IdentityError::NoServerNames);
    }

    let ca_key = new_key("the CA key")?;
    let today = days_since_epoch_now();
    let mut ca_params = CertificateParams::default();
    // A federation-specific CA name (suffix from the key's hash) keeps two federations' CAs
    // apart even in tools that match issuers by name.
    let key_id = ca_params.key_identifier(&ca_key);
    let suffix: String = key_id.iter().take(4).map(|b| format!("{b:02x}")).collect();
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params.distinguished_name.push(DnType::OrganizationName, "fedtune");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("fedtune federation CA {suffix}"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut ca_params, today, CA_VALIDITY_DAYS);
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(certificate_error("signing the CA certificate"))?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server = issue_server(&issuer, server_names, today)?;
    let agents = agent_ids
        .iter()
        .map(|id| Ok((id.clone(), issue_agent_with(&issuer, id, today)?)))
        .collect::<Result<Vec<_>, IdentityError>>()?;

    Ok(FederationPki {
        ca_cert_pem: ca_cert.pem(),
        ca_key_pem: issuer.key().serialize_pem(),
        server,
        agents,
    })
}

/// Issues a certificate for one more agent, signed by an existing federation CA.
///
/// The issuer is rebuilt from the CA certificate's subject name and subject key identifier
/// plus the CA key, so the new certificate chains to the same CA as the ones made by
/// [`generate`]. Write it with [`Identity::write_to`].
///
/// # Errors
/// [`IdentityError::InvalidAgentId`] for a bad id; [`IdentityError::Pem`],
/// [`IdentityError::MissingPem`] or [`IdentityError::BadCertificate`] if the CA certificate is
/// unreadable or not a CA; [`IdentityError::Certificate`] if the key is unreadable or signing
/// fails; [`IdentityError::CaKeyMismatch`] if the key does not belong to the certificate.
pub fn issue_agent(ca_cert_pem: &str, ca_key_pem: &str, agent_id: &str) -> Result<Identity, IdentityError> {
    issue_agent_dated(ca_cert_pem, ca_key_pem, agent_id, days_since_epoch_now())
}

/// As [`issue_agent`], as if issued on day `today` (days since 1970-01-01): valid from the
/// day before for five years. For certificates that start later, or (in tests) ones that
/// have already expired.
///
/// # Errors
/// As [`issue_agent`].
pub fn issue_agent_dated(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    agent_id: &str,
    today: i64,
) -> Result<Identity, IdentityError> {
    validate_agent_id(agent_id)?;
    let what = "CA certificate";
    let ca_der = first_certificate(ca_cert_pem, what)?;
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).map_err(|e| bad(what, e))?;
    if !ca.is_ca() {
        return Err(bad(
            what,
            "it is not a CA certificate (basic constraints CA:FALSE or missing)",
        ));
    }
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(certificate_error("reading the CA key"))?;
    if rcgen::PublicKeyData::subject_public_key_info(&ca_key) != ca.public_key().raw {
        return Err(IdentityError::CaKeyMismatch);
    }

    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(ca.subject()).map_err(|e| bad(what, e))?;
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    // Reuse the CA's own subject key identifier so the new certificate's authority key
    // identifier matches it exactly.
    for ext in ca.extensions() {
        if let ParsedExtension::SubjectKeyIdentifier(ski) = ext.parsed_extension() {
            params.key_identifier_method = KeyIdMethod::PreSpecified(ski.0.to_vec());
        }
    }
    let issuer = Issuer::new(params, ca_key);
    let identity = issue_agent_with(&issuer, agent_id, today)?;

    // Verifiers find the issuer by comparing names byte for byte: check the rebuilt name
    // encodes exactly like the CA's own.
    let leaf_der = first_certificate(&identity.cert_pem, "new agent certificate")?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).map_err(|e| bad("new agent certificate", e))?;
    if leaf.issuer().as_raw() != ca.subject().as_raw() {
        return Err(bad(
            what,
            "its subject name uses an encoding this tool cannot reproduce; issue agent \
             certificates with the tool that created the CA",
        ));
    }
    Ok(identity)
}

/// Reads a certificate file and its key file and checks both hold PEM of the right kind.
///
/// # Errors
/// [`IdentityError::Io`] if a file cannot be read; [`IdentityError::Pem`] or
/// [`IdentityError::MissingPem`] (naming the file) if it does not hold a certificate or a
/// private key.
pub fn load_identity(cert_path: &Path, key_path: &Path) -> Result<Identity, IdentityError> {
    let cert_pem = read_text(cert_path)?;
    let key_pem = read_text(key_path)?;
    let what = format!("certificate file {}", cert_path.display());
    let leaf = first_certificate(&cert_pem, &what)?;
    private_key(&key_pem, &format!("key file {}", key_path.display()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).map_err(|e| bad(&what, e))?;
    let key = KeyPair::from_pem(&key_pem).map_err(certificate_error("reading the key"))?;
    if rcgen::PublicKeyData::subject_public_key_info(&key) != cert.public_key().raw {
        return Err(IdentityError::KeyMismatch {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
        });
    }
    Ok(Identity { cert_pem, key_pem })
}

/// Reads the federation CA certificate from a file and checks it is a CA certificate.
///
/// # Errors
/// [`IdentityError::Io`] if the file cannot be read; [`IdentityError::Pem`],
/// [`IdentityError::MissingPem`] or [`IdentityError::BadCertificate`] (naming the file) if it
/// does not hold a CA certificate.
pub fn load_ca_certificate(path: &Path) -> Result<String, IdentityError> {
    let pem = read_text(path)?;
    let what = format!("CA certificate file {}", path.display());
    let der = first_certificate(&pem, &what)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| bad(&what, e))?;
    if !cert.is_ca() {
        return Err(bad(&what, "it is not a CA certificate"));
    }
    Ok(pem)
}

fn issue_server(issuer: &Issuer<'_, KeyPair>, server_names: &[String], today: i64) -> Result<Identity, IdentityError> {
    let mut params = CertificateParams::default();
    for name in server_names {
        // The same rule as rcgen's `CertificateParams::new`, but naming the offending entry.
        let san = match name.parse() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                SanType::DnsName(
                    name.as_str()
                        .try_into()
                        .map_err(|source| IdentityError::InvalidServerName {
                            name: name.clone(),
                            source,
                        })?,
                )
            }
        };
        params.subject_alt_names.push(san);
    }
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, SERVER_COMMON_NAME);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, today, LEAF_VALIDITY_DAYS);
    let key = new_key("the server key")?;
    let cert = params
        .signed_by(&key, issuer)
        .map_err(certificate_error("signing the server certificate"))?;
    Ok(Identity {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn issue_agent_with(issuer: &Issuer<'_, KeyPair>, agent_id: &str, today: i64) -> Result<Identity, IdentityError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, agent_id);
    // A DNS SAN as well, for tools that ignore the CN, when the id is a valid DNS name
    // (`agent_1` is not). The aggregator reads the CN.
    if DnsName::try_from(agent_id).is_ok()
        && let Ok(name) = agent_id.try_into()
    {
        params.subject_alt_names.push(SanType::DnsName(name));
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, today, LEAF_VALIDITY_DAYS);
    let what = || format!("agent {agent_id:?}");
    let key = KeyPair::generate().map_err(|source| IdentityError::Certificate {
        what: format!("generating the key of {}", what()),
        source,
    })?;
    let cert = params
        .signed_by(&key, issuer)
        .map_err(|source| IdentityError::Certificate {
            what: format!("signing the certificate of {}", what()),
            source,
        })?;
    Ok(Identity {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn new_key(what: &'static str) -> Result<KeyPair, IdentityError> {
    // rcgen's default with ring: ECDSA P-256 with SHA-256.
    KeyPair::generate().map_err(certificate_error(what))
}

fn certificate_error(what: &'static str) -> impl Fn(rcgen::Error) -> IdentityError {
    move |source| IdentityError::Certificate {
        what: what.to_owned(),
        source,
    }
}

pub(crate) fn bad(what: &str, reason: impl fmt::Display) -> IdentityError {
    IdentityError::BadCertificate {
        what: what.to_owned(),
        reason: reason.to_string(),
    }
}

/// Rebuilds an X.509 name for rcgen, keeping each attribute's string type so that the DER
/// encoding (which verifiers compare byte for byte) comes out identical.
fn distinguished_name(name: &x509_parser::x509::X509Name<'_>) -> Result<rcgen::DistinguishedName, String> {
    let mut dn = rcgen::DistinguishedName::new();
    for rdn in name.iter() {
        let mut attributes = rdn.iter();
        let (Some(attribute), None) = (attributes.next(), attributes.next()) else {
            return Err("its subject has a multi-valued name component".into());
        };
        let oid: Vec<u64> = attribute
            .attr_type()
            .iter()
            .ok_or("its subject has an attribute type that is not a valid OID")?
            .collect();
        let value = attribute.attr_value();
        let text = || std::str::from_utf8(value.data).map_err(|_| "its subject has a non-UTF-8 string");
        let value = match value.header.tag() {
            Tag::PrintableString => {
                DnValue::PrintableString(text()?.try_into().map_err(|e| format!("its subject: {e}"))?)
            }
            Tag::Ia5String => DnValue::Ia5String(text()?.try_into().map_err(|e| format!("its subject: {e}"))?),
            Tag::Utf8String => DnValue::Utf8String(text()?.to_owned()),
            other => {
                return Err(format!(
                    "its subject uses a string type ({other}) this tool cannot reproduce"
                ));
            }
        };
        let ty = DnType::from_oid(&oid);
        if dn.get(&ty).is_some() {
            return Err("its subject repeats an attribute type".into());
        }
        dn.push(ty, value);
    }
    Ok(dn)
}

pub(crate) fn first_certificate(pem: &str, what: &str) -> Result<CertificateDer<'static>, IdentityError> {
    certificate_chain(pem, what)?
        .into_iter()
        .next()
        .ok_or_else(|| IdentityError::MissingPem {
            what: what.to_owned(),
            expected: "CERTIFICATE",
        })
}

pub(crate) fn certificate_chain(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| IdentityError::Pem {
            what: what.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(IdentityError::MissingPem {
            what: what.to_owned(),
            expected: "CERTIFICATE",
        });
    }
    Ok(chain)
}

pub(crate) fn private_key(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>, IdentityError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => IdentityError::MissingPem {
            what: what.to_owned(),
            expected: "PRIVATE KEY",
        },
        source => IdentityError::Pem {
            what: what.to_owned(),
            source,
        },
    })
}

fn read_text(path: &Path) -> Result<String, IdentityError> {
    fs::read_to_string(path).map_err(|source| IdentityError::Io {
        path: path.to_owned(),
        source,
    })
}

fn refuse_existing(paths: &[&Path]) -> Result<(), IdentityError> {
    for path in paths {
        // `symlink_metadata` so a dangling symlink also counts as "exists".
        if path.symlink_metadata().is_ok() {
            return Err(IdentityError::AlreadyExists(path.to_path_buf()));
        }
    }
    Ok(())
}

/// Creates `path` (failing if it exists) and writes `contents`; private files get mode 0600
/// from the start on Unix, never a wider mode in between.
fn write_new(path: &Path, contents: &str, private: bool) -> Result<(), IdentityError> {
    let io_error = |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            IdentityError::AlreadyExists(path.to_owned())
        } else {
            io_error(source)
        }
    })?;
    file.write_all(contents.as_bytes()).map_err(io_error)?;
    file.sync_all().map_err(io_error)
}

fn days_since_epoch_now() -> i64 {
    // A clock before 1970 is broken; certificates then start at the epoch.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs() / 86_400).unwrap_or(0))
}

fn set_validity(params: &mut CertificateParams, today: i64, validity_days: i64) {
    let date = |days: i64| {
        let (year, month, day) = civil_from_days(days);
        rcgen::date_time_ymd(year, month, day)
    };
    params.not_before = date(today - BACKDATE_DAYS);
    params.not_after = date(today + validity_days);
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day); Howard Hinnant's
/// `civil_from_days`.
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        i32::try_from(year).unwrap_or(i32::MAX),
        u8::try_from(month).unwrap_or(1),
        u8::try_from(day).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests;
