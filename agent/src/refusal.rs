//! Why a connection attempt failed for good: a TLS handshake that no retry can fix, read
//! from the way QUIC ended the connection.
//!
//! QUIC carries a TLS alert as the transport error `0x100 + alert` (RFC 9001 §4.8). When
//! the aggregator's rustls refuses this agent's certificate it sends `unknown_ca`,
//! `certificate_revoked` or `certificate_expired`, which reaches quinn as the peer's
//! [`ConnectionError::ConnectionClosed`]; when this agent's rustls cannot verify the
//! aggregator's certificate, the same alerts come back as a local
//! [`ConnectionError::TransportError`].
//!
//! An alert from the peer counts only once this side has finished its handshake: from then
//! on packets are protected by keys only the verified aggregator holds. Before that, a
//! close may come in an Initial packet, whose keys anyone on the path can derive, and one
//! forged packet must not stop an agent for good, so it is retried like any other failure.
//! In TLS 1.3 the aggregator judges the agent's certificate after the agent has finished its
//! side, so its refusals always arrive late enough to count.

use rustls::AlertDescription;

/// QUIC's `CRYPTO_ERROR` range: `0x100 + alert`.
const CRYPTO_ERROR: std::ops::Range<u64> = 0x100..0x200;

/// Longest part of a peer's close reason that is shown.
const MAX_REASON_CHARS: usize = 200;

/// A TLS failure that another attempt cannot fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The aggregator refused this agent's certificate.
    #[error(
        "the aggregator refused this agent's certificate: {} (TLS alert {}){}",
        problem(*alert),
        alert_name(*alert),
        said(reason)
    )]
    ByAggregator {
        /// The alert it sent.
        alert: AlertDescription,
        /// Its reason, as it sent it (escaped, shortened).
        reason: String,
    },
    /// This agent could not verify the aggregator's certificate.
    #[error(
        "cannot verify the aggregator's certificate: {} (TLS alert {}; {reason})",
        problem(*alert),
        alert_name(*alert)
    )]
    OfAggregator {
        /// The alert this agent's TLS stack raised.
        alert: AlertDescription,
        /// What it found wrong.
        reason: String,
    },
}

impl Refusal {
    /// The refusal `error` reports, or `None` when it may heal (timeouts, resets, an
    /// aggregator that went away, or a peer's alert before `handshake_done`).
    #[must_use]
    pub fn of(error: &quinn::ConnectionError, handshake_done: bool) -> Option<Self> {
        match error {
            quinn::ConnectionError::ConnectionClosed(close) if handshake_done => {
                let alert = alert(close.error_code)?;
                // The aggregator's own trouble, not a verdict on this agent.
                if alert == AlertDescription::InternalError {
                    return None;
                }
                Some(Refusal::ByAggregator {
                    alert,
                    reason: printable(&close.reason),
                })
            }
            quinn::ConnectionError::TransportError(e) => {
                let alert = alert(e.code)?;
                judges_certificate(alert).then(|| Refusal::OfAggregator {
                    alert,
                    reason: e.reason.clone(),
                })
            }
            _ => None,
        }
    }

    /// The TLS alert.
    #[must_use]
    pub fn alert(&self) -> AlertDescription {
        match self {
            Refusal::ByAggregator { alert, .. } | Refusal::OfAggregator { alert, .. } => *alert,
        }
    }
}

/// The TLS alert a QUIC error code carries.
fn alert(code: quinn::TransportErrorCode) -> Option<AlertDescription> {
    let code = u64::from(code);
    CRYPTO_ERROR
        .contains(&code)
        .then(|| AlertDescription::from((code - CRYPTO_ERROR.start) as u8))
}

/// Whether this side raises `alert` only when it checks the peer's certificate (locally, a
/// malformed or unexpected message from whoever answered is worth another attempt).
fn judges_certificate(alert: AlertDescription) -> bool {
    use AlertDescription as A;
    matches!(
        alert,
        A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied
            | A::DecryptError
    )
}

/// What `alert` says is wrong, in words.
fn problem(alert: AlertDescription) -> &'static str {
    use AlertDescription as A;
    match alert {
        A::UnknownCA => "it was issued by a CA that is not trusted",
        A::CertificateRevoked => "it has been revoked",
        A::CertificateExpired => "it has expired or is not valid yet",
        A::CertificateRequired => "none was presented",
        A::BadCertificate | A::UnsupportedCertificate | A::CertificateUnknown => "it is not valid for this name or use",
        A::AccessDenied => "it is not allowed in",
        A::DecryptError => "its signature does not verify (a key that does not belong to the certificate?)",
        A::NoApplicationProtocol => "the two sides speak no common protocol (different fedtune versions?)",
        _ => "the TLS handshake failed",
    }
}

/// The alert's name as the TLS RFCs write it: `certificate_revoked`, `unknown_ca`.
fn alert_name(alert: AlertDescription) -> String {
    let camel = format!("{alert:?}");
    let mut name = String::with_capacity(camel.len() + 4);
    let mut previous_lower = false;
    for c in camel.chars() {
        if c.is_ascii_uppercase() && previous_lower {
            name.push('_');
        }
        previous_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        name.push(c.to_ascii_lowercase());
    }
    name
}

fn said(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!("; it said: {reason}")
    }
}

/// A peer's close reason as text safe to print: invalid UTF-8 replaced, control characters
/// escaped, at most [`MAX_REASON_CHARS`] characters.
fn printable(reason: &[u8]) -> String {
    let text = String::from_utf8_lossy(reason);
    let mut out: String = text.escape_debug().take(MAX_REASON_CHARS).collect();
    if text.escape_debug().nth(MAX_REASON_CHARS).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use quinn::{ConnectionClose, ConnectionError, TransportErrorCode};

    fn closed_by_peer(alert: u8, reason: &[u8]) -> ConnectionError {
        ConnectionError::ConnectionClosed(ConnectionClose {
            error_code: TransportErrorCode::crypto(alert),
            frame_type: None,
            reason: Bytes::copy_from_slice(reason),
        })
    }

    #[test]
    fn the_aggregators_alerts_name_what_is_wrong_with_this_agents_certificate() {
        for (alert, words) in [
            (0x30, "issued by a CA that is not trusted"),
            (0x2c, "revoked"),
            (0x2d, "expired"),
            (0x74, "none was presented"),
        ] {
            let error = closed_by_peer(alert, b"invalid peer certificate");
            let refusal = Refusal::of(&error, true).expect("a refusal");
            assert_eq!(refusal.alert(), AlertDescription::from(alert));
            let text = refusal.to_string();
            assert!(
                text.starts_with("the aggregator refused this agent's certificate"),
                "{text}"
            );
            assert!(text.contains(words), "{text}");
            assert!(text.contains("it said: invalid peer certificate"), "{text}");
            assert!(
                !text.contains("Certificate") && !text.contains("UnknownCA"),
                "no Rust names: {text}"
            );
        }
    }

    #[test]
    fn alerts_are_named_as_the_rfcs_name_them() {
        assert_eq!(alert_name(AlertDescription::CertificateRevoked), "certificate_revoked");
        assert_eq!(alert_name(AlertDescription::UnknownCA), "unknown_ca");
        assert_eq!(alert_name(AlertDescription::CertificateExpired), "certificate_expired");
    }

    #[test]
    fn what_can_heal_is_not_a_refusal() {
        // A peer's alert before this side finished its handshake may be forged.
        assert_eq!(Refusal::of(&closed_by_peer(0x30, b""), false), None);
        // The aggregator's own trouble.
        assert_eq!(Refusal::of(&closed_by_peer(0x50, b""), true), None);
        // Transport errors, resets, timeouts, an application close.
        let not_tls = ConnectionError::ConnectionClosed(ConnectionClose {
            error_code: TransportErrorCode::CONNECTION_REFUSED,
            frame_type: None,
            reason: Bytes::new(),
        });
        assert_eq!(Refusal::of(&not_tls, true), None);
        assert_eq!(Refusal::of(&ConnectionError::Reset, true), None);
        assert_eq!(Refusal::of(&ConnectionError::TimedOut, true), None);
        let closed = ConnectionError::ApplicationClosed(quinn::ApplicationClose {
            error_code: 0u32.into(),
            reason: Bytes::from_static(b"shutdown"),
        });
        assert_eq!(Refusal::of(&closed, true), None);
    }

    #[test]
    fn a_close_reason_from_the_network_is_escaped_and_shortened() {
        let refusal = Refusal::of(&closed_by_peer(0x2c, b"\x1b[2J\nrevoked\xff"), true).unwrap();
        let text = refusal.to_string();
        assert!(!text.contains('\x1b') && !text.contains('\n'), "{text:?}");
        assert!(text.contains("\\u{1b}[2J\\nrevoked\u{fffd}"), "{text}");
        let long = Refusal::of(&closed_by_peer(0x2c, &[b'a'; 5000]), true).unwrap();
        assert!(long.to_string().len() < 400, "{long}");
    }
}
