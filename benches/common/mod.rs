//! Inputs shared by the benchmarks.

/// A deterministic stream of pseudo-random update values in [-0.01, 0.01) (xorshift; no
/// seed plumbing needed).
pub struct Deltas(u64);

impl Default for Deltas {
    fn default() -> Self {
        Self(0x9E37_79B9_7F4A_7C15)
    }
}

impl Deltas {
    /// The next `p` values of the stream.
    pub fn take(&mut self, p: usize) -> Vec<f32> {
        (0..p)
            .map(|_| {
                let state = &mut self.0;
                *state ^= *state << 13;
                *state ^= *state >> 7;
                *state ^= *state << 17;
                ((*state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.02
            })
            .collect()
    }
}

/// The cohort sizes `FEDTUNE_BENCH_N` lists (comma-separated), else `default`.
pub fn cohort_sizes<T: std::str::FromStr>(default: Vec<T>) -> Vec<T> {
    std::env::var("FEDTUNE_BENCH_N")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or(default)
}
