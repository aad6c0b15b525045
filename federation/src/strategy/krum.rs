//! Krum and Multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries:
//! Byzantine Tolerant Gradient Descent").

use serde::{Deserialize, Serialize};

use super::buffered::Buffered;
use super::{Aggregation, DEFAULT_ATTACKERS, Strategy, StrategyError, UpdateMeta, check_len, kernels};

/// Coordinates per pass of the pairwise-distance loop: `n` slices of this length
/// (`n · 4 KiB` for n updates) stay in cache while all pairs are compared on them.
const DISTANCE_CHUNK: usize = 1024;

/// Parameters of Krum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KrumConfig {
    /// f: how many Byzantine agents to tolerate. A round needs `n > 2f + 2` updates.
    /// Without it, f is `⌈attackers · n⌉` for the round's n updates.
    pub byzantine: Option<usize>,
    /// The expected share of attacking agents, in `[0, 0.5)`, that sets f when
    /// `byzantine` is not given. Krum's breakdown point is `(n − 2) / 2n`, just under
    /// half: a share above it cannot be tolerated at any n.
    pub attackers: f64,
}

impl Default for KrumConfig {
    fn default() -> Self {
        Self {
            byzantine: None,
            attackers: DEFAULT_ATTACKERS,
        }
    }
}

/// Parameters of Multi-Krum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MultiKrumConfig {
    /// f: how many Byzantine agents to tolerate. A round needs `n > 2f + 2` updates.
    /// Without it, f is `⌈attackers · n⌉` for the round's n updates.
    pub byzantine: Option<usize>,
    /// The expected share of attacking agents, in `[0, 0.5)`, that sets f when
    /// `byzantine` is not given (see [`KrumConfig::attackers`]).
    pub attackers: f64,
    /// m: how many of the best-scored updates to average; `None` means `n − f`, and
    /// larger values are lowered to `n − f` (more would have to include an attacker's
    /// update whenever f attackers are present).
    pub keep: Option<usize>,
}

impl Default for MultiKrumConfig {
    fn default() -> Self {
        Self {
            byzantine: None,
            attackers: DEFAULT_ATTACKERS,
            keep: None,
        }
    }
}

impl MultiKrumConfig {
    /// Checks the parameters.
    ///
    /// # Errors
    /// [`StrategyError::InvalidConfig`] for `keep = 0`.
    pub fn validate(&self) -> Result<(), StrategyError> {
        check_attackers("multi_krum", self.attackers)?;
        if self.keep == Some(0) {
            return Err(StrategyError::InvalidConfig {
                strategy: "multi_krum",
                reason: "keep must be at least 1 (or left out for n - f)".into(),
            });
        }
        Ok(())
    }
}

/// Checks an expected attacker share.
pub(super) fn check_attackers(strategy: &'static str, attackers: f64) -> Result<(), StrategyError> {
    if (0.0..0.5).contains(&attackers) {
        return Ok(());
    }
    Err(StrategyError::InvalidConfig {
        strategy,
        reason: format!(
            "attackers = {attackers}: the expected share of attackers must be in [0, 0.5); \
             no rule tolerates half the agents attacking"
        ),
    })
}

impl KrumConfig {
    /// Checks the parameters.
    ///
    /// # Errors
    /// [`StrategyError::InvalidConfig`] for an attacker share outside `[0, 0.5)`.
    pub fn validate(&self) -> Result<(), StrategyError> {
        check_attackers("krum", self.attackers)
    }
}

/// Krum / Multi-Krum: each update is scored by the sum of squared distances to its
/// `n − f − 2` nearest neighbours; Krum's step is the best-scored update itself,
/// Multi-Krum's the mean of the `m` best. Ties go to the earlier arrival. Sample weights
/// are ignored.
///
/// Buffers every update until the round finishes (`n · numel · 4` bytes, see
/// [`Buffered`]) and computes all pairwise distances, `O(n² · numel)` time; needs
/// individual updates, so it cannot run under secure aggregation.
#[derive(Debug, Clone)]
pub struct Krum {
    byzantine: Option<usize>,
    attackers: f64,
    /// `None`: Krum (one update). `Some(None)`: Multi-Krum with m = n − f.
    keep: Option<Option<usize>>,
}

impl Krum {
    /// Krum: the step is the single best-scored update.
    pub fn new(config: KrumConfig) -> Self {
        Self {
            byzantine: config.byzantine,
            attackers: config.attackers,
            keep: None,
        }
    }

    /// Multi-Krum: the step is the mean of the `m` best-scored updates.
    ///
    /// # Errors
    /// As [`MultiKrumConfig::validate`].
    pub fn multi(config: MultiKrumConfig) -> Result<Self, StrategyError> {
        config.validate()?;
        Ok(Self {
            byzantine: config.byzantine,
            attackers: config.attackers,
            keep: Some(config.keep),
        })
    }
}

impl Strategy for Krum {
    fn name(&self) -> &'static str {
        if self.keep.is_some() { "multi_krum" } else { "krum" }
    }

    fn needs_individual_updates(&self) -> bool {
        true
    }

    fn begin_round(&mut self, _round: u64, numel: usize) -> Box<dyn Aggregation> {
        Box::new(KrumAggregation {
            name: self.name(),
            byzantine: self.byzantine,
            attackers: self.attackers,
            keep: self.keep,
            buffer: Buffered::new(numel),
        })
    }

    fn apply(&mut self, global: &mut [f32], aggregated: &[f32]) -> Result<(), StrategyError> {
        check_len(global.len(), aggregated.len())?;
        kernels::axpy(global, 1.0, aggregated);
        Ok(())
    }
}

#[derive(Debug)]
struct KrumAggregation {
    name: &'static str,
    byzantine: Option<usize>,
    attackers: f64,
    keep: Option<Option<usize>>,
    buffer: Buffered,
}

impl Aggregation for KrumAggregation {
    fn add(&mut self, delta: &[f32], weight: u64, meta: &UpdateMeta<'_>) -> Result<(), StrategyError> {
        check_len(self.buffer.numel(), delta.len())?;
        self.add_owned(delta.to_vec(), weight, meta)
    }

    fn add_owned(&mut self, delta: Vec<f32>, _weight: u64, _meta: &UpdateMeta<'_>) -> Result<(), StrategyError> {
        self.buffer.push(delta)
    }

    fn updates(&self) -> usize {
        self.buffer.rows().len()
    }

    fn finish(self: Box<Self>) -> Result<Vec<f32>, StrategyError> {
        let rows = self.buffer.rows();
        let n = rows.len();
        if n == 0 {
            return Err(StrategyError::NoUpdates { strategy: self.name });
        }
        let f = self
            .byzantine
            .unwrap_or_else(|| (self.attackers * n as f64).ceil() as usize);
        if n <= 2 * f + 2 {
            return Err(StrategyError::TooFewUpdates {
                strategy: self.name,
                needed: 2 * f + 3,
                got: n,
                why: "Krum tolerates f Byzantine updates (f set, or the expected attacker share of n) only when n > 2f + 2",
            });
        }
        let scores = krum_scores(rows, f);
        let mut order: Vec<usize> = (0..n).collect();
        // Stable sort: equal scores keep arrival order.
        order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
        let keep = match self.keep {
            None => 1,
            Some(m) => m.unwrap_or(n - f).min(n - f),
        };
        let mut out = rows[order[0]].clone();
        if keep > 1 {
            for &i in &order[1..keep] {
                kernels::axpy(&mut out, 1.0, &rows[i]);
            }
            kernels::scale(&mut out, 1.0 / keep as f32);
        }
        Ok(out)
    }
}

/// Krum score of each row: the sum of its `n − f − 2` smallest squared distances to the
/// other rows. Needs `n ≥ f + 3` rows of equal length.
pub fn krum_scores(rows: &[Vec<f32>], byzantine: usize) -> Vec<f64> {
    let n = rows.len();
    let neighbours = n.saturating_sub(byzantine + 2).max(1);
    let distances = pairwise_squared_distances(rows);
    let mut others = Vec::with_capacity(n);
    (0..n)
        .map(|i| {
            others.clear();
            others.extend((0..n).filter(|&j| j != i).map(|j| distances[i * n + j]));
            let k = neighbours.min(others.len());
            if k < others.len() {
                others.select_nth_unstable_by(k, f64::total_cmp);
            }
            others[..k].iter().sum()
        })
        .collect()
}

/// Symmetric `n × n` matrix (row-major) of squared distances. Works through the
/// coordinates in chunks so every pair is compared on data already in cache; each
/// chunk's partial sums are `f32` and are added up in `f64`.
fn pairwise_squared_distances(rows: &[Vec<f32>]) -> Vec<f64> {
    let n = rows.len();
    let numel = rows.first().map_or(0, Vec::len);
    let mut distances = vec![0.0f64; n * n];
    for start in (0..numel).step_by(DISTANCE_CHUNK) {
        let end = (start + DISTANCE_CHUNK).min(numel);
        for i in 0..n {
            let a = &rows[i][start..end];
            for j in i + 1..n {
                distances[i * n + j] += f64::from(kernels::squared_distance(a, &rows[j][start..end]));
            }
        }
    }
    for i in 0..n {
        for j in i + 1..n {
            distances[j * n + i] = distances[i * n + j];
        }
    }
    distances
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::fedavg::tests::run;

    /// Four honest updates near [1, 1, 1] and two attackers far away.
    fn cohort() -> Vec<Vec<f32>> {
        vec![
            vec![-50.0, 40.0, 90.0],
            vec![1.0, 1.0, 1.0],
            vec![1.5, 0.5, 1.0],
            vec![0.5, 1.0, 1.5],
            vec![1.0, 1.5, 0.5],
            vec![60.0, -70.0, 30.0],
        ]
    }

    fn aggregate(strategy: &mut Krum, rows: &[Vec<f32>]) -> Result<Vec<f32>, StrategyError> {
        let updates: Vec<(&[f32], u64)> = rows.iter().map(|r| (r.as_slice(), 1_000)).collect();
        run(strategy, &updates)
    }

    #[test]
    fn krum_picks_the_honest_centre() {
        // n = 6, f = 1: score = sum of the 3 nearest squared distances.
        // Update 1 ([1,1,1]) is at squared distance 0.5 from each other honest update:
        // score 1.5; the other honest updates are 1.5 apart: 0.5 + 1.5 + 1.5 = 3.5.
        let scores = krum_scores(&cohort(), 1);
        assert_eq!(&scores[1..5], &[1.5, 3.5, 3.5, 3.5]);
        assert!(scores[0] > 1000.0 && scores[5] > 1000.0);
        let step = aggregate(
            &mut Krum::new(KrumConfig {
                byzantine: Some(1),
                ..KrumConfig::default()
            }),
            &cohort(),
        )
        .unwrap();
        assert_eq!(step, vec![1.0, 1.0, 1.0]);
    }

    #[test]
    fn multi_krum_averages_the_m_best() {
        let mut s = Krum::multi(MultiKrumConfig {
            byzantine: Some(1),
            keep: Some(4),
            ..MultiKrumConfig::default()
        })
        .unwrap();
        let step = aggregate(&mut s, &cohort()).unwrap();
        // Mean of the four honest updates.
        assert_eq!(step, vec![1.0, 1.0, 1.0]);
        // m = 2: the centre and the first runner-up (ties go to arrival order: update 2).
        let mut s = Krum::multi(MultiKrumConfig {
            byzantine: Some(1),
            keep: Some(2),
            ..MultiKrumConfig::default()
        })
        .unwrap();
        let step = aggregate(&mut s, &cohort()).unwrap();
        assert_eq!(step, vec![1.25, 0.75, 1.0]);
    }

    #[test]
    fn multi_krum_default_keeps_n_minus_f() {
        // n = 6 is too few for f = 2 (needs n > 2f + 2 = 6).
        let mut s = Krum::multi(MultiKrumConfig {
            byzantine: Some(2),
            keep: None,
            ..MultiKrumConfig::default()
        })
        .unwrap();
        assert!(matches!(
            aggregate(&mut s, &cohort()),
            Err(StrategyError::TooFewUpdates { needed: 7, got: 6, .. })
        ));
        let mut rows = cohort();
        rows.push(vec![1.0, 1.0, 1.0]);
        // n = 7, f = 2: m = n - f = 5, exactly the five honest updates, mean [1, 1, 1].
        let step = aggregate(&mut s, &rows).unwrap();
        assert_eq!(step, vec![1.0, 1.0, 1.0]);
    }

    #[test]
    fn the_byzantine_count_follows_the_expected_attacker_share() {
        // Ten updates: eight honest ones around [1, 1, 1], two of them scaled ×10.
        let mut rows: Vec<Vec<f32>> = (0..8)
            .map(|i| {
                let e = (i as f32 - 3.5) * 0.05;
                vec![1.0 + e, 1.0 - e, 1.0]
            })
            .collect();
        rows.push(rows[0].iter().map(|v| v * 10.0).collect());
        rows.push(rows[1].iter().map(|v| v * 10.0).collect());
        // The default share (0.2) makes f = 2 and m = 8: the honest eight.
        let step = aggregate(&mut Krum::multi(MultiKrumConfig::default()).unwrap(), &rows).unwrap();
        assert!(step.iter().all(|v| (v - 1.0).abs() < 1e-5), "{step:?}");
        // f = 1 (the old default) keeps nine, one of them ×10.
        let one = MultiKrumConfig {
            byzantine: Some(1),
            ..MultiKrumConfig::default()
        };
        let step = aggregate(&mut Krum::multi(one).unwrap(), &rows).unwrap();
        assert!(step[2] > 1.9, "{step:?}");
        // A share at or past one half is refused; a share too large for n says so.
        let half = KrumConfig {
            attackers: 0.5,
            ..KrumConfig::default()
        };
        assert!(half.validate().unwrap_err().to_string().contains("[0, 0.5)"));
        let many = KrumConfig {
            attackers: 0.4,
            ..KrumConfig::default()
        };
        assert!(matches!(
            aggregate(&mut Krum::new(many), &rows),
            Err(StrategyError::TooFewUpdates {
                needed: 11,
                got: 10,
                ..
            })
        ));
    }

    #[test]
    fn distances_match_across_chunks() {
        let numel = DISTANCE_CHUNK * 2 + 7;
        let rows: Vec<Vec<f32>> = (0..3)
            .map(|i| (0..numel).map(|j| ((i * 7 + j) % 11) as f32 * 0.1).collect())
            .collect();
        let d = pairwise_squared_distances(&rows);
        let want: f64 = rows[0]
            .iter()
            .zip(&rows[2])
            .map(|(a, b)| f64::from(a - b) * f64::from(a - b))
            .sum();
        assert!((d[2] - want).abs() / want < 1e-5);
        assert_eq!(d[2], d[6]);
        assert_eq!(d[4], 0.0);
    }
}
