//! Encoding parameters as coordinates of the model's input space (the unit cube, and
//! choice indices for categoricals).

use crate::space::{Distribution, ParamValue};
use rand::RngExt;
use rand::rngs::StdRng;

/// Integer ranges (and stepped floats) with at most this many values are searched
/// exhaustively during local refinement; larger ones are relaxed to a continuum.
const MAX_ENUMERATED: usize = 16;

#[derive(Debug, Clone)]
pub(super) enum Kind {
    Continuous,
    /// On a grid; `grid` lists the grid's coordinates when it is small.
    Discrete {
        grid: Option<Vec<f64>>,
    },
    Categorical {
        n: usize,
    },
}

/// One coordinate of the model's input space.
#[derive(Debug, Clone)]
pub(super) struct Dim<'a> {
    dist: &'a Distribution,
    /// Internal bounds that \[0, 1\] spans.
    lo: f64,
    hi: f64,
    pub(super) kind: Kind,
}

impl<'a> Dim<'a> {
    pub(super) fn of(dist: &'a Distribution) -> Self {
        let (mut lo, mut hi) = dist.internal_bounds();
        let mut count = None;
        let kind = match dist {
            Distribution::Float { step: None, .. } => Kind::Continuous,
            Distribution::Float {
                low,
                high,
                step: Some(s),
                ..
            } => {
                lo -= s / 2.0;
                hi += s / 2.0;
                count = Some(((high - low) / s).round() as usize + 1);
                Kind::Discrete { grid: None }
            }
            Distribution::Int {
                low,
                high,
                log: true,
                step,
            } => {
                lo = (*low as f64 - 0.5).ln();
                hi = (*high as f64 + 0.5).ln();
                count = Some(((high - low) / step) as usize + 1);
                Kind::Discrete { grid: None }
            }
            Distribution::Int { low, high, step, .. } => {
                lo -= *step as f64 / 2.0;
                hi += *step as f64 / 2.0;
                count = Some(((high - low) / step) as usize + 1);
                Kind::Discrete { grid: None }
            }
            Distribution::Categorical { choices } => Kind::Categorical { n: choices.len() },
        };
        let mut dim = Self { dist, lo, hi, kind };
        if let Some(c) = count.filter(|&c| c <= MAX_ENUMERATED) {
            let mut grid: Vec<f64> = (0..c).map(|i| dim.snap((i as f64 + 0.5) / c as f64)).collect();
            grid.dedup();
            // Make sure both ends are in, whatever the log scale does to the middle.
            for u in [0.0, 1.0] {
                let s = dim.snap(u);
                if !grid.contains(&s) {
                    grid.push(s);
                }
            }
            grid.sort_by(f64::total_cmp);
            grid.dedup();
            dim.kind = Kind::Discrete { grid: Some(grid) };
        }
        dim
    }

    pub(super) fn is_categorical(&self) -> bool {
        matches!(self.kind, Kind::Categorical { .. })
    }

    /// The coordinate of `value`, or `None` when it does not belong to the distribution.
    pub(super) fn encode(&self, value: &ParamValue) -> Option<f64> {
        let t = self.dist.to_internal(value)?;
        Some(match self.kind {
            Kind::Categorical { .. } => t,
            _ => ((t - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0),
        })
    }

    pub(super) fn decode(&self, u: f64) -> ParamValue {
        match self.kind {
            Kind::Categorical { .. } => self.dist.from_internal(u),
            _ => self
                .dist
                .from_internal(self.lo + u.clamp(0.0, 1.0) * (self.hi - self.lo)),
        }
    }

    /// The coordinate of the value a trial would actually run with.
    pub(super) fn snap(&self, u: f64) -> f64 {
        match self.kind {
            Kind::Continuous => u.clamp(0.0, 1.0),
            Kind::Discrete { .. } => self.encode(&self.decode(u)).unwrap_or(u),
            Kind::Categorical { .. } => u,
        }
    }

    pub(super) fn draw(&self, rng: &mut StdRng) -> f64 {
        match self.kind {
            Kind::Categorical { n } => rng.random_range(0..n) as f64,
            _ => self.snap(rng.random::<f64>()),
        }
    }
}
