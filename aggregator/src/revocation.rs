//! Revoked agent certificates: a text file the aggregator re-reads when it changes, which
//! the client-certificate verifier ([`crate::verifier`]) consults at every handshake.
//!
//! One entry per line: a certificate's SHA-256 fingerprint (`sha256:` and 64 hex digits,
//! or the 64 digits alone, colons allowed) or its serial number (`serial:` and hex
//! digits). `#` starts a comment. `fedtune-aggregator revoke --pki DIR --agent ID` appends
//! an agent's fingerprint.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

/// What a revocation file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revoked {
    fingerprints: HashSet<[u8; 32]>,
    serials: HashSet<Vec<u8>>,
}

/// A line of a revocation file that is neither an entry, a comment nor blank.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}:{line}: `{text}` is not a revocation entry (sha256:<64 hex digits> or serial:<hex digits>)")]
pub struct RevocationError {
    /// The file.
    pub path: String,
    /// 1-based line.
    pub line: usize,
    /// The line, trimmed.
    pub text: String,
}

fn hex(text: &str) -> Option<Vec<u8>> {
    let digits: String = text.chars().filter(|&c| c != ':').collect();
    if digits.is_empty() || !digits.len().is_multiple_of(2) {
        return None;
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(digits.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The SHA-256 fingerprint of a DER certificate, as `revoke` writes it.
#[must_use]
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

impl Revoked {
    /// Parses a revocation file's text (`path` names it in errors).
    ///
    /// # Errors
    /// [`RevocationError`] for the first line that is not an entry.
    pub fn parse(text: &str, path: &Path) -> Result<Self, RevocationError> {
        let mut revoked = Self::default();
        for (i, line) in text.lines().enumerate() {
            let entry = line.split('#').next().unwrap_or("").trim();
            if entry.is_empty() {
                continue;
            }
            let bad = || RevocationError {
                path: path.display().to_string(),
                line: i + 1,
                text: entry.to_owned(),
            };
            let lower = entry.to_ascii_lowercase();
            if let Some(serial) = lower.strip_prefix("serial:") {
                let mut bytes = hex(serial.trim()).ok_or_else(bad)?;
                // Serials compare without leading zero bytes (DER pads positive ones).
                let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
                bytes.drain(..first);
                revoked.serials.insert(bytes);
            } else {
                let digits = lower.strip_prefix("sha256:").unwrap_or(&lower).trim();
                let bytes: [u8; 32] = hex(digits).and_then(|b| b.try_into().ok()).ok_or_else(bad)?;
                revoked.fingerprints.insert(bytes);
            }
        }
        Ok(revoked)
    }

    /// Whether `der` is revoked, by fingerprint or by serial.
    #[must_use]
    pub fn contains(&self, der: &[u8]) -> bool {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        if self.fingerprints.iter().any(|f| f.as_slice() == digest.as_ref()) {
            return true;
        }
        if self.serials.is_empty() {
            return false;
        }
        match x509_parser::parse_x509_certificate(der) {
            Ok((_, cert)) => {
                let serial = cert.tbs_certificate.raw_serial();
                let first = serial.iter().position(|&b| b != 0).unwrap_or(serial.len());
                self.serials.contains(&serial[first..])
            }
            Err(_) => false,
        }
    }

    /// Entries held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.fingerprints.len() + self.serials.len()
    }

    /// Whether nothing is revoked.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A revocation file, re-read whenever its modification time or size changes. A file
/// that stops parsing keeps the last good list in force (and says so in the log); a
/// missing file revokes nothing.
pub struct RevocationList {
    path: PathBuf,
    state: Mutex<(Option<(SystemTime, u64)>, Revoked)>,
}

impl fmt::Debug for RevocationList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevocationList")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RevocationList {
    /// Reads `path` now.
    ///
    /// # Errors
    /// [`RevocationError`] when the file exists and does not parse (a start with a broken
    /// list must not admit what it meant to revoke).
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, RevocationError> {
        let list = Self {
            path: path.into(),
            state: Mutex::new((None, Revoked::default())),
        };
        let (stamp, revoked) = list.read()?;
        *list.lock() = (stamp, revoked);
        Ok(list)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<(SystemTime, u64)>, Revoked)> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stamp(&self) -> Option<(SystemTime, u64)> {
        let meta = std::fs::metadata(&self.path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    }

    fn read(&self) -> Result<(Option<(SystemTime, u64)>, Revoked), RevocationError> {
        let stamp = self.stamp();
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        Ok((stamp, Revoked::parse(&text, &self.path)?))
    }

    /// Entries in force as last read.
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().1.len()
    }

    /// Whether nothing is revoked as last read.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `der` is revoked, re-reading the file first if it changed.
    pub fn is_revoked(&self, der: &[u8]) -> bool {
        let stamp = self.stamp();
        let mut state = self.lock();
        if stamp != state.0 {
            match self.read() {
                Ok(fresh) => *state = fresh,
                Err(e) => {
                    tracing::error!("{e}; the previous revocation list stays in force");
                    state.0 = stamp;
                }
            }
        }
        state.1.contains(der)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_by_fingerprint_or_serial_and_bad_lines_are_named() {
        let der = b"not really a certificate";
        let text = format!(
            "# revoked agents\n\n{}  # agent-3\nserial:00:0A:1b\n",
            fingerprint(der).to_uppercase().replace("SHA256:", "sha256:")
        );
        let revoked = Revoked::parse(&text, Path::new("revoked.txt")).unwrap();
        assert_eq!(revoked.len(), 2);
        assert!(revoked.contains(der));
        assert!(!revoked.contains(b"another"));
        let err = Revoked::parse("sha256:abc\n", Path::new("revoked.txt")).unwrap_err();
        assert_eq!((err.line, err.text.as_str()), (1, "sha256:abc"));
        assert!(Revoked::parse("serial:xyz", Path::new("r")).is_err());
    }

    #[test]
    fn the_list_rereads_its_file_and_keeps_the_last_good_one() {
        let dir = std::env::temp_dir().join(format!("fedtune-revoked-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("revoked.txt");
        let _ = std::fs::remove_file(&path);
        let list = RevocationList::open(&path).unwrap();
        assert!(!list.is_revoked(b"cert-a"), "a missing file revokes nothing");
        std::fs::write(&path, format!("{}\n", fingerprint(b"cert-a"))).unwrap();
        assert!(list.is_revoked(b"cert-a"));
        std::fs::write(&path, "garbage that does not parse, and is longer\n").unwrap();
        assert!(list.is_revoked(b"cert-a"), "a broken file keeps the last good list");
        std::fs::write(&path, "garbage\n").unwrap();
        assert!(RevocationList::open(&path).is_err(), "but a start refuses it");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
