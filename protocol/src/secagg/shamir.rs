//! Shamir secret sharing of 32-byte secrets over GF(2^16).
//!
//! The secret is read as 16 little-endian 16-bit words; each word is the constant term of
//! its own random polynomial of degree t - 1, and the share at x holds all 16 polynomials
//! evaluated at x. Any t shares determine the polynomials and so the secret; t - 1 shares
//! are consistent with every secret. Points are 1..=65535, so cohorts reach 65,535 agents.
//!
//! Field arithmetic is modulo x^16 + x^12 + x^3 + x + 1 (0x1100b, irreducible: the tests
//! check that every nonzero element has an inverse), computed without tables and without
//! branches on secret values.

use rand::CryptoRng;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::error::SecAggError;

/// One share of a 32-byte secret: every word's polynomial evaluated at `x`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// The evaluation point, 1..=65535 (never 0: that is where the secret sits).
    pub x: u16,
    /// The value of each word's polynomial at `x`, as 16 little-endian words.
    pub y: [u8; 32],
}

/// The low 16 bits of the reduction polynomial x^16 + x^12 + x^3 + x + 1.
const REDUCTION: u16 = 0x100b;

/// Product in GF(2^16): shift-and-add, with the conditional add and reduction done by masks.
fn mul(mut a: u16, mut b: u16) -> u16 {
    let mut product = 0;
    for _ in 0..16 {
        product ^= a & (b & 1).wrapping_neg();
        let overflow = (a >> 15).wrapping_neg();
        a = (a << 1) ^ (overflow & REDUCTION);
        b >>= 1;
    }
    product
}

/// Inverse in GF(2^16): a^(2^16 − 2), since a^(2^16 − 1) = 1 for every nonzero a. Maps 0 to 0.
fn inv(a: u16) -> u16 {
    // 65534 = 0b1111_1111_1111_1110: square-and-multiply over a public exponent.
    let mut result = 1;
    let mut power = a;
    for bit in 0..16 {
        if (65534u16 >> bit) & 1 == 1 {
            result = mul(result, power);
        }
        power = mul(power, power);
    }
    result
}

fn words(bytes: &[u8; 32]) -> [u16; 16] {
    let mut words = [0u16; 16];
    for (word, pair) in words.iter_mut().zip(bytes.chunks_exact(2)) {
        *word = u16::from_le_bytes([pair[0], pair[1]]);
    }
    words
}

fn bytes(words: &[u16; 16]) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    for (pair, word) in bytes.chunks_exact_mut(2).zip(words) {
        pair.copy_from_slice(&word.to_le_bytes());
    }
    bytes
}

/// Splits `secret` into shares at the points `xs` (distinct, nonzero), any `t` of which
/// reconstruct it.
///
/// # Errors
/// [`SecAggError::Sharing`] unless 1 <= t <= the number of points; [`SecAggError::ShareAtZero`]
/// or [`SecAggError::DuplicateShare`] for a bad point.
pub(crate) fn split(
    secret: &[u8; 32],
    xs: &[u16],
    t: usize,
    rng: &mut impl CryptoRng,
) -> Result<Vec<Share>, SecAggError> {
    if t == 0 || t > xs.len() {
        return Err(SecAggError::Sharing { n: xs.len(), t });
    }
    check_points(xs.iter().copied())?;
    // coefficients[k][j]: the coefficient of x^(k+1) in word j's polynomial.
    let mut coefficients = Zeroizing::new(vec![[0u16; 16]; t - 1]);
    for row in coefficients.iter_mut() {
        for word in row.iter_mut() {
            *word = rng.next_u32() as u16;
        }
    }
    let secret = Zeroizing::new(words(secret));
    let shares = xs
        .iter()
        .map(|&x| {
            let mut y = Zeroizing::new([0u16; 16]);
            for (j, word) in y.iter_mut().enumerate() {
                // Horner, from the highest coefficient down to the secret word.
                let mut acc = 0;
                for row in coefficients.iter().rev() {
                    acc = mul(acc, x) ^ row[j];
                }
                *word = mul(acc, x) ^ secret[j];
            }
            Share { x, y: bytes(&y) }
        })
        .collect();
    Ok(shares)
}

fn check_points(xs: impl Iterator<Item = u16> + Clone) -> Result<(), SecAggError> {
    let mut seen = std::collections::BTreeSet::new();
    for x in xs {
        if x == 0 {
            return Err(SecAggError::ShareAtZero);
        }
        if !seen.insert(x) {
            return Err(SecAggError::DuplicateShare { x });
        }
    }
    Ok(())
}

/// Reconstructs the secret from shares at distinct nonzero points, by Lagrange
/// interpolation at 0. Given fewer shares than the threshold, it returns an unrelated value.
///
/// # Errors
/// [`SecAggError::NoShares`], [`SecAggError::ShareAtZero`] or [`SecAggError::DuplicateShare`].
pub(crate) fn combine(shares: &[Share]) -> Result<Zeroizing<[u8; 32]>, SecAggError> {
    if shares.is_empty() {
        return Err(SecAggError::NoShares);
    }
    check_points(shares.iter().map(|s| s.x))?;
    let mut secret = Zeroizing::new([0u16; 16]);
    for (i, share) in shares.iter().enumerate() {
        // The Lagrange basis polynomial of x_i at 0: Π_{j≠i} x_j / (x_j − x_i); − is ⊕ here.
        let basis = shares
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .fold(1, |acc, (_, other)| mul(acc, mul(other.x, inv(other.x ^ share.x))));
        let y = Zeroizing::new(words(&share.y));
        for (out, &y) in secret.iter_mut().zip(y.iter()) {
            *out ^= mul(y, basis);
        }
    }
    Ok(Zeroizing::new(bytes(&secret)))
}

#[cfg(test)]
mod tests {
    use rand::rngs::ChaCha20Rng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn secret(rng: &mut ChaCha20Rng) -> [u8; 32] {
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        secret
    }

    #[test]
    fn the_field_is_a_field() {
        // Every nonzero element has an inverse, so the modulus is irreducible.
        for a in 1..=u16::MAX {
            assert_eq!(mul(a, inv(a)), 1, "a = {a}");
        }
        assert_eq!(inv(0), 0);
        // x · x^15 = x^16 = x^12 + x^3 + x + 1.
        assert_eq!(mul(2, 0x8000), 0x100b);
        assert_eq!(mul(0x1234, 1), 0x1234);
    }

    fn points(n: u16) -> Vec<u16> {
        (1..=n).collect()
    }

    #[test]
    fn any_t_of_n_shares_reconstruct() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let secret = secret(&mut rng);
        let shares = split(&secret, &points(5), 3, &mut rng).unwrap();
        assert_eq!(shares.iter().map(|s| s.x).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        for a in 0..5 {
            for b in a + 1..5 {
                for c in b + 1..5 {
                    let subset = [shares[c].clone(), shares[a].clone(), shares[b].clone()];
                    assert_eq!(*combine(&subset).unwrap(), secret, "shares {a}, {b}, {c}");
                }
            }
        }
        // More than t shares lie on the same polynomial, so they reconstruct too.
        assert_eq!(*combine(&shares).unwrap(), secret);
    }

    #[test]
    fn shares_at_scattered_points_past_255_reconstruct() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let secret = secret(&mut rng);
        let xs = [3u16, 256, 1000, 40_000, 65_535, 777];
        let shares = split(&secret, &xs, 4, &mut rng).unwrap();
        assert_eq!(*combine(&shares[2..]).unwrap(), secret);
        assert_eq!(
            *combine(&[
                shares[5].clone(),
                shares[0].clone(),
                shares[4].clone(),
                shares[1].clone()
            ])
            .unwrap(),
            secret
        );
        assert_ne!(*combine(&shares[3..]).unwrap(), secret);
    }

    #[test]
    fn fewer_than_t_shares_give_another_value() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        for _ in 0..20 {
            let secret = secret(&mut rng);
            let shares = split(&secret, &points(300), 4, &mut rng).unwrap();
            assert_ne!(*combine(&shares[10..13]).unwrap(), secret);
            // No single word should survive either, beyond the 1/65536 chance per word.
            let guess = combine(&shares[100..103]).unwrap();
            let equal = guess
                .chunks_exact(2)
                .zip(secret.chunks_exact(2))
                .filter(|(a, b)| a == b)
                .count();
            assert!(equal <= 1, "{equal} of 16 words leaked");
        }
    }

    #[test]
    fn threshold_one_is_the_secret_everywhere() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let secret = secret(&mut rng);
        let shares = split(&secret, &points(3), 1, &mut rng).unwrap();
        assert!(shares.iter().all(|s| s.y == secret));
    }

    #[test]
    fn bad_shares_and_parameters_are_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let secret = secret(&mut rng);
        let shares = split(&secret, &points(4), 2, &mut rng).unwrap();
        let duplicate = [shares[1].clone(), shares[2].clone(), shares[1].clone()];
        assert_eq!(combine(&duplicate).unwrap_err(), SecAggError::DuplicateShare { x: 2 });
        let at_zero = [Share { x: 0, y: secret }, shares[0].clone()];
        assert_eq!(combine(&at_zero).unwrap_err(), SecAggError::ShareAtZero);
        assert_eq!(combine(&[]).unwrap_err(), SecAggError::NoShares);
        assert_eq!(
            split(&secret, &points(3), 4, &mut rng).unwrap_err(),
            SecAggError::Sharing { n: 3, t: 4 }
        );
        assert_eq!(
            split(&secret, &points(3), 0, &mut rng).unwrap_err(),
            SecAggError::Sharing { n: 3, t: 0 }
        );
        assert_eq!(
            split(&secret, &[1, 2, 1], 2, &mut rng).unwrap_err(),
            SecAggError::DuplicateShare { x: 1 }
        );
        assert_eq!(
            split(&secret, &[0, 2], 2, &mut rng).unwrap_err(),
            SecAggError::ShareAtZero
        );
    }
}
