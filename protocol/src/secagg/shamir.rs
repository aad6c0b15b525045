//! Shamir secret sharing of 32-byte secrets, byte by byte over GF(2^8).
//!
//! Each byte of the secret is the constant term of its own random polynomial of degree
//! t - 1; the share at x holds all 32 polynomials evaluated at x. Any t shares determine
//! the polynomials and so the secret; t - 1 shares are consistent with every secret.
//!
//! Field arithmetic is modulo the AES polynomial x^8 + x^4 + x^3 + x + 1 (0x11b), computed
//! without tables and without branches on secret values.

use rand::CryptoRng;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::error::SecAggError;

/// One share of a 32-byte secret: every byte's polynomial evaluated at `x`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// The evaluation point, 1..=255 (never 0: that is where the secret sits).
    pub x: u8,
    /// The value of each byte's polynomial at `x`.
    pub y: [u8; 32],
}

/// Product in GF(2^8): shift-and-add, with the conditional add and reduction done by masks.
fn mul(mut a: u8, mut b: u8) -> u8 {
    let mut product = 0;
    for _ in 0..8 {
        product ^= a & (b & 1).wrapping_neg();
        let overflow = (a >> 7).wrapping_neg();
        a = (a << 1) ^ (overflow & 0x1b);
        b >>= 1;
    }
    product
}

/// Inverse in GF(2^8): a^254, since a^255 = 1 for every nonzero a. Maps 0 to 0.
fn inv(a: u8) -> u8 {
    // 254 = 0b1111_1110: square-and-multiply over a public exponent.
    let mut result = 1;
    let mut power = a;
    for bit in 0..8 {
        if (254u8 >> bit) & 1 == 1 {
            result = mul(result, power);
        }
        power = mul(power, power);
    }
    result
}

/// Splits `secret` into `n` shares at x = 1..=n, any `t` of which reconstruct it.
///
/// # Errors
/// [`SecAggError::Sharing`] unless 1 <= t <= n.
pub(crate) fn split(secret: &[u8; 32], n: u8, t: u8, rng: &mut impl CryptoRng) -> Result<Vec<Share>, SecAggError> {
    if t == 0 || t > n {
        return Err(SecAggError::Sharing { n, t });
    }
    // coefficients[k][j]: the coefficient of x^(k+1) in byte j's polynomial.
    let mut coefficients = Zeroizing::new(vec![[0u8; 32]; usize::from(t) - 1]);
    for row in coefficients.iter_mut() {
        rng.fill_bytes(row);
    }
    let shares = (1..=n)
        .map(|x| {
            let mut y = [0u8; 32];
            for (j, byte) in y.iter_mut().enumerate() {
                // Horner, from the highest coefficient down to the secret byte.
                let mut acc = 0;
                for row in coefficients.iter().rev() {
                    acc = mul(acc, x) ^ row[j];
                }
                *byte = mul(acc, x) ^ secret[j];
            }
            Share { x, y }
        })
        .collect();
    Ok(shares)
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
    for (i, share) in shares.iter().enumerate() {
        if share.x == 0 {
            return Err(SecAggError::ShareAtZero);
        }
        if shares[..i].iter().any(|other| other.x == share.x) {
            return Err(SecAggError::DuplicateShare { x: share.x });
        }
    }
    let mut secret = Zeroizing::new([0u8; 32]);
    for (i, share) in shares.iter().enumerate() {
        // The Lagrange basis polynomial of x_i at 0: Π_{j≠i} x_j / (x_j − x_i); − is ⊕ here.
        let basis = shares
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .fold(1, |acc, (_, other)| mul(acc, mul(other.x, inv(other.x ^ share.x))));
        for (out, &y) in secret.iter_mut().zip(&share.y) {
            *out ^= mul(y, basis);
        }
    }
    Ok(secret)
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
    fn field_inverse_is_an_inverse() {
        assert_eq!(mul(0x57, 0x83), 0xc1, "FIPS-197's worked example");
        for a in 1..=255u8 {
            assert_eq!(mul(a, inv(a)), 1, "a = {a}");
        }
        assert_eq!(inv(0), 0);
    }

    #[test]
    fn any_t_of_n_shares_reconstruct() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let secret = secret(&mut rng);
        let shares = split(&secret, 5, 3, &mut rng).unwrap();
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
    fn fewer_than_t_shares_give_another_value() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        for _ in 0..20 {
            let secret = secret(&mut rng);
            let shares = split(&secret, 255, 4, &mut rng).unwrap();
            assert_ne!(*combine(&shares[10..13]).unwrap(), secret);
            // No single byte should survive either, beyond the 1/256 chance per byte.
            let guess = combine(&shares[100..103]).unwrap();
            let equal = guess.iter().zip(&secret).filter(|(a, b)| a == b).count();
            assert!(equal <= 4, "{equal} of 32 bytes leaked");
        }
    }

    #[test]
    fn threshold_one_is_the_secret_everywhere() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let secret = secret(&mut rng);
        let shares = split(&secret, 3, 1, &mut rng).unwrap();
        assert!(shares.iter().all(|s| s.y == secret));
    }

    #[test]
    fn bad_shares_and_parameters_are_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let secret = secret(&mut rng);
        let shares = split(&secret, 4, 2, &mut rng).unwrap();
        let duplicate = [shares[1].clone(), shares[2].clone(), shares[1].clone()];
        assert_eq!(combine(&duplicate).unwrap_err(), SecAggError::DuplicateShare { x: 2 });
        let at_zero = [Share { x: 0, y: secret }, shares[0].clone()];
        assert_eq!(combine(&at_zero).unwrap_err(), SecAggError::ShareAtZero);
        assert_eq!(combine(&[]).unwrap_err(), SecAggError::NoShares);
        assert_eq!(
            split(&secret, 3, 4, &mut rng).unwrap_err(),
            SecAggError::Sharing { n: 3, t: 4 }
        );
        assert_eq!(
            split(&secret, 3, 0, &mut rng).unwrap_err(),
            SecAggError::Sharing { n: 3, t: 0 }
        );
    }
}
