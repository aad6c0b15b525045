//! Key agreement and share encryption: X25519, HKDF-SHA256 and ChaCha20-Poly1305, every
//! derived key bound to one round and one pair of agents.

use rand::CryptoRng;
use ring::aead::{self, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce};
use ring::hkdf::{HKDF_SHA256, KeyType, Salt};
use x25519_dalek::{PublicKey, SharedSecret, StaticSecret};
use zeroize::Zeroizing;

use super::error::SecAggError;

/// HKDF salt: separates these keys from any other use of the same X25519 keys.
const SALT: &[u8] = b"fedtune secagg v1";
/// HKDF info label of the key that seals one agent's shares for another.
const SHARE_LABEL: &[u8] = b"share encryption";
/// HKDF info label of the pairwise mask seed s_uv.
const MASK_LABEL: &[u8] = b"pairwise mask";

/// Length of a sealed share pair: two 32-byte share values and the Poly1305 tag.
pub(crate) const SEALED_LEN: usize = 2 * 32 + 16;

/// Draws an X25519 secret key from the caller's RNG.
pub(crate) fn draw_secret(rng: &mut impl CryptoRng) -> StaticSecret {
    StaticSecret::from(*draw_seed(rng))
}

/// Draws 32 random bytes, wiped when dropped.
pub(crate) fn draw_seed(rng: &mut impl CryptoRng) -> Zeroizing<[u8; 32]> {
    let mut seed = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(seed.as_mut());
    seed
}

/// Whether `public` is a point of small order, with which every key agreement gives the
/// same (all-zero) secret. Honest agents never publish one.
pub(crate) fn is_low_order(public: &[u8; 32]) -> bool {
    // Any scalar will do: clamping makes it a multiple of the cofactor, which sends exactly
    // the small-order points to the identity.
    !StaticSecret::from([1; 32])
        .diffie_hellman(&PublicKey::from(*public))
        .was_contributory()
}

/// X25519 with a peer's public key, refusing a low-order one.
fn agree(secret: &StaticSecret, peer: u32, peer_public: &[u8; 32]) -> Result<SharedSecret, SecAggError> {
    let shared = secret.diffie_hellman(&PublicKey::from(*peer_public));
    if shared.was_contributory() {
        Ok(shared)
    } else {
        Err(SecAggError::WeakKey { index: peer })
    }
}

/// An HKDF output length, for expanding into plain byte arrays.
struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// The seed s_uv of the masks agents `a` and `b` add with opposite signs.
///
/// Symmetric: `a` computes it from its secret and `b`'s public key, `b` (or the aggregator,
/// holding `b`'s reconstructed secret) from the other two, and all get the same bytes.
///
/// # Errors
/// [`SecAggError::WeakKey`] if the other agent's key is of low order.
pub(crate) fn pair_seed(
    context: &[u8],
    secret: &StaticSecret,
    own: u32,
    peer: u32,
    peer_public: &[u8; 32],
) -> Result<Zeroizing<[u8; 32]>, SecAggError> {
    let shared = agree(secret, peer, peer_public)?;
    let (low, high) = (own.min(peer), own.max(peer));
    let info = [MASK_LABEL, context, &low.to_le_bytes(), &high.to_le_bytes()];
    let mut seed = Zeroizing::new([0u8; 32]);
    Salt::new(HKDF_SHA256, SALT)
        .extract(shared.as_bytes())
        .expand(&info, Len(32))
        .and_then(|okm| okm.fill(seed.as_mut()))
        .map_err(|_| SecAggError::Crypto("HKDF refused to derive a pairwise mask seed"))?;
    Ok(seed)
}

/// The AEAD key of shares sent from `from` to `to`, and the additional data that binds them
/// to the round and the pair.
///
/// The direction is part of the HKDF info, so the two agents of a pair seal under different
/// keys; each key seals exactly one message (one share pair, once per round, with fresh
/// X25519 keys every round), which is why a fixed nonce is safe.
fn share_key(
    context: &[u8],
    secret: &StaticSecret,
    from: u32,
    to: u32,
    peer: u32,
    peer_public: &[u8; 32],
) -> Result<(LessSafeKey, Vec<u8>), SecAggError> {
    let shared = agree(secret, peer, peer_public)?;
    let (from, to) = (from.to_le_bytes(), to.to_le_bytes());
    let info = [SHARE_LABEL, context, &from, &to];
    let prk = Salt::new(HKDF_SHA256, SALT).extract(shared.as_bytes());
    let okm = prk
        .expand(&info, &CHACHA20_POLY1305)
        .map_err(|_| SecAggError::Crypto("HKDF refused to derive a share encryption key"))?;
    let key = LessSafeKey::new(aead::UnboundKey::from(okm));
    let aad = [context, &from, &to].concat();
    Ok((key, aad))
}

/// Seals the share pair `plaintext` that agent `from` (holding `secret`) sends to agent `to`
/// (whose cipher public key is `to_public`).
///
/// # Errors
/// [`SecAggError::WeakKey`] if `to`'s key is of low order, [`SecAggError::Crypto`] if ring
/// refuses (it does not for these sizes).
pub(crate) fn seal(
    context: &[u8],
    secret: &StaticSecret,
    from: u32,
    to: u32,
    to_public: &[u8; 32],
    plaintext: &[u8; 64],
) -> Result<Vec<u8>, SecAggError> {
    let (key, aad) = share_key(context, secret, from, to, to, to_public)?;
    let mut sealed = Vec::with_capacity(SEALED_LEN);
    sealed.extend_from_slice(plaintext);
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key([0; 12]), Aad::from(aad), &mut sealed)
        .map_err(|_| SecAggError::Crypto("ChaCha20-Poly1305 refused to seal a share"))?;
    Ok(sealed)
}

/// Opens the share pair agent `from` (whose cipher public key is `from_public`) sealed for
/// agent `to` (holding `secret`).
///
/// # Errors
/// [`SecAggError::CiphertextLength`] or [`SecAggError::Decryption`] if it was not sealed by
/// `from` for `to` in this round, or was altered; [`SecAggError::WeakKey`] if `from`'s key is
/// of low order.
pub(crate) fn open(
    context: &[u8],
    secret: &StaticSecret,
    from: u32,
    to: u32,
    from_public: &[u8; 32],
    ciphertext: &[u8],
) -> Result<Zeroizing<[u8; 64]>, SecAggError> {
    if ciphertext.len() != SEALED_LEN {
        return Err(SecAggError::CiphertextLength {
            from,
            to,
            got: ciphertext.len(),
            expected: SEALED_LEN,
        });
    }
    let (key, aad) = share_key(context, secret, from, to, from, from_public)?;
    let mut buffer = Zeroizing::new(ciphertext.to_vec());
    let plaintext = key
        .open_in_place(Nonce::assume_unique_for_key([0; 12]), Aad::from(aad), &mut buffer)
        .map_err(|_| SecAggError::Decryption { from, to })?;
    let mut out = Zeroizing::new([0u8; 64]);
    out.copy_from_slice(plaintext);
    Ok(out)
}

/// The public key of an X25519 secret, as bytes.
pub(crate) fn public_of(secret: &StaticSecret) -> [u8; 32] {
    PublicKey::from(secret).to_bytes()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::ChaCha20Rng;

    use super::*;

    #[test]
    fn pair_seeds_agree_and_depend_on_the_round() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let (a, b) = (draw_secret(&mut rng), draw_secret(&mut rng));
        let ab = pair_seed(b"round 1", &a, 3, 7, &public_of(&b)).unwrap();
        let ba = pair_seed(b"round 1", &b, 7, 3, &public_of(&a)).unwrap();
        assert_eq!(*ab, *ba);
        let other_round = pair_seed(b"round 2", &a, 3, 7, &public_of(&b)).unwrap();
        assert_ne!(*ab, *other_round);
    }

    #[test]
    fn a_sealed_pair_opens_only_for_its_round_and_direction() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let (a, b) = (draw_secret(&mut rng), draw_secret(&mut rng));
        let plaintext = [5u8; 64];
        let sealed = seal(b"ctx", &a, 0, 1, &public_of(&b), &plaintext).unwrap();
        assert_eq!(sealed.len(), SEALED_LEN);
        assert_eq!(*open(b"ctx", &b, 0, 1, &public_of(&a), &sealed).unwrap(), plaintext);
        let refused = SecAggError::Decryption { from: 0, to: 1 };
        assert_eq!(open(b"other", &b, 0, 1, &public_of(&a), &sealed).unwrap_err(), refused);
        // Replayed as if it went the other way: different key, refused.
        let reversed = SecAggError::Decryption { from: 1, to: 0 };
        assert_eq!(open(b"ctx", &a, 1, 0, &public_of(&b), &sealed).unwrap_err(), reversed);
    }

    #[test]
    fn low_order_keys_are_recognised() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        assert!(is_low_order(&[0; 32]));
        let mut one = [0; 32];
        one[0] = 1;
        assert!(is_low_order(&one));
        assert!(!is_low_order(&public_of(&draw_secret(&mut rng))));
        let secret = draw_secret(&mut rng);
        assert_eq!(
            pair_seed(b"", &secret, 0, 4, &[0; 32]).unwrap_err(),
            SecAggError::WeakKey { index: 4 }
        );
    }
}
