//! The Matérn-5/2 ARD kernel and the fit of its parameters to the data.

use super::linalg::{cholesky, solve_lower, solve_upper_t};
use super::minimize::BoxMin;

const SQRT5: f64 = 2.236_067_977_499_79;

/// Matérn-5/2 correlation at squared distance `r2`, and its derivative in `r2`.
#[inline]
pub(super) fn matern52(r2: f64) -> (f64, f64) {
    let r = r2.sqrt();
    let e = (-SQRT5 * r).exp();
    (
        (1.0 + SQRT5 * r + 5.0 / 3.0 * r2) * e,
        -5.0 / 6.0 * (1.0 + SQRT5 * r) * e,
    )
}

/// Contribution of coordinate `k` to the squared distance, before scaling by `θ_k`.
#[inline]
pub(super) fn sq_diff(categorical: bool, a: f64, b: f64) -> f64 {
    if categorical {
        if a == b { 0.0 } else { 1.0 }
    } else {
        (a - b) * (a - b)
    }
}

/// Kernel parameters.
#[derive(Debug, Clone)]
pub(super) struct Hyper {
    pub(super) theta: Vec<f64>,
    pub(super) scale: f64,
    pub(super) noise: f64,
}

impl Hyper {
    /// From the log parameters `[ln θ.., ln scale, ln(noise - min_noise)]`.
    pub(super) fn from_log(phi: &[f64], min_noise: f64) -> Self {
        let d = phi.len() - 2;
        Self {
            theta: phi[..d].iter().map(|v| v.exp()).collect(),
            scale: phi[d].exp(),
            noise: min_noise + phi[d + 1].exp(),
        }
    }
}

/// Bounds of the log kernel parameters (wide; the priors keep the optimum inside).
const LOG_THETA_BOUNDS: (f64, f64) = (-9.0, 9.0);
const LOG_SCALE_BOUNDS: (f64, f64) = (-9.0, 5.0);
const LOG_NOISE_BOUNDS: (f64, f64) = (-25.0, 2.0);

/// Negative log posterior of the kernel parameters (log marginal likelihood plus log
/// priors) and its gradient, with buffers reused across evaluations.
pub(super) struct Evidence<'a> {
    n: usize,
    d: usize,
    y: &'a [f64],
    /// Per pair `(i, j)`, `j < i`, in row order: the `d` per-coordinate squared differences.
    diffs: Vec<f64>,
    min_noise: f64,
    k: Vec<f64>,
    /// Per pair: kernel value and its derivative in the squared distance (both scaled).
    kf: Vec<f64>,
    dkf: Vec<f64>,
    alpha: Vec<f64>,
    /// Columns of `L⁻¹` (column `j` at `j * n`).
    linv: Vec<f64>,
    g_theta: Vec<f64>,
}

impl<'a> Evidence<'a> {
    pub(super) fn new(x: &[f64], y: &'a [f64], is_cat: &[bool], min_noise: f64) -> Self {
        let (n, d) = (y.len(), is_cat.len());
        let pairs = n * n.saturating_sub(1) / 2;
        let mut diffs = Vec::with_capacity(pairs * d);
        for i in 0..n {
            for j in 0..i {
                for k in 0..d {
                    diffs.push(sq_diff(is_cat[k], x[i * d + k], x[j * d + k]));
                }
            }
        }
        Self {
            n,
            d,
            y,
            diffs,
            min_noise,
            k: vec![0.0; n * n],
            kf: vec![0.0; pairs],
            dkf: vec![0.0; pairs],
            alpha: vec![0.0; n],
            linv: vec![0.0; n * n],
            g_theta: vec![0.0; d],
        }
    }

    pub(super) fn eval(&mut self, phi: &[f64], grad: &mut [f64]) -> f64 {
        let (n, d) = (self.n, self.d);
        let h = Hyper::from_log(phi, self.min_noise);
        let en = phi[d + 1].exp();
        let mut p = 0;
        for i in 0..n {
            for j in 0..i {
                let r2: f64 = h
                    .theta
                    .iter()
                    .zip(&self.diffs[p * d..(p + 1) * d])
                    .map(|(t, q)| t * q)
                    .sum();
                let (m, dm) = matern52(r2);
                self.kf[p] = h.scale * m;
                self.dkf[p] = h.scale * dm;
                self.k[i * n + j] = self.kf[p];
                p += 1;
            }
            self.k[i * n + i] = h.scale + h.noise;
        }
        if !cholesky(&mut self.k, n) {
            grad.iter_mut().for_each(|g| *g = 0.0);
            return f64::INFINITY;
        }
        let l = &self.k;
        self.alpha.copy_from_slice(self.y);
        solve_lower(l, n, &mut self.alpha);
        let quad: f64 = self.alpha.iter().map(|a| a * a).sum();
        solve_upper_t(l, n, &mut self.alpha);
        let logdet: f64 = (0..n).map(|i| l[i * n + i].ln()).sum::<f64>() * 2.0;
        let lml = -0.5 * quad - 0.5 * logdet - 0.5 * n as f64 * (2.0 * std::f64::consts::PI).ln();

        // Columns of L⁻¹: forward solves of the unit vectors.
        for j in 0..n {
            let col = &mut self.linv[j * n..(j + 1) * n];
            col.iter_mut().for_each(|v| *v = 0.0);
            col[j] = 1.0 / l[j * n + j];
            for i in j + 1..n {
                let dot: f64 = l[i * n + j..i * n + i].iter().zip(&col[j..i]).map(|(a, b)| a * b).sum();
                col[i] = -dot / l[i * n + i];
            }
        }
        // d lml / d φ = ½ tr(W ∂K/∂φ) with W = α αᵀ - K⁻¹, K⁻¹_ij = Σ_k L⁻¹_ki L⁻¹_kj.
        let (mut g_scale, mut trace) = (0.0, 0.0);
        self.g_theta.iter_mut().for_each(|g| *g = 0.0);
        let mut p = 0;
        for i in 0..n {
            let ci = &self.linv[i * n..(i + 1) * n];
            for j in 0..i {
                let cj = &self.linv[j * n..(j + 1) * n];
                let kinv: f64 = ci[i..].iter().zip(&cj[i..]).map(|(a, b)| a * b).sum();
                let w = self.alpha[i] * self.alpha[j] - kinv;
                g_scale += w * self.kf[p];
                let c = w * self.dkf[p];
                for ((g, t), q) in self
                    .g_theta
                    .iter_mut()
                    .zip(&h.theta)
                    .zip(&self.diffs[p * d..(p + 1) * d])
                {
                    *g += c * t * q;
                }
                p += 1;
            }
            let kinv: f64 = ci[i..].iter().map(|a| a * a).sum();
            let w = self.alpha[i] * self.alpha[i] - kinv;
            g_scale += 0.5 * w * h.scale;
            trace += w;
        }
        // Optuna's priors on θ, the scale and the noise; their gradients in log space.
        let mut prior = 0.0;
        for (k, t) in h.theta.iter().enumerate() {
            prior -= 0.1 / t + 0.1 * t;
            grad[k] = -(self.g_theta[k] + 0.1 / t - 0.1 * t);
        }
        prior += h.scale.ln() - h.scale;
        prior += 0.1 * h.noise.ln() - 30.0 * h.noise;
        grad[d] = -(g_scale + 1.0 - h.scale);
        grad[d + 1] = -(0.5 * trace * en + (0.1 / h.noise - 30.0) * en);
        -(lml + prior)
    }
}

/// Fits the kernel parameters to standardised losses `y` at coordinates `x` from the log
/// parameters `start`; returns the maximum a posteriori log parameters (`start` when the
/// kernel matrix is singular there).
pub(super) fn fit(x: &[f64], y: &[f64], is_cat: &[bool], min_noise: f64, start: &[f64]) -> Vec<f64> {
    let d = is_cat.len();
    let mut evidence = Evidence::new(x, y, is_cat, min_noise);
    let mut lo = vec![LOG_THETA_BOUNDS.0; d + 2];
    let mut hi = vec![LOG_THETA_BOUNDS.1; d + 2];
    (lo[d], hi[d]) = LOG_SCALE_BOUNDS;
    (lo[d + 1], hi[d + 1]) = LOG_NOISE_BOUNDS;
    let mut phi = start.to_vec();
    let opts = BoxMin {
        max_iter: 200,
        gtol: 1e-4,
        ftol: 1e-9,
        first_step: 1.0,
    };
    let f = opts.minimize(&mut |p, g| evidence.eval(p, g), &mut phi, &lo, &hi);
    if f.is_finite() { phi } else { start.to_vec() }
}
