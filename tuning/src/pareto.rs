//! Multi-objective helpers over losses (lower is better on every coordinate): Pareto
//! dominance, NSGA-II's non-dominated sort and crowding distance, the Pareto front of a
//! study, exact hypervolume in two and three dimensions, and weighted scalarisation.
//!
//! Points are plain loss vectors; turn objective values into losses with
//! [`FrozenTrial::losses`] or [`Direction::loss`] first. Comparisons follow IEEE order,
//! so a point with a NaN coordinate is incomparable with every other point: callers pass
//! finite losses.

use std::cmp::Ordering;

use super::trial::FrozenTrial;
use crate::objective::Direction;

/// What is wrong with a scalarisation or a hypervolume request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParetoError {
    /// A scalarisation needs at least one weight.
    #[error("no weights given: give one non-negative weight per objective")]
    NoWeights,
    /// A weight is negative, infinite or NaN.
    #[error("weight {index} is {weight}: weights must be finite and non-negative")]
    InvalidWeight {
        /// Position of the weight.
        index: usize,
        /// The offending weight.
        weight: f64,
    },
    /// Every weight is zero, so every trial would score the same.
    #[error("all weights are zero: at least one objective must count")]
    AllZeroWeights,
    /// The weights do not match the objectives one to one.
    #[error("{weights} weight(s) for {objectives} objective(s): give one weight per objective")]
    WeightCount {
        /// How many weights were given.
        weights: usize,
        /// How many objectives the study has.
        objectives: usize,
    },
    /// Hypervolume is computed exactly for two or three objectives only.
    #[error("hypervolume is implemented for 2 or 3 objectives, not {0}")]
    UnsupportedDimension(usize),
    /// A point's length differs from the reference point's.
    #[error("point {index} has {got} coordinate(s), the reference point has {expected}")]
    DimensionMismatch {
        /// Position of the point.
        index: usize,
        /// The reference point's length.
        expected: usize,
        /// The point's length.
        got: usize,
    },
    /// The reference point has a NaN or infinite coordinate.
    #[error("the reference point must be finite, got {0:?}")]
    NonFiniteReference(Vec<f64>),
}

/// Whether `a` Pareto-dominates `b`: no worse on every coordinate and strictly better
/// on at least one. Equal points do not dominate each other.
#[must_use]
pub fn dominates(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x <= y) && a.iter().zip(b).any(|(x, y)| x < y)
}

/// The non-dominated level of every point (NSGA-II's fast non-dominated sort): 0 for the
/// Pareto front, 1 for the front once level 0 is removed, and so on. Duplicates share a
/// level. O(m n²) for n points of m coordinates.
#[must_use]
pub fn non_dominated_ranks(points: &[Vec<f64>]) -> Vec<usize> {
    let n = points.len();
    // For each point, the points it dominates, and how many points dominate it.
    let mut dominated: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut dominated_by = vec![0usize; n];
    for i in 0..n {
        for j in i + 1..n {
            if dominates(&points[i], &points[j]) {
                dominated[i].push(j);
                dominated_by[j] += 1;
            } else if dominates(&points[j], &points[i]) {
                dominated[j].push(i);
                dominated_by[i] += 1;
            }
        }
    }
    let mut ranks = vec![0usize; n];
    let mut front: Vec<usize> = (0..n).filter(|&i| dominated_by[i] == 0).collect();
    let mut level = 0;
    while !front.is_empty() {
        let mut next = Vec::new();
        for &i in &front {
            ranks[i] = level;
            for &j in &dominated[i] {
                dominated_by[j] -= 1;
                if dominated_by[j] == 0 {
                    next.push(j);
                }
            }
        }
        front = next;
        level += 1;
    }
    ranks
}

/// NSGA-II's crowding distance of every point of one front: per coordinate, the gap
/// between a point's neighbours divided by the coordinate's range, summed over
/// coordinates. Larger means more isolated; points holding a coordinate's minimum or
/// maximum get infinity. A coordinate on which every point agrees adds nothing.
///
/// Neighbours are the nearest strictly smaller and strictly larger values, so equal
/// points get equal distances and the result does not depend on the points' order.
#[must_use]
pub fn crowding_distances(points: &[Vec<f64>]) -> Vec<f64> {
    let n = points.len();
    let mut distance = vec![0.0; n];
    let m = points.iter().map(Vec::len).min().unwrap_or(0);
    for d in 0..m {
        let mut values: Vec<f64> = points.iter().map(|p| p[d]).collect();
        values.sort_by(f64::total_cmp);
        values.dedup_by(|a, b| a.total_cmp(b) == Ordering::Equal);
        let (Some(&lo), Some(&hi)) = (values.first(), values.last()) else {
            continue;
        };
        if values.len() < 2 {
            continue;
        }
        let range = hi - lo;
        for (i, p) in points.iter().enumerate() {
            let v = p[d];
            // `values` is sorted and deduplicated, so the neighbours sit either side.
            let at = values.partition_point(|x| x.total_cmp(&v) == Ordering::Less);
            if at == 0 || at + 1 >= values.len() {
                distance[i] = f64::INFINITY;
            } else {
                let gap = (values[at + 1] - values[at - 1]) / range;
                // An infinite range makes finite gaps vanish and infinite ones undefined.
                if gap.is_finite() {
                    distance[i] += gap;
                }
            }
        }
    }
    distance
}

/// Every point's non-dominated level and its crowding distance within that level — the
/// order NSGA-II selects by: lower level first, then larger distance.
#[must_use]
pub fn crowded_ranks(points: &[Vec<f64>]) -> Vec<(usize, f64)> {
    let levels = non_dominated_ranks(points);
    let mut crowding = vec![0.0; points.len()];
    let top = levels.iter().copied().max().map_or(0, |l| l + 1);
    for level in 0..top {
        let members: Vec<usize> = (0..points.len()).filter(|&i| levels[i] == level).collect();
        let front: Vec<Vec<f64>> = members.iter().map(|&i| points[i].clone()).collect();
        for (&i, c) in members.iter().zip(crowding_distances(&front)) {
            crowding[i] = c;
        }
    }
    levels.into_iter().zip(crowding).collect()
}

/// Orders two [`crowded_ranks`] entries: `Less` when `a` is better (lower level, or the
/// same level and a larger crowding distance).
#[must_use]
pub fn crowded_cmp(a: (usize, f64), b: (usize, f64)) -> Ordering {
    a.0.cmp(&b.0).then(b.1.total_cmp(&a.1))
}

/// The complete, feasible trials that no other complete, feasible trial dominates, in
/// their order in `trials`. Trials whose values do not fit `directions` (wrong count,
/// not finite) are left out; trials with equal values are all kept.
#[must_use]
pub fn pareto_front<'a>(trials: &'a [FrozenTrial], directions: &[Direction]) -> Vec<&'a FrozenTrial> {
    let candidates: Vec<(&FrozenTrial, Vec<f64>)> = trials
        .iter()
        .filter(|t| t.feasible)
        .filter_map(|t| t.losses(directions).map(|l| (t, l)))
        .collect();
    let points: Vec<Vec<f64>> = candidates.iter().map(|c| c.1.clone()).collect();
    candidates
        .iter()
        .zip(non_dominated_ranks(&points))
        .filter(|(_, rank)| *rank == 0)
        .map(|(c, _)| c.0)
        .collect()
}

/// The hypervolume dominated by `points` and bounded by `reference`: the measure of the
/// set of points that some point of `points` dominates and that dominate `reference`.
/// Exact, for two or three coordinates; points not strictly better than `reference` on
/// every coordinate add nothing. O(n log n) in two dimensions, O(n² log n) in three.
///
/// # Errors
/// [`ParetoError::UnsupportedDimension`] for other than 2 or 3 coordinates,
/// [`ParetoError::DimensionMismatch`] when a point's length differs from the
/// reference's, [`ParetoError::NonFiniteReference`].
pub fn hypervolume(points: &[Vec<f64>], reference: &[f64]) -> Result<f64, ParetoError> {
    let m = reference.len();
    if !(2..=3).contains(&m) {
        return Err(ParetoError::UnsupportedDimension(m));
    }
    if !reference.iter().all(|r| r.is_finite()) {
        return Err(ParetoError::NonFiniteReference(reference.to_vec()));
    }
    if let Some((index, p)) = points.iter().enumerate().find(|(_, p)| p.len() != m) {
        return Err(ParetoError::DimensionMismatch {
            index,
            expected: m,
            got: p.len(),
        });
    }
    let inside: Vec<&[f64]> = points
        .iter()
        .filter(|p| p.iter().zip(reference).all(|(x, r)| x < r))
        .map(Vec::as_slice)
        .collect();
    Ok(if m == 2 {
        hypervolume_2d(
            inside.iter().map(|p| (p[0], p[1])).collect(),
            reference[0],
            reference[1],
        )
    } else {
        hypervolume_3d(inside, reference)
    })
}

/// Area dominated by `points` (all strictly inside the reference box).
fn hypervolume_2d(mut points: Vec<(f64, f64)>, rx: f64, ry: f64) -> f64 {
    points.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let mut area = 0.0;
    let mut floor = ry;
    for (x, y) in points {
        if y < floor {
            area += (rx - x) * (floor - y);
            floor = y;
        }
    }
    area
}

/// Volume dominated by `points`, as slabs between consecutive third coordinates.
fn hypervolume_3d(mut points: Vec<&[f64]>, reference: &[f64]) -> f64 {
    points.sort_by(|a, b| a[2].total_cmp(&b[2]));
    let mut volume = 0.0;
    for (i, p) in points.iter().enumerate() {
        let top = points.get(i + 1).map_or(reference[2], |q| q[2]);
        let depth = top - p[2];
        if depth > 0.0 {
            let slice = points[..=i].iter().map(|q| (q[0], q[1])).collect();
            volume += depth * hypervolume_2d(slice, reference[0], reference[1]);
        }
    }
    volume
}

/// Collapses several objectives into one loss.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalarization {
    weights: Vec<f64>,
}

impl Scalarization {
    /// The weighted sum of the objectives' losses, `Σ wᵢ · lossᵢ`, one weight per
    /// objective (maximised objectives are negated before weighting).
    ///
    /// # Errors
    /// [`ParetoError::NoWeights`], [`ParetoError::InvalidWeight`] for a negative or
    /// non-finite weight, [`ParetoError::AllZeroWeights`].
    pub fn weighted(weights: Vec<f64>) -> Result<Self, ParetoError> {
        if weights.is_empty() {
            return Err(ParetoError::NoWeights);
        }
        if let Some((index, &weight)) = weights.iter().enumerate().find(|(_, w)| !(w.is_finite() && **w >= 0.0)) {
            return Err(ParetoError::InvalidWeight { index, weight });
        }
        if weights.iter().all(|w| *w == 0.0) {
            return Err(ParetoError::AllZeroWeights);
        }
        Ok(Self { weights })
    }

    /// The weights, one per objective.
    #[must_use]
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// Checks that there is one weight per objective of a study with `directions`.
    ///
    /// # Errors
    /// [`ParetoError::WeightCount`] otherwise.
    pub fn check(&self, directions: &[Direction]) -> Result<(), ParetoError> {
        if self.weights.len() == directions.len() {
            Ok(())
        } else {
            Err(ParetoError::WeightCount {
                weights: self.weights.len(),
                objectives: directions.len(),
            })
        }
    }

    /// `values` (one per objective, in the study's directions) as one loss, lower is
    /// better. NaN when the lengths of `values`, `directions` and the weights differ
    /// (see [`Self::check`]) or a weighted value is not finite.
    #[must_use]
    pub fn loss(&self, values: &[f64], directions: &[Direction]) -> f64 {
        if values.len() != self.weights.len() || directions.len() != self.weights.len() {
            return f64::NAN;
        }
        let sum: f64 = self
            .weights
            .iter()
            .zip(values)
            .zip(directions)
            // A zero weight ignores its objective entirely, even a non-finite value.
            .filter(|((w, _), _)| **w != 0.0)
            .map(|((w, v), d)| w * d.loss(*v))
            .sum();
        if sum.is_finite() { sum } else { f64::NAN }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TrialState;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    /// Random points on a coarse grid, so ties and duplicates are common.
    fn random_points(rng: &mut StdRng, n: usize, m: usize) -> Vec<Vec<f64>> {
        (0..n)
            .map(|_| (0..m).map(|_| f64::from(rng.random_range(0..5u8))).collect())
            .collect()
    }

    /// Levels by repeatedly peeling off the points no remaining point dominates.
    fn brute_force_ranks(points: &[Vec<f64>]) -> Vec<usize> {
        let mut ranks = vec![usize::MAX; points.len()];
        let mut level = 0;
        while ranks.contains(&usize::MAX) {
            let remaining: Vec<usize> = (0..points.len()).filter(|&i| ranks[i] == usize::MAX).collect();
            let front: Vec<usize> = remaining
                .iter()
                .copied()
                .filter(|&i| !remaining.iter().any(|&j| dominates(&points[j], &points[i])))
                .collect();
            for i in front {
                ranks[i] = level;
            }
            level += 1;
        }
        ranks
    }

    #[test]
    fn dominance() {
        assert!(dominates(&[1.0, 2.0], &[1.0, 3.0]));
        assert!(!dominates(&[1.0, 3.0], &[1.0, 2.0]));
        assert!(!dominates(&[1.0, 2.0], &[1.0, 2.0]), "equal points");
        assert!(!dominates(&[0.0, 3.0], &[1.0, 2.0]), "a trade-off");
        assert!(!dominates(&[f64::NAN, 0.0], &[1.0, 1.0]));
    }

    #[test]
    fn ranks_match_brute_force() {
        let mut rng = StdRng::seed_from_u64(11);
        for case in 0..200 {
            let n = rng.random_range(0..40);
            let m = rng.random_range(1..=4);
            let mut points = random_points(&mut rng, n, m);
            if n > 0 {
                // Guarantee at least one exact duplicate.
                let copy = points[rng.random_range(0..n)].clone();
                points.push(copy);
            }
            let ranks = non_dominated_ranks(&points);
            assert_eq!(ranks, brute_force_ranks(&points), "case {case}: {points:?}");
            for i in 0..points.len() {
                for j in 0..points.len() {
                    if dominates(&points[i], &points[j]) {
                        assert!(ranks[i] < ranks[j], "case {case}");
                    }
                    if points[i] == points[j] {
                        assert_eq!(ranks[i], ranks[j], "case {case}: duplicates share a level");
                    }
                }
            }
        }
    }

    #[test]
    fn front_matches_brute_force_and_skips_unusable_trials() {
        let mut rng = StdRng::seed_from_u64(5);
        let directions = [Direction::Minimize, Direction::Maximize];
        for case in 0..100 {
            let n = rng.random_range(0..30);
            let trials: Vec<FrozenTrial> = (0..n)
                .map(|i| {
                    let mut t = FrozenTrial::complete(i, Default::default(), f64::from(rng.random_range(0..4u8)));
                    t.values.as_mut().unwrap().push(f64::from(rng.random_range(0..4u8)));
                    match rng.random_range(0..10) {
                        0 => t.feasible = false,
                        1 => t.state = TrialState::Pruned,
                        2 => t.values.as_mut().unwrap()[1] = f64::NAN,
                        _ => {}
                    }
                    t
                })
                .collect();
            let usable: Vec<(&FrozenTrial, Vec<f64>)> = trials
                .iter()
                .filter(|t| t.feasible && t.state == TrialState::Complete)
                .filter_map(|t| t.losses(&directions).map(|l| (t, l)))
                .collect();
            let expected: Vec<u64> = usable
                .iter()
                .filter(|(_, a)| !usable.iter().any(|(_, b)| dominates(b, a)))
                .map(|(t, _)| t.number)
                .collect();
            let front: Vec<u64> = pareto_front(&trials, &directions).iter().map(|t| t.number).collect();
            assert_eq!(front, expected, "case {case}");
        }
    }

    #[test]
    fn crowding_rewards_isolation_and_treats_duplicates_alike() {
        let points = vec![
            vec![0.0, 4.0],
            vec![1.0, 3.0],
            vec![1.0, 3.0],
            vec![3.0, 1.0],
            vec![4.0, 0.0],
        ];
        let d = crowding_distances(&points);
        assert!(d[0].is_infinite() && d[4].is_infinite());
        assert_eq!(d[1], d[2]);
        // Neighbours of (1, 3) are 0 and 3 on x, 4 and 1 on y: 3/4 + 3/4.
        assert!((d[1] - 1.5).abs() < 1e-12, "{d:?}");
        // Neighbours of (3, 1) are 1 and 4, 3 and 0.
        assert!((d[3] - 1.5).abs() < 1e-12, "{d:?}");
        let mut shuffled = points.clone();
        shuffled.reverse();
        let mut r = crowding_distances(&shuffled);
        r.reverse();
        assert_eq!(r, d, "independent of order");
        assert!(
            crowding_distances(&[vec![1.0, 1.0], vec![1.0, 1.0]])
                .iter()
                .all(|&c| c == 0.0)
        );
        assert!(
            crowding_distances(&[vec![0.0, 1.0], vec![1.0, 0.0]])
                .iter()
                .all(|c| c.is_infinite())
        );
        let ranked = crowded_ranks(&[vec![0.0, 2.0], vec![1.0, 1.0], vec![2.0, 0.0], vec![2.0, 2.0]]);
        assert_eq!(ranked.iter().map(|r| r.0).collect::<Vec<_>>(), vec![0, 0, 0, 1]);
        assert_eq!(
            crowded_cmp(ranked[0], ranked[1]),
            Ordering::Less,
            "boundary beats interior"
        );
        assert_eq!(
            crowded_cmp(ranked[1], ranked[3]),
            Ordering::Less,
            "front beats the next level"
        );
    }

    /// Inclusion–exclusion over every subset: exact, exponential, for small sets.
    fn brute_force_hypervolume(points: &[Vec<f64>], reference: &[f64]) -> f64 {
        let n = points.len();
        let mut total = 0.0;
        for mask in 1u32..(1 << n) {
            let members: Vec<&Vec<f64>> = (0..n).filter(|i| mask & (1 << i) != 0).map(|i| &points[i]).collect();
            let volume: f64 = (0..reference.len())
                .map(|d| {
                    let corner = members.iter().map(|p| p[d]).fold(f64::NEG_INFINITY, f64::max);
                    (reference[d] - corner).max(0.0)
                })
                .product();
            let sign = if members.len() % 2 == 1 { 1.0 } else { -1.0 };
            total += sign * volume;
        }
        total
    }

    #[test]
    fn hypervolume_known_cases() {
        let hv = |p: &[Vec<f64>], r: &[f64]| hypervolume(p, r).unwrap();
        assert_eq!(hv(&[], &[1.0, 1.0]), 0.0);
        assert_eq!(hv(&[vec![0.0, 0.0]], &[1.0, 1.0]), 1.0);
        assert_eq!(hv(&[vec![0.0, 2.0], vec![1.0, 1.0], vec![2.0, 0.0]], &[3.0, 3.0]), 6.0);
        // A dominated point, a duplicate and points beyond the reference add nothing.
        assert_eq!(
            hv(
                &[
                    vec![0.0, 2.0],
                    vec![1.0, 1.0],
                    vec![2.0, 0.0],
                    vec![2.0, 2.0],
                    vec![1.0, 1.0],
                    vec![-1.0, 3.0],
                    vec![5.0, -5.0]
                ],
                &[3.0, 3.0]
            ),
            6.0
        );
        assert_eq!(hv(&[vec![0.0, 0.0, 0.0]], &[1.0, 2.0, 3.0]), 6.0);
        // Boxes of 0.5 and 0.25 overlapping in 0.125.
        assert!((hv(&[vec![0.0, 0.0, 0.5], vec![0.5, 0.5, 0.0]], &[1.0, 1.0, 1.0]) - 0.625).abs() < 1e-12);
        assert_eq!(
            hypervolume(&[vec![0.0]], &[1.0]),
            Err(ParetoError::UnsupportedDimension(1))
        );
        assert!(matches!(
            hypervolume(&[vec![0.0, 0.0]], &[1.0, 1.0, 1.0]),
            Err(ParetoError::DimensionMismatch { index: 0, .. })
        ));
        assert!(hypervolume(&[], &[1.0, f64::INFINITY]).is_err());
    }

    #[test]
    fn hypervolume_matches_inclusion_exclusion() {
        let mut rng = StdRng::seed_from_u64(3);
        for m in [2, 3] {
            for case in 0..100 {
                let n = rng.random_range(0..9);
                let mut points = random_points(&mut rng, n, m);
                for p in &mut points {
                    for x in p.iter_mut() {
                        *x += rng.random_range(-0.5..0.5);
                    }
                }
                let reference = vec![4.0; m];
                let expected = brute_force_hypervolume(&points, &reference);
                let got = hypervolume(&points, &reference).unwrap();
                assert!((got - expected).abs() < 1e-9, "m={m} case {case}: {got} vs {expected}");
            }
        }
    }

    #[test]
    fn weighted_scalarization() {
        let s = Scalarization::weighted(vec![1.0, 0.5]).unwrap();
        let d = [Direction::Minimize, Direction::Maximize];
        assert_eq!(s.loss(&[2.0, 4.0], &d), 0.0);
        assert_eq!(s.loss(&[3.0, 0.0], &d), 3.0);
        assert!(s.loss(&[3.0], &d).is_nan());
        assert_eq!(s.check(&d), Ok(()));
        assert_eq!(
            s.check(&[Direction::Minimize]),
            Err(ParetoError::WeightCount {
                weights: 2,
                objectives: 1
            })
        );
        assert_eq!(
            Scalarization::weighted(vec![0.0, 1.0])
                .unwrap()
                .loss(&[f64::NAN, 2.0], &d),
            -2.0
        );
        assert_eq!(Scalarization::weighted(vec![]), Err(ParetoError::NoWeights));
        assert_eq!(
            Scalarization::weighted(vec![0.0, 0.0]),
            Err(ParetoError::AllZeroWeights)
        );
        assert!(matches!(
            Scalarization::weighted(vec![1.0, -1.0]),
            Err(ParetoError::InvalidWeight { index: 1, .. })
        ));
        let err = Scalarization::weighted(vec![f64::NAN]).unwrap_err();
        assert!(err.to_string().contains("finite and non-negative"), "{err}");
    }
}
