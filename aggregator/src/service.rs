//! Starting the service from its configuration: PKI files to a bound QUIC endpoint, the
//! initial model from its weights file; and writing the final model out.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fedtune_models::model::default_device;
use fedtune_models::weights::{self, Layout, WeightsError};
use fedtune_protocol::{BertSpec, ModelSpec};

use crate::config::{AggregatorConfig, ModelConfig};
use crate::identity::{Identity, IdentityError, load_ca_certificate, load_identity};
use crate::restart::RestartKeys;
use crate::revocation::RevocationList;
use crate::tls::server_config;
use crate::transport::TransportTuning;

/// Binds a QUIC server endpoint on `addr` that requires agent certificates signed by
/// the CA in `ca_cert_pem`.
///
/// # Errors
/// [`IdentityError`] for bad certificates or tuning, or when the socket cannot be bound.
pub fn bind(
    addr: SocketAddr,
    ca_cert_pem: &str,
    identity: &Identity,
    tuning: &TransportTuning,
) -> Result<quinn::Endpoint, IdentityError> {
    bind_with_revocation(addr, ca_cert_pem, identity, tuning, None)
}

/// As [`bind`], refusing the certificates `revoked` lists at the handshake.
///
/// The endpoint's stateless-reset and connection-ID keys come from `identity`'s key
/// ([`RestartKeys`]), so when it is bound again after a crash or a restart, the agents of
/// the previous process are reset by their next packet and reconnect at once.
///
/// # Errors
/// As [`bind`].
pub fn bind_with_revocation(
    addr: SocketAddr,
    ca_cert_pem: &str,
    identity: &Identity,
    tuning: &TransportTuning,
    revoked: Option<Arc<RevocationList>>,
) -> Result<quinn::Endpoint, IdentityError> {
    let server = server_config(ca_cert_pem, identity, tuning, revoked)?;
    let mut endpoint_config = tuning.endpoint_config()?;
    RestartKeys::derive(identity, addr)?.apply(&mut endpoint_config);
    tuning.endpoint_with(addr, endpoint_config, Some(server))
}

/// Loads the PKI files a configuration names (with `[pki] revoked`, when set) and binds
/// its listen address.
///
/// # Errors
/// As [`bind`], plus unreadable PKI files and a revocation file that does not parse.
pub fn bind_from_config(config: &AggregatorConfig) -> Result<quinn::Endpoint, IdentityError> {
    let pki = &config.pki;
    let setting = |setting: &'static str| {
        move |source: IdentityError| IdentityError::Setting {
            setting,
            source: Box::new(source),
        }
    };
    let ca = load_ca_certificate(&pki.ca_cert).map_err(setting("[pki] ca_cert"))?;
    let identity = load_identity(&pki.cert, &pki.key).map_err(|e| match &e {
        IdentityError::Io { path, .. } if path == &pki.key => setting("[pki] key")(e),
        IdentityError::Io { .. } => setting("[pki] cert")(e),
        _ => e,
    })?;
    let tuning = if config.federation.loopback {
        TransportTuning::loopback()
    } else {
        TransportTuning::default()
    };
    let list = pki.revocation_list();
    let revoked = RevocationList::open(&list).map_err(|e| IdentityError::Revocation(e.to_string()))?;
    tracing::info!("revocation list {} ({} revoked)", list.display(), revoked.len());
    // `revoke --pki DIR` writes beside the CA: entries there that another configured
    // file leaves out would be a silent hole.
    let beside_ca = pki.default_revocation_list();
    if list != beside_ca
        && let Ok(other) = RevocationList::open(&beside_ca)
        && !other.is_empty()
    {
        tracing::warn!(
            "{} revokes {} certificate(s) but [pki] revoked names {}: those entries are not applied",
            beside_ca.display(),
            other.len(),
            list.display()
        );
    }
    let revoked = Some(Arc::new(revoked));
    bind_with_revocation(config.listen, &ca, &identity, &tuning, revoked)
}

/// Reads the weights file `[model] init` names into `config.model.initial`, so every
/// federation of this configuration starts from it. The file holds the plain
/// architecture; a LoRA model gets fresh adapters on top (`A` drawn from a generator
/// seeded by `federation.seed`, `B` zero, so it starts as the file's model). Nothing to
/// do without `init`.
///
/// # Errors
/// [`WeightsError`] saying what is wrong with the file, naming every tensor that does not
/// fit the configured model.
pub fn load_initial_model(config: &mut AggregatorConfig) -> Result<(), WeightsError> {
    use rand::SeedableRng;
    if let Some(source) = &config.model.init {
        if let ModelSpec::Custom(custom) = &config.model.spec {
            // The aggregator knows a custom model by its tensors alone: the file is
            // its layout and its starting values.
            let (manifest, params) = weights::read_custom(&source.path)?;
            if manifest != custom.manifest {
                return Err(WeightsError::Read {
                    path: source.path.clone(),
                    reason: format!("holds other tensors than custom model `{}` names", custom.name),
                });
            }
            config.model.initial = Some(Arc::new(params));
            return Ok(());
        }
        let mut params = match config.model.architecture() {
            // A Hugging Face folder (`[model] pretrained`): its own names and layout.
            ModelSpec::Bert(bert) if source.path.is_dir() => {
                pretrained_weights(&source.path, bert, &config.model.classes, config.federation.seed)?
            }
            architecture => weights::import(architecture, source, &default_device())?,
        };
        if let ModelSpec::Lora(lora) = &config.model.spec {
            params = lora.with_adapters(&params, &mut rand::rngs::StdRng::seed_from_u64(config.federation.seed));
        }
        config.model.initial = Some(Arc::new(params));
    }
    Ok(())
}

/// A Hugging Face folder's weights for `bert` with `classes` (a fresh head seeded by
/// `seed` unless the checkpoint's classifies exactly those); what was left out or started
/// fresh is logged.
fn pretrained_weights(dir: &Path, bert: &BertSpec, classes: &[String], seed: u64) -> Result<Vec<f32>, WeightsError> {
    use fedtune_models::pretrained::{PretrainedError, load_weights};
    match load_weights(dir, bert, classes, seed) {
        Ok((params, _, notes)) => {
            for note in notes {
                tracing::info!("{}: {note}", dir.display());
            }
            Ok(params)
        }
        Err(PretrainedError::Weights(error)) => Err(error),
        Err(error) => Err(WeightsError::Read {
            path: dir.to_path_buf(),
            reason: error.to_string(),
        }),
    }
}

/// Writes a final global model as safetensors at `path`: one tensor per tensor of the
/// plain architecture, named by module path, in `layout` — Burn's, or PyTorch's for
/// `load_state_dict` — which the header names (read back with `[model] init` or
/// `evaluate` either way). A LoRA model is written with its adapters merged into their
/// weights, and its adapters alone go beside it (`final.safetensors` →
/// `final.adapters.safetensors`, with the rank, alpha and targets in the header).
/// Returns the files written.
///
/// # Errors
/// [`WeightsError`] when `params` does not fit `spec` or a file cannot be written.
pub fn save_model(spec: &ModelSpec, params: &[f32], path: &Path, layout: Layout) -> Result<Vec<PathBuf>, WeightsError> {
    if let ModelSpec::Custom(custom) = spec {
        // Named and shaped as the custom model's file was: `load_state_dict` reads it.
        weights::export_trainable(
            &custom.manifest,
            &[],
            params,
            &[("custom_model", custom.name.clone())],
            path,
        )?;
        return Ok(vec![path.to_path_buf()]);
    }
    weights::export(spec, params, path, layout, &default_device())?;
    let mut written = vec![path.to_path_buf()];
    if let ModelSpec::Lora(lora) = spec {
        let adapters = adapters_path(path);
        let metadata = [
            ("lora_rank", lora.rank.to_string()),
            ("lora_alpha", lora.alpha.to_string()),
            ("lora_targets", lora.targets.join(",")),
            ("lora_train", lora.train.join(",")),
            ("base_model", lora.base.describe()),
        ];
        // The adapters, and the base tensors that trained beside them (a head).
        weights::export_trainable(&spec.manifest(), &spec.implied_frozen(), params, &metadata, &adapters)?;
        written.push(adapters);
    }
    Ok(written)
}

/// For a model read from a Hugging Face folder (`[model] pretrained`), writes the final
/// model as such a folder too, beside `path` (`final.safetensors` → `final.hf/`), with the
/// source folder's tokenizer and configuration (see
/// [`fedtune_models::pretrained::write_folder`]): `from_pretrained` loads it. LoRA
/// adapters are merged. Returns the folder, or `None` for any other model.
///
/// # Errors
/// [`WeightsError::Write`] when the folder cannot be written.
pub fn save_pretrained(model: &ModelConfig, params: &[f32], path: &Path) -> Result<Option<PathBuf>, WeightsError> {
    let (ModelSpec::Bert(bert), Some(source)) = (model.architecture(), model.init.as_ref().filter(|i| i.path.is_dir()))
    else {
        return Ok(None);
    };
    let merged;
    let params = match &model.spec {
        ModelSpec::Lora(lora) => {
            merged = lora.merged(params);
            &merged
        }
        _ => params,
    };
    let dir = path.with_extension("hf");
    fedtune_models::pretrained::write_folder(&dir, bert, params, &model.classes, &source.path).map_err(|e| {
        WeightsError::Write {
            path: dir.clone(),
            reason: e.to_string(),
        }
    })?;
    Ok(Some(dir))
}

/// Where [`save_model`] writes a LoRA model's adapters: `model.safetensors` →
/// `model.adapters.safetensors`.
#[must_use]
pub fn adapters_path(model: &Path) -> PathBuf {
    model.with_extension("adapters.safetensors")
}
