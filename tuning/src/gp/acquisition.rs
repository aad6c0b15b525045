//! The GP posterior and the log expected improvement it is scored by.

use super::kernel::{Hyper, matern52, sq_diff};
use super::linalg::{cholesky, solve_lower, solve_upper_t};
use crate::stats::{norm_cdf, norm_log_cdf, norm_log_pdf};

/// The GP posterior given kernel parameters and (possibly liar-augmented) data.
#[derive(Debug)]
pub(super) struct Posterior<'a> {
    pub(super) n: usize,
    d: usize,
    x: &'a [f64],
    is_cat: &'a [bool],
    h: Hyper,
    chol: Vec<f64>,
    alpha: Vec<f64>,
}

/// Per-evaluation buffers.
#[derive(Debug)]
pub(super) struct Scratch {
    k: Vec<f64>,
    dm: Vec<f64>,
    v: Vec<f64>,
}

impl Scratch {
    pub(super) fn new(n: usize) -> Self {
        Self {
            k: vec![0.0; n],
            dm: vec![0.0; n],
            v: vec![0.0; n],
        }
    }
}

impl<'a> Posterior<'a> {
    pub(super) fn new(x: &'a [f64], y: &[f64], is_cat: &'a [bool], h: Hyper) -> Option<Self> {
        let (n, d) = (y.len(), is_cat.len());
        let mut jitter = 0.0;
        for _ in 0..6 {
            let mut k = vec![0.0; n * n];
            for i in 0..n {
                for j in 0..i {
                    let r2: f64 = (0..d)
                        .map(|c| h.theta[c] * sq_diff(is_cat[c], x[i * d + c], x[j * d + c]))
                        .sum();
                    k[i * n + j] = h.scale * matern52(r2).0;
                }
                k[i * n + i] = h.scale + h.noise + jitter;
            }
            if cholesky(&mut k, n) {
                let mut alpha = y.to_vec();
                solve_lower(&k, n, &mut alpha);
                solve_upper_t(&k, n, &mut alpha);
                return Some(Self {
                    n,
                    d,
                    x,
                    is_cat,
                    h,
                    chol: k,
                    alpha,
                });
            }
            jitter = if jitter == 0.0 { 1e-8 * h.scale } else { jitter * 100.0 };
        }
        None
    }

    /// Log expected improvement below `best` at `u`; with `grad`, also its gradient in the
    /// non-categorical coordinates (categorical entries are set to 0).
    pub(super) fn log_ei(&self, u: &[f64], best: f64, grad: Option<&mut [f64]>, s: &mut Scratch) -> f64 {
        let (n, d) = (self.n, self.d);
        let theta = &self.h.theta;
        for i in 0..n {
            let row = &self.x[i * d..(i + 1) * d];
            let mut r2 = 0.0;
            for c in 0..d {
                r2 += theta[c] * sq_diff(self.is_cat[c], u[c], row[c]);
            }
            let (m, dm) = matern52(r2);
            s.k[i] = self.h.scale * m;
            s.dm[i] = self.h.scale * dm;
        }
        let mu: f64 = s.k.iter().zip(&self.alpha).map(|(a, b)| a * b).sum();
        s.v.copy_from_slice(&s.k);
        solve_lower(&self.chol, n, &mut s.v);
        let var_raw = self.h.scale - s.v.iter().map(|a| a * a).sum::<f64>();
        let floor = 1e-12 * self.h.scale;
        let clamped = var_raw < floor;
        let sigma = var_raw.max(floor).sqrt();
        let z = (best - mu) / sigma;
        let lh = log_h(z);
        let value = sigma.ln() + lh;
        if let Some(grad) = grad {
            // w = K⁻¹ k; ∂k_i/∂u_c = dm_i · 2 θ_c (u_c - x_ic).
            solve_upper_t(&self.chol, n, &mut s.v);
            let dlh = (norm_log_cdf(z) - lh).exp();
            for c in 0..d {
                if self.is_cat[c] {
                    grad[c] = 0.0;
                    continue;
                }
                let (mut dmu, mut dvar) = (0.0, 0.0);
                for i in 0..n {
                    let dk = s.dm[i] * 2.0 * theta[c] * (u[c] - self.x[i * d + c]);
                    dmu += self.alpha[i] * dk;
                    dvar -= 2.0 * s.v[i] * dk;
                }
                let dsigma = if clamped { 0.0 } else { dvar / (2.0 * sigma) };
                let dz = (-dmu - z * dsigma) / sigma;
                grad[c] = dsigma / sigma + dlh * dz;
            }
        }
        value
    }
}

const LN_SQRT_2PI: f64 = 0.918_938_533_204_672_8;

/// `ln h(z)` with `h(z) = φ(z) + z Φ(z)`, so that `ln EI = ln σ + ln h((best - μ) / σ)`.
///
/// Direct for `z > -1`; through `ln Φ` (an `erfcx` in disguise) and `log1mexp` down
/// to `z = -25`, where the two terms of `h` nearly cancel; an asymptotic series below.
pub(super) fn log_h(z: f64) -> f64 {
    if z > -1.0 {
        (norm_log_pdf(z).exp() + z * norm_cdf(z)).ln()
    } else if z > -25.0 {
        // h(z) = φ(z) (1 - |z| Φ(z) / φ(z)); ln(|z| Φ/φ) = ln|z| + ln Φ(z) - ln φ(z).
        let a = (-z).ln() + norm_log_cdf(z) - norm_log_pdf(z);
        norm_log_pdf(z) + log1mexp(a)
    } else {
        // 1 - tR(t) = t⁻² (1 - 3 t⁻² + 15 t⁻⁴ - 105 t⁻⁶ + 945 t⁻⁸ - 10395 t⁻¹⁰), t = -z.
        let q = 1.0 / (z * z);
        let series = 1.0 - q * (3.0 - q * (15.0 - q * (105.0 - q * (945.0 - q * 10395.0))));
        -0.5 * z * z - LN_SQRT_2PI - 2.0 * (-z).ln() + series.ln()
    }
}

/// `ln(1 - eˣ)` for `x < 0`, accurate at both ends.
fn log1mexp(x: f64) -> f64 {
    if x > -std::f64::consts::LN_2 {
        (-x.exp_m1()).ln()
    } else {
        (-x.exp()).ln_1p()
    }
}
