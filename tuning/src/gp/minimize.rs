//! Bounded quasi-Newton minimisation.

/// Projected BFGS with a backtracking (Armijo) line search, for small dimensions.
#[derive(Debug, Clone, Copy)]
pub(super) struct BoxMin {
    pub(super) max_iter: usize,
    /// Stop when the largest free gradient component is below this.
    pub(super) gtol: f64,
    /// Stop when a step lowers the objective by less than this (relative).
    pub(super) ftol: f64,
    /// Length (largest coordinate) of the first step, before curvature is known.
    pub(super) first_step: f64,
}

impl BoxMin {
    /// Minimises `f` (which returns the value and writes the gradient) over the box
    /// `[lo, hi]` from `x`, leaving the minimiser in `x`; returns the minimum.
    pub(super) fn minimize(
        &self,
        f: &mut impl FnMut(&[f64], &mut [f64]) -> f64,
        x: &mut [f64],
        lo: &[f64],
        hi: &[f64],
    ) -> f64 {
        let p = x.len();
        for ((v, l), h) in x.iter_mut().zip(lo).zip(hi) {
            *v = v.clamp(*l, *h);
        }
        let mut g = vec![0.0; p];
        let mut fx = f(x, &mut g);
        if !fx.is_finite() {
            return fx;
        }
        let mut hmat = vec![0.0; p * p];
        let reset = |h: &mut [f64]| {
            h.iter_mut().for_each(|v| *v = 0.0);
            (0..p).for_each(|i| h[i * p + i] = 1.0);
        };
        reset(&mut hmat);
        let mut fresh = true;
        let (mut xn, mut gn, mut dir) = (vec![0.0; p], vec![0.0; p], vec![0.0; p]);
        let (mut s, mut yv, mut hy) = (vec![0.0; p], vec![0.0; p], vec![0.0; p]);
        let mut free = vec![true; p];
        for _ in 0..self.max_iter {
            let mut pg: f64 = 0.0;
            for i in 0..p {
                free[i] = !((x[i] <= lo[i] && g[i] > 0.0) || (x[i] >= hi[i] && g[i] < 0.0));
                if free[i] {
                    pg = pg.max(g[i].abs());
                }
            }
            if pg < self.gtol {
                break;
            }
            let direction = |h: &[f64], dir: &mut [f64]| -> f64 {
                let mut slope = 0.0;
                for i in 0..p {
                    dir[i] = if free[i] {
                        -(0..p).filter(|&j| free[j]).map(|j| h[i * p + j] * g[j]).sum::<f64>()
                    } else {
                        0.0
                    };
                    slope += dir[i] * g[i];
                }
                slope
            };
            let slope = direction(&hmat, &mut dir);
            // Not a descent direction (curvature lost): restart from steepest descent.
            if slope.is_nan() || slope >= 0.0 {
                reset(&mut hmat);
                fresh = true;
                direction(&hmat, &mut dir);
            }
            if fresh {
                let big = dir.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                if big > 0.0 {
                    let c = self.first_step / big;
                    dir.iter_mut().for_each(|v| *v *= c);
                }
            }
            let mut t = 1.0;
            let mut accepted = None;
            for _ in 0..40 {
                let mut decrease = 0.0;
                for i in 0..p {
                    xn[i] = (x[i] + t * dir[i]).clamp(lo[i], hi[i]);
                    decrease += g[i] * (xn[i] - x[i]);
                }
                if decrease >= 0.0 {
                    break;
                }
                let fnew = f(&xn, &mut gn);
                if fnew.is_finite() && fnew <= fx + 1e-4 * decrease {
                    accepted = Some(fnew);
                    break;
                }
                t *= 0.5;
            }
            let Some(fnew) = accepted else { break };
            let mut sy = 0.0;
            let mut yy = 0.0;
            for i in 0..p {
                s[i] = xn[i] - x[i];
                yv[i] = gn[i] - g[i];
                sy += s[i] * yv[i];
                yy += yv[i] * yv[i];
            }
            if sy > 1e-12 * yy.max(1e-300).sqrt() * s.iter().map(|v| v * v).sum::<f64>().sqrt() && yy > 0.0 {
                if fresh {
                    let c = sy / yy;
                    hmat.iter_mut().for_each(|v| *v *= c);
                    fresh = false;
                }
                let rho = 1.0 / sy;
                let mut yhy = 0.0;
                for i in 0..p {
                    hy[i] = (0..p).map(|j| hmat[i * p + j] * yv[j]).sum();
                    yhy += yv[i] * hy[i];
                }
                let c = rho * rho * yhy + rho;
                for i in 0..p {
                    for j in 0..p {
                        hmat[i * p + j] += -rho * (hy[i] * s[j] + s[i] * hy[j]) + c * s[i] * s[j];
                    }
                }
            }
            let drop = fx - fnew;
            x.copy_from_slice(&xn);
            g.copy_from_slice(&gn);
            fx = fnew;
            if drop <= self.ftol * fx.abs().max(1.0) {
                break;
            }
        }
        fx
    }
}
