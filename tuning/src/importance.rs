//! Parameter importance: how much of the objective's spread each parameter explains.
//!
//! The method is the correlation ratio η² (Pearson's eta squared) of a one-way analysis
//! of variance, per parameter, over the complete trials with a finite first objective:
//! trials are grouped by the parameter's value — by choice for a categorical one; into
//! equal-count bins of its sorted values for a numeric one (⌊√n⌋ bins, at most 10) —
//! and η² = Σ_g n_g (ȳ_g − ȳ)² / Σ_i (y_i − ȳ)², the share of the objective's variance
//! between groups. Importances are those η² scaled to sum to 1, as Optuna reports its
//! own. It is cheap (a sort per parameter), needs no model, and reads alone; unlike
//! fANOVA (Optuna's default) it measures each parameter by itself, so interactions are
//! not split out. Fewer than 4 such trials, or an objective that never varies, give
//! none.

use std::collections::BTreeMap;

use crate::space::{ParamValue, SearchSpace};

use super::trial::{FrozenTrial, TrialState};
use crate::objective::Direction;

/// Trials needed before importances mean anything.
pub const MIN_TRIALS: usize = 4;

/// Each parameter of `space` with its importance (summing to 1), most important first;
/// empty when there is too little to measure. `direction` is the first objective's.
#[must_use]
pub fn importance(space: &SearchSpace, trials: &[FrozenTrial], direction: Direction) -> Vec<(String, f64)> {
    let done: Vec<&FrozenTrial> = trials
        .iter()
        .filter(|t| t.state == TrialState::Complete)
        .filter(|t| t.values.as_ref().and_then(|v| v.first()).is_some_and(|v| v.is_finite()))
        .collect();
    if done.len() < MIN_TRIALS {
        return Vec::new();
    }
    let y: Vec<f64> = done
        .iter()
        .map(|t| direction.loss(t.values.as_ref().map_or(f64::NAN, |v| v[0])))
        .collect();
    let mut scores: Vec<(String, f64)> = space
        .params
        .iter()
        .map(|p| {
            let groups = groups(&done, &p.name);
            (p.name.clone(), eta_squared(&y, &groups))
        })
        .collect();
    let total: f64 = scores.iter().map(|s| s.1).sum();
    if total.is_nan() || total <= 0.0 {
        return Vec::new();
    }
    for score in &mut scores {
        score.1 /= total;
    }
    scores.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    scores
}

/// The group of each trial by its value of `name` (`None`: the trial lacks it).
fn groups(trials: &[&FrozenTrial], name: &str) -> Vec<Option<usize>> {
    let values: Vec<Option<&ParamValue>> = trials.iter().map(|t| t.params.get(name)).collect();
    let numeric: Option<Vec<Option<f64>>> = values
        .iter()
        .map(|v| match v {
            Some(ParamValue::Categorical(_)) => None,
            Some(v) => Some(v.as_f64()),
            None => Some(None),
        })
        .collect();
    match numeric {
        Some(numbers) => quantile_bins(&numbers),
        None => {
            let mut ids: BTreeMap<String, usize> = BTreeMap::new();
            values
                .iter()
                .map(|v| {
                    v.map(|v| {
                        let next = ids.len();
                        *ids.entry(v.to_string()).or_insert(next)
                    })
                })
                .collect()
        }
    }
}

/// Equal-count bins of the sorted values; equal values share a bin.
fn quantile_bins(values: &[Option<f64>]) -> Vec<Option<usize>> {
    let mut order: Vec<(usize, f64)> = values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.filter(|x| x.is_finite()).map(|x| (i, x)))
        .collect();
    order.sort_by(|a, b| a.1.total_cmp(&b.1));
    let n = order.len();
    let bins = ((n as f64).sqrt().floor() as usize).clamp(1, 10);
    let mut out = vec![None; values.len()];
    let mut bin = 0;
    for (rank, &(i, x)) in order.iter().enumerate() {
        let natural = rank * bins / n.max(1);
        // A run of equal values stays in the bin it started in.
        if natural > bin && rank > 0 && order[rank - 1].1 != x {
            bin = natural;
        }
        out[i] = Some(bin);
    }
    out
}

/// η² of `y` grouped by `groups`; trials without a group are left out.
fn eta_squared(y: &[f64], groups: &[Option<usize>]) -> f64 {
    let pairs: Vec<(usize, f64)> = groups.iter().zip(y).filter_map(|(g, &v)| g.map(|g| (g, v))).collect();
    if pairs.len() < 2 {
        return 0.0;
    }
    let mean = pairs.iter().map(|p| p.1).sum::<f64>() / pairs.len() as f64;
    let total: f64 = pairs.iter().map(|p| (p.1 - mean).powi(2)).sum();
    if total.is_nan() || total <= 0.0 {
        return 0.0;
    }
    let mut sums: BTreeMap<usize, (f64, usize)> = BTreeMap::new();
    for &(g, v) in &pairs {
        let entry = sums.entry(g).or_insert((0.0, 0));
        entry.0 += v;
        entry.1 += 1;
    }
    let between: f64 = sums
        .values()
        .map(|&(sum, n)| n as f64 * (sum / n as f64 - mean).powi(2))
        .sum();
    (between / total).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use crate::space::{Choice, Distribution, ParamSpec};

    use super::*;

    fn space() -> SearchSpace {
        SearchSpace::new(vec![
            ParamSpec::new("lr", Distribution::float(1e-4, 1.0, true, None).unwrap()),
            ParamSpec::new("noise", Distribution::float(0.0, 1.0, false, None).unwrap()),
            ParamSpec::new(
                "optimizer",
                Distribution::categorical(vec![Choice::from("sgd"), Choice::from("adam")]).unwrap(),
            ),
        ])
        .unwrap()
    }

    fn trial(number: u64, lr: f64, noise: f64, optimizer: &str, value: f64) -> FrozenTrial {
        let params = [
            ("lr".to_owned(), ParamValue::Float(lr)),
            ("noise".to_owned(), ParamValue::Float(noise)),
            ("optimizer".to_owned(), ParamValue::Categorical(Choice::from(optimizer))),
        ]
        .into_iter()
        .collect();
        FrozenTrial::complete(number, params, value)
    }

    #[test]
    fn the_parameter_that_drives_the_objective_ranks_first() {
        // The objective follows lr; noise is a scrambled sequence; the optimizer alternates.
        let trials: Vec<FrozenTrial> = (0..40)
            .map(|i| {
                let lr = 10f64.powf(-4.0 + 4.0 * i as f64 / 40.0);
                let noise = ((i * 17) % 40) as f64 / 40.0;
                let optimizer = if i % 2 == 0 { "sgd" } else { "adam" };
                trial(i, lr, noise, optimizer, -lr.log10())
            })
            .collect();
        let ranked = importance(&space(), &trials, Direction::Minimize);
        assert_eq!(ranked.len(), 3);
        assert_eq!(ranked[0].0, "lr");
        assert!(ranked[0].1 > 0.7, "{ranked:?}");
        let sum: f64 = ranked.iter().map(|r| r.1).sum();
        assert!((sum - 1.0).abs() < 1e-12);
    }

    #[test]
    fn a_categorical_parameter_is_grouped_by_choice() {
        let trials: Vec<FrozenTrial> = (0..12)
            .map(|i| {
                let optimizer = if i % 3 == 0 { "adam" } else { "sgd" };
                let value = if optimizer == "adam" { 0.9 } else { 0.5 } + 0.001 * i as f64;
                trial(i, 0.01, 0.5, optimizer, value)
            })
            .collect();
        let ranked = importance(&space(), &trials, Direction::Maximize);
        assert_eq!(ranked[0].0, "optimizer");
        assert!(ranked[0].1 > 0.9, "{ranked:?}");
    }

    #[test]
    fn too_few_trials_or_a_flat_objective_give_nothing() {
        let few: Vec<FrozenTrial> = (0..3)
            .map(|i| trial(i, 0.01 * (i + 1) as f64, 0.1, "sgd", i as f64))
            .collect();
        assert!(importance(&space(), &few, Direction::Minimize).is_empty());
        let flat: Vec<FrozenTrial> = (0..10)
            .map(|i| trial(i, 0.01 * (i + 1) as f64, 0.1, "sgd", 1.0))
            .collect();
        assert!(importance(&space(), &flat, Direction::Minimize).is_empty());
    }

    #[test]
    fn equal_values_share_a_bin() {
        let values: Vec<Option<f64>> = [1.0, 1.0, 1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0].map(Some).to_vec();
        let bins = quantile_bins(&values);
        assert!(bins[..4].iter().all(|b| *b == bins[0]));
        assert!(bins[8] > bins[0]);
    }
}
