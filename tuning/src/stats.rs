//! Normal-distribution helpers: the normal CDF and its logarithm, `ln erfc`, sampling.
//!
//! `erfc` is libm's; [`log_erfc`] carries it into the tail where it underflows, so
//! `ln Φ` stays finite deep in the lower tail. Draws are `rand_distr`'s.

use rand::{Rng, RngExt};

/// `ln erfc(x)`, finite far into the upper tail where `erfc` itself underflows (there
/// by its asymptotic series, whose next term is below 1e-11 relative from x ≈ 26 on).
#[must_use]
pub fn log_erfc(x: f64) -> f64 {
    let value = libm::erfc(x);
    if value > 1e-300 {
        return value.ln();
    }
    // erfc(x) ~ e^(−x²) / (x √π) · (1 − 1/(2x²) + 3/(4x⁴) − 15/(8x⁶)).
    let x2 = x * x;
    -x2 - (x * std::f64::consts::PI.sqrt()).ln()
        + (1.0 - 1.0 / (2.0 * x2) + 3.0 / (4.0 * x2 * x2) - 15.0 / (8.0 * x2 * x2 * x2)).ln()
}

/// The standard normal CDF Φ(x).
#[must_use]
pub fn norm_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x * std::f64::consts::FRAC_1_SQRT_2)
}

/// `ln Φ(x)`, accurate in the far lower tail.
#[must_use]
pub fn norm_log_cdf(x: f64) -> f64 {
    if x < 0.0 {
        log_erfc(-x * std::f64::consts::FRAC_1_SQRT_2) - std::f64::consts::LN_2
    } else {
        norm_cdf(x).ln()
    }
}

/// `ln φ(x)`, the standard normal log density.
#[must_use]
pub fn norm_log_pdf(x: f64) -> f64 {
    const LN_SQRT_2PI: f64 = 0.918_938_533_204_672_8;
    -0.5 * x * x - LN_SQRT_2PI
}

/// A standard normal draw.
pub fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    rng.sample(rand_distr::StandardNormal)
}

/// A draw from N(mu, sigma²) truncated to `[lo, hi]`.
///
/// Rejection from the untruncated normal while it accepts often (the TPE kernels are
/// centred inside their range, so at least a third of the mass lies inside), with a
/// uniform fallback after many rejections so that a call always ends.
pub fn truncated_normal<R: Rng + ?Sized>(rng: &mut R, mu: f64, sigma: f64, lo: f64, hi: f64) -> f64 {
    for _ in 0..64 {
        let x = mu + sigma * standard_normal(rng);
        if (lo..=hi).contains(&x) {
            return x;
        }
    }
    lo + rng.random::<f64>() * (hi - lo)
}

/// `ln` of the density at `x` of N(mu, sigma²) truncated to `[lo, hi]`.
#[must_use]
pub fn truncated_normal_log_pdf(x: f64, mu: f64, sigma: f64, lo: f64, hi: f64) -> f64 {
    let z = norm_cdf((hi - mu) / sigma) - norm_cdf((lo - mu) / sigma);
    norm_log_pdf((x - mu) / sigma) - sigma.ln() - z.max(f64::MIN_POSITIVE).ln()
}

/// `ln Σ exp(xs)`, stable; `-inf` for no terms.
#[must_use]
pub fn log_sum_exp(xs: &[f64]) -> f64 {
    let m = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + xs.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use libm::erfc;

    #[test]
    fn erfc_matches_reference_values() {
        // Python's math.erfc.
        let refs = [
            (-5.0, 1.9999999999984626),
            (-2.0, 1.9953222650189528),
            (-0.5, 1.5204998778130465),
            (0.0, 1.0),
            (0.3, 0.6713732405408726),
            (1.0, 0.15729920705028513),
            (2.5, 0.0004069520174449589),
            (4.0, 1.541725790028002e-08),
            (7.0, 4.183825607779414e-23),
            (12.0, 1.3562611692059042e-64),
        ];
        for (x, want) in refs {
            let got = erfc(x);
            assert!(((got - want) / want).abs() < 1e-13, "erfc({x}) = {got}, want {want}");
        }
        // ln Φ(-40) ≈ -804.608 (where Φ itself underflows).
        assert!(
            (norm_log_cdf(-40.0) + 804.608_442_013_754).abs() < 1e-6,
            "{}",
            norm_log_cdf(-40.0)
        );
    }
}
