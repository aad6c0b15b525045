//! Privacy accounting for client-level DP-FedAvg: the Rényi-DP (RDP) accountant of the
//! sampled Gaussian mechanism (Mironov, Talwar and Zhang 2019), as Opacus computes it.
//!
//! Each round samples agents with probability `q` (cohort / agents) and adds Gaussian noise
//! of standard deviation `σ · clip` to the sum of their clipped updates. Its RDP at order
//! α is `log A_α / (α − 1)` per round, `A_α` the binomial mixture of Gaussian moments
//! (exact sums for integer α; for fractional α the two-sided series with `erfc` tails,
//! summed with signs as Opacus does, or by magnitude as Google's dp-accounting does, see
//! [`Series`]);
//! rounds compose by adding. ε at a given δ is the minimum over the orders of
//! `rdp − (ln δ + ln α) / (α − 1) + ln((α − 1) / α)` (the conversion of Balle et al. 2020
//! that Opacus uses). The orders are Opacus's defaults, [`DEFAULT_ORDERS`]: 1.1 to 10.9 in
//! steps of 0.1, then 12 to 63, so the figures match Opacus's to the digits it prints.

use rand::rngs::ChaCha12Rng;
use serde::{Deserialize, Serialize};

use crate::strategy::{Aggregation, StrategyError, UpdateMeta};
use fedtune_tuning::stats::log_erfc;

/// `[privacy]`: client-level DP-FedAvg (McMahan et al. 2018). Each update is clipped to
/// L2 norm `clip`, the clipped updates are averaged with equal weights (a sample count an
/// agent claims buys it no influence), and Gaussian noise of standard deviation
/// `noise_multiplier · clip` is added to their sum. The accountant composes each round at
/// sampling rate q = cohort / connected agents; every round records ε at `delta`, and a
/// round that could take ε past `max_epsilon` is not run: the federation ends there.
///
/// Where the noise is added ([`NoisePlacement`]):
/// - `central` (default): the aggregator clips each update and adds the noise to the
///   average, as Flower's server-side clipping does. It trusts the aggregator with single
///   updates, so it cannot be combined with secure aggregation.
/// - `distributed`: under secure aggregation, each agent clips its own update and adds
///   Gaussian noise of standard deviation `σ · clip / √cohort` before masking, so the
///   aggregator only ever sees a sum that is already noised. With `n` of the cohort's
///   agents in the sum the noise has standard deviation `σ · clip · √(n / cohort)`:
///   agents that drop out take their share of the noise with them, and the round is
///   charged at the noise multiplier `σ · √(n / cohort)` that actually protected it. The
///   budget check before a round assumes the fewest inputs the round can close with
///   (`max(min_updates, threshold)`). Agents that collude with the aggregator can
///   subtract their own noise shares: against `t` colluders the noise left is
///   `σ · clip · √((n − t) / cohort)`.
///
/// Clipping ([`Clipping`]): `fixed` at `clip`, or `adaptive` after Andrew et al. 2021
/// (central noise only): `clip` is the starting value, and after each round the clip moves
/// geometrically towards the `target_quantile` of the update norms,
/// `clip ← clip · exp(−clip_learning_rate · (b̃ − target_quantile))`, where `b̃` is the
/// fraction of updates that were not clipped, counted with Gaussian noise of standard
/// deviation `clipped_count_stddev`. The count's noise spends part of the budget, so the
/// updates get the noise multiplier `(σ⁻² − (2 · clipped_count_stddev)⁻²)^(−1/2)` and the
/// round as a whole is still charged at σ.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacyConfig {
    /// σ: the noise's standard deviation over `clip` (0: no differential privacy).
    pub noise_multiplier: f64,
    /// The L2 norm every update is clipped to (the starting value, when adaptive).
    pub clip: f64,
    /// δ of the (ε, δ) guarantee reported.
    pub delta: f64,
    /// The budget: no round runs that would take ε past it.
    pub max_epsilon: Option<f64>,
    /// Who adds the noise.
    pub noise: NoisePlacement,
    /// Fixed or adaptive clipping.
    pub clipping: Clipping,
    /// Adaptive clipping: the quantile of update norms the clip tracks.
    pub target_quantile: f64,
    /// Adaptive clipping: the geometric step size.
    pub clip_learning_rate: f64,
    /// Adaptive clipping: the standard deviation of the noise on the count of unclipped
    /// updates. Default: `max(cohort / 20, σ)`, Andrew et al.'s `cohort / 20` raised for
    /// small cohorts so that the updates keep most of the noise.
    pub clipped_count_stddev: Option<f64>,
}

/// Where DP noise is added (see [`PrivacyConfig`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoisePlacement {
    /// The aggregator clips and noises.
    #[default]
    Central,
    /// Each agent clips and adds its share before secure aggregation masks its update.
    Distributed,
}

/// How the clip norm is chosen (see [`PrivacyConfig`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Clipping {
    /// `clip` throughout.
    #[default]
    Fixed,
    /// Tracks a quantile of the update norms (Andrew et al. 2021).
    Adaptive,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        Self {
            noise_multiplier: 0.0,
            clip: 1.0,
            delta: 1e-5,
            max_epsilon: None,
            noise: NoisePlacement::Central,
            clipping: Clipping::Fixed,
            target_quantile: 0.5,
            clip_learning_rate: 0.2,
            clipped_count_stddev: None,
        }
    }
}

impl PrivacyConfig {
    /// Whether updates are clipped and noised.
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.noise_multiplier > 0.0
    }

    /// Checks the ranges.
    ///
    /// # Errors
    /// [`PrivacyError::Invalid`] naming the field.
    pub fn validate(&self) -> Result<(), PrivacyError> {
        check(
            "privacy.noise_multiplier",
            self.noise_multiplier.is_finite() && self.noise_multiplier >= 0.0,
            "finite and ≥ 0",
            self.noise_multiplier,
        )?;
        check(
            "privacy.clip",
            self.clip.is_finite() && self.clip > 0.0,
            "positive",
            self.clip,
        )?;
        check(
            "privacy.delta",
            self.delta > 0.0 && self.delta < 1.0,
            "in (0, 1)",
            self.delta,
        )?;
        if let Some(max) = self.max_epsilon {
            check("privacy.max_epsilon", max.is_finite() && max > 0.0, "positive", max)?;
        }
        check(
            "privacy.target_quantile",
            self.target_quantile > 0.0 && self.target_quantile < 1.0,
            "in (0, 1)",
            self.target_quantile,
        )?;
        check(
            "privacy.clip_learning_rate",
            self.clip_learning_rate.is_finite() && self.clip_learning_rate > 0.0,
            "positive",
            self.clip_learning_rate,
        )?;
        if let Some(std) = self.clipped_count_stddev {
            check(
                "privacy.clipped_count_stddev",
                std.is_finite() && 2.0 * std > self.noise_multiplier,
                "finite and more than half the noise multiplier (the count's noise takes a share of σ)",
                std,
            )?;
        }
        Ok(())
    }

    /// The standard deviation of the clipped count's noise for a cohort of `cohort`.
    #[must_use]
    pub fn count_stddev(&self, cohort: usize) -> f64 {
        self.clipped_count_stddev
            .unwrap_or_else(|| (cohort as f64 / 20.0).max(self.noise_multiplier))
    }

    /// The noise multiplier the updates get: σ with fixed clipping; with adaptive clipping
    /// what is left after the clipped count's share, `(σ⁻² − (2 σ_b)⁻²)^(−1/2)`.
    #[must_use]
    pub fn update_noise_multiplier(&self, cohort: usize) -> f64 {
        match self.clipping {
            Clipping::Fixed => self.noise_multiplier,
            Clipping::Adaptive => {
                let z = self.noise_multiplier;
                let b = 2.0 * self.count_stddev(cohort);
                (z.powi(-2) - b.powi(-2)).powf(-0.5)
            }
        }
    }

    /// The clip after a round in which `unclipped` of `updates` updates were not clipped,
    /// with `noise` a standard normal draw for the count.
    #[must_use]
    pub fn next_clip(&self, clip: f64, unclipped: usize, updates: usize, cohort: usize, noise: f64) -> f64 {
        let noisy = (unclipped as f64 + noise * self.count_stddev(cohort)) / updates.max(1) as f64;
        clip * (-self.clip_learning_rate * (noisy - self.target_quantile)).exp()
    }
}

/// The privacy spent so far: the composed RDP curve over the default orders, and the
/// adaptive clip where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// RDP at each of [`default_orders`].
    pub rdp: Vec<f64>,
    /// Rounds composed.
    pub rounds: u64,
    /// The adaptive clip after the last round (unset before the first, and when fixed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip: Option<f64>,
}

impl Default for Ledger {
    fn default() -> Self {
        Self {
            rdp: vec![0.0; DEFAULT_ORDERS],
            rounds: 0,
            clip: None,
        }
    }
}

impl Ledger {
    /// The curve after one more round at sampling rate `q` and noise multiplier `sigma`.
    fn with_round(&self, q: f64, sigma: f64) -> Vec<f64> {
        default_orders()
            .iter()
            .zip(&self.rdp)
            .map(|(&alpha, &r)| r + rdp_one(Series::Opacus, q.clamp(0.0, 1.0), sigma, alpha))
            .collect()
    }

    /// Composes one round.
    pub fn record(&mut self, q: f64, sigma: f64) {
        self.rdp = self.with_round(q, sigma);
        self.rounds += 1;
    }

    /// ε at `delta` so far (0 before any round).
    #[must_use]
    pub fn epsilon(&self, delta: f64) -> f64 {
        if self.rounds == 0 {
            return 0.0;
        }
        epsilon_from_rdp(&default_orders(), &self.rdp, delta).0
    }

    /// ε at `delta` if one more round ran at `q` and `sigma`.
    #[must_use]
    pub fn epsilon_after(&self, q: f64, sigma: f64, delta: f64) -> f64 {
        epsilon_from_rdp(&default_orders(), &self.with_round(q, sigma), delta).0
    }
}

/// A round's aggregation under DP-FedAvg with central noise: updates clipped to `clip`
/// and averaged by the inner rule with equal weights, then noised (see [`PrivacyConfig`]).
#[derive(Debug)]
pub struct DpAggregation {
    inner: Box<dyn Aggregation>,
    clip: f64,
    noise_multiplier: f64,
    noise: NoiseRng,
    clipped: usize,
}

impl DpAggregation {
    /// Wraps `inner` (a rule that averages): updates are clipped to `clip` and the sum
    /// gets noise of standard deviation `noise_multiplier · clip`, drawn from `noise`.
    #[must_use]
    pub fn new(inner: Box<dyn Aggregation>, clip: f64, noise_multiplier: f64, noise: NoiseRng) -> Self {
        Self {
            inner,
            clip,
            noise_multiplier,
            noise,
            clipped: 0,
        }
    }

    /// `delta` scaled down to L2 norm `clip` if it is longer.
    fn clip(&mut self, mut delta: Vec<f32>) -> Vec<f32> {
        if fedtune_protocol::secagg::clip_l2(&mut delta, self.clip) {
            self.clipped += 1;
        }
        delta
    }
}

impl Aggregation for DpAggregation {
    fn add(&mut self, delta: &[f32], _weight: u64, meta: &UpdateMeta<'_>) -> Result<(), StrategyError> {
        let clipped = self.clip(delta.to_vec());
        self.inner.add_owned(clipped, 1, meta)
    }

    fn add_owned(&mut self, delta: Vec<f32>, _weight: u64, meta: &UpdateMeta<'_>) -> Result<(), StrategyError> {
        let clipped = self.clip(delta);
        self.inner.add_owned(clipped, 1, meta)
    }

    fn updates(&self) -> usize {
        self.inner.updates()
    }

    fn unclipped(&self) -> Option<usize> {
        Some(self.inner.updates() - self.clipped)
    }

    fn finish(mut self: Box<Self>) -> Result<Vec<f32>, StrategyError> {
        let n = self.inner.updates();
        if self.clipped > 0 {
            tracing::debug!(clipped = self.clipped, updates = n, "updates clipped");
        }
        let mut mean = self.inner.finish()?;
        let std = self.noise_multiplier * self.clip / n.max(1) as f64;
        for v in &mut mean {
            *v += (self.noise.normal() * std) as f32;
        }
        Ok(mean)
    }
}

/// The generator differential-privacy noise is drawn from.
///
/// It is seeded from the operating system's CSPRNG, never from the run's seed, and it is
/// not part of any checkpoint: noise that the configuration or the store could regenerate
/// could be subtracted from the released model, and the ε the run reports would not hold.
/// Only this crate's own tests may seed it ([`NoiseRng::seeded`]).
#[derive(Debug)]
pub struct NoiseRng(ChaCha12Rng);

impl NoiseRng {
    /// A generator seeded from the operating system's CSPRNG (through `rand::rng()`).
    #[must_use]
    pub fn from_os() -> Self {
        Self(rand::make_rng())
    }

    /// A generator seeded from `seed`: reproducible noise, for this crate's tests only.
    #[cfg(test)]
    pub(crate) fn seeded(seed: u64) -> Self {
        use rand::SeedableRng;
        Self(ChaCha12Rng::seed_from_u64(seed))
    }

    /// An independent generator for one round's noise, keyed from this one.
    #[must_use]
    pub fn fork(&mut self) -> Self {
        use rand::SeedableRng;
        Self(ChaCha12Rng::from_rng(&mut self.0))
    }

    /// A standard normal draw.
    pub fn normal(&mut self) -> f64 {
        rand::RngExt::sample(&mut self.0, rand_distr::StandardNormal)
    }
}

/// Opacus's default RDP orders: `1 + x / 10` for `x` in 1..100, then 12..=63.
#[must_use]
pub fn default_orders() -> Vec<f64> {
    (1..100)
        .map(|x| 1.0 + f64::from(x) / 10.0)
        .chain((12..64).map(f64::from))
        .collect()
}

/// The number of [`default_orders`].
pub const DEFAULT_ORDERS: usize = 151;

/// Why a privacy figure cannot be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PrivacyError {
    /// A parameter is outside its range.
    #[error("{name} must be {expected}, got {got}")]
    Invalid {
        /// The parameter.
        name: &'static str,
        /// Its range.
        expected: &'static str,
        /// The value given.
        got: f64,
    },
    /// No noise multiplier up to the search's limit reaches the target ε.
    #[error(
        "no noise multiplier up to {max} keeps ε ≤ {epsilon} over {steps} steps at δ = {delta} and q = {sample_rate}"
    )]
    BudgetTooLow {
        /// The target ε.
        epsilon: f64,
        /// δ.
        delta: f64,
        /// Sampling rate.
        sample_rate: f64,
        /// Steps.
        steps: u64,
        /// The largest σ tried.
        max: f64,
    },
}

/// ε after some rounds, with the order it was read at.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spent {
    /// ε at `delta`.
    pub epsilon: f64,
    /// The noise multiplier σ.
    pub noise_multiplier: f64,
    /// The sampling rate q.
    pub sample_rate: f64,
    /// Rounds (steps) composed.
    pub steps: u64,
    /// δ.
    pub delta: f64,
    /// The RDP order that gave the smallest ε.
    pub order: f64,
}

fn check(name: &'static str, ok: bool, expected: &'static str, got: f64) -> Result<(), PrivacyError> {
    if ok {
        Ok(())
    } else {
        Err(PrivacyError::Invalid { name, expected, got })
    }
}

fn check_inputs(noise_multiplier: f64, sample_rate: f64, delta: f64) -> Result<(), PrivacyError> {
    check(
        "noise multiplier",
        noise_multiplier.is_finite() && noise_multiplier >= 0.0,
        "finite and ≥ 0",
        noise_multiplier,
    )?;
    check(
        "sample rate",
        (0.0..=1.0).contains(&sample_rate),
        "in [0, 1]",
        sample_rate,
    )?;
    check("delta", delta > 0.0 && delta < 1.0, "in (0, 1)", delta)
}

/// How the RDP at a fractional order is summed. Integer orders are exact sums in both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Series {
    /// Opacus's: the series with each binomial coefficient's sign (the exact value). At
    /// σ = 2.5, q = 0.01 the RDP at order 1.5 is 6.50e-4 per 50 steps.
    #[default]
    Opacus,
    /// Google dp-accounting's: coefficients by magnitude, an upper bound that never
    /// subtracts (6.71e-4 in the same case).
    DpAccounting,
}

/// The RDP of `steps` rounds of the sampled Gaussian mechanism at each of `orders`,
/// summed as Opacus does.
///
/// # Errors
/// [`PrivacyError::Invalid`] for σ < 0, q outside [0, 1], or an order ≤ 1.
pub fn rdp(noise_multiplier: f64, sample_rate: f64, steps: u64, orders: &[f64]) -> Result<Vec<f64>, PrivacyError> {
    rdp_with(Series::Opacus, noise_multiplier, sample_rate, steps, orders)
}

/// As [`rdp`], with fractional orders summed as `series` says.
///
/// # Errors
/// As [`rdp`].
pub fn rdp_with(
    series: Series,
    noise_multiplier: f64,
    sample_rate: f64,
    steps: u64,
    orders: &[f64],
) -> Result<Vec<f64>, PrivacyError> {
    check_inputs(noise_multiplier, sample_rate, 0.5)?;
    orders
        .iter()
        .map(|&alpha| {
            check("order", alpha > 1.0, "> 1", alpha)?;
            Ok(rdp_one(series, sample_rate, noise_multiplier, alpha) * steps as f64)
        })
        .collect()
}

/// ε at `delta` after `steps` rounds at noise multiplier σ and sampling rate q, over the
/// default orders.
///
/// # Errors
/// [`PrivacyError::Invalid`] for parameters out of range.
pub fn epsilon(noise_multiplier: f64, sample_rate: f64, steps: u64, delta: f64) -> Result<Spent, PrivacyError> {
    check_inputs(noise_multiplier, sample_rate, delta)?;
    let orders = default_orders();
    let curve = rdp(noise_multiplier, sample_rate, steps, &orders)?;
    let (epsilon, order) = epsilon_from_rdp(&orders, &curve, delta);
    Ok(Spent {
        epsilon,
        noise_multiplier,
        sample_rate,
        steps,
        delta,
        order,
    })
}

/// The smallest ε over `orders` of an RDP curve at `delta`, and its order (∞ and NaN when
/// no order gives a finite ε).
#[must_use]
pub fn epsilon_from_rdp(orders: &[f64], rdp: &[f64], delta: f64) -> (f64, f64) {
    orders
        .iter()
        .zip(rdp)
        .map(|(&alpha, &r)| {
            let eps = r - (delta.ln() + alpha.ln()) / (alpha - 1.0) + ((alpha - 1.0) / alpha).ln();
            (eps, alpha)
        })
        .filter(|(eps, _)| !eps.is_nan())
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .unwrap_or((f64::INFINITY, f64::NAN))
}

/// The noise multiplier that keeps ε at most `target` after `steps` rounds at δ and q:
/// Opacus's search (double σ from 10 until ε fits, then bisect until ε is within 0.01
/// below the target), so it returns the σ Opacus returns.
///
/// # Errors
/// [`PrivacyError::Invalid`] for parameters out of range, [`PrivacyError::BudgetTooLow`]
/// when even σ = 10⁶ does not fit.
pub fn noise_multiplier(target: f64, delta: f64, sample_rate: f64, steps: u64) -> Result<Spent, PrivacyError> {
    const MAX_SIGMA: f64 = 1e6;
    const TOLERANCE: f64 = 0.01;
    check("epsilon", target.is_finite() && target > 0.0, "positive", target)?;
    check_inputs(1.0, sample_rate, delta)?;
    let (mut low, mut high) = (0.0, 10.0);
    let mut spent_high = Spent {
        epsilon: f64::INFINITY,
        noise_multiplier: high,
        sample_rate,
        steps,
        delta,
        order: f64::NAN,
    };
    while spent_high.epsilon > target {
        high *= 2.0;
        if high > MAX_SIGMA {
            return Err(PrivacyError::BudgetTooLow {
                epsilon: target,
                delta,
                sample_rate,
                steps,
                max: MAX_SIGMA,
            });
        }
        spent_high = epsilon(high, sample_rate, steps, delta)?;
    }
    while target - spent_high.epsilon > TOLERANCE {
        let sigma = (low + high) / 2.0;
        let spent = epsilon(sigma, sample_rate, steps, delta)?;
        if spent.epsilon < target {
            high = sigma;
            spent_high = spent;
        } else {
            low = sigma;
        }
    }
    Ok(spent_high)
}

/// One round's RDP at order `alpha`.
fn rdp_one(series: Series, q: f64, sigma: f64, alpha: f64) -> f64 {
    if q == 0.0 {
        return 0.0;
    }
    if sigma == 0.0 {
        return f64::INFINITY;
    }
    if q == 1.0 {
        return alpha / (2.0 * sigma * sigma);
    }
    if alpha.is_infinite() {
        return f64::INFINITY;
    }
    let log_a = match series {
        _ if alpha.fract() == 0.0 => log_a_int(q, sigma, alpha as u64),
        Series::Opacus => log_a_frac_signed(q, sigma, alpha),
        Series::DpAccounting => log_a_frac(q, sigma, alpha),
    };
    log_a / (alpha - 1.0)
}

/// `ln(e^x + e^y)`.
fn log_add(x: f64, y: f64) -> f64 {
    let (a, b) = if x < y { (x, y) } else { (y, x) };
    if a == f64::NEG_INFINITY {
        return b;
    }
    (a - b).exp().ln_1p() + b
}

/// `ln A_α` for integer α: `Σ_i C(α, i) q^i (1 − q)^(α − i) e^((i² − i) / (2σ²))`.
fn log_a_int(q: f64, sigma: f64, alpha: u64) -> f64 {
    let mut log_a = f64::NEG_INFINITY;
    let mut log_binom = 0.0;
    for i in 0..=alpha {
        if i > 0 {
            log_binom += ((alpha - i + 1) as f64).ln() - (i as f64).ln();
        }
        let i = i as f64;
        let term = log_binom + i * q.ln() + (alpha as f64 - i) * (1.0 - q).ln() + (i * i - i) / (2.0 * sigma * sigma);
        log_a = log_add(log_a, term);
    }
    log_a
}

/// `ln A_α` for fractional α as Opacus sums it: the same two series with each binomial
/// coefficient's sign (the exact sum), until both terms fall below e^−30.
fn log_a_frac_signed(q: f64, sigma: f64, alpha: f64) -> f64 {
    let (mut log_a0, mut log_a1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let z0 = sigma * sigma * (1.0 / q - 1.0).ln() + 0.5;
    let mut coef = 1.0f64;
    for i in 0..MAX_FRACTIONAL_TERMS {
        let i = i as f64;
        let log_coef = coef.abs().ln();
        let j = alpha - i;
        let log_t0 = log_coef + i * q.ln() + j * (1.0 - q).ln();
        let log_t1 = log_coef + j * q.ln() + i * (1.0 - q).ln();
        let log_e0 = 0.5f64.ln() + log_erfc((i - z0) / (std::f64::consts::SQRT_2 * sigma));
        let log_e1 = 0.5f64.ln() + log_erfc((z0 - j) / (std::f64::consts::SQRT_2 * sigma));
        let log_s0 = log_t0 + (i * i - i) / (2.0 * sigma * sigma) + log_e0;
        let log_s1 = log_t1 + (j * j - j) / (2.0 * sigma * sigma) + log_e1;
        if coef > 0.0 {
            log_a0 = log_add(log_a0, log_s0);
            log_a1 = log_add(log_a1, log_s1);
        } else {
            log_a0 = log_sub(log_a0, log_s0);
            log_a1 = log_sub(log_a1, log_s1);
        }
        if log_s0.max(log_s1) < -30.0 {
            return log_add(log_a0, log_a1);
        }
        // C(α, i + 1) = C(α, i) · (α − i) / (i + 1).
        coef *= (alpha - i) / (i + 1.0);
    }
    f64::INFINITY
}

/// `ln(e^x − e^y)` for `x ≥ y`.
fn log_sub(x: f64, y: f64) -> f64 {
    if y == f64::NEG_INFINITY {
        return x;
    }
    if x <= y {
        return f64::NEG_INFINITY;
    }
    x + (-(y - x).exp()).ln_1p()
}

/// `ln |C(n, k)|` through `ln Γ`.
fn log_comb(n: f64, k: f64) -> f64 {
    libm::lgamma(n + 1.0) - libm::lgamma(k + 1.0) - libm::lgamma(n - k + 1.0)
}

/// The most terms [`log_a_frac`] sums before it gives up (and the order yields no bound).
const MAX_FRACTIONAL_TERMS: usize = 1_000;

/// `ln A_α` for fractional α: the two series of Mironov et al. (2019), Section 3.3, with
/// every binomial coefficient taken by its magnitude (an upper bound, as Google's
/// dp-accounting computes it), summed until both terms decrease and fall e^30 below the
/// total. ∞ (no bound from this order) if that takes more than 1,000 terms.
fn log_a_frac(q: f64, sigma: f64, alpha: f64) -> f64 {
    let (mut log_a0, mut log_a1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let z0 = sigma * sigma * (1.0 / q - 1.0).ln() + 0.5;
    let log1mq = (-q).ln_1p();
    let (mut last_s0, mut last_s1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    for i in 0..MAX_FRACTIONAL_TERMS {
        let i = i as f64;
        let log_coef = log_comb(alpha, i);
        let j = alpha - i;
        let log_t0 = log_coef + i * q.ln() + j * log1mq;
        let log_t1 = log_coef + j * q.ln() + i * log1mq;
        let log_e0 = 0.5f64.ln() + log_erfc((i - z0) / (std::f64::consts::SQRT_2 * sigma));
        let log_e1 = 0.5f64.ln() + log_erfc((z0 - j) / (std::f64::consts::SQRT_2 * sigma));
        let log_s0 = log_t0 + (i * i - i) / (2.0 * sigma * sigma) + log_e0;
        let log_s1 = log_t1 + (j * j - j) / (2.0 * sigma * sigma) + log_e1;
        log_a0 = log_add(log_a0, log_s0);
        log_a1 = log_add(log_a1, log_s1);
        let total = log_add(log_a0, log_a1);
        if log_s0 < last_s0 && log_s1 < last_s1 && log_s0.max(log_s1) < total - 30.0 {
            return total;
        }
        (last_s0, last_s1) = (log_s0, log_s1);
    }
    f64::INFINITY
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_clipping_splits_the_noise_and_moves_the_clip_towards_the_quantile() {
        let config = PrivacyConfig {
            noise_multiplier: 1.0,
            clipping: Clipping::Adaptive,
            ..PrivacyConfig::default()
        };
        // Andrew et al.: σ_b = cohort / 20 = 5 for 100 agents; the updates keep
        // (1 − 1/100)^(−1/2) = 1.00504 of σ.
        assert!((config.count_stddev(100) - 5.0).abs() < 1e-12);
        assert!((config.update_noise_multiplier(100) - 1.005_037_8).abs() < 1e-6);
        // A small cohort: σ_b is raised to σ, and the updates get σ / √(3/4).
        assert!((config.count_stddev(10) - 1.0).abs() < 1e-12);
        assert!((config.update_noise_multiplier(10) - 1.154_700_5).abs() < 1e-6);
        let fixed = PrivacyConfig {
            noise_multiplier: 1.0,
            ..PrivacyConfig::default()
        };
        assert_eq!(fixed.update_noise_multiplier(10), 1.0);
        // All updates within the clip: it shrinks by exp(−0.2 · 0.5); none: it grows.
        let shrunk = config.next_clip(2.0, 10, 10, 10, 0.0);
        assert!((shrunk - 2.0 * (-0.1f64).exp()).abs() < 1e-12, "{shrunk}");
        assert!(config.next_clip(2.0, 0, 10, 10, 0.0) > 2.0);
        assert!((config.next_clip(2.0, 5, 10, 10, 0.0) - 2.0).abs() < 1e-12);
        // The count's noise moves it: +1 σ_b of noise on 10 updates is +0.1 in the fraction.
        assert!((config.next_clip(2.0, 5, 10, 10, 1.0) - 2.0 * (-0.02f64).exp()).abs() < 1e-12);
        // An explicit σ_b must leave the updates some noise.
        let starved = PrivacyConfig {
            clipped_count_stddev: Some(0.5),
            ..config.clone()
        };
        let err = starved.validate().unwrap_err().to_string();
        assert!(err.contains("privacy.clipped_count_stddev"), "{err}");
        assert!(
            PrivacyConfig {
                clipped_count_stddev: Some(0.6),
                ..config
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn adaptive_clipping_tracks_the_median_norm() {
        // Update norms drawn around 3.0: from a clip of 0.1 the noiseless rule climbs to
        // the median within the rounds a federation has.
        let config = PrivacyConfig {
            noise_multiplier: 1.0,
            clipping: Clipping::Adaptive,
            clipped_count_stddev: Some(1.0),
            ..PrivacyConfig::default()
        };
        let norms: Vec<f64> = (0..20).map(|i| 2.0 + f64::from(i) * 0.1).collect();
        let mut clip = 0.1;
        for _ in 0..150 {
            let unclipped = norms.iter().filter(|&&n| n <= clip).count();
            clip = config.next_clip(clip, unclipped, norms.len(), norms.len(), 0.0);
        }
        assert!((2.85..=3.1).contains(&clip), "{clip}");
    }

    #[test]
    fn dp_aggregation_clips_averages_equally_and_adds_the_stated_noise() {
        let meta = UpdateMeta::new("a", 1.0);
        let config = PrivacyConfig {
            noise_multiplier: 0.0,
            clip: 1.0,
            ..PrivacyConfig::default()
        };
        let strategy: crate::strategy::StrategyConfig = "fedavg".parse().unwrap();
        let mut strategy = strategy.build().unwrap();
        // Without noise: [3, 4] (norm 5) is clipped to [0.6, 0.8]; [0.1, 0] is kept; the
        // claimed sample counts (1,000 against 1) do not weigh.
        let mut dp = Box::new(DpAggregation::new(
            strategy.begin_round(0, 2),
            config.clip,
            config.noise_multiplier,
            NoiseRng::seeded(1),
        ));
        dp.add(&[3.0, 4.0], 1_000, &meta).unwrap();
        dp.add_owned(vec![0.1, 0.0], 1, &meta).unwrap();
        assert_eq!(dp.updates(), 2);
        let mean = dp.finish().unwrap();
        assert!(
            (mean[0] - 0.35).abs() < 1e-6 && (mean[1] - 0.4).abs() < 1e-6,
            "{mean:?}"
        );
        // With noise: its standard deviation is σ · clip / n.
        let noisy = PrivacyConfig {
            noise_multiplier: 2.0,
            clip: 0.5,
            ..PrivacyConfig::default()
        };
        let mut dp = Box::new(DpAggregation::new(
            strategy.begin_round(0, 20_000),
            noisy.clip,
            noisy.noise_multiplier,
            NoiseRng::seeded(7),
        ));
        for _ in 0..4 {
            dp.add(&vec![0.0; 20_000], 1, &meta).unwrap();
        }
        let noise = dp.finish().unwrap();
        let std = (noise.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / noise.len() as f64).sqrt();
        assert!((std - 0.25).abs() < 0.01, "std {std}, want 2 · 0.5 / 4");
    }

    #[test]
    fn the_ledger_composes_rounds_as_the_accountant_does() {
        let mut ledger = Ledger::default();
        assert_eq!(ledger.epsilon(1e-5), 0.0);
        let next = ledger.epsilon_after(0.04, 1.5, 1e-5);
        for _ in 0..2_250 {
            ledger.record(0.04, 1.5);
        }
        assert!((ledger.epsilon(1e-5) - 7.32911).abs() < 1e-3);
        assert!(next < ledger.epsilon(1e-5));
        assert!(
            PrivacyConfig {
                clip: 0.0,
                ..PrivacyConfig::default()
            }
            .validate()
            .is_err()
        );
        assert!(!PrivacyConfig::default().enabled());
    }

    #[test]
    fn the_default_orders_are_opacus_s() {
        let orders = default_orders();
        assert_eq!(orders.len(), DEFAULT_ORDERS);
        assert!((orders[0] - 1.1).abs() < 1e-12 && (orders[98] - 10.9).abs() < 1e-12);
        assert_eq!(&orders[99..101], &[12.0, 13.0]);
        assert_eq!(orders[150], 63.0);
    }

    /// Opacus: σ = 1.5, q = 0.04, 2,250 steps, δ = 1e-5 → ε = 7.32911.
    #[test]
    fn epsilon_matches_opacus() {
        let spent = epsilon(1.5, 0.04, 2_250, 1e-5).unwrap();
        assert!((spent.epsilon - 7.32911).abs() < 1e-3, "{spent:?}");
    }

    /// Google's dp-accounting: σ = 2.5, q = 0.01, 50 steps.
    #[test]
    fn rdp_matches_dp_accounting() {
        let orders = [1.5, 2.5, 5.0, 50.0, 100.0];
        let want = [6.70579741e-4, 1.08548710e-3, 2.18075656e-3, 2.38460375e-2, 1.67416308e2];
        let got = rdp_with(Series::DpAccounting, 2.5, 0.01, 50, &orders).unwrap();
        for ((g, w), alpha) in got.iter().zip(want).zip(orders) {
            assert!(((g - w) / w).abs() < 1e-4, "order {alpha}: {g} vs {w}");
        }
        // Opacus sums the fractional orders exactly: lower at 1.5, the same elsewhere
        // (its own test's value is 6.5007e-4).
        let opacus = rdp(2.5, 0.01, 50, &orders).unwrap();
        assert!((opacus[0] - 6.5007e-4).abs() < 1e-8, "{opacus:?}");
        for (o, w) in opacus.iter().zip(want).skip(1) {
            assert!(((o - w) / w).abs() < 1e-4, "{o} vs {w}");
        }
    }

    /// Opacus's `get_noise_multiplier`: ε = 8, δ = 1e-5, q = 0.04, 2,000 steps → 1.3562.
    #[test]
    fn the_noise_multiplier_for_a_budget_matches_opacus() {
        let spent = noise_multiplier(8.0, 1e-5, 0.04, 2_000).unwrap();
        assert!((spent.noise_multiplier - 1.3562).abs() < 1e-4, "{spent:?}");
        assert!(spent.epsilon <= 8.0 && spent.epsilon > 7.99, "{spent:?}");
    }

    #[test]
    fn edge_cases_and_bad_input() {
        assert!(epsilon(1.0, 0.0, 100, 1e-5).unwrap().epsilon.is_finite());
        assert_eq!(rdp(0.0, 0.1, 1, &[2.0]).unwrap(), vec![f64::INFINITY]);
        // q = 1 is the plain Gaussian mechanism: α / (2σ²) per step.
        assert!((rdp(2.0, 1.0, 3, &[4.0]).unwrap()[0] - 1.5).abs() < 1e-12);
        // More noise, less ε; more steps, more ε.
        let a = epsilon(1.0, 0.01, 1_000, 1e-5).unwrap().epsilon;
        assert!(epsilon(2.0, 0.01, 1_000, 1e-5).unwrap().epsilon < a);
        assert!(epsilon(1.0, 0.01, 2_000, 1e-5).unwrap().epsilon > a);
        assert!(matches!(epsilon(-1.0, 0.1, 1, 1e-5), Err(PrivacyError::Invalid { .. })));
        assert!(matches!(epsilon(1.0, 1.5, 1, 1e-5), Err(PrivacyError::Invalid { .. })));
        assert!(matches!(epsilon(1.0, 0.1, 1, 0.0), Err(PrivacyError::Invalid { .. })));
        assert!(matches!(rdp(1.0, 0.1, 1, &[1.0]), Err(PrivacyError::Invalid { .. })));
        assert!(matches!(
            noise_multiplier(1e-9, 1e-5, 1.0, 1_000_000),
            Err(PrivacyError::BudgetTooLow { .. })
        ));
    }
}
