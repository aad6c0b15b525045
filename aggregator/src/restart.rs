//! Telling agents at once that the aggregator restarted: QUIC stateless resets with keys
//! that survive the restart.
//!
//! A restarted aggregator has lost its connections, but the agents' keep-alives still reach
//! its port. quinn answers a packet for a connection it does not know with a stateless
//! reset (RFC 9000 §10.3), and an agent accepts the reset only if it carries the token the
//! old process issued for that connection ID: an HMAC of the ID under the endpoint's reset
//! key. Two things must therefore be the same in the new process as in the old one:
//!
//! - the reset key, which quinn draws at random per endpoint by default (the agents then
//!   drop the new process's resets as forgeries and wait out their idle timeout);
//! - the key of quinn's connection ID generator, whose IDs carry a keyed hash that the
//!   endpoint checks before it answers at all: with a fresh random key the new process
//!   takes the old IDs for noise and stays silent.
//!
//! Both are derived here from the aggregator's private key with HKDF-SHA256 under fixed
//! labels and the listen address: stable across restarts, secret, and independent of the
//! key's signing use and of each other. A new server key (a new identity) or a new listen
//! address changes them, which costs the agents of the old one an idle timeout, once.
//!
//! The address is in the derivation for RFC 9000 §10.3.2: endpoints that share a reset
//! key hand out each other's tokens, so an observer of one aggregator's connection IDs
//! could get a reset for them from another. Aggregators that share an identity on one host
//! (e.g. those serving one study) listen on different addresses and so get different keys;
//! ones on different hosts listening on the same wildcard address and port do not, and
//! should each have their own identity.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn_proto::HashedConnectionIdGenerator;
use ring::{hkdf, hmac};

use crate::identity::{Identity, IdentityError, private_key};

/// HKDF salt: names this use of the server key, so no other derivation can collide.
const SALT: &[u8] = b"fedtune aggregator: QUIC keys that survive a restart";
/// HKDF info of the stateless reset key.
const RESET_KEY: &[u8] = b"stateless reset key";
/// HKDF info of the connection ID generator's key.
const CID_KEY: &[u8] = b"connection id key";
/// Why expanding cannot fail: HKDF-SHA256 yields up to 255 × 32 bytes; 32 and 8 are asked.
const EXPANDS: &str = "HKDF-SHA256 expands to 32 and to 8 bytes";

/// The keys a restarted aggregator needs to reset its predecessor's connections.
pub struct RestartKeys {
    reset: hmac::Key,
    cid: u64,
}

impl std::fmt::Debug for RestartKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestartKeys").finish_non_exhaustive()
    }
}

/// An HKDF output length.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl RestartKeys {
    /// Derives the keys of an endpoint listening on `listen` from `identity`'s private key.
    ///
    /// # Errors
    /// [`IdentityError::Pem`] or [`IdentityError::MissingPem`] when the key does not parse.
    pub fn derive(identity: &Identity, listen: SocketAddr) -> Result<Self, IdentityError> {
        let key = private_key(&identity.key_pem, "server key")?;
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(key.secret_der());
        let address = listen.to_string();
        let info = |label| [label, b" for ".as_slice(), address.as_bytes()];
        let reset = hmac::Key::from(prk.expand(&info(RESET_KEY), hmac::HMAC_SHA256).expect(EXPANDS));
        let mut cid = [0u8; 8];
        prk.expand(&info(CID_KEY), Len(cid.len()))
            .expect(EXPANDS)
            .fill(&mut cid)
            .expect(EXPANDS);
        Ok(Self {
            reset,
            cid: u64::from_le_bytes(cid),
        })
    }

    /// Makes `config` use these keys for stateless resets and connection IDs.
    pub fn apply(&self, config: &mut quinn::EndpointConfig) {
        config.reset_key(Arc::new(self.reset.clone()));
        let cid = self.cid;
        config.cid_generator(move || Box::new(HashedConnectionIdGenerator::from_key(cid)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::generate;
    use quinn::ConnectionIdGenerator as _;
    use quinn::crypto::HmacKey as _;

    fn identity() -> Identity {
        generate(&["a".to_owned()], &["localhost".to_owned()]).unwrap().server
    }

    fn token(keys: &RestartKeys, data: &[u8]) -> Vec<u8> {
        let mut out = vec![0; keys.reset.signature_len()];
        keys.reset.sign(data, &mut out);
        out
    }

    #[test]
    fn the_same_server_key_and_address_give_the_same_keys_and_others_others() {
        let server = identity();
        let addr: SocketAddr = "0.0.0.0:4433".parse().unwrap();
        let first = RestartKeys::derive(&server, addr).unwrap();
        let again = RestartKeys::derive(&server, addr).unwrap();
        assert_eq!(token(&first, b"cid"), token(&again, b"cid"));
        assert_eq!(first.cid, again.cid);
        let elsewhere = "0.0.0.0:4434".parse().unwrap();
        for other in [
            RestartKeys::derive(&identity(), addr).unwrap(),
            RestartKeys::derive(&server, elsewhere).unwrap(),
        ] {
            assert_ne!(token(&first, b"cid"), token(&other, b"cid"));
            assert_ne!(first.cid, other.cid);
        }

        // A connection ID of the first process is recognised by the second.
        let mut old = HashedConnectionIdGenerator::from_key(first.cid);
        let id = old.generate_cid();
        assert!(HashedConnectionIdGenerator::from_key(again.cid).validate(&id).is_ok());
    }
}
