//! Seeded partitioners that split a dataset's rows among clients, and split files.
//!
//! A [`Partitioner`] turns the labels of a dataset into one list of row indices per
//! client. [`Iid`] deals shuffled rows evenly; [`Dirichlet`] skews each client's label mix
//! by drawing, for every class, the clients' shares from a symmetric Dirichlet(α)
//! (small α: each client sees few classes). Every draw comes from the `rng` passed in, so
//! a partition is reproducible from its seed.
//!
//! A [`SplitFile`] fixes a split on disk (e.g. `data/digits_partition.json`) so that runs
//! can be compared with other federated-learning systems on identical clients.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rand::distr::Open01;
use rand::seq::SliceRandom;
use rand::{Rng, RngExt};
use rand_distr::{Distribution, Gamma};
use serde::{Deserialize, Serialize};

/// How many times [`Dirichlet`] redraws before giving up on `min_size`.
pub const DIRICHLET_MAX_ATTEMPTS: usize = 1000;

/// Why rows could not be partitioned or a split file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    /// Zero clients were asked for.
    #[error("cannot partition among zero clients")]
    NoClients,
    /// More clients than client ids can number.
    #[error("client number {0} does not fit a 32-bit client id")]
    TooManyClients(usize),
    /// Too few rows to give every client its minimum.
    #[error("{samples} rows cannot give each of {clients} clients at least {min_size}")]
    TooFewSamples {
        /// Rows available.
        samples: usize,
        /// Clients asked for.
        clients: usize,
        /// Rows each client needs.
        min_size: usize,
    },
    /// The Dirichlet concentration is not a positive finite number.
    #[error("Dirichlet alpha must be a positive finite number, got {0}")]
    InvalidAlpha(f64),
    /// Every draw left some client below the minimum size.
    #[error(
        "after {attempts} Dirichlet(alpha = {alpha}) draws some client still had fewer than \
         {min_size} rows (smallest in the last draw: {smallest}); raise alpha, lower the \
         minimum size or use fewer clients"
    )]
    MinSizeUnreachable {
        /// Draws made.
        attempts: usize,
        /// Concentration used.
        alpha: f64,
        /// Rows each client needed.
        min_size: usize,
        /// Size of the smallest client in the last draw.
        smallest: usize,
    },
    /// A fraction is outside `[0, 1)`.
    #[error("{what} must be in [0, 1), got {value}")]
    InvalidFraction {
        /// Which fraction.
        what: &'static str,
        /// The value given.
        value: f64,
    },
    /// A partition specification does not parse.
    #[error(
        "invalid partition `{0}`: expected `iid`, `dirichlet:ALPHA` with ALPHA > 0 \
         (e.g. `dirichlet:0.5`) or `file:PATH`"
    )]
    BadSpec(String),
    /// A split file could not be read.
    #[error("cannot read split file {}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying failure.
        error: std::io::Error,
    },
    /// A split file is not the expected JSON.
    #[error("split file{}: {error}", display_path(path.as_deref()))]
    Json {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// The parse failure (with line and column).
        error: serde_json::Error,
    },
    /// A split names a row past the end of the dataset.
    #[error("{place} names row {index}, but the dataset has {rows} rows")]
    IndexOutOfRange {
        /// Where the index appears, e.g. `client 3 train`.
        place: String,
        /// The index.
        index: usize,
        /// Rows in the dataset.
        rows: usize,
    },
    /// A row is assigned twice.
    #[error("row {index} appears twice in the split (again in {place})")]
    DuplicateRow {
        /// The row.
        index: usize,
        /// Where it appears the second time.
        place: String,
    },
    /// Two clients share an id.
    #[error("client id {0} appears twice in the split")]
    DuplicateClient(u32),
    /// A client has no training rows.
    #[error("client {0} has no training rows")]
    EmptyClient(u32),
}

/// ` PATH` for a known file, nothing otherwise.
fn display_path(path: Option<&Path>) -> String {
    path.map(|p| format!(" {}", p.display())).unwrap_or_default()
}

/// Splits rows among clients by their labels.
pub trait Partitioner {
    /// One list of row indices (into `labels`) per client, each sorted, together covering
    /// every row exactly once. Deterministic given the state of `rng`.
    ///
    /// # Errors
    /// [`PartitionError::NoClients`], [`PartitionError::TooFewSamples`], and whatever the
    /// partitioner's own parameters can make impossible.
    fn partition(&self, labels: &[u32], clients: usize, rng: &mut dyn Rng) -> Result<Vec<Vec<usize>>, PartitionError>;
}

/// Independent and identically distributed: shuffle all rows, then deal them out in
/// near-equal shares (sizes differ by at most one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Iid;

impl Partitioner for Iid {
    fn partition(&self, labels: &[u32], clients: usize, rng: &mut dyn Rng) -> Result<Vec<Vec<usize>>, PartitionError> {
        check_sizes(labels.len(), clients, 1)?;
        let mut rows: Vec<usize> = (0..labels.len()).collect();
        rows.shuffle(rng);
        let (base, extra) = (rows.len() / clients, rows.len() % clients);
        let mut rest = rows.as_slice();
        let mut parts = Vec::with_capacity(clients);
        for client in 0..clients {
            let (mine, others) = rest.split_at(base + usize::from(client < extra));
            let mut mine = mine.to_vec();
            mine.sort_unstable();
            parts.push(mine);
            rest = others;
        }
        Ok(parts)
    }
}

/// Label skew: for every class, the clients' shares of that class's rows are drawn from a
/// symmetric Dirichlet(`alpha`). The whole draw is repeated until every client holds at
/// least `min_size` rows, at most [`DIRICHLET_MAX_ATTEMPTS`] times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dirichlet {
    /// Concentration: small (0.1) gives each client few classes, large (100) is near IID.
    pub alpha: f64,
    /// Fewest rows any client may end up with.
    pub min_size: usize,
}

impl Partitioner for Dirichlet {
    fn partition(&self, labels: &[u32], clients: usize, rng: &mut dyn Rng) -> Result<Vec<Vec<usize>>, PartitionError> {
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(PartitionError::InvalidAlpha(self.alpha));
        }
        check_sizes(labels.len(), clients, self.min_size)?;
        let by_class = rows_by_class(labels);
        let mut smallest = 0;
        for _ in 0..DIRICHLET_MAX_ATTEMPTS {
            let mut parts = vec![Vec::new(); clients];
            for members in by_class.values() {
                let mut members = members.clone();
                members.shuffle(rng);
                let shares = sample_dirichlet(self.alpha, clients, rng);
                let mut start = 0;
                let mut cumulative = 0.0;
                for (client, (part, share)) in parts.iter_mut().zip(&shares).enumerate() {
                    cumulative += share;
                    let end = if client + 1 == clients {
                        members.len()
                    } else {
                        ((cumulative * members.len() as f64) as usize).clamp(start, members.len())
                    };
                    part.extend_from_slice(&members[start..end]);
                    start = end;
                }
            }
            smallest = parts.iter().map(Vec::len).min().unwrap_or(0);
            if smallest >= self.min_size {
                for part in &mut parts {
                    part.sort_unstable();
                }
                return Ok(parts);
            }
        }
        Err(PartitionError::MinSizeUnreachable {
            attempts: DIRICHLET_MAX_ATTEMPTS,
            alpha: self.alpha,
            min_size: self.min_size,
            smallest,
        })
    }
}

fn check_sizes(samples: usize, clients: usize, min_size: usize) -> Result<(), PartitionError> {
    if clients == 0 {
        return Err(PartitionError::NoClients);
    }
    let needed = clients.checked_mul(min_size.max(1));
    if needed.is_none_or(|needed| samples < needed) {
        return Err(PartitionError::TooFewSamples {
            samples,
            clients,
            min_size: min_size.max(1),
        });
    }
    Ok(())
}

/// Row indices of each label, in ascending order of label and of row.
fn rows_by_class(labels: &[u32]) -> BTreeMap<u32, Vec<usize>> {
    let mut by_class: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (row, &label) in labels.iter().enumerate() {
        by_class.entry(label).or_default().push(row);
    }
    by_class
}

/// A draw from the symmetric Dirichlet(`alpha`) over `k` categories.
///
/// Normalises Gamma(`alpha`) draws in log space: for small `alpha` every Gamma draw can
/// underflow to zero in linear space, which would make the shares 0/0.
fn sample_dirichlet(alpha: f64, k: usize, rng: &mut dyn Rng) -> Vec<f64> {
    let logs: Vec<f64> = (0..k).map(|_| ln_gamma_sample(alpha, rng)).collect();
    let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = logs.iter().map(|l| (l - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    weights.into_iter().map(|w| w / total).collect()
}

/// The natural log of a Gamma(`shape`, 1) draw.
///
/// For `shape < 1` it uses the boost `G(a) = G(a + 1) · U^(1/a)` in log space, where the
/// draw itself would underflow; `shape` is a validated Dirichlet alpha (positive, finite).
fn ln_gamma_sample(shape: f64, rng: &mut dyn Rng) -> f64 {
    if shape < 1.0 {
        let u: f64 = rng.sample(Open01);
        return ln_gamma_sample(shape + 1.0, rng) + u.ln() / shape;
    }
    match Gamma::new(shape, 1.0) {
        Ok(gamma) => gamma.sample(rng).ln(),
        // Unreachable for a validated alpha; an even share rather than a panic.
        Err(_) => 0.0,
    }
}

/// Which partition to use, as given on a command line or in a config file: `iid`,
/// `dirichlet:ALPHA` or `file:PATH`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum PartitionSpec {
    /// [`Iid`].
    Iid,
    /// [`Dirichlet`] with this alpha.
    Dirichlet(f64),
    /// A [`SplitFile`] at this path.
    File(PathBuf),
}

impl FromStr for PartitionSpec {
    type Err = PartitionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PartitionError::BadSpec(s.to_owned());
        let trimmed = s.trim();
        if trimmed == "iid" {
            return Ok(Self::Iid);
        }
        if let Some(alpha) = trimmed.strip_prefix("dirichlet:") {
            return match alpha.trim().parse::<f64>() {
                Ok(alpha) if alpha.is_finite() && alpha > 0.0 => Ok(Self::Dirichlet(alpha)),
                _ => Err(bad()),
            };
        }
        if let Some(path) = trimmed.strip_prefix("file:") {
            return if path.is_empty() {
                Err(bad())
            } else {
                Ok(Self::File(PathBuf::from(path)))
            };
        }
        Err(bad())
    }
}

impl fmt::Display for PartitionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Iid => f.write_str("iid"),
            Self::Dirichlet(alpha) => write!(f, "dirichlet:{alpha}"),
            Self::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

impl TryFrom<String> for PartitionSpec {
    type Error = PartitionError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<PartitionSpec> for String {
    fn from(spec: PartitionSpec) -> Self {
        spec.to_string()
    }
}

/// One client's rows in a [`SplitFile`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSplit {
    /// Client id.
    pub cid: u32,
    /// Rows the client trains on.
    pub train: Vec<usize>,
    /// Rows the client validates on (its local test split).
    pub test: Vec<usize>,
}

/// A fixed federated split of a dataset: a global test set no client sees, and each
/// client's train and test rows. Other keys in the JSON (description, seed, counts) are
/// ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitFile {
    /// Rows of the global test set.
    pub global_test: Vec<usize>,
    /// Every client's rows.
    pub clients: Vec<ClientSplit>,
}

impl SplitFile {
    /// Reads a split file. Call [`validate`](Self::validate) against the dataset next.
    ///
    /// # Errors
    /// [`PartitionError::Io`] when the file cannot be read, [`PartitionError::Json`] when
    /// it is not a split file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, PartitionError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|error| PartitionError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        serde_json::from_str(&text).map_err(|error| PartitionError::Json {
            path: Some(path.to_path_buf()),
            error,
        })
    }

    /// Parses a split file's JSON text.
    ///
    /// # Errors
    /// [`PartitionError::Json`] when it is not a split file.
    pub fn from_json(text: &str) -> Result<Self, PartitionError> {
        serde_json::from_str(text).map_err(|error| PartitionError::Json { path: None, error })
    }

    /// Checks the split against a dataset of `n_rows` rows: every index in range, no row
    /// assigned twice (within or across the global test set and the clients), client ids
    /// unique, and every client with at least one training row.
    ///
    /// # Errors
    /// [`PartitionError::IndexOutOfRange`], [`PartitionError::DuplicateRow`],
    /// [`PartitionError::DuplicateClient`] or [`PartitionError::EmptyClient`].
    pub fn validate(&self, n_rows: usize) -> Result<(), PartitionError> {
        let mut seen = vec![false; n_rows];
        let mut claim = |indices: &[usize], place: &dyn Fn() -> String| {
            for &index in indices {
                match seen.get_mut(index) {
                    None => {
                        return Err(PartitionError::IndexOutOfRange {
                            place: place(),
                            index,
                            rows: n_rows,
                        });
                    }
                    Some(true) => {
                        return Err(PartitionError::DuplicateRow { index, place: place() });
                    }
                    Some(slot) => *slot = true,
                }
            }
            Ok(())
        };
        claim(&self.global_test, &|| "the global test set".to_owned())?;
        let mut cids = std::collections::HashSet::new();
        for client in &self.clients {
            if !cids.insert(client.cid) {
                return Err(PartitionError::DuplicateClient(client.cid));
            }
            if client.train.is_empty() {
                return Err(PartitionError::EmptyClient(client.cid));
            }
            claim(&client.train, &|| format!("client {} train", client.cid))?;
            claim(&client.test, &|| format!("client {} test", client.cid))?;
        }
        Ok(())
    }

    /// The client with id `cid`.
    pub fn client(&self, cid: u32) -> Option<&ClientSplit> {
        self.clients.iter().find(|c| c.cid == cid)
    }

    /// Generates a split the way the shipped split files were made: a stratified
    /// `test_fraction` of the rows becomes the global test set, `partitioner` divides the
    /// rest among `clients`, and each client keeps `validation_fraction` of its rows as
    /// its test split ([`split_validation`]). Client ids are `0..clients`.
    ///
    /// # Errors
    /// [`PartitionError::InvalidFraction`] and the partitioner's errors.
    pub fn generate(
        labels: &[u32],
        partitioner: &dyn Partitioner,
        clients: usize,
        test_fraction: f64,
        validation_fraction: f64,
        rng: &mut dyn Rng,
    ) -> Result<Self, PartitionError> {
        let (rest, global_test) = stratified_holdout(labels, test_fraction, rng)?;
        let rest_labels: Vec<u32> = rest.iter().map(|&row| labels[row]).collect();
        let parts = partitioner
            .partition(&rest_labels, clients, rng)?
            .into_iter()
            .map(|part| part.into_iter().map(|i| rest[i]).collect())
            .collect();
        let clients = split_validation(parts, validation_fraction, rng)?;
        Ok(Self { global_test, clients })
    }
}

/// Turns a partition into per-client splits: each client's rows are shuffled and
/// `round(len × validation_fraction)` of them become its test (validation) split, always
/// leaving at least one training row. Client `i` gets id `i`; both lists come out sorted.
///
/// # Errors
/// [`PartitionError::InvalidFraction`] unless `0 <= validation_fraction < 1`.
pub fn split_validation(
    partition: Vec<Vec<usize>>,
    validation_fraction: f64,
    rng: &mut dyn Rng,
) -> Result<Vec<ClientSplit>, PartitionError> {
    check_fraction("validation_fraction", validation_fraction)?;
    partition
        .into_iter()
        .enumerate()
        .map(|(cid, mut rows)| {
            rows.shuffle(rng);
            let wanted = (rows.len() as f64 * validation_fraction).round() as usize;
            let n_test = wanted.min(rows.len().saturating_sub(1));
            let mut test = rows.split_off(rows.len() - n_test);
            rows.sort_unstable();
            test.sort_unstable();
            let cid = u32::try_from(cid).map_err(|_| PartitionError::TooManyClients(cid))?;
            Ok(ClientSplit { cid, train: rows, test })
        })
        .collect()
}

/// Splits row indices into `(kept, held_out)`, holding out `round(n_c × fraction)` rows of
/// every class `c` so both sides keep the label mix. Both lists come out sorted.
///
/// # Errors
/// [`PartitionError::InvalidFraction`] unless `0 <= fraction < 1`.
pub fn stratified_holdout(
    labels: &[u32],
    fraction: f64,
    rng: &mut dyn Rng,
) -> Result<(Vec<usize>, Vec<usize>), PartitionError> {
    check_fraction("holdout fraction", fraction)?;
    let mut kept = Vec::with_capacity(labels.len());
    let mut held = Vec::new();
    for (_, mut rows) in rows_by_class(labels) {
        rows.shuffle(rng);
        let n_held = (rows.len() as f64 * fraction).round() as usize;
        held.extend_from_slice(&rows[..n_held]);
        kept.extend_from_slice(&rows[n_held..]);
    }
    kept.sort_unstable();
    held.sort_unstable();
    Ok((kept, held))
}

fn check_fraction(what: &'static str, value: f64) -> Result<(), PartitionError> {
    if (0.0..1.0).contains(&value) {
        Ok(())
    } else {
        Err(PartitionError::InvalidFraction { what, value })
    }
}

#[cfg(test)]
mod tests;
