//! Local training and evaluation: what an agent does with a task.
//!
//! [`train_local`] takes the global parameters and the rest of a [`TrainJob`], trains them
//! on the agent's data and returns `local - global` with the metrics the aggregator asks
//! for; [`train_model`] and [`evaluate_with`] do the same for any [`Blueprint`]. Batches
//! are copied straight from the dataset's row-major buffer into one tensor per step;
//! nothing is allocated per sample. The functions block: call them from a blocking
//! thread, not the async runtime.

use std::time::Instant;

use burn::module::Module;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use fedtune_protocol::freeze::Trainable;
use fedtune_protocol::message::ClientParamError;
use fedtune_protocol::tensor::check_finite;
use fedtune_protocol::{ClientHyperparameters, ModelSpec, Optimizer, ProtocolError, TrainMetrics};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::cancel::{Abandoned, Cancel};
use crate::data::Dataset;
use crate::model::{
    Blueprint, Classifier, Device, ModelError, ModelShape, NotInZoo, ZooTask, flatten_trainable, freeze_paths, load,
    squared_distance, with_zoo_model,
};

/// Rows per forward pass when evaluating (no gradients): a CNN's convolutions unfold
/// each batch (25 values per pixel for a 5×5 kernel), so 1,024 rows of 28×28 images would
/// take ~60 MB; 128 take ~7 MB and run as fast per row.
const EVAL_BATCH: usize = 128;

/// Why a task could not be trained or evaluated.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The task asks for a model the built-in trainer does not build.
    #[error("the built-in trainer builds the zoo's models (MLP, CNN, LoRA on them), not custom model `{0}`")]
    UnsupportedModel(String),
    /// The model spec is inconsistent.
    #[error("{0}")]
    InvalidModel(ProtocolError),
    /// A hyperparameter is out of range.
    #[error("invalid hyperparameters: {0}")]
    InvalidHyperparameters(ClientParamError),
    /// The data's feature count differs from the model's input width.
    #[error("the {what} data has {got} features per row, but the model takes {expected}")]
    DimensionMismatch {
        /// `training` or `validation`.
        what: &'static str,
        /// Model input width.
        expected: usize,
        /// Features per row in the data.
        got: usize,
    },
    /// The data has labels the model has no output for.
    #[error("the {what} data has {got} classes, but the model outputs only {expected}")]
    ClassMismatch {
        /// `training` or `validation`.
        what: &'static str,
        /// Model output width.
        expected: usize,
        /// Classes in the data.
        got: usize,
    },
    /// A row of token ids holds one the model's vocabulary does not (or a non-integer).
    #[error("{what} row {row} holds token id {id}, outside the model's vocabulary 0..{vocab}")]
    TokenOutOfRange {
        /// `training` or `validation`.
        what: &'static str,
        /// The row.
        row: usize,
        /// The value found.
        id: f32,
        /// The model's vocabulary size.
        vocab: usize,
    },
    /// The task was abandoned before training finished.
    #[error("training stopped: the task was abandoned ({0})")]
    Abandoned(Abandoned),
    /// There is nothing to train on.
    #[error("the local training set is empty")]
    EmptyTrainingSet,
    /// The parameters do not fit the model.
    #[error("parameters do not fit the model: {0}")]
    Params(#[from] ModelError),
    /// The global parameters hold NaN or infinity.
    #[error("global parameter {index} is not finite")]
    NonFiniteGlobal {
        /// Index of the first non-finite value.
        index: usize,
    },
    /// Training produced a non-finite loss or parameters.
    #[error(
        "training diverged (non-finite loss or parameters) in epoch {epoch}, step {step}; \
         lower the learning rate"
    )]
    Diverged {
        /// Epoch, from 0.
        epoch: u32,
        /// Step within the epoch, from 0.
        step: usize,
    },
    /// The backend failed to compute or read back a tensor.
    #[error("backend failure: {0}")]
    Backend(String),
}

/// Loss and accuracy of a model on a dataset.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Scores {
    /// Mean cross-entropy (natural log) over the samples; 0 for no samples.
    pub loss: f64,
    /// Fraction of samples whose largest logit is the label; 0 for no samples.
    pub accuracy: f64,
    /// Samples evaluated.
    pub samples: u64,
}

/// The result of local training.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalUpdate {
    /// `local - global` of the trainable tensors, in manifest order (all of them when
    /// nothing is frozen).
    pub delta: Vec<f32>,
    /// Training samples behind the update (its FedAvg weight).
    pub num_samples: u64,
    /// What was measured, for the aggregator.
    pub metrics: TrainMetrics,
}

impl From<NotInZoo> for TrainError {
    fn from(custom: NotInZoo) -> Self {
        TrainError::UnsupportedModel(custom.name)
    }
}

/// Everything local training takes besides the model.
#[derive(Debug, Clone, Copy)]
pub struct TrainJob<'a> {
    /// Freeze patterns: the tensors that stay as they are (see [`fedtune_protocol::freeze`]).
    pub frozen: &'a [String],
    /// The global parameters to start from, in manifest order.
    pub global: &'a [f32],
    /// The hyperparameters.
    pub hp: &'a ClientHyperparameters,
    /// The local training set.
    pub train: &'a Dataset,
    /// The local validation set, evaluated before and after.
    pub validation: &'a Dataset,
    /// Seeds the order of the minibatches.
    pub seed: u64,
    /// Picks the backend; autodiff is enabled on it for training.
    pub device: &'a Device,
    /// Abandons the run when it fires (checked before every batch).
    pub cancel: &'a Cancel,
}

/// Evaluates the zoo model `spec` with parameters `params` (manifest order) on `data`, in
/// batches, on `device` (autodiff is not used even if the device has it).
///
/// # Errors
/// [`TrainError::UnsupportedModel`] for custom specs, [`TrainError::InvalidModel`],
/// [`TrainError::DimensionMismatch`], [`TrainError::ClassMismatch`],
/// [`TrainError::TokenOutOfRange`], [`TrainError::Params`] when `params` does not fit
/// `spec`, [`TrainError::Backend`].
pub fn evaluate(spec: &ModelSpec, params: &[f32], data: &Dataset, device: &Device) -> Result<Scores, TrainError> {
    struct Evaluate<'a> {
        params: &'a [f32],
        data: &'a Dataset,
        device: &'a Device,
    }
    impl ZooTask for Evaluate<'_> {
        type Output = Result<Scores, TrainError>;
        fn run<B: Blueprint>(self, model: &B) -> Self::Output {
            evaluate_with(model, self.params, self.data, self.device)
        }
    }
    spec.validate().map_err(TrainError::InvalidModel)?;
    with_zoo_model(spec, Evaluate { params, data, device })?
}

/// Class probabilities (softmax of the logits, in f64 on the host) of the zoo model
/// `spec` with `params` for every row of `data` (its labels are not read), in batches.
///
/// # Errors
/// As [`evaluate`].
pub fn probabilities(
    spec: &ModelSpec,
    params: &[f32],
    data: &Dataset,
    device: &Device,
) -> Result<Vec<Vec<f64>>, TrainError> {
    struct Predict<'a> {
        params: &'a [f32],
        data: &'a Dataset,
        device: &'a Device,
    }
    impl ZooTask for Predict<'_> {
        type Output = Result<Vec<Vec<f64>>, TrainError>;
        fn run<B: Blueprint>(self, blueprint: &B) -> Self::Output {
            check_tokens(blueprint, self.data, "input")?;
            check_data(blueprint.shape(), self.data, "input")?;
            let device = self.device.clone().without_autodiff();
            let model = load(blueprint.build(&device), self.params, &blueprint.manifest())?;
            let dim = self.data.dim();
            let mut out = Vec::with_capacity(self.data.len());
            for start in (0..self.data.len()).step_by(EVAL_BATCH) {
                let n = EVAL_BATCH.min(self.data.len() - start);
                let mut rows = Vec::with_capacity(n * dim);
                self.data.extend_rows(start..start + n, &mut rows);
                let x = Tensor::from_data(TensorData::new(rows, [n, dim]), &device);
                let logits = model.forward(x).try_into_vec_as::<f32>().map_err(backend)?;
                let classes = logits.len() / n.max(1);
                for row in logits.chunks_exact(classes.max(1)) {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let exp: Vec<f64> = row.iter().map(|&l| f64::from(l - max).exp()).collect();
                    let sum: f64 = exp.iter().sum();
                    out.push(exp.into_iter().map(|e| e / sum).collect());
                }
            }
            Ok(out)
        }
    }
    spec.validate().map_err(TrainError::InvalidModel)?;
    with_zoo_model(spec, Predict { params, data, device })?
}

/// For a model over token ids, every feature must be one in its vocabulary (Burn would
/// panic on one outside it).
fn check_tokens(model: &impl Blueprint, data: &Dataset, what: &'static str) -> Result<(), TrainError> {
    let Some(vocab) = model.vocab() else {
        return Ok(());
    };
    let bad = |v: f32| !(v >= 0.0 && v < vocab as f32 && v.fract() == 0.0);
    let features = data.features();
    match features.iter().position(|&v| bad(v)) {
        Some(i) => Err(TrainError::TokenOutOfRange {
            what,
            row: i / data.dim().max(1),
            id: features[i],
            vocab,
        }),
        None => Ok(()),
    }
}

/// Evaluates any model `blueprint` builds, with `params` laid out by its manifest, on
/// `data`.
///
/// # Errors
/// As [`evaluate`].
pub fn evaluate_with(
    blueprint: &impl Blueprint,
    params: &[f32],
    data: &Dataset,
    device: &Device,
) -> Result<Scores, TrainError> {
    check_tokens(blueprint, data, "validation")?;
    check_data(blueprint.shape(), data, "validation")?;
    let device = device.clone().without_autodiff();
    let model = load(blueprint.build(&device), params, &blueprint.manifest())?;
    evaluate_model(&model, data, &device)
}

/// Trains the zoo model `spec` from `job.global` on `job.train` for `hp.local_epochs`
/// epochs of shuffled minibatches (order seeded by `job.seed`) with SGD (momentum and
/// weight decay as `hp` says) or Adam (with weight decay as L2), evaluating on
/// `job.validation` before and after.
///
/// SGD momentum uses no dampening (`v ← μv + g`) and Adam uses ε = 1e-8, as PyTorch does,
/// so results compare with other frameworks' reference runs.
///
/// # Errors
/// [`TrainError::UnsupportedModel`] for custom specs, [`TrainError::InvalidModel`],
/// [`TrainError::InvalidHyperparameters`], [`TrainError::DimensionMismatch`],
/// [`TrainError::ClassMismatch`] and [`TrainError::TokenOutOfRange`] when a dataset does
/// not fit the model, [`TrainError::EmptyTrainingSet`], [`TrainError::Params`] when
/// `global` does not fit, [`TrainError::NonFiniteGlobal`], [`TrainError::Diverged`],
/// [`TrainError::Backend`], and [`TrainError::Abandoned`] when `cancel` fires.
pub fn train_local(spec: &ModelSpec, job: &TrainJob<'_>) -> Result<LocalUpdate, TrainError> {
    spec.validate().map_err(TrainError::InvalidModel)?;
    with_zoo_model(spec, job)?
}

/// A job trains whichever zoo model the spec names.
impl ZooTask for &TrainJob<'_> {
    type Output = Result<LocalUpdate, TrainError>;
    fn run<B: Blueprint>(self, model: &B) -> Self::Output {
        train_model(model, self)
    }
}

/// Trains any model `blueprint` builds exactly as [`train_local`] trains the zoo's: the
/// same optimizers, FedProx term, cancellation, divergence checks and metrics. Its
/// manifest lays out `job.global` and the returned delta.
///
/// # Errors
/// As [`train_local`].
pub fn train_model(blueprint: &impl Blueprint, job: &TrainJob<'_>) -> Result<LocalUpdate, TrainError> {
    let &TrainJob {
        frozen,
        global,
        hp,
        train,
        validation,
        seed,
        device,
        cancel,
    } = job;
    check_tokens(blueprint, train, "training")?;
    check_tokens(blueprint, validation, "validation")?;
    let (shape, manifest) = (blueprint.shape(), &blueprint.manifest());
    let build = |device: &Device| blueprint.build(device);
    let start = Instant::now();
    hp.validate().map_err(TrainError::InvalidHyperparameters)?;
    let trainable = Trainable::new(manifest, frozen).map_err(TrainError::InvalidModel)?;
    check_data(shape, train, "training")?;
    check_data(shape, validation, "validation")?;
    if train.is_empty() {
        return Err(TrainError::EmptyTrainingSet);
    }
    if let Err(ProtocolError::NonFinite { index }) = check_finite(global) {
        return Err(TrainError::NonFiniteGlobal { index });
    }

    let plain = device.clone().without_autodiff();
    let before = evaluate_model(&load(build(&plain), global, manifest)?, validation, &plain)?;

    let autodiff = device.clone().autodiff();
    let mut model = freeze_paths(load(build(&autodiff), global, manifest)?, frozen);
    // FedProx: keep local training near the round's global model.
    let anchor = (hp.proximal_mu > 0.0)
        .then(|| load(build(&autodiff), global, manifest))
        .transpose()?;
    let mut optim = optimizer(hp);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut train_loss = 0.0;
    let steps_per_epoch = train.len().div_ceil(hp.batch_size as usize);
    let mut steps = steps_per_epoch * hp.local_epochs as usize;
    if hp.local_steps > 0 {
        steps = steps.min(hp.local_steps as usize);
    }
    let warmup = (hp.warmup * steps as f64).round() as usize;
    for epoch in 0..hp.local_epochs {
        if epoch as usize * steps_per_epoch >= steps {
            break;
        }
        order.shuffle(&mut rng);
        let mut loss_sum = 0.0;
        let mut seen = 0;
        for (step, rows) in order.chunks(hp.batch_size as usize).enumerate() {
            if epoch as usize * steps_per_epoch + step >= steps {
                break;
            }
            cancel.check().map_err(TrainError::Abandoned)?;
            let (x, y) = batch(train, rows, &autodiff);
            let loss = cross_entropy(model.forward(x), y, hp.label_smoothing);
            let value = loss.clone().try_into_scalar::<f32>().map_err(backend)?;
            let loss = match &anchor {
                Some(anchor) => loss + squared_distance(&model, anchor).mul_scalar(hp.proximal_mu / 2.0),
                None => loss,
            };
            if !value.is_finite() {
                return Err(TrainError::Diverged { epoch, step });
            }
            loss_sum += f64::from(value) * rows.len() as f64;
            seen += rows.len();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let at = epoch as usize * steps_per_epoch + step;
            let lr = hp.learning_rate * hp.lr_schedule.factor(at, steps, warmup);
            model = optim.step(lr, model, grads);
        }
        train_loss = loss_sum / seen.max(1) as f64;
    }

    // Only the trainable values are read out of the model (a LoRA base stays put).
    let mut delta = flatten_trainable(&model, &trainable);
    if trainable.is_all() {
        delta.iter_mut().zip(global).for_each(|(l, g)| *l -= g);
    } else {
        delta
            .iter_mut()
            .zip(trainable.gather(global))
            .for_each(|(l, g)| *l -= g);
    }
    if check_finite(&delta).is_err() {
        return Err(TrainError::Diverged {
            epoch: hp.local_epochs - 1,
            step: order.len().div_ceil(hp.batch_size as usize) - 1,
        });
    }
    let after = evaluate_model(&model.valid(), validation, &plain)?;
    Ok(LocalUpdate {
        delta,
        num_samples: train.len() as u64,
        metrics: TrainMetrics {
            loss_before: before.loss,
            train_loss_before: None,
            accuracy_before: before.accuracy,
            loss_after: after.loss,
            accuracy_after: after.accuracy,
            train_loss,
            validation_samples: validation.len() as u64,
            wall_seconds: start.elapsed().as_secs_f64(),
            peak_memory_bytes: peak_rss_bytes(),
        },
    })
}

/// Peak resident memory of this process (`VmHWM` in `/proc/self/status`), in bytes; 0 where
/// that is unavailable (not Linux).
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| status_bytes(&s, "VmHWM:"))
        .unwrap_or(0)
}

/// A `/proc/self/status` field given in kB (`VmRSS:`, `VmHWM:`), in bytes.
pub fn status_bytes(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix(field))?;
    let mut fields = line.split_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => value.checked_mul(1024),
        _ => None,
    }
}

fn check_data(shape: ModelShape, data: &Dataset, what: &'static str) -> Result<(), TrainError> {
    if data.dim() != shape.input {
        return Err(TrainError::DimensionMismatch {
            what,
            expected: shape.input,
            got: data.dim(),
        });
    }
    // Fewer classes than outputs is fine (a file may lack the last classes); more is not.
    if data.classes() > shape.classes {
        return Err(TrainError::ClassMismatch {
            what,
            expected: shape.classes,
            got: data.classes(),
        });
    }
    Ok(())
}

fn optimizer(hp: &ClientHyperparameters) -> ModuleOptimizer {
    let decay = (hp.weight_decay > 0.0).then(|| WeightDecayConfig::new(hp.weight_decay as f32));
    match hp.optimizer {
        Optimizer::Sgd => {
            let momentum =
                (hp.momentum > 0.0).then(|| MomentumConfig::new().with_momentum(hp.momentum).with_dampening(0.0));
            SgdConfig::new().with_weight_decay(decay).with_momentum(momentum).init()
        }
        Optimizer::Adam => AdamConfig::new().with_epsilon(1e-8).with_weight_decay(decay).init(),
    }
}

/// The rows `rows` of `data` as a `[batch, dim]` feature tensor and a `[batch]` label tensor.
fn batch(data: &Dataset, rows: &[usize], device: &Device) -> (Tensor<2>, Tensor<1, Int>) {
    let dim = data.dim();
    let labels = data.labels();
    let mut x = Vec::with_capacity(rows.len() * dim);
    let mut y = Vec::with_capacity(rows.len());
    for &row in rows {
        data.extend_rows(row..row + 1, &mut x);
        y.push(i64::from(labels[row]));
    }
    (
        Tensor::from_data(TensorData::new(x, [rows.len(), dim]), device),
        Tensor::from_data(TensorData::new(y, [rows.len()]), device),
    )
}

/// Mean cross-entropy of `logits` (`[batch, classes]`) against `targets` (`[batch]`),
/// with the target smoothed by `smoothing` ε: `(1 − ε) · NLL + ε · mean over classes of
/// −log p` (PyTorch's `label_smoothing`).
fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>, smoothing: f64) -> Tensor<1> {
    let [batch, _] = logits.dims();
    let log_p = log_softmax(logits, 1);
    let nll = log_p.clone().gather(1, targets.reshape([batch, 1])).mean().neg();
    if smoothing == 0.0 {
        return nll;
    }
    let uniform = log_p.mean().neg();
    nll.mul_scalar(1.0 - smoothing) + uniform.mul_scalar(smoothing)
}

/// Loss and accuracy of `model` on `data`; the softmax is done on the host in f64, on
/// logits read back one batch at a time.
fn evaluate_model<M: Classifier>(model: &M, data: &Dataset, device: &Device) -> Result<Scores, TrainError> {
    if data.is_empty() {
        return Ok(Scores::default());
    }
    let dim = data.dim();
    let mut loss = 0.0;
    let mut correct = 0u64;
    for (batch, labels) in data.labels().chunks(EVAL_BATCH).enumerate() {
        let start = batch * EVAL_BATCH;
        let mut rows = Vec::with_capacity(labels.len() * dim);
        data.extend_rows(start..start + labels.len(), &mut rows);
        let x = Tensor::from_data(TensorData::new(rows, [labels.len(), dim]), device);
        let logits = model.forward(x).try_into_vec_as::<f32>().map_err(backend)?;
        let classes = logits.len() / labels.len();
        for (row, &label) in logits.chunks_exact(classes).zip(labels) {
            let Some(&target) = row.get(label as usize) else {
                return Err(TrainError::ClassMismatch {
                    what: "evaluation",
                    expected: classes,
                    got: data.classes(),
                });
            };
            let (mut argmax, mut max) = (0, f32::NEG_INFINITY);
            for (class, &logit) in row.iter().enumerate() {
                // Strictly greater: ties go to the lowest class, as argmax does elsewhere.
                if logit > max {
                    (argmax, max) = (class, logit);
                }
            }
            let sum_exp: f64 = row.iter().map(|&v| f64::from(v - max).exp()).sum();
            loss += f64::from(max) + sum_exp.ln() - f64::from(target);
            correct += u64::from(argmax == label as usize);
        }
    }
    let n = data.len() as f64;
    Ok(Scores {
        loss: loss / n,
        accuracy: correct as f64 / n,
        samples: data.len() as u64,
    })
}

fn backend(error: impl std::fmt::Display) -> TrainError {
    TrainError::Backend(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::default_device;
    use fedtune_protocol::{Manifest, MlpSpec, NormStats};
    use rand::RngExt;

    /// Two Gaussian blobs per class on a ring: separable, but not at initialisation.
    fn blobs(n: usize, seed: u64) -> Dataset {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut features = Vec::with_capacity(n * 4);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let class = (i % 3) as u32;
            let angle = f32::from(class as u8) * 2.1;
            let (cx, cy) = (angle.cos() * 2.0, angle.sin() * 2.0);
            let noise = |rng: &mut StdRng| rng.random_range(-0.6f32..0.6);
            let (x, y) = (cx + noise(&mut rng), cy + noise(&mut rng));
            features.extend_from_slice(&[x, y, x * y, 1.0]);
            labels.push(class);
        }
        Dataset::from_parts(features, labels, 4, 3).unwrap()
    }

    fn setup() -> (ModelSpec, Vec<f32>) {
        let spec = ModelSpec::Mlp(MlpSpec {
            input: 4,
            hidden: vec![8],
            classes: 3,
        });
        let global = spec.init_params(&mut StdRng::seed_from_u64(3));
        (spec, global)
    }

    fn hp(optimizer: Optimizer) -> ClientHyperparameters {
        ClientHyperparameters {
            learning_rate: if optimizer == Optimizer::Adam { 0.05 } else { 0.1 },
            batch_size: 16,
            local_epochs: 5,
            optimizer,
            weight_decay: 1e-4,
            momentum: if optimizer == Optimizer::Sgd { 0.9 } else { 0.0 },
            ..ClientHyperparameters::default()
        }
    }

    /// 8×8 images, dark but for a bright 3×3 square in the quadrant their label names.
    fn squares(n: usize, seed: u64) -> Dataset {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut features = vec![0.0f32; n * 64];
        let mut labels = Vec::with_capacity(n);
        for (i, image) in features.chunks_exact_mut(64).enumerate() {
            let class = (i % 4) as u32;
            let (top, left) = (4 * (class as usize / 2), 4 * (class as usize % 2));
            let (dy, dx) = (rng.random_range(0..2), rng.random_range(0..2));
            for y in 0..3 {
                for x in 0..3 {
                    image[(top + dy + y) * 8 + left + dx + x] = 1.0;
                }
            }
            for v in image.iter_mut() {
                *v += rng.random_range(-0.1f32..0.1);
            }
            labels.push(class);
        }
        Dataset::from_parts(features, labels, 64, 4).unwrap()
    }

    /// One 3×3 block (4 channels, padded, pooled) and a 16-wide head on 8×8 images.
    fn small_cnn(batch_norm: bool, norm_stats: NormStats) -> fedtune_protocol::CnnSpec {
        fedtune_protocol::CnnSpec {
            channels: 1,
            height: 8,
            width: 8,
            blocks: vec![fedtune_protocol::ConvBlock {
                channels: 4,
                kernel: 3,
                padding: 1,
                pool: 2,
                batch_norm,
            }],
            hidden: vec![16],
            classes: 4,
            norm_stats,
        }
    }

    /// The layout of the Burn module `spec` builds (not the one the spec computes).
    fn built_layout(spec: &ModelSpec) -> Manifest {
        struct Layout;
        impl ZooTask for Layout {
            type Output = Manifest;
            fn run<B: Blueprint>(self, model: &B) -> Manifest {
                crate::model::manifest_of(&model.build(&default_device()))
            }
        }
        with_zoo_model(spec, Layout).unwrap()
    }

    /// [`train_local`] with the tests' seed (7), the default device and no cancellation.
    fn fit(
        spec: &ModelSpec,
        frozen: &[String],
        global: &[f32],
        hp: &ClientHyperparameters,
        train: &Dataset,
        validation: &Dataset,
    ) -> Result<LocalUpdate, TrainError> {
        let job = TrainJob {
            frozen,
            global,
            hp,
            train,
            validation,
            seed: 7,
            device: &default_device(),
            cancel: &Cancel::never(),
        };
        train_local(spec, &job)
    }

    /// `spec` trained from its seed-1 initialisation on the quadrant squares (Adam), with
    /// `frozen`: the global parameters, the update, and the validation set.
    fn train_squares(spec: &ModelSpec, frozen: &[String]) -> (Vec<f32>, LocalUpdate, Dataset) {
        let global = spec.init_params(&mut StdRng::seed_from_u64(1));
        let (train, valid) = (squares(160, 1), squares(40, 2));
        let update = fit(spec, frozen, &global, &hp(Optimizer::Adam), &train, &valid).unwrap();
        (global, update, valid)
    }

    /// `global` with a trainable-only `delta` added where it belongs.
    fn applied(trainable: &Trainable, global: &[f32], delta: &[f32]) -> Vec<f32> {
        let mut whole = global.to_vec();
        let moved: Vec<f32> = trainable.gather(global).iter().zip(delta).map(|(g, d)| g + d).collect();
        trainable.scatter(&moved, &mut whole);
        whole
    }

    #[test]
    fn a_cnn_trains_through_the_same_loop_and_its_delta_is_what_moved() {
        let spec = ModelSpec::Cnn(small_cnn(false, NormStats::Averaged));
        let (global, update, valid) = train_squares(&spec, &[]);
        let m = &update.metrics;
        assert!(m.accuracy_after >= 0.9 && m.accuracy_after > m.accuracy_before, "{m:?}");
        let local: Vec<f32> = global.iter().zip(&update.delta).map(|(g, d)| g + d).collect();
        let after = evaluate(&spec, &local, &valid, &default_device()).unwrap();
        assert!((after.accuracy - m.accuracy_after).abs() < 1e-9);
        // Rows of the wrong width are an error, not a panic inside Burn.
        let err = evaluate(&spec, &local, &blobs(10, 3), &default_device()).unwrap_err();
        assert!(
            matches!(
                err,
                TrainError::DimensionMismatch {
                    expected: 64,
                    got: 4,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn lora_trains_only_its_adapters_and_the_adapted_model_learns() {
        let cnn = small_cnn(false, NormStats::Averaged);
        let spec = ModelSpec::Lora(fedtune_protocol::LoraSpec {
            base: Box::new(ModelSpec::Cnn(cnn)),
            rank: 2,
            alpha: 4.0,
            targets: vec!["head.*".into()],
            train: Vec::new(),
        });
        let manifest = spec.manifest();
        // Burn's `apply_lora` lays the model out as the spec says.
        assert_eq!(built_layout(&spec), manifest);

        let (global, update, valid) = train_squares(&spec, &[]);
        let trainable = Trainable::new(&manifest, &[]).unwrap();
        // (64 + 16) · 2 + (16 + 4) · 2 adapter values: all that is sent.
        assert_eq!(update.delta.len(), 200);
        assert_eq!(trainable.numel(), 200);
        assert!(update.delta.iter().any(|d| d.abs() > 1e-4));
        let m = &update.metrics;
        assert!(m.accuracy_after > m.accuracy_before, "{m:?}");
        let local = applied(&trainable, &global, &update.delta);
        let after = evaluate(&spec, &local, &valid, &default_device()).unwrap();
        assert!((after.accuracy - m.accuracy_after).abs() < 1e-9, "{after:?} vs {m:?}");
    }

    #[test]
    fn batch_norm_statistics_are_averaged_or_frozen_as_the_spec_says() {
        let mut trained_stats = None;
        for policy in [NormStats::Averaged, NormStats::Frozen] {
            let spec = ModelSpec::Cnn(small_cnn(true, policy));
            let manifest = spec.manifest();
            assert_eq!(built_layout(&spec), manifest);
            let names: Vec<&str> = manifest.tensors.iter().map(|t| t.name.as_str()).collect();
            assert_eq!(
                &names[2..6],
                &[
                    "convs.0.norm.gamma",
                    "convs.0.norm.beta",
                    "convs.0.norm.running_mean",
                    "convs.0.norm.running_var"
                ]
            );
            let frozen = spec.implied_frozen();
            let (global, update, valid) = train_squares(&spec, &frozen);
            let m = &update.metrics;
            assert!(m.accuracy_after >= 0.9, "{policy:?}: {m:?}");
            let trainable = Trainable::new(&manifest, &frozen).unwrap();
            let local = applied(&trainable, &global, &update.delta);
            // gamma, beta: 8 values after the conv's 36 + 4.
            let (gamma_beta, stats) = (40..48, 48..56);
            assert_ne!(
                local[gamma_beta.clone()],
                global[gamma_beta],
                "{policy:?}: gamma and beta train"
            );
            match policy {
                NormStats::Averaged => {
                    assert_eq!(update.delta.len(), manifest.numel());
                    assert_ne!(
                        local[stats.clone()],
                        global[stats.clone()],
                        "the batches' statistics are kept"
                    );
                    trained_stats = Some(local[stats].to_vec());
                }
                NormStats::Frozen => {
                    assert_eq!(update.delta.len(), manifest.numel() - 8, "the statistics do not travel");
                    assert_eq!(local[stats.clone()], global[stats], "the statistics stay");
                }
            }
            // Evaluation normalises with the statistics the model holds.
            let after = evaluate(&spec, &local, &valid, &default_device()).unwrap();
            assert!((after.accuracy - m.accuracy_after).abs() < 1e-9, "{policy:?}");
        }
        // Running means of images of 0s and 1s after a 3×3 conv are not the initial zeros.
        assert!(trained_stats.unwrap()[..4].iter().any(|v| v.abs() > 1e-3));
    }

    /// Rows of 8 token ids: filler (ids 6..30) with one keyword (ids 1..5, the label)
    /// somewhere, then padding (0) after a random length.
    fn keywords(n: usize, seed: u64) -> Dataset {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut features = Vec::with_capacity(n * 8);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let class = (i % 4) as u32;
            let len = rng.random_range(3..=8);
            let at = rng.random_range(0..len);
            for p in 0..8 {
                features.push(if p >= len {
                    0.0
                } else if p == at {
                    (class + 1) as f32
                } else {
                    rng.random_range(6..30) as f32
                });
            }
            labels.push(class);
        }
        Dataset::from_parts(features, labels, 8, 4).unwrap()
    }

    fn tiny_transformer() -> fedtune_protocol::TransformerSpec {
        fedtune_protocol::TransformerSpec {
            max_len: 8,
            vocab: 30,
            d_model: 16,
            heads: 2,
            layers: 1,
            d_ff: 32,
            classes: 4,
            dropout: 0.0,
        }
    }

    #[test]
    fn a_transformer_has_its_spec_layout_learns_tokens_and_refuses_unknown_ids() {
        let spec = ModelSpec::Transformer(tiny_transformer());
        spec.validate().unwrap();
        assert_eq!(built_layout(&spec), spec.manifest());
        // LoRA on the attention's query and value projections.
        let lora = ModelSpec::Lora(fedtune_protocol::LoraSpec {
            base: Box::new(spec.clone()),
            rank: 2,
            alpha: 4.0,
            targets: vec!["*.mha.query.*".into(), "*.mha.value.*".into()],
            train: Vec::new(),
        });
        lora.validate().unwrap();
        assert_eq!(built_layout(&lora), lora.manifest());

        let (train, valid) = (keywords(400, 1), keywords(100, 2));
        let global = spec.init_params(&mut StdRng::seed_from_u64(1));
        let mut hp = hp(Optimizer::Adam);
        hp.learning_rate = 0.01;
        hp.local_epochs = 8;
        let update = fit(&spec, &[], &global, &hp, &train, &valid).unwrap();
        let m = &update.metrics;
        assert!(
            m.accuracy_after >= 0.9 && m.accuracy_after > m.accuracy_before + 0.3,
            "{m:?}"
        );
        let local: Vec<f32> = global.iter().zip(&update.delta).map(|(g, d)| g + d).collect();
        let after = evaluate(&spec, &local, &valid, &default_device()).unwrap();
        assert!((after.accuracy - m.accuracy_after).abs() < 1e-9);

        let mut rows = valid.features().to_vec();
        rows[8 * 3 + 2] = 30.0;
        let bad = Dataset::from_parts(rows, valid.labels().to_vec(), 8, 4).unwrap();
        let err = evaluate(&spec, &local, &bad, &default_device()).unwrap_err();
        assert!(
            matches!(err, TrainError::TokenOutOfRange { row: 3, vocab: 30, .. }),
            "{err}"
        );
    }

    #[test]
    fn label_smoothing_mixes_the_label_loss_with_the_uniform_one() {
        let device = default_device();
        let logits = Tensor::<2>::from_data(TensorData::new(vec![2.0f32, 0.0, -1.0, 0.5, 0.5, 0.5], [2, 3]), &device);
        let targets = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 2], [2]), &device);
        let log_p = |row: [f64; 3]| {
            let z = row.iter().map(|v| v.exp()).sum::<f64>().ln();
            row.map(|v| v - z)
        };
        let (a, b) = (log_p([2.0, 0.0, -1.0]), log_p([0.5, 0.5, 0.5]));
        let nll = -(a[0] + b[2]) / 2.0;
        let uniform = -(a.iter().sum::<f64>() + b.iter().sum::<f64>()) / 6.0;
        for eps in [0.0, 0.1, 0.5] {
            let got = f64::from(cross_entropy(logits.clone(), targets.clone(), eps).into_scalar::<f32>());
            let want = (1.0 - eps) * nll + eps * uniform;
            assert!((got - want).abs() < 1e-5, "ε {eps}: {got} vs {want}");
        }
    }

    #[test]
    fn warm_up_cosine_and_label_smoothing_still_train_and_change_the_result() {
        let (spec, global) = setup();
        let (train, valid) = (blobs(240, 1), blobs(60, 2));
        let plain = hp(Optimizer::Adam);
        let tuned = ClientHyperparameters {
            label_smoothing: 0.1,
            warmup: 0.2,
            lr_schedule: fedtune_protocol::LrSchedule::Cosine,
            ..plain.clone()
        };
        let (device, cancel) = (default_device(), Cancel::never());
        let job = TrainJob {
            frozen: &[],
            global: &global,
            hp: &plain,
            train: &train,
            validation: &valid,
            seed: 3,
            device: &device,
            cancel: &cancel,
        };
        let run = |hp: &ClientHyperparameters| train_local(&spec, &TrainJob { hp, ..job }).unwrap();
        let (a, b) = (run(&plain), run(&tuned));
        assert!(b.metrics.accuracy_after >= 0.9, "{:?}", b.metrics);
        assert_ne!(a.delta, b.delta);
        let bad = ClientHyperparameters { warmup: 1.0, ..plain };
        assert!(matches!(
            train_local(&spec, &TrainJob { hp: &bad, ..job }),
            Err(TrainError::InvalidHyperparameters(_))
        ));
    }

    #[test]
    fn local_steps_bound_a_rounds_minibatches() {
        let (spec, global) = setup();
        let (train, valid) = (blobs(240, 1), blobs(30, 2));
        let bounded = |steps: u32| {
            let hp = ClientHyperparameters {
                local_steps: steps,
                local_epochs: 3,
                ..hp(Optimizer::Sgd)
            };
            fit(&spec, &[], &global, &hp, &train, &valid).unwrap().delta
        };
        let per_epoch = 240usize.div_ceil(hp(Optimizer::Sgd).batch_size as usize) as u32;
        // A bound above the epochs' steps changes nothing; one below them stops early,
        // and one step moves the model less than an epoch of them.
        assert_eq!(bounded(0), bounded(3 * per_epoch + 5));
        assert_ne!(bounded(per_epoch + 1), bounded(0));
        let norm = |d: &[f32]| d.iter().map(|x| f64::from(x * x)).sum::<f64>().sqrt();
        assert!(norm(&bounded(1)) < norm(&bounded(per_epoch)));
    }

    #[test]
    fn the_proximal_term_keeps_local_training_near_the_global_model() {
        let (spec, global) = setup();
        let (train, valid) = (blobs(240, 1), blobs(30, 2));
        let norm = |mu: f64| {
            let hp = ClientHyperparameters {
                proximal_mu: mu,
                ..hp(Optimizer::Sgd)
            };
            let update = fit(&spec, &[], &global, &hp, &train, &valid).unwrap();
            update.delta.iter().map(|d| f64::from(d * d)).sum::<f64>().sqrt()
        };
        let (free, tethered) = (norm(0.0), norm(1.0));
        assert!(tethered < 0.8 * free, "‖delta‖ {free} without, {tethered} with μ = 1");
    }

    #[test]
    fn training_raises_accuracy_with_both_optimizers() {
        let (spec, global) = setup();
        let (train, valid) = (blobs(240, 1), blobs(90, 2));
        for optimizer in [Optimizer::Adam, Optimizer::Sgd] {
            let update = fit(&spec, &[], &global, &hp(optimizer), &train, &valid).unwrap();
            let m = &update.metrics;
            assert_eq!(update.delta.len(), spec.manifest().numel());
            assert!(update.delta.iter().all(|d| d.is_finite()));
            assert!(update.delta.iter().any(|&d| d != 0.0));
            assert_eq!((update.num_samples, m.validation_samples), (240, 90));
            assert!(m.accuracy_after >= 0.95, "{optimizer:?}: {m:?}");
            assert!(
                m.accuracy_after > m.accuracy_before && m.loss_after < m.loss_before,
                "{m:?}"
            );
            assert!(m.train_loss.is_finite() && m.train_loss > 0.0);
            assert!(m.wall_seconds > 0.0);

            // The delta is what training moved: global + delta evaluates as `after`.
            let local: Vec<f32> = global.iter().zip(&update.delta).map(|(g, d)| g + d).collect();
            let after = evaluate(&spec, &local, &valid, &default_device()).unwrap();
            assert!((after.accuracy - m.accuracy_after).abs() < 1e-9);
            assert!((after.loss - m.loss_after).abs() < 1e-4);
        }
    }

    #[test]
    fn training_is_reproducible_from_its_seed() {
        let (spec, global) = setup();
        let (train, valid) = (blobs(64, 1), blobs(0, 2));
        let mut hp = hp(Optimizer::Adam);
        hp.local_epochs = 1;
        let (device, cancel) = (default_device(), Cancel::never());
        let run = |seed| {
            let job = TrainJob {
                frozen: &[],
                global: &global,
                hp: &hp,
                train: &train,
                validation: &valid,
                seed,
                device: &device,
                cancel: &cancel,
            };
            train_local(&spec, &job).unwrap()
        };
        let (a, b, c) = (run(1), run(1), run(2));
        assert_eq!(a.delta, b.delta);
        assert_ne!(a.delta, c.delta);
        assert_eq!(
            (
                a.metrics.validation_samples,
                a.metrics.accuracy_after,
                a.metrics.loss_after
            ),
            (0, 0.0, 0.0)
        );
    }

    #[test]
    fn train_local_refuses_bad_tasks() {
        let (spec, global) = setup();
        let (train, valid) = (blobs(32, 1), blobs(8, 2));
        let device = default_device();
        let ok = hp(Optimizer::Adam);
        let cancel = Cancel::never();
        let run = |spec: &ModelSpec, global: &[f32], hp: &ClientHyperparameters, train: &Dataset| {
            let job = TrainJob {
                frozen: &[],
                global,
                hp,
                train,
                validation: &valid,
                seed: 0,
                device: &device,
                cancel: &cancel,
            };
            train_local(spec, &job).unwrap_err()
        };

        let custom = ModelSpec::Custom(fedtune_protocol::CustomSpec {
            name: "cnn".into(),
            manifest: spec.manifest(),
        });
        let err = run(&custom, &global, &ok, &train);
        assert!(matches!(&err, TrainError::UnsupportedModel(n) if n == "cnn"), "{err}");
        let bad_hp = ClientHyperparameters {
            batch_size: 0,
            ..ok.clone()
        };
        assert!(matches!(
            run(&spec, &global, &bad_hp, &train),
            TrainError::InvalidHyperparameters(_)
        ));
        let bad_hp = ClientHyperparameters {
            learning_rate: f64::NAN,
            ..ok.clone()
        };
        assert!(matches!(
            run(&spec, &global, &bad_hp, &train),
            TrainError::InvalidHyperparameters(_)
        ));
        let wide = Dataset::from_parts(vec![0.0; 5], vec![0], 5, 3).unwrap();
        assert!(matches!(
            run(&spec, &global, &ok, &wide),
            TrainError::DimensionMismatch {
                expected: 4,
                got: 5,
                ..
            }
        ));
        let many = Dataset::from_parts(vec![0.0; 4], vec![4], 4, 5).unwrap();
        assert!(matches!(
            run(&spec, &global, &ok, &many),
            TrainError::ClassMismatch {
                expected: 3,
                got: 5,
                ..
            }
        ));
        let empty = train.subset(&[]).unwrap();
        assert!(matches!(run(&spec, &global, &ok, &empty), TrainError::EmptyTrainingSet));
        assert!(matches!(
            run(&spec, &global[1..], &ok, &train),
            TrainError::Params(ModelError::Length { .. })
        ));
        let mut nan = global.clone();
        nan[5] = f32::NAN;
        assert!(matches!(
            run(&spec, &nan, &ok, &train),
            TrainError::NonFiniteGlobal { index: 5 }
        ));
        let zero = ModelSpec::Mlp(MlpSpec {
            input: 4,
            hidden: vec![0],
            classes: 3,
        });
        assert!(matches!(run(&zero, &global, &ok, &train), TrainError::InvalidModel(_)));
        let wild = ClientHyperparameters {
            learning_rate: 1e30,
            optimizer: Optimizer::Sgd,
            ..ok
        };
        assert!(matches!(
            run(&spec, &global, &wild, &train),
            TrainError::Diverged { .. }
        ));
    }

    #[test]
    fn evaluate_computes_cross_entropy_and_accuracy() {
        let spec = ModelSpec::Mlp(MlpSpec {
            input: 2,
            hidden: vec![],
            classes: 2,
        });
        let device = default_device();
        let data = Dataset::from_parts(vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0], vec![0, 1, 1], 2, 2).unwrap();
        // Zero weights: uniform softmax, loss ln 2; ties go to class 0.
        let eval = evaluate(&spec, &[0.0; 6], &data, &device).unwrap();
        assert!((eval.loss - std::f64::consts::LN_2).abs() < 1e-6);
        assert!((eval.accuracy - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(eval.samples, 3);
        // Weights: logit_c = x_c, so rows 0 and 1 are right, row 2 ties.
        let eval = evaluate(&spec, &[1.0, 0.0, 0.0, 1.0, 0.0, 0.0], &data, &device).unwrap();
        let confident = (1.0 + (-1.0f64).exp()).ln();
        assert!(
            (eval.loss - (2.0 * confident + std::f64::consts::LN_2) / 3.0).abs() < 1e-6,
            "{eval:?}"
        );
        assert!((eval.accuracy - 2.0 / 3.0).abs() < 1e-9);

        let empty = evaluate(&spec, &[0.0; 6], &data.subset(&[]).unwrap(), &device).unwrap();
        assert_eq!(
            empty,
            Scores {
                loss: 0.0,
                accuracy: 0.0,
                samples: 0
            }
        );
        assert!(matches!(
            evaluate(&spec, &[0.0; 5], &data, &device),
            Err(TrainError::Params(_))
        ));
    }

    #[test]
    fn vm_hwm_parses() {
        assert_eq!(
            status_bytes("Name:\tx\nVmHWM:\t   2048 kB\nVmRSS: 1 kB\n", "VmHWM:"),
            Some(2048 * 1024)
        );
        assert_eq!(status_bytes("VmRSS: 1 kB\n", "VmHWM:"), None);
        assert_eq!(status_bytes("VmHWM: x kB\n", "VmHWM:"), None);
        if cfg!(target_os = "linux") {
            assert!(peak_rss_bytes() > 0);
        }
    }
}
