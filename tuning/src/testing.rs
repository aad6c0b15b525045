//! Shared fixtures of the samplers' tests.

use crate::space::{ParamSpec, SearchSpace};

use super::sampler::{Params, Sampler};
use super::trial::FrozenTrial;
use crate::objective::Direction;

/// A 2-D box, `x, y ∈ [-5, 5]`.
pub fn quadratic_space() -> SearchSpace {
    SearchSpace::new(vec![
        ParamSpec::parse("x", "uniform(-5, 5)").unwrap(),
        ParamSpec::parse("y", "uniform(-5, 5)").unwrap(),
    ])
    .unwrap()
}

/// A quadratic bowl with its minimum 0 at (1.3, −0.7).
pub fn quadratic(p: &Params) -> f64 {
    let x = p["x"].as_f64().unwrap();
    let y = p["y"].as_f64().unwrap();
    (x - 1.3).powi(2) + 2.0 * (y + 0.7).powi(2)
}

/// `n` sequential trials of `f` with `sampler`, minimising.
pub fn run(sampler: &mut dyn Sampler, space: &SearchSpace, f: impl Fn(&Params) -> f64, n: u64) -> Vec<FrozenTrial> {
    let mut history = Vec::new();
    for i in 0..n {
        let params = sampler.sample(space, &history, &[Direction::Minimize]).unwrap();
        let v = f(&params);
        history.push(FrozenTrial::complete(i, params, v));
    }
    history
}

/// The lowest value in `history`.
pub fn best(history: &[FrozenTrial]) -> f64 {
    history
        .iter()
        .filter_map(FrozenTrial::value)
        .fold(f64::INFINITY, f64::min)
}

/// The median (upper median for even lengths).
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}
