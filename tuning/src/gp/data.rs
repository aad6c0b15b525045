//! From trials to training data: coordinates, losses, and how each trial counts.

use crate::space::SearchSpace;
use rand::RngExt;
use rand::rngs::StdRng;

use super::encode::Dim;
use crate::objective::Direction;
use crate::trial::{FrozenTrial, TrialState};

/// How a finished trial enters the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Outcome {
    Feasible,
    /// Infeasible or non-finite: modelled as (at least) the worst feasible loss.
    Bad,
}

#[derive(Debug, Default)]
pub(super) struct Data {
    /// Finished trials: coordinates (row-major), losses per objective, outcome.
    pub(super) x: Vec<f64>,
    pub(super) losses: Vec<Vec<f64>>,
    pub(super) outcomes: Vec<Outcome>,
    /// Running trials' coordinates (row-major).
    pub(super) running: Vec<f64>,
}

pub(super) fn collect(
    dims: &[Dim<'_>],
    space: &SearchSpace,
    history: &[FrozenTrial],
    directions: &[Direction],
) -> Data {
    let mut data = Data::default();
    let mut row = Vec::with_capacity(dims.len());
    for t in history {
        if t.state == TrialState::Failed {
            continue;
        }
        row.clear();
        for (dim, p) in dims.iter().zip(&space.params) {
            match t.params.get(&p.name).and_then(|v| dim.encode(v)) {
                Some(u) => row.push(u),
                None => break,
            }
        }
        if row.len() != dims.len() {
            continue;
        }
        let values = match t.state {
            TrialState::Running => {
                data.running.extend_from_slice(&row);
                continue;
            }
            TrialState::Complete => t.values.as_deref(),
            TrialState::Pruned => t.last_intermediate().map(|(_, v)| v),
            TrialState::Failed => None,
        };
        let Some(values) = values.filter(|v| v.len() == directions.len()) else {
            continue;
        };
        let losses: Vec<f64> = values.iter().zip(directions).map(|(v, d)| d.loss(*v)).collect();
        let finite = losses.iter().all(|l| l.is_finite());
        data.outcomes.push(if t.feasible && finite {
            Outcome::Feasible
        } else {
            Outcome::Bad
        });
        data.losses.push(losses);
        data.x.extend_from_slice(&row);
    }
    data
}

/// One loss per finished trial: the objective itself, or ParEGO's scalarisation.
pub(super) fn scalarise(data: &Data, rho: f64, rng: &mut StdRng) -> Vec<f64> {
    let m = data.losses.first().map_or(1, Vec::len);
    if m == 1 {
        return data.losses.iter().map(|l| l[0]).collect();
    }
    // Weights uniform on the simplex: normalised exponential draws.
    let mut w: Vec<f64> = (0..m).map(|_| -(1.0 - rng.random::<f64>()).ln()).collect();
    let total: f64 = w.iter().sum();
    for x in &mut w {
        *x /= total;
    }
    // Per-objective ranges over the feasible trials (all finite ones if none is feasible).
    let any_feasible = data.outcomes.contains(&Outcome::Feasible);
    let mut lo = vec![f64::INFINITY; m];
    let mut hi = vec![f64::NEG_INFINITY; m];
    for (l, o) in data.losses.iter().zip(&data.outcomes) {
        if *o == Outcome::Feasible || !any_feasible {
            for j in 0..m {
                if l[j].is_finite() {
                    lo[j] = lo[j].min(l[j]);
                    hi[j] = hi[j].max(l[j]);
                }
            }
        }
    }
    data.losses
        .iter()
        .map(|l| {
            let (mut max, mut sum) = (f64::NEG_INFINITY, 0.0);
            for j in 0..m {
                let range = hi[j] - lo[j];
                let f = if range > 0.0 { (l[j] - lo[j]) / range } else { 0.0 };
                max = max.max(w[j] * f);
                sum += w[j] * f;
            }
            max + rho * sum
        })
        .collect()
}

/// Compresses a long upper tail: when `max - median > 2 (median - min)` over the finite
/// losses, each loss `v` becomes `ln(1 + (v - min) / (median - min))`. The order is kept,
/// so the incumbent and the ranking of trials do not change, but a few huge losses (a
/// diverged run, a steep valley wall) no longer flatten the rest of the surface after
/// standardisation.
pub(super) fn log_warp(raw: &mut [f64]) {
    let mut sorted: Vec<f64> = raw.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.len() < 3 {
        return;
    }
    sorted.sort_by(f64::total_cmp);
    let (min, med, max) = (sorted[0], sorted[sorted.len() / 2], sorted[sorted.len() - 1]);
    let spread = med - min;
    if spread > 0.0 && max - med > 2.0 * spread {
        for v in raw.iter_mut() {
            *v = (1.0 + (*v - min) / spread).ln();
        }
    }
}

/// Replaces the losses of bad trials by (at least) the worst feasible loss and
/// standardises. Returns the standardised losses and the liar value (the worst).
pub(super) fn standardise(raw: &[f64], outcomes: &[Outcome]) -> (Vec<f64>, f64) {
    let worst_feasible = raw
        .iter()
        .zip(outcomes)
        .filter(|(v, o)| **o == Outcome::Feasible && v.is_finite())
        .map(|(v, _)| *v)
        .fold(f64::NEG_INFINITY, f64::max);
    let worst_any = raw
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    let floor = if worst_feasible.is_finite() {
        worst_feasible
    } else {
        worst_any
    };
    let floor = if floor.is_finite() { floor } else { 0.0 };
    let y: Vec<f64> = raw
        .iter()
        .zip(outcomes)
        .map(|(&v, o)| match o {
            Outcome::Feasible => v,
            Outcome::Bad if v.is_finite() => v.max(floor),
            Outcome::Bad => floor,
        })
        .collect();
    let n = y.len() as f64;
    let mean = y.iter().sum::<f64>() / n;
    let var = y.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let sd = if var.sqrt() > 1e-12 * mean.abs().max(1e-300) {
        var.sqrt()
    } else {
        1.0
    };
    let z: Vec<f64> = y.iter().map(|v| (v - mean) / sd).collect();
    let liar = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (z, liar)
}
