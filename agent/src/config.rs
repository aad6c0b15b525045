//! Typed configuration of the agent daemon, loaded from TOML, and the local data it
//! names.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::client::{AgentOptions, Reconnect};
use crate::data::{Dataset, load_csv, load_fashion_mnist, load_fashion_mnist_labels, load_fashion_mnist_rows};
use crate::model::Device;
use crate::partition::{Dirichlet, Iid, PartitionSpec, SplitFile};
use crate::trainer::BurnTrainer;

/// Everything the agent daemon needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Name used in logs and the hello (identity comes from the certificate).
    pub name: String,
    /// Aggregator address.
    pub aggregator: SocketAddr,
    /// Name in the aggregator's certificate.
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// Largest task payload accepted, in bytes.
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: u64,
    /// Large datagrams; only when the aggregator is on 127.0.0.1.
    #[serde(default)]
    pub loopback: bool,
    /// Decline every task that does not run under secure aggregation, so this device's
    /// update never leaves it unmasked.
    #[serde(default)]
    pub require_secure_aggregation: bool,
    /// Certificate files.
    pub pki: AgentPki,
    /// Local data the Burn trainer reads (`fedtune-agent`); a Python agent brings its own.
    #[serde(default)]
    pub data: Option<DataConfig>,
    /// Reconnection policy.
    #[serde(default)]
    pub reconnect: ReconnectConfig,
    /// Prometheus `/metrics` on a loopback port.
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// `[metrics]`: where the agent serves `/metrics` (nowhere unless set).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// A loopback address, e.g. `127.0.0.1:9101`.
    pub listen: Option<SocketAddr>,
}

fn default_server_name() -> String {
    "localhost".into()
}

fn default_max_payload() -> u64 {
    1 << 30
}

/// The agent's certificate files.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentPki {
    /// Federation CA certificate.
    pub ca_cert: PathBuf,
    /// This agent's certificate.
    pub cert: PathBuf,
    /// This agent's private key.
    pub key: PathBuf,
}

/// Where a dataset comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", deny_unknown_fields)]
pub enum DataSource {
    /// A CSV file. Without `label`: no header, features, then an integer label in the
    /// last column. With `label`: a header, the named label column (class names or ids,
    /// mapped through the task's classes) and feature columns.
    Csv {
        /// File path.
        path: PathBuf,
        /// Multiplier applied to every feature (digits: 1/16).
        #[serde(default = "one")]
        scale: f32,
        /// The label column of a CSV with a header.
        #[serde(default)]
        label: Option<String>,
    },
    /// Texts with labels: JSON Lines or a CSV with a header, tokenized by the model's
    /// tokenizer, which the device holds (`tokenizer`, the model's `tokenizer.json`).
    Text {
        /// File path (`.jsonl` or `.csv`).
        path: PathBuf,
        /// The text field or column.
        #[serde(default = "text_field")]
        text: String,
        /// The label field or column (class names or ids).
        #[serde(default = "label_field")]
        label: String,
        /// The model's `tokenizer.json`.
        tokenizer: PathBuf,
    },
    /// Images in one subfolder per class (PNG, JPEG), each converted to the model's
    /// channels and size (see [`crate::image_folder`]); the subfolder names are class
    /// names, mapped through the task's classes.
    ImageFolder {
        /// The folder holding one subfolder per class.
        path: PathBuf,
    },
    /// Fashion-MNIST's training set in IDX files (Debian package `dataset-fashion-mnist`).
    FashionMnist {
        /// Directory of the IDX files.
        #[serde(default = "fashion_dir")]
        dir: PathBuf,
    },
    /// The training four fifths of the WordNet task: noun definitions by category, as
    /// token ids (Debian package `wordnet-base`; see [`crate::text`]).
    Wordnet {
        /// Directory of WordNet's database files.
        #[serde(default = "wordnet_dir")]
        dir: PathBuf,
    },
}

fn text_field() -> String {
    "text".into()
}

fn label_field() -> String {
    "label".into()
}

fn wordnet_dir() -> PathBuf {
    crate::text::WORDNET_DIR.into()
}

fn one() -> f32 {
    1.0
}

fn fashion_dir() -> PathBuf {
    crate::data::FASHION_MNIST_DIR.into()
}

/// The data this agent holds: a source, and in a simulation the share of it that is
/// this agent's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// The dataset.
    pub source: DataSource,
    /// A simulation's share: `iid`, `dirichlet:ALPHA` or `file:PATH` (a split file such as
    /// `data/digits_partition.json`). Without it the whole source is this device's own.
    #[serde(default)]
    pub partition: Option<PartitionSpec>,
    /// Number of clients the data is split among (ignored for `file:`).
    #[serde(default = "ten")]
    pub clients: usize,
    /// This agent's client number (with a partition).
    #[serde(default)]
    pub client: u32,
    /// Seed of the split (every agent of a federation must use the same one), or of the
    /// validation share of a device's own rows.
    #[serde(default)]
    pub seed: u64,
    /// Share of a device's own rows (no partition) kept for local validation.
    #[serde(default = "validation_share")]
    pub validation: f64,
}

fn validation_share() -> f64 {
    VALIDATION_FRACTION
}

fn ten() -> usize {
    10
}

/// Reconnection policy as written in TOML.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconnectConfig {
    /// First wait, in milliseconds.
    pub initial_ms: u64,
    /// Longest wait, in milliseconds.
    pub max_ms: u64,
    /// Consecutive failures before giving up (0: never).
    pub max_attempts: u32,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        let r = Reconnect::default();
        Self {
            initial_ms: r.initial.as_millis() as u64,
            max_ms: r.max.as_millis() as u64,
            max_attempts: r.max_attempts.unwrap_or(0),
        }
    }
}

/// A configuration or dataset that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config {path}: {message}")]
    Parse {
        /// File path.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// The data could not be loaded or split.
    #[error("local data: {0}")]
    Data(String),
}

impl AgentConfig {
    /// Reads a TOML file; relative paths are resolved against its directory.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and the problem.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let mut config: Self = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        if let Some(listen) = config.metrics.listen.filter(|a| !a.ip().is_loopback()) {
            return Err(ConfigError::Parse {
                path: path.into(),
                message: format!(
                    "[metrics] listen = {listen}: the agent serves metrics on a loopback address only (127.0.0.1 or ::1)"
                ),
            });
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut config.pki.ca_cert);
        resolve(&mut config.pki.cert);
        resolve(&mut config.pki.key);
        if let Some(data) = &mut config.data {
            match &mut data.source {
                DataSource::Csv { path, .. } | DataSource::ImageFolder { path } => resolve(path),
                DataSource::Text { path, tokenizer, .. } => {
                    resolve(path);
                    resolve(tokenizer);
                }
                DataSource::FashionMnist { dir } | DataSource::Wordnet { dir } => resolve(dir),
            }
            if let Some(PartitionSpec::File(p)) = &mut data.partition {
                resolve(p);
            }
        }
        Ok(config)
    }

    /// Connection options for [`crate::client::run`].
    pub fn options(&self) -> AgentOptions {
        let r = self.reconnect;
        AgentOptions {
            aggregator: self.aggregator,
            server_name: self.server_name.clone(),
            name: self.name.clone(),
            max_payload_bytes: self.max_payload_bytes,
            require_secure_aggregation: self.require_secure_aggregation,
            reconnect: Reconnect {
                initial: Duration::from_millis(r.initial_ms.max(1)),
                max: Duration::from_millis(r.max_ms.max(r.initial_ms).max(1)),
                max_attempts: (r.max_attempts > 0).then_some(r.max_attempts),
            },
            metrics: None,
        }
    }
}

/// A dataset split for a federation: a global test set and per-client train/validation.
#[derive(Debug)]
pub struct FederatedData {
    /// The whole dataset.
    pub dataset: Dataset,
    /// Row indices of the split.
    pub split: SplitFile,
}

/// Share of rows held out as the global test set when the split is generated.
pub const GLOBAL_TEST_FRACTION: f64 = 0.2;
/// Share of each client's rows kept as its local validation split.
pub const VALIDATION_FRACTION: f64 = 0.2;

/// The split `partition` names of rows with `labels` among `clients` clients, checked
/// against the row count: the split [`FederatedData::load`] makes, and the one
/// `fedtune.split` gives Python agents, so both kinds of agent can hold the same shares.
///
/// # Errors
/// [`ConfigError::Data`] when the rows cannot be split so.
pub fn split_labels(
    labels: &[u32],
    partition: &PartitionSpec,
    clients: usize,
    seed: u64,
) -> Result<SplitFile, ConfigError> {
    let data_err = |e: &dyn std::fmt::Display| ConfigError::Data(e.to_string());
    let mut rng = StdRng::seed_from_u64(seed);
    let split = match partition {
        PartitionSpec::File(path) => SplitFile::load(path).map_err(|e| data_err(&e))?,
        PartitionSpec::Iid => SplitFile::generate(
            labels,
            &Iid,
            clients,
            GLOBAL_TEST_FRACTION,
            VALIDATION_FRACTION,
            &mut rng,
        )
        .map_err(|e| data_err(&e))?,
        PartitionSpec::Dirichlet(alpha) => {
            let partitioner = Dirichlet {
                alpha: *alpha,
                min_size: 10,
            };
            SplitFile::generate(
                labels,
                &partitioner,
                clients,
                GLOBAL_TEST_FRACTION,
                VALIDATION_FRACTION,
                &mut rng,
            )
            .map_err(|e| data_err(&e))?
        }
    };
    split.validate(labels.len()).map_err(|e| data_err(&e))?;
    Ok(split)
}

impl FederatedData {
    /// Loads `source` and splits it as `partition` says among `clients` clients.
    ///
    /// # Errors
    /// [`ConfigError::Data`] when the data cannot be read or split.
    pub fn load(
        source: &DataSource,
        partition: &PartitionSpec,
        clients: usize,
        seed: u64,
    ) -> Result<Self, ConfigError> {
        let dataset = load_source(source)?;
        let split = split_labels(dataset.labels(), partition, clients, seed)?;
        Ok(Self { dataset, split })
    }

    /// Number of clients in the split.
    pub fn clients(&self) -> usize {
        self.split.clients.len()
    }

    /// Client `cid`'s (train, validation) datasets.
    ///
    /// # Errors
    /// [`ConfigError::Data`] when the split has no such client.
    pub fn client(&self, cid: u32) -> Result<(Dataset, Dataset), ConfigError> {
        let c = self.split.client(cid).ok_or_else(|| {
            ConfigError::Data(format!(
                "the split has no client {cid} (it has {})",
                self.split.clients.len()
            ))
        })?;
        let subset = |rows: &[usize]| self.dataset.subset(rows).map_err(|e| ConfigError::Data(e.to_string()));
        Ok((subset(&c.train)?, subset(&c.test)?))
    }

    /// Burn trainers for clients `0..n`, each on its own (train, validation) share.
    ///
    /// # Errors
    /// [`ConfigError::Data`] when the split has fewer than `n` clients.
    pub fn burn_trainers(&self, n: usize, device: &Device) -> Result<Vec<BurnTrainer>, ConfigError> {
        (0..n)
            .map(|i| {
                let cid = u32::try_from(i).map_err(|_| ConfigError::Data(format!("client {i} out of range")))?;
                let (train, validation) = self.client(cid)?;
                Ok(BurnTrainer::new(train, validation, device.clone()))
            })
            .collect()
    }

    /// The global test set.
    ///
    /// # Errors
    /// [`ConfigError::Data`] when the split's indices do not fit the dataset.
    pub fn global_test(&self) -> Result<Dataset, ConfigError> {
        self.dataset
            .subset(&self.split.global_test)
            .map_err(|e| ConfigError::Data(e.to_string()))
    }
}

/// Every row of a source whose rows are ready for any model (no named labels, no text).
///
/// # Errors
/// [`ConfigError::Data`] when it cannot be read, or its rows depend on the task's model
/// (see [`DataSource::rows_need_the_model`]).
fn load_source(source: &DataSource) -> Result<Dataset, ConfigError> {
    let data_err = |e: &dyn std::fmt::Display| ConfigError::Data(e.to_string());
    match source {
        DataSource::Csv {
            path,
            scale,
            label: None,
        } => load_csv(path, *scale),
        DataSource::FashionMnist { dir } => load_fashion_mnist(dir, true),
        DataSource::Wordnet { dir } => crate::text::WordnetTask::default().load(dir, crate::text::Split::Train),
        DataSource::Csv { label: Some(_), .. } | DataSource::Text { .. } | DataSource::ImageFolder { .. } => {
            return Err(ConfigError::Data(
                "a source labelled by name, holding text or images is read as the device's own rows, without a partition"
                    .into(),
            ));
        }
    }
    .map_err(|e| data_err(&e))
}

impl DataSource {
    /// Whether its rows become features and labels only once a task names the model and
    /// its classes (text to tokenize, images to resize, labels by name).
    #[must_use]
    pub fn rows_need_the_model(&self) -> bool {
        matches!(
            self,
            Self::Text { .. } | Self::Csv { label: Some(_), .. } | Self::ImageFolder { .. }
        )
    }
}

impl DataConfig {
    /// Loads this agent's (train, validation) share. From Fashion-MNIST's IDX files only
    /// the labels (to compute the split) and this agent's own images are decoded, as a
    /// stream, so memory holds the share and not the 60,000 images. Without a partition
    /// the whole source is the agent's, a seeded `validation` share of it kept aside.
    ///
    /// # Errors
    /// [`ConfigError::Data`] when the data cannot be read or split, or when its rows
    /// depend on the task's model (those load with [`crate::own::load`]).
    pub fn load(&self) -> Result<(Dataset, Dataset), ConfigError> {
        let Some(partition) = &self.partition else {
            let all = load_source(&self.source)?;
            let mut order: Vec<usize> = (0..all.len()).collect();
            rand::seq::SliceRandom::shuffle(&mut order[..], &mut StdRng::seed_from_u64(self.seed));
            let held = ((all.len() as f64 * self.validation).round() as usize).min(all.len().saturating_sub(1));
            let subset = |rows: &[usize]| all.subset(rows).map_err(|e| ConfigError::Data(e.to_string()));
            return Ok((subset(&order[held..])?, subset(&order[..held])?));
        };
        let DataSource::FashionMnist { dir } = &self.source else {
            return FederatedData::load(&self.source, partition, self.clients, self.seed)?.client(self.client);
        };
        let data_err = |e: crate::data::DataError| ConfigError::Data(e.to_string());
        let labels = load_fashion_mnist_labels(dir, true).map_err(data_err)?;
        let split = split_labels(&labels, partition, self.clients, self.seed)?;
        let share = split.client(self.client).ok_or_else(|| {
            ConfigError::Data(format!(
                "the split has no client {} (it has {})",
                self.client,
                split.clients.len()
            ))
        })?;
        let rows = |rows: &[usize]| load_fashion_mnist_rows(dir, true, rows).map_err(data_err);
        Ok((rows(&share.train)?, rows(&share.test)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_its_data_loads() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/agent.toml"));
        let config = AgentConfig::load(path).unwrap();
        let (train, validation) = config.data.as_ref().unwrap().load().unwrap();
        assert!(train.len() > 20 && validation.len() > 5);
        assert_eq!(train.dim(), 64);
        assert!(config.options().reconnect.max_attempts.is_some());
    }

    /// An agent's name, aggregator and PKI; tests add its `[data]`.
    const HEADER: &str = r#"
        name = "a"
        aggregator = "127.0.0.1:1"
        [pki]
        ca_cert = "x"
        cert = "y"
        key = "z"
    "#;

    #[test]
    fn an_image_folder_source_parses_and_resolves_against_the_config() {
        let dir = std::env::temp_dir().join(format!("fedtune-agent-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.toml");
        let data = "[data]\nsource = { kind = \"image-folder\", path = \"photos\" }\n";
        std::fs::write(&path, format!("{HEADER}{data}")).unwrap();
        let data = AgentConfig::load(&path).unwrap().data.unwrap();
        assert_eq!(
            data.source,
            DataSource::ImageFolder {
                path: dir.join("photos")
            }
        );
        assert!(data.source.rows_need_the_model() && data.partition.is_none());
    }

    #[test]
    fn bad_partition_is_named() {
        let text = format!(
            "{HEADER}[data]\nsource = {{ kind = \"csv\", path = \"d.csv\" }}\npartition = \"dirichlet:-1\"\nclient = 0\n"
        );
        let err = toml::from_str::<AgentConfig>(&text).unwrap_err().to_string();
        assert!(err.contains("dirichlet"), "{err}");
    }
}
