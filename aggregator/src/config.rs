//! Typed configuration of the aggregator service, loaded from TOML.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fedtune_models::weights::{Layout, WeightsSource};
use fedtune_protocol::{ClientHyperparameters, MlpSpec, ModelSpec};
use serde::{Deserialize, Serialize};

use crate::trial_metric::TrialMetric;
use fedtune_federation::privacy::PrivacyConfig;
use fedtune_federation::server_lr::ServerLrConfig;
pub use fedtune_federation::settings::{
    FairnessConfig, FederationConfig, ModelSettings, SecureAggregationConfig, Selection, Settings, SettingsError,
};
use fedtune_federation::strategy::StrategyConfig;
use fedtune_tuning::{FedExConfig, PrunerConfig, SamplerKind};

/// Everything the aggregator needs to run a federation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AggregatorConfig {
    /// UDP address to serve QUIC on.
    pub listen: SocketAddr,
    /// Files of the federation's PKI (from `fedtune-aggregator init`).
    pub pki: PkiPaths,
    /// How rounds are run.
    pub federation: FederationConfig,
    /// The model to train, and the weights it starts from.
    pub model: ModelConfig,
    /// Hyperparameters sent to agents.
    pub client: ClientHyperparameters,
    /// How updates become a new global model.
    pub strategy: StrategyConfig,
    /// Adaptation of the server learning rate from the observed global loss.
    pub server_lr: ServerLrConfig,
    /// Fairness constraints and cohort selection.
    pub fairness: FairnessConfig,
    /// Secure aggregation of the cohort's updates (off unless enabled).
    pub secure_aggregation: SecureAggregationConfig,
    /// Where to write the JSON run report at the end (optional).
    pub report: Option<PathBuf>,
    /// A hyperparameter study to run instead of a single federation (optional).
    pub tuning: Option<TuningSection>,
    /// Where the run's state survives the process (optional).
    pub state: StateConfig,
    /// The web dashboard and `/metrics` (off unless `listen` is set).
    pub dashboard: DashboardConfig,
    /// Client-level differential privacy (off unless `noise_multiplier` is set).
    pub privacy: PrivacyConfig,
}

/// `[model]`: the architecture (`[model.mlp]`, `[model.cnn]`), LoRA adapters on it, the
/// weights the global model starts from, and where the final model goes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "ModelRepr")]
pub struct ModelConfig {
    /// The architecture agents train: the architecture table's model, wrapped in
    /// [`ModelSpec::Lora`] when `lora` is set.
    pub spec: ModelSpec,
    /// A weights file the global model starts from (`init = "pretrained.safetensors"`, or a
    /// table with `path`, `layout` and `remap`; relative to the configuration file). It
    /// holds the plain architecture; LoRA adapters start fresh on top of it. Without it,
    /// the model starts from a random initialisation seeded by `federation.seed`.
    pub init: Option<WeightsSource>,
    /// Where `serve` writes the final global model as safetensors (relative to the
    /// configuration file). Without it, the model goes next to the report
    /// (`report.json` → `report.safetensors`) when there is one. A LoRA model is written
    /// merged there, and its adapters alone beside it (`report.adapters.safetensors`).
    pub save: Option<PathBuf>,
    /// The layout the final model is written in (`save_layout = "pytorch"` for
    /// `load_state_dict`; Burn's by default); `serve --layout` overrides it.
    pub save_layout: Layout,
    /// Freeze patterns over module paths (`freeze = ["convs.*"]`, see
    /// [`fedtune_protocol::freeze`]): those tensors keep their starting values, agents do
    /// not train or send them, and only the rest is averaged.
    pub freeze: Vec<String>,
    /// Class names in id order (`classes = ["cat", "dog"]`): what agents' labels map to
    /// and what predictions print. A `pretrained` folder's classification head gives its
    /// own. Empty: classes are known by id only.
    pub classes: Vec<String>,
    /// The parameters `init` holds, read by [`crate::service::load_initial_model`] before
    /// the federation starts; not configuration.
    pub initial: Option<Arc<Vec<f32>>>,
}

/// `lora = { rank = 4, alpha = 8.0, targets = ["head.*"] }` in `[model]`: low-rank
/// adapters on the architecture's 2-D weights (see [`fedtune_protocol::LoraSpec`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank of each adapter.
    pub rank: usize,
    /// Scale numerator (`alpha / rank`); by default twice the rank.
    #[serde(default)]
    pub alpha: Option<f64>,
    /// Which weights get adapters (patterns over module paths); all 2-D weights when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    /// Base tensors that train in full beside the adapters (patterns, e.g.
    /// `["classifier"]`). A BERT's classification head does unless this names others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub train: Vec<String>,
}

/// `[model]` as written: the architecture's table, `lora`, `init`, `save`, `freeze`, and
/// whatever else is there, which is refused (a misspelt `init` must not start a run from
/// scratch).
#[derive(Deserialize)]
struct ModelRepr {
    #[serde(flatten)]
    spec: ModelSpec,
    #[serde(default)]
    lora: Option<LoraConfig>,
    #[serde(default)]
    init: Option<WeightsSource>,
    #[serde(default)]
    save: Option<PathBuf>,
    #[serde(default)]
    save_layout: Layout,
    #[serde(default)]
    freeze: Vec<String>,
    #[serde(default)]
    classes: Vec<String>,
    #[serde(flatten)]
    unknown: std::collections::BTreeMap<String, serde::de::IgnoredAny>,
}

/// `[model]` as it is written back: the plain architecture with `lora` beside it.
#[derive(Serialize)]
struct ModelOut<'a> {
    #[serde(flatten)]
    spec: &'a ModelSpec,
    #[serde(skip_serializing_if = "Option::is_none")]
    lora: Option<LoraConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    init: Option<&'a WeightsSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    save: Option<&'a PathBuf>,
    #[serde(skip_serializing_if = "is_burn")]
    save_layout: Layout,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    freeze: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    classes: &'a [String],
}

impl Serialize for ModelConfig {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        ModelOut {
            spec: self.architecture(),
            lora: self.lora(),
            init: self.init.as_ref(),
            save: self.save.as_ref(),
            save_layout: self.save_layout,
            freeze: &self.freeze,
            classes: &self.classes,
        }
        .serialize(serializer)
    }
}

fn is_burn(layout: &Layout) -> bool {
    matches!(layout, Layout::Burn | Layout::Auto)
}

/// Reads `[model] custom = { name = "…", init = "model.safetensors" }`: a model the
/// aggregator knows only by its tensors. The file (relative to `base`, the configuration's
/// directory) gives the manifest — its tensors' names and shapes, in the file's order —
/// and becomes `[model] init`, the starting values. Rewrites `table` so that the rest of
/// the configuration reads it as `custom = { name, manifest }` beside `init`; returns
/// whether there was such a model.
fn custom_from_file(table: &mut toml::Table, base: &Path) -> Result<bool, String> {
    let Some(custom) = table
        .get_mut("model")
        .and_then(|m| m.get_mut("custom"))
        .and_then(toml::Value::as_table_mut)
    else {
        return Ok(false);
    };
    let Some(init) = custom.remove("init") else {
        return Ok(false);
    };
    let Some(file) = init.as_str() else {
        return Err("[model] custom: `init` is the path of a safetensors file".into());
    };
    if custom.contains_key("manifest") {
        return Err("[model] custom: give `init` (a safetensors file) or `manifest`, not both".into());
    }
    let file = base.join(file);
    let (manifest, _) = fedtune_models::weights::read_custom(&file).map_err(|e| format!("[model] custom: {e}"))?;
    let manifest = toml::Value::try_from(&manifest).map_err(|e| e.to_string())?;
    custom.insert("manifest".into(), manifest);
    let model = table
        .get_mut("model")
        .and_then(toml::Value::as_table_mut)
        .ok_or("[model] is not a table")?;
    if model.contains_key("init") {
        return Err("[model] custom has an `init` file already; drop [model] init".into());
    }
    model.insert("init".into(), toml::Value::String(file.display().to_string()));
    Ok(true)
}

/// Reads `[model] pretrained = "DIR"`: a Hugging Face BERT-family folder (see
/// [`fedtune_models::pretrained`]), with `max_len` (token ids per row, 128 unless set),
/// `pooling` (`cls` or `mean`; the folder's by default), `classes` (a classification
/// checkpoint's own by default) and `dropout` beside it. Rewrites `table` so that the rest
/// of the configuration reads `bert = { … }` (the sizes from the folder's `config.json`),
/// `classes` and `init = "DIR"`, whose weights [`crate::service::load_initial_model`]
/// reads; returns whether there was such a model.
fn pretrained_from_folder(table: &mut toml::Table, base: &Path) -> Result<bool, String> {
    use fedtune_models::pretrained::{PretrainedOptions, describe};
    let Some(model) = table.get_mut("model").and_then(toml::Value::as_table_mut) else {
        return Ok(false);
    };
    let Some(dir) = model.remove("pretrained") else {
        return Ok(false);
    };
    let dir = base.join(
        dir.as_str()
            .ok_or("[model] pretrained is the path of a Hugging Face model folder")?,
    );
    for key in ["init", "mlp", "cnn", "transformer", "bert", "custom"] {
        if model.contains_key(key) {
            return Err(format!(
                "[model] pretrained builds the model and its starting weights from {}; drop [model] {key}",
                dir.display()
            ));
        }
    }
    let mut value = |key: &str| model.remove(key);
    let max_len = match value("max_len") {
        None => 128,
        Some(v) => v
            .as_integer()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or("[model] max_len is a number of token ids")?,
    };
    let pooling = value("pooling")
        .map(|v| v.as_str().ok_or("[model] pooling is `cls` or `mean`")?.parse())
        .transpose()
        .map_err(|e: String| format!("[model] {e}"))?;
    let dropout = value("dropout")
        .map(|v| v.as_float().ok_or("[model] dropout is a number in [0, 1)"))
        .transpose()?;
    let classes = model
        .get("classes")
        .map(|v| {
            v.clone()
                .try_into::<Vec<String>>()
                .map_err(|_| "[model] classes is a list of names")
        })
        .transpose()?;
    let options = PretrainedOptions {
        max_len,
        pooling,
        classes,
        dropout,
        seed: 0,
    };
    let described = describe(&dir, &options).map_err(|e| format!("[model] pretrained: {e}"))?;
    // What the folder's weights become (a fresh head, a pooler left out) is logged when
    // they are read (`serve`), not here: `predict` and `evaluate` read other weights.
    for note in &described.notes {
        tracing::debug!("[model] pretrained {}: {note}", dir.display());
    }
    let spec = toml::Value::try_from(&described.spec).map_err(|e| e.to_string())?;
    model.insert("bert".into(), spec);
    model.insert(
        "classes".into(),
        toml::Value::try_from(&described.classes).map_err(|e| e.to_string())?,
    );
    model.insert("init".into(), toml::Value::String(dir.display().to_string()));
    Ok(true)
}

/// A TOML configuration file as read: its text, and its table with `[model] custom =
/// { init }` and `[model] pretrained` already read ([`custom_from_file`],
/// [`pretrained_from_folder`]).
struct ConfigFile {
    path: PathBuf,
    /// Its directory, which relative paths are resolved against.
    base: PathBuf,
    text: String,
    table: toml::Table,
    /// Whether a `[model]` file or folder rewrote the table.
    rewritten: bool,
}

impl ConfigFile {
    fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let parse = |message: String| ConfigError::Parse {
            path: path.into(),
            message,
        };
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut table: toml::Table = toml::from_str(&text).map_err(|e| parse(e.to_string()))?;
        let custom = custom_from_file(&mut table, &base).map_err(parse)?;
        let pretrained = pretrained_from_folder(&mut table, &base).map_err(parse)?;
        Ok(Self {
            path: path.into(),
            base,
            text,
            table,
            rewritten: custom || pretrained,
        })
    }

    /// A parse error naming the file.
    fn error(&self, message: String) -> ConfigError {
        ConfigError::Parse {
            path: self.path.clone(),
            message,
        }
    }
}

impl TryFrom<ModelRepr> for ModelConfig {
    type Error = String;

    fn try_from(repr: ModelRepr) -> Result<Self, String> {
        if let Some(key) = repr.unknown.keys().next() {
            return Err(format!(
                "unknown key `{key}` in [model]: it takes one architecture table (mlp, cnn, transformer, bert) or \
                 `pretrained`, lora, init, save, save_layout, freeze and classes"
            ));
        }
        if matches!(repr.spec, ModelSpec::Lora(_)) {
            return Err(
                "[model] takes LoRA as `lora = { rank = …, alpha = …, targets = […] }` beside the architecture table"
                    .into(),
            );
        }
        let mut config = Self::from(repr.spec);
        config.set_lora(repr.lora);
        config.init = repr.init;
        config.save = repr.save;
        config.save_layout = repr.save_layout;
        config.freeze = repr.freeze;
        config.classes = repr.classes;
        if let Some(outputs) = config.spec.classes()
            && !config.classes.is_empty()
            && config.classes.len() != outputs
        {
            return Err(format!(
                "[model] classes names {} classes but the model has {outputs} outputs",
                config.classes.len()
            ));
        }
        Ok(config)
    }
}

impl From<ModelSpec> for ModelConfig {
    fn from(spec: ModelSpec) -> Self {
        Self {
            spec,
            init: None,
            save: None,
            save_layout: Layout::Burn,
            freeze: Vec::new(),
            classes: Vec::new(),
            initial: None,
        }
    }
}

impl std::ops::Deref for ModelConfig {
    type Target = ModelSpec;

    fn deref(&self) -> &ModelSpec {
        &self.spec
    }
}

impl ModelConfig {
    /// The architecture without LoRA adapters: what a weights file holds.
    #[must_use]
    pub fn architecture(&self) -> &ModelSpec {
        match &self.spec {
            ModelSpec::Lora(lora) => &lora.base,
            spec => spec,
        }
    }

    /// The LoRA adapters on the architecture, if any.
    #[must_use]
    pub fn lora(&self) -> Option<LoraConfig> {
        match &self.spec {
            ModelSpec::Lora(lora) => Some(LoraConfig {
                rank: lora.rank,
                alpha: Some(lora.alpha),
                targets: lora.targets.clone(),
                train: lora.train.clone(),
            }),
            _ => None,
        }
    }

    /// Puts LoRA adapters on the architecture (replacing any), or takes them off with
    /// `None`. `alpha` defaults to twice the rank.
    pub fn set_lora(&mut self, lora: Option<LoraConfig>) {
        let base = self.architecture().clone();
        let bert = matches!(base, ModelSpec::Bert(_));
        self.spec = match lora {
            Some(lora) => ModelSpec::Lora(fedtune_protocol::LoraSpec {
                base: Box::new(base),
                rank: lora.rank,
                alpha: lora.alpha.unwrap_or(2.0 * lora.rank as f64),
                targets: lora.targets,
                // A pretrained encoder's head is usually fresh: it trains with the adapters.
                train: if lora.train.is_empty() && bert {
                    vec!["classifier".into()]
                } else {
                    lora.train
                },
            }),
            None => base,
        };
    }

    /// What a federation reads of this section: the architecture, the freeze patterns
    /// and the parameters read from `init`.
    #[must_use]
    pub fn settings(&self) -> ModelSettings {
        ModelSettings {
            spec: self.spec.clone(),
            freeze: self.freeze.clone(),
            initial: self.initial.clone(),
            classes: self.classes.clone(),
        }
    }

    /// The freeze patterns tasks carry (see [`ModelSettings::frozen`]).
    #[must_use]
    pub fn frozen(&self) -> Vec<String> {
        self.settings().frozen()
    }

    /// The part of the model that trains.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when a freeze pattern names no tensor or every tensor is
    /// frozen.
    pub fn trainable(&self) -> Result<fedtune_protocol::freeze::Trainable, ConfigError> {
        Ok(self.settings().trainable()?)
    }

    /// The `[model]` table of a TOML file (a model file, or an aggregator's whole
    /// configuration), read as [`AggregatorConfig::load`] reads it: `pretrained` and
    /// `custom = { init }` resolved, relative paths against the file's directory.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and the problem.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let mut file = ConfigFile::read(path)?;
        let model = file
            .table
            .remove("model")
            .ok_or_else(|| file.error("no [model] table".into()))?;
        let mut model: Self = model
            .try_into()
            .map_err(|e: toml::de::Error| file.error(e.to_string()))?;
        if let Some(init) = model.init.as_mut().filter(|i| i.path.is_relative()) {
            init.path = file.base.join(&init.path);
        }
        Ok(model)
    }

    /// Where the final model goes: `save`, else next to `report`.
    #[must_use]
    pub fn save_path(&self, report: Option<&Path>) -> Option<PathBuf> {
        self.save
            .clone()
            .or_else(|| report.map(|r| r.with_extension("safetensors")))
    }
}

/// The web dashboard over the run's store, and the Prometheus `/metrics` on the same
/// listener.
///
/// On loopback it serves plain HTTP unless given a certificate. Beyond loopback it needs
/// a token, and serves HTTPS (with `cert` and `key`, or under `serve` the federation's
/// own `[pki] cert` and `key`) so that the token and its cookie never cross the network
/// in clear; plain HTTP there takes `insecure = true`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardConfig {
    /// TCP address to serve on, e.g. `"127.0.0.1:8080"`. It needs `[state] db`: the
    /// dashboard shows what the store holds.
    pub listen: Option<SocketAddr>,
    /// A bearer token every request must carry (`Authorization: Bearer …`, or once as
    /// `?token=…`, which sets a cookie). Required when `listen` is not a loopback
    /// address: the dashboard shows parameters and agent ids.
    pub token: Option<String>,
    /// A certificate (PEM, leaf first) to serve HTTPS with, on any address, loopback
    /// included; with `key`. Relative to the configuration file.
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of `cert`.
    pub key: Option<PathBuf>,
    /// Serve plain HTTP beyond loopback, the token and its cookie in clear: only behind
    /// something that encrypts the way (a TLS-terminating proxy on the same host, a VPN).
    pub insecure: bool,
}

/// A certificate file and the file of its private key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

impl DashboardConfig {
    /// The certificate to serve HTTPS with, or `None` for plain HTTP: `cert` and `key`
    /// when set, on any address; else, beyond loopback and unless `insecure`,
    /// `fallback` (under `serve`, the federation's own server certificate).
    #[must_use]
    pub fn https(&self, fallback: Option<CertificateFiles>) -> Option<CertificateFiles> {
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            return Some(CertificateFiles {
                cert: cert.clone(),
                key: key.clone(),
            });
        }
        match self.listen {
            Some(addr) if !addr.ip().is_loopback() && !self.insecure => fallback,
            _ => None,
        }
    }

    /// Checks the section on its own, as `fedtune-aggregator dashboard` serves it: no
    /// certificate to fall back on (see [`validate_with`](Self::validate_with)).
    ///
    /// # Errors
    /// As [`validate_with`](Self::validate_with).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_with(None)
    }

    /// Checks that the token is usable, that `cert` and `key` come together, and that a
    /// dashboard reachable from other hosts has a token and, unless `insecure`, HTTPS:
    /// its own certificate or `fallback`.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming what is missing.
    pub fn validate_with(&self, fallback: Option<CertificateFiles>) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if let Some(token) = &self.token
            && (token.len() < 16 || token.chars().any(char::is_whitespace))
        {
            return invalid("dashboard.token must be at least 16 characters without spaces".into());
        }
        match (&self.cert, &self.key) {
            (Some(_), None) | (None, Some(_)) => {
                return invalid("dashboard.cert and dashboard.key go together: set both, or neither".into());
            }
            (Some(_), Some(_)) if self.insecure => {
                return invalid(
                    "dashboard.insecure = true asks for plain HTTP, dashboard.cert and dashboard.key for HTTPS: \
                     keep one"
                        .into(),
                );
            }
            _ => {}
        }
        let Some(addr) = self.listen.filter(|a| !a.ip().is_loopback()) else {
            return Ok(());
        };
        if self.token.is_none() {
            return invalid(format!(
                "dashboard.listen = {addr} is reachable from other hosts: set dashboard.token too"
            ));
        }
        if self.https(fallback).is_none() && !self.insecure {
            return invalid(format!(
                "dashboard.listen = {addr} is reachable from other hosts, and over plain HTTP its token \
                 and cookie would cross the network in clear: give it a certificate (dashboard.cert and \
                 dashboard.key; --cert and --key for `fedtune-aggregator dashboard`), or set \
                 dashboard.insecure = true (--insecure) if something else encrypts the way"
            ));
        }
        Ok(())
    }
}

/// Durable state: with `db` set, `serve` commits every round and its checkpoint to that
/// store and, restarted with the same configuration, resumes the run; while it serves
/// the run, no other `serve` does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    /// The store: a SQLite file (e.g. `"fedtune.db"`, relative to the configuration
    /// file) or a PostgreSQL database (`"postgres://user:password@host/database"`).
    pub db: Option<PathBuf>,
    /// Checkpoints kept per run: the last `keep_checkpoints`, and the best one.
    pub keep_checkpoints: usize,
    /// The name this aggregator holds a run's lease and a study's trials as. Aggregators
    /// sharing a study (one store, one `[federation] study` name) need distinct owners,
    /// and so do two aggregators that must not serve one run; by default the host name
    /// and the listening port. A restart under the same owner takes its run and its
    /// running trials straight back; others wait `trial_timeout_secs`.
    pub owner: Option<String>,
    /// An owner whose heartbeat is older than this many seconds loses what it holds: a
    /// running trial is taken over by the next aggregator of the study with a free slot,
    /// and a run by the next `serve` of it, which is refused until then (heartbeats go
    /// every quarter of it while the owner lives).
    pub trial_timeout_secs: f64,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            db: None,
            keep_checkpoints: 3,
            owner: None,
            trial_timeout_secs: 60.0,
        }
    }
}

impl StateConfig {
    /// The owner this aggregator writes trials as (see [`owner`](Self::owner)).
    pub fn owner(&self, listen: SocketAddr) -> String {
        if let Some(owner) = &self.owner {
            return owner.clone();
        }
        let host = fedtune_store::host_name().unwrap_or_else(|| "aggregator".to_owned());
        format!("{host}:{}", listen.port())
    }

    /// How long a silent owner keeps its trials.
    pub fn trial_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.trial_timeout_secs)
    }
}

/// Paths of the CA certificate and the server's certificate and key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PkiPaths {
    /// CA certificate agents' certificates must chain to.
    pub ca_cert: PathBuf,
    /// Server certificate.
    pub cert: PathBuf,
    /// Server private key.
    pub key: PathBuf,
    /// Revoked agent certificates (fingerprints or serials, one per line; see
    /// [`crate::revocation`]), refused at the handshake and re-read when the file
    /// changes. Unset, it is `revoked.txt` beside `ca_cert`, the file `fedtune-aggregator
    /// revoke --pki DIR` appends to; a missing file revokes nothing until it appears.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<PathBuf>,
}

impl PkiPaths {
    /// The revocation list in force: `revoked`, or `revoked.txt` beside the CA
    /// certificate (where `revoke` writes).
    #[must_use]
    pub fn revocation_list(&self) -> PathBuf {
        self.revoked.clone().unwrap_or_else(|| self.default_revocation_list())
    }

    /// `revoked.txt` beside the CA certificate: the file `revoke --pki DIR` appends to.
    #[must_use]
    pub fn default_revocation_list(&self) -> PathBuf {
        self.ca_cert.parent().unwrap_or(Path::new("")).join("revoked.txt")
    }

    /// The aggregator's own certificate and key: what the dashboard serves HTTPS with
    /// beyond loopback when `[dashboard]` names no certificate.
    #[must_use]
    pub fn server_certificate(&self) -> CertificateFiles {
        CertificateFiles {
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }

    /// The standard file names inside a directory made by `init`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            revoked: None,
        }
    }
}

impl Default for PkiPaths {
    fn default() -> Self {
        Self::in_dir(Path::new("pki"))
    }
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
            pki: PkiPaths::default(),
            federation: FederationConfig::default(),
            model: ModelSpec::Mlp(MlpSpec {
                input: 64,
                hidden: vec![64],
                classes: 10,
            })
            .into(),
            client: ClientHyperparameters::default(),
            strategy: StrategyConfig::default(),
            server_lr: ServerLrConfig::default(),
            fairness: FairnessConfig::default(),
            secure_aggregation: SecureAggregationConfig::default(),
            report: None,
            tuning: None,
            state: StateConfig::default(),
            dashboard: DashboardConfig::default(),
            privacy: PrivacyConfig::default(),
        }
    }
}

/// A configuration that cannot run, and why.
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
    /// A value is out of range.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl From<SettingsError> for ConfigError {
    fn from(e: SettingsError) -> Self {
        Self::Invalid(e.0)
    }
}

impl AggregatorConfig {
    /// What a federation reads of this configuration.
    #[must_use]
    pub fn settings(&self) -> Settings {
        Settings {
            federation: self.federation.clone(),
            model: self.model.settings(),
            client: self.client.clone(),
            strategy: self.strategy.clone(),
            server_lr: self.server_lr,
            fairness: self.fairness.clone(),
            secure_aggregation: self.secure_aggregation,
            privacy: self.privacy.clone(),
        }
    }

    /// Reads and validates a TOML file. Relative PKI, dashboard certificate and report
    /// paths are resolved against the file's directory.
    ///
    /// # Errors
    /// [`ConfigError`] saying which file and which value.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut file = ConfigFile::read(path)?;
        let mut config: Self = if file.rewritten {
            std::mem::take(&mut file.table)
                .try_into()
                .map_err(|e: toml::de::Error| file.error(e.to_string()))?
        } else {
            // Parsed from the text again, so errors point at a line.
            toml::from_str(&file.text).map_err(|e| file.error(e.to_string()))?
        };
        let base = file.base.as_path();
        for p in [&mut config.pki.ca_cert, &mut config.pki.cert, &mut config.pki.key]
            .into_iter()
            .chain(config.pki.revoked.as_mut())
            .chain(config.dashboard.cert.as_mut())
            .chain(config.dashboard.key.as_mut())
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(report) = config.report.as_mut().filter(|r| r.is_relative()) {
            *report = base.join(&*report);
        }
        if let Some(init) = config.model.init.as_mut().filter(|i| i.path.is_relative()) {
            init.path = base.join(&init.path);
        }
        if let Some(save) = config.model.save.as_mut().filter(|s| s.is_relative()) {
            *save = base.join(&*save);
        }
        if let Some(db) = config
            .state
            .db
            .as_mut()
            .filter(|d| d.is_relative() && !fedtune_store::is_postgres_url(d))
        {
            *db = base.join(&*db);
        }
        if let Some(tuning) = config.tuning.as_mut() {
            if tuning.space.is_relative() {
                tuning.space = base.join(&tuning.space);
            }
            if let Some(storage) = tuning.storage.as_mut().filter(|s| s.is_relative()) {
                *storage = base.join(&*storage);
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks every value is usable.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        self.settings().validate()?;
        self.dashboard.validate_with(Some(self.pki.server_certificate()))?;
        if self.dashboard.listen.is_some() && self.state.db.is_none() {
            return invalid("dashboard.listen needs [state] db: the dashboard shows what the store holds".into());
        }
        if self.state.keep_checkpoints == 0 {
            return invalid("state.keep_checkpoints must be at least 1".into());
        }
        if !(self.state.trial_timeout_secs.is_finite()
            && self.state.trial_timeout_secs >= 1.0
            && self.state.trial_timeout_secs < 1e7)
        {
            return invalid(format!(
                "state.trial_timeout_secs must be at least 1 second, got {}",
                self.state.trial_timeout_secs
            ));
        }
        if self
            .state
            .owner
            .as_ref()
            .is_some_and(|o| o.trim().is_empty() || o.len() > 200)
        {
            return invalid("state.owner must be a non-empty name of at most 200 bytes".into());
        }
        if let Some(tuning) = &self.tuning
            && (tuning.trials == 0 || tuning.parallel == 0 || tuning.rounds == Some(0))
        {
            return invalid("tuning: trials, parallel and rounds must be at least 1".into());
        }
        Ok(())
    }
}

/// The `[tuning]` section of the aggregator's TOML: with it, `serve` runs a study
/// instead of a single federation.
///
/// ```toml
/// [tuning]
/// space = "../presets/vision.toml"   # TOML [params] or a JSON spec; relative to this file
/// sampler = "bayes+rl"               # grid | random | tpe | gp | bayes+rl
/// pruner = { name = "asha", min_resource = 3 }
/// trials = 20
/// rounds = 30                        # per trial; federation.rounds when omitted
/// objectives = ["accuracy", "device_seconds"]
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TuningSection {
    /// The search space file.
    pub space: std::path::PathBuf,
    /// For a JSON spec holding several objectives, the one whose space to use.
    #[serde(default)]
    pub objective: Option<String>,
    /// The strategy between (and, for `bayes+rl`, within) trials.
    #[serde(default)]
    pub sampler: SamplerKind,
    /// Early stopping of weak trials.
    #[serde(default)]
    pub pruner: PrunerConfig,
    /// Trials to run.
    #[serde(default = "default_trials")]
    pub trials: usize,
    /// Rounds per trial; `federation.rounds` when omitted.
    #[serde(default)]
    pub rounds: Option<u64>,
    /// Trials at once, each on its own group of agents.
    #[serde(default = "default_parallel")]
    pub parallel: usize,
    /// What trials are scored on, primary first.
    #[serde(default = "default_objectives")]
    pub objectives: Vec<TrialMetric>,
    /// Weights for a weighted sum of the objectives.
    #[serde(default)]
    pub weights: Option<Vec<f64>>,
    /// Seed of the sampler, the policies and the trials' models.
    #[serde(default)]
    pub seed: u64,
    /// Random trials before TPE or GP take over (default: a quarter of the trials,
    /// between 3 and 10).
    #[serde(default)]
    pub startup_trials: Option<usize>,
    /// Run the config's own client settings as trial 0.
    #[serde(default)]
    pub baseline_first: bool,
    /// The within-trial policy (`bayes+rl`).
    #[serde(default)]
    pub policy: FedExConfig,
    /// A JSON-lines journal to keep the study in and resume it from after a restart;
    /// relative to this file.
    #[serde(default)]
    pub storage: Option<std::path::PathBuf>,
}

fn default_trials() -> usize {
    20
}

fn default_parallel() -> usize {
    1
}

fn default_objectives() -> Vec<TrialMetric> {
    vec![TrialMetric::Accuracy]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_cohorts_are_sized() {
        let config = AggregatorConfig::default();
        config.validate().unwrap();
        let mut f = FederationConfig {
            cohort: 0.5,
            ..Default::default()
        };
        assert_eq!(f.cohort_size(10), 5);
        assert_eq!(FederationConfig::default().cohort_size(10), 10);
        assert_eq!(f.cohort_size(3), 2);
        f.cohort = 20.0;
        assert_eq!(f.cohort_size(7), 7);
        assert_eq!(f.cohort_size(0), 0);
    }

    #[test]
    fn example_file_parses_and_bad_values_are_named() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/aggregator.toml"));
        let config = AggregatorConfig::load(path).unwrap();
        assert!(config.pki.ca_cert.ends_with("pki/ca.pem"));

        let text = "[federation]\nrounds = 0\n";
        let config: AggregatorConfig = toml::from_str(text).unwrap();
        assert!(config.validate().unwrap_err().to_string().contains("federation.rounds"));
        let unknown: Result<AggregatorConfig, _> = toml::from_str("[federation]\nround = 3\n");
        assert!(unknown.unwrap_err().to_string().contains("round"));
        for bad in ["trial_timeout_secs = 0.5", "trial_timeout_secs = nan", "owner = \" \""] {
            let config: AggregatorConfig = toml::from_str(&format!("[state]\n{bad}\n")).unwrap();
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains("state."), "{bad}: {err}");
        }
    }

    /// Every setting `config/aggregator.toml` shows commented out, uncommented in place
    /// (a key set twice, like the PostgreSQL `db`, keeps its live value): the file parses
    /// and validates, so what it documents is real and its examples fit its model.
    #[test]
    fn every_setting_the_shipped_config_documents_is_real() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let text = std::fs::read_to_string(shipped.join("aggregator.toml")).unwrap();
        let mut out = String::new();
        let mut live = std::collections::BTreeSet::new();
        let mut uncommented = 0;
        for line in text.lines() {
            let bare = line.trim_start_matches('#').trim_start();
            let key = bare.split([' ', '=']).next().unwrap_or("");
            let setting = line.starts_with('#')
                && !key.is_empty()
                && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                && bare[key.len()..].trim_start().starts_with('=');
            if bare.starts_with('[') && (line.starts_with('[') || line.starts_with("# [")) {
                live.clear();
                out.push_str(bare);
            } else if setting && !live.contains(key) {
                live.insert(key.to_owned());
                uncommented += 1;
                out.push_str(bare);
            } else {
                if !line.starts_with('#') && !key.is_empty() {
                    live.insert(key.to_owned());
                }
                out.push_str(line);
            }
            out.push('\n');
        }
        assert!(uncommented > 30, "{uncommented} commented settings: {out}");
        let path = shipped.join("every-setting.toml.test");
        std::fs::write(&path, &out).unwrap();
        let loaded = AggregatorConfig::load(&path);
        std::fs::remove_file(&path).unwrap();
        let config = loaded.unwrap_or_else(|e| panic!("{e}\n{out}"));
        config.validate().unwrap_or_else(|e| panic!("{e}\n{out}"));
        let tuning = config.tuning.as_ref().expect("the [tuning] block was uncommented");
        assert!(!tuning.baseline_first, "the file shows baseline_first's default, false");
        let study = tuning.study(config.federation.rounds).unwrap();
        crate::tune::check_server_choices(&config, &study.space).unwrap();
    }

    #[test]
    fn a_dashboard_beyond_loopback_without_tls_is_refused() {
        let token = "[dashboard]\nlisten = \"0.0.0.0:8443\"\ntoken = \"0123456789abcdef\"\n";
        let section = |extra: &str| {
            toml::from_str::<AggregatorConfig>(&format!("{token}{extra}"))
                .unwrap()
                .dashboard
        };
        // Alone, as the standalone `dashboard` command has it: no certificate, no HTTPS.
        let err = section("").validate().unwrap_err().to_string();
        assert!(
            err.contains("0.0.0.0:8443") && err.contains("plain HTTP") && err.contains("dashboard.insecure"),
            "{err}"
        );
        assert_eq!(section("").https(None), None);
        // The operator's word, or a certificate of its own.
        section("insecure = true\n").validate().unwrap();
        let own = section("cert = \"d.pem\"\nkey = \"d.key\"\n");
        own.validate().unwrap();
        assert_eq!(
            own.https(None).map(|f| f.cert),
            Some(PathBuf::from("d.pem")),
            "its own certificate"
        );
        // Under `serve`, the federation's server certificate serves beyond loopback.
        let config: AggregatorConfig = toml::from_str(&format!("{token}[state]\ndb = \"f.db\"\n")).unwrap();
        config.validate().unwrap();
        assert_eq!(
            config.dashboard.https(Some(config.pki.server_certificate())),
            Some(config.pki.server_certificate())
        );
        // … unless the operator said plain HTTP.
        let insecure = section("insecure = true\n");
        assert_eq!(insecure.https(Some(config.pki.server_certificate())), None);
        // Half a certificate, or a certificate and `insecure`, are named.
        let err = section("cert = \"d.pem\"\n").validate().unwrap_err().to_string();
        assert!(err.contains("dashboard.cert and dashboard.key go together"), "{err}");
        let err = section("cert = \"d.pem\"\nkey = \"d.key\"\ninsecure = true\n")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("dashboard.insecure"), "{err}");
        // Loopback stays plain HTTP, unless given a certificate: then HTTPS there too.
        let loopback = DashboardConfig {
            listen: Some("127.0.0.1:8080".parse().unwrap()),
            ..DashboardConfig::default()
        };
        loopback.validate().unwrap();
        assert_eq!(loopback.https(Some(config.pki.server_certificate())), None);
        let forced = DashboardConfig {
            cert: Some("d.pem".into()),
            key: Some("d.key".into()),
            ..loopback
        };
        assert!(forced.https(None).is_some());
    }

    #[test]
    fn the_dashboard_certificate_is_relative_to_the_config_file() {
        let dir = std::env::temp_dir().join(format!("fedtune-dashboard-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("aggregator.toml");
        std::fs::write(
            &path,
            "[state]\ndb = \"f.db\"\n[dashboard]\nlisten = \"127.0.0.1:8443\"\ncert = \"tls/d.pem\"\nkey = \"tls/d.key\"\n",
        )
        .unwrap();
        let config = AggregatorConfig::load(&path).unwrap();
        assert_eq!(config.dashboard.cert, Some(dir.join("tls/d.pem")));
        assert_eq!(config.dashboard.key, Some(dir.join("tls/d.key")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_pretrained_folder_gives_the_bert_its_classes_and_its_starting_weights() {
        use fedtune_models::pretrained::{PretrainedOptions, load_pretrained};
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/bert-tiny");
        let dir = std::env::temp_dir().join(format!("fedtune-pretrained-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("aggregator.toml");
        let write = |model: &str| {
            std::fs::write(&path, format!("[model]\n{model}\n")).unwrap();
        };
        write(&format!(
            "pretrained = {:?}\nmax_len = 16\nlora = {{ rank = 2, targets = [\"*.query\", \"*.value\"] }}",
            fixture.join("classifier")
        ));
        let mut config = AggregatorConfig::load(&path).unwrap();
        let ModelSpec::Bert(bert) = config.model.architecture() else {
            panic!("{:?}", config.model.spec)
        };
        assert_eq!((bert.max_len, bert.classes, bert.hidden), (16, 3, 32));
        assert_eq!(config.model.classes, ["negative", "neutral", "positive"]);
        assert_eq!(config.model.lora().unwrap().targets, ["*.query", "*.value"]);
        crate::service::load_initial_model(&mut config).unwrap();
        config.validate().unwrap();
        let options = PretrainedOptions {
            max_len: 16,
            ..PretrainedOptions::default()
        };
        let checkpoint = load_pretrained(&fixture.join("classifier"), &options).unwrap();
        let initial = config.model.initial.clone().unwrap();
        // The checkpoint's weights with fresh adapters (B = 0: merged, they are the checkpoint).
        let ModelSpec::Lora(lora) = &config.model.spec else {
            unreachable!()
        };
        assert_eq!(initial.len(), config.model.spec.manifest().numel());
        assert!(
            lora.merged(&initial) == checkpoint.params,
            "the base weights are not the checkpoint's"
        );

        // Written back, the section reads the same model again.
        let written = toml::to_string(&config).unwrap();
        std::fs::write(&path, &written).unwrap();
        assert_eq!(AggregatorConfig::load(&path).unwrap().model.spec, config.model.spec);

        // A BertModel folder needs class names; other sizes or a second architecture are refused.
        write(&format!("pretrained = {:?}", fixture.join("encoder")));
        let err = AggregatorConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("[model] classes"), "{err}");
        write(&format!(
            "pretrained = {:?}\nclasses = [\"a\", \"b\"]\npooling = \"max\"",
            fixture.join("encoder")
        ));
        let err = AggregatorConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("pooling `max`: expected cls or mean"), "{err}");
        write(&format!("pretrained = {:?}\nmax_len = 100", fixture.join("classifier")));
        let err = AggregatorConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("max_len 100 exceeds the 64 position embeddings"), "{err}");
        write(&format!(
            "pretrained = {:?}\n[model.mlp]\ninput = 2\nhidden = []\nclasses = 2",
            fixture.join("classifier")
        ));
        let err = AggregatorConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("drop [model] mlp"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_model_section_takes_an_architecture_a_starting_file_and_a_save_path() {
        let dir = std::env::temp_dir().join(format!("fedtune-model-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("aggregator.toml");
        std::fs::write(
            &path,
            "[model]\ninit = \"lenet.pt\"\nsave = \"out/final.safetensors\"\n\
             [model.cnn]\nchannels = 1\nheight = 28\nwidth = 28\nclasses = 10\nhidden = [120, 84]\n\
             blocks = [{ channels = 6, kernel = 5 }, { channels = 16, kernel = 5 }]\n",
        )
        .unwrap();
        let config = AggregatorConfig::load(&path).unwrap();
        assert_eq!(
            config.model.spec,
            ModelSpec::Cnn(fedtune_protocol::CnnSpec::lenet(1, 28, 28, 10))
        );
        assert_eq!(config.model.init.as_ref().unwrap().path, dir.join("lenet.pt"));
        assert_eq!(config.model.save_path(None), Some(dir.join("out/final.safetensors")));
        // Without `save`, the model goes next to the report.
        let plain: AggregatorConfig = toml::from_str("report = \"r/run.json\"\n").unwrap();
        assert_eq!(
            plain.model.save_path(plain.report.as_deref()),
            Some(PathBuf::from("r/run.safetensors"))
        );
        // Initial parameters that do not fit the architecture are refused at validation.
        let mut config = config;
        config.model.initial = Some(Arc::new(vec![0.0; 10]));
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("initial model holds 10 parameters"), "{err}");
        // A misspelt key in [model] is named.
        let err = toml::from_str::<AggregatorConfig>(
            "[model]\ninti = \"x.pt\"\n[model.mlp]\ninput = 2\nhidden = []\nclasses = 2\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("inti"), "{err}");
    }

    #[test]
    fn lora_in_the_model_section_wraps_the_architecture_and_writes_back_as_written() {
        let text = "[model]\nlora = { rank = 4, targets = [\"head.*\"] }\n\
                    [model.cnn]\nchannels = 1\nheight = 28\nwidth = 28\nclasses = 10\nhidden = [120, 84]\n\
                    blocks = [{ channels = 6, kernel = 5 }, { channels = 16, kernel = 5 }]\n";
        let config: AggregatorConfig = toml::from_str(text).unwrap();
        let ModelSpec::Lora(lora) = &config.model.spec else {
            panic!("{:?}", config.model.spec)
        };
        assert_eq!((lora.rank, lora.alpha), (4, 8.0));
        assert_eq!(
            config.model.architecture(),
            &ModelSpec::Cnn(fedtune_protocol::CnnSpec::lenet(1, 28, 28, 10))
        );
        config.validate().unwrap();
        // Only the adapters train: (256 + 120 + 120 + 84 + 84 + 10) · 4 values.
        assert_eq!(config.model.trainable().unwrap().numel(), 2_696);
        // Written back, it reads the same.
        let again: AggregatorConfig = toml::from_str(&toml::to_string(&config).unwrap()).unwrap();
        assert_eq!(again.model, config.model);
        // A bad rank or target is named at validation.
        let bad: AggregatorConfig = toml::from_str(&text.replace("rank = 4", "rank = 100")).unwrap();
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("rank 100 exceeds"), "{err}");
        let err = toml::from_str::<AggregatorConfig>(&text.replace("targets", "target"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("target"), "{err}");
    }

    #[test]
    fn postgres_urls_are_not_paths_and_owners_default_to_host_and_port() {
        let dir = std::env::temp_dir().join(format!("fedtune-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("aggregator.toml");
        let url = "postgresql://fedtune:pw@127.0.0.1:5432/fedtune";
        std::fs::write(&path, format!("[state]\ndb = {url:?}\n")).unwrap();
        let config = AggregatorConfig::load(&path).unwrap();
        assert_eq!(config.state.db.as_deref(), Some(Path::new(url)));
        std::fs::write(&path, "[state]\ndb = \"fedtune.db\"\n").unwrap();
        let config = AggregatorConfig::load(&path).unwrap();
        assert_eq!(config.state.db, Some(dir.join("fedtune.db")));
        let listen: SocketAddr = "127.0.0.1:4433".parse().unwrap();
        assert!(config.state.owner(listen).ends_with(":4433"));
        let named = StateConfig {
            owner: Some("eu-1".into()),
            ..StateConfig::default()
        };
        assert_eq!(named.owner(listen), "eu-1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn secure_aggregation_refuses_rules_that_need_individual_updates() {
        let text = "[strategy]\nname = \"krum\"\n[secure_aggregation]\nenabled = true\n";
        let config: AggregatorConfig = toml::from_str(text).unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("krum") && err.contains("secure aggregation"), "{err}");
        let fine: AggregatorConfig = toml::from_str("[secure_aggregation]\nenabled = true\n").unwrap();
        fine.validate().unwrap();
        let text = "[secure_aggregation]\nenabled = true\nthreshold = 1.0\n";
        let config: AggregatorConfig = toml::from_str(text).unwrap();
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("secure_aggregation.threshold")
        );
    }

    #[test]
    fn secure_threshold_is_a_majority_of_at_least_two() {
        let secure = SecureAggregationConfig::default();
        assert_eq!(secure.threshold_for(2), 2);
        assert_eq!(secure.threshold_for(3), 2);
        assert_eq!(secure.threshold_for(4), 3);
        assert_eq!(secure.threshold_for(10), 6);
        let most = SecureAggregationConfig {
            threshold: 0.9,
            ..secure
        };
        assert_eq!(most.threshold_for(10), 10);
    }

    #[test]
    fn large_cohorts_get_a_sparse_graph_and_a_neighbourhood_threshold() {
        let secure = SecureAggregationConfig::default();
        assert_eq!(secure.degree_for(32), None);
        // 2⌈1.5 · log₂ n⌉: 18 at 50 agents, 20 at 100, 24 at 200, 30 at 1000.
        assert_eq!(secure.degree_for(50), Some(18));
        assert_eq!(secure.degree_for(100), Some(20));
        assert_eq!(secure.degree_for(200), Some(24));
        assert_eq!(secure.degree_for(1000), Some(30));
        // A majority of the 21-agent neighbourhood.
        assert_eq!(secure.threshold_for(100), 11);
        let complete = SecureAggregationConfig {
            degree: Some(0),
            ..secure
        };
        assert_eq!(complete.degree_for(1000), None);
        assert_eq!(complete.threshold_for(100), 51);
        let odd = SecureAggregationConfig {
            degree: Some(7),
            ..secure
        };
        assert_eq!(odd.degree_for(10), Some(8));
        // A degree that reaches the cohort is the complete graph.
        assert_eq!(odd.degree_for(9), None);
        let parsed: AggregatorConfig = toml::from_str("[secure_aggregation]\nenabled = true\ndegree = 12\n").unwrap();
        assert_eq!(parsed.secure_aggregation.degree_for(100), Some(12));
    }
}
