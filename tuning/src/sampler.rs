//! The [`Sampler`] seam and the two baselines:
//! [`RandomSampler`] and [`GridSampler`].

use std::collections::{BTreeMap, HashSet};

use crate::space::{Distribution, ParamValue, SearchSpace};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::trial::FrozenTrial;
use crate::objective::Direction;

/// Parameters of one trial, by name.
pub type Params = BTreeMap<String, ParamValue>;

/// Why a sampler could not propose parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SamplerError {
    /// Every point of a finite search (the grid) has been tried.
    #[error("all {0} grid points have been tried")]
    Exhausted(usize),
    /// The grid would have more points than the sampler enumerates.
    #[error("the grid has {0} points or more, above the limit of {limit}", limit = GridSampler::MAX_POINTS)]
    GridTooLarge(usize),
}

/// Proposes the parameters of the next trial from the finished ones.
///
/// Samplers own a seeded random generator: two samplers built from the same seed and
/// fed the same history propose the same parameters.
pub trait Sampler {
    /// Parameters for the next trial, one value for every parameter of `space`.
    ///
    /// `history` holds the study's trials (any state; samplers skip what they cannot
    /// use); `directions` says, per objective, whether lower or higher values are
    /// better (one entry for a single-objective study).
    ///
    /// # Errors
    /// When the sampler has nothing left to propose ([`SamplerError::Exhausted`] from
    /// a fully explored grid) or cannot handle the space.
    fn sample(
        &mut self,
        space: &SearchSpace,
        history: &[FrozenTrial],
        directions: &[Direction],
    ) -> Result<Params, SamplerError>;
}

/// Independent uniform draws (uniform in log space for log-scale parameters).
#[derive(Debug)]
pub struct RandomSampler {
    rng: StdRng,
}

impl RandomSampler {
    /// A sampler seeded with `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// One uniform draw of every parameter, using `rng`.
    pub fn draw(space: &SearchSpace, rng: &mut StdRng) -> Params {
        space
            .params
            .iter()
            .map(|p| (p.name.clone(), p.distribution.sample_uniform(rng)))
            .collect()
    }
}

impl Sampler for RandomSampler {
    fn sample(&mut self, space: &SearchSpace, _: &[FrozenTrial], _: &[Direction]) -> Result<Params, SamplerError> {
        Ok(Self::draw(space, &mut self.rng))
    }
}

/// Exhaustive search over a grid, in a seeded random order.
///
/// The grid is the Cartesian product of per-parameter value lists: every choice of a
/// categorical; every value of an integer range with at most [`Self::MAX_INT_VALUES`]
/// values, otherwise `points` values evenly spaced in its (log) scale; `points` values
/// evenly spaced from low to high (inclusive) for floats. Points already present in the
/// history (from any sampler) are skipped. Once every point has been tried the sampler
/// returns [`SamplerError::Exhausted`] rather than cycling, so a study ends instead of
/// repeating work.
#[derive(Debug)]
pub struct GridSampler {
    points: usize,
    rng: StdRng,
    state: Option<GridState>,
}

#[derive(Debug, Clone)]
struct GridState {
    space: SearchSpace,
    axes: Vec<Vec<ParamValue>>,
    order: Vec<usize>,
    cursor: usize,
}

impl GridSampler {
    /// Integer ranges with at most this many values are enumerated in full.
    pub const MAX_INT_VALUES: usize = 64;
    /// Largest grid the sampler enumerates.
    pub const MAX_POINTS: usize = 1 << 22;

    /// A grid with `points` values per float (at least 2), visited in an order seeded by `seed`.
    #[must_use]
    pub fn new(points: usize, seed: u64) -> Self {
        Self {
            points: points.max(2),
            rng: StdRng::seed_from_u64(seed),
            state: None,
        }
    }

    /// The values the grid takes for `distribution`.
    #[must_use]
    pub fn axis(&self, distribution: &Distribution) -> Vec<ParamValue> {
        let spaced = |n: usize| -> Vec<ParamValue> {
            let mut values: Vec<ParamValue> = Vec::with_capacity(n);
            for i in 0..n {
                let v = distribution.from_unit(i as f64 / (n - 1) as f64);
                if !values.contains(&v) {
                    values.push(v);
                }
            }
            values
        };
        match distribution {
            Distribution::Categorical { choices } => choices.iter().cloned().map(ParamValue::Categorical).collect(),
            Distribution::Int { low, high, step, .. } => {
                let count = ((high - low) / step + 1) as usize;
                if count <= Self::MAX_INT_VALUES {
                    (0..count as i64).map(|k| ParamValue::Int(low + k * step)).collect()
                } else {
                    spaced(self.points)
                }
            }
            Distribution::Float { .. } => spaced(self.points),
        }
    }

    /// The number of points of the grid over `space`.
    ///
    /// # Errors
    /// [`SamplerError::GridTooLarge`] above [`Self::MAX_POINTS`].
    pub fn grid_size(&self, space: &SearchSpace) -> Result<usize, SamplerError> {
        space.params.iter().try_fold(1usize, |n, p| {
            let n = n.saturating_mul(self.axis(&p.distribution).len());
            if n > Self::MAX_POINTS {
                Err(SamplerError::GridTooLarge(n))
            } else {
                Ok(n)
            }
        })
    }

    fn index_of(axes: &[Vec<ParamValue>], space: &SearchSpace, params: &Params) -> Option<usize> {
        let mut index = 0;
        for (axis, p) in axes.iter().zip(&space.params) {
            let v = params.get(&p.name)?;
            index = index * axis.len() + axis.iter().position(|a| a == v)?;
        }
        Some(index)
    }
}

impl Sampler for GridSampler {
    fn sample(
        &mut self,
        space: &SearchSpace,
        history: &[FrozenTrial],
        _: &[Direction],
    ) -> Result<Params, SamplerError> {
        if self.state.as_ref().is_none_or(|s| &s.space != space) {
            let total = self.grid_size(space)?;
            let axes: Vec<_> = space.params.iter().map(|p| self.axis(&p.distribution)).collect();
            let mut order: Vec<usize> = (0..total).collect();
            order.shuffle(&mut self.rng);
            self.state = Some(GridState {
                space: space.clone(),
                axes,
                order,
                cursor: 0,
            });
        }
        let Some(state) = self.state.as_mut() else {
            unreachable!("grid state was just set")
        };
        let seen: HashSet<usize> = history
            .iter()
            .filter_map(|t| Self::index_of(&state.axes, space, &t.params))
            .collect();
        while let Some(&index) = state.order.get(state.cursor) {
            state.cursor += 1;
            if seen.contains(&index) {
                continue;
            }
            let mut rest = index;
            let mut params = Params::new();
            for (axis, p) in state.axes.iter().zip(&space.params).rev() {
                params.insert(p.name.clone(), axis[rest % axis.len()].clone());
                rest /= axis.len();
            }
            return Ok(params);
        }
        Err(SamplerError::Exhausted(state.order.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::ParamSpec;

    fn space() -> SearchSpace {
        SearchSpace::new(vec![
            ParamSpec::parse("lr", "loguniform(1e-4, 1e-1)").unwrap(),
            ParamSpec::parse("layers", "int(1, 3)").unwrap(),
            ParamSpec::parse("opt", "choice(adam, sgd)").unwrap(),
        ])
        .unwrap()
    }

    #[test]
    fn random_is_deterministic_and_in_range() {
        let space = space();
        let draw = |seed| {
            let mut s = RandomSampler::new(seed);
            (0..20)
                .map(|_| s.sample(&space, &[], &[Direction::Minimize]).unwrap())
                .collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        for params in &a {
            for p in &space.params {
                assert!(p.distribution.contains(&params[&p.name]), "{:?}", params[&p.name]);
            }
        }
    }

    #[test]
    fn grid_covers_its_grid_then_stops() {
        let space = space();
        let mut grid = GridSampler::new(4, 1);
        assert_eq!(grid.grid_size(&space), Ok(4 * 3 * 2));
        let mut history = Vec::new();
        for n in 0..24 {
            let params = grid.sample(&space, &history, &[Direction::Minimize]).unwrap();
            history.push(FrozenTrial::complete(n, params, 0.0));
        }
        let distinct: HashSet<String> = history.iter().map(|t| format!("{:?}", t.params)).collect();
        assert_eq!(distinct.len(), 24);
        let lrs: HashSet<String> = history.iter().map(|t| t.params["lr"].to_string()).collect();
        assert_eq!(lrs.len(), 4);
        assert!(history.iter().any(|t| t.params["lr"] == ParamValue::Float(1e-1)));
        assert_eq!(
            grid.sample(&space, &history, &[Direction::Minimize]),
            Err(SamplerError::Exhausted(24))
        );
        // A fresh sampler skips points that the history already holds.
        let mut fresh = GridSampler::new(4, 2);
        assert_eq!(
            fresh.sample(&space, &history, &[Direction::Minimize]),
            Err(SamplerError::Exhausted(24))
        );
    }
}
