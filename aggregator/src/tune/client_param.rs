//! The client hyperparameters a search space may name, mapped to their fields in one
//! place: parsing a name, reading a value out of [`ClientHyperparameters`] and writing one
//! in.

use std::fmt;

pub use fedtune_protocol::message::ClientParamError;
use fedtune_protocol::message::{ClientHyperparameters, Optimizer};
use fedtune_tuning::space::ParamValue;

/// A client hyperparameter by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClientParam {
    /// `learning_rate` (also `lr`).
    LearningRate,
    /// `batch_size`.
    BatchSize,
    /// `local_epochs`.
    LocalEpochs,
    /// `local_steps` (at most this many minibatch steps per round).
    LocalSteps,
    /// `optimizer` (`adam` or `sgd`).
    Optimizer,
    /// `weight_decay`.
    WeightDecay,
    /// `momentum`.
    Momentum,
    /// `proximal_mu` (FedProx).
    ProximalMu,
    /// `label_smoothing`.
    LabelSmoothing,
    /// `warmup` (share of a round's local steps).
    Warmup,
    /// `lr_schedule` (`constant` or `cosine`).
    LrSchedule,
}

impl ClientParam {
    /// Every parameter, in its canonical spelling order.
    pub const ALL: [ClientParam; 11] = [
        ClientParam::LearningRate,
        ClientParam::BatchSize,
        ClientParam::LocalEpochs,
        ClientParam::LocalSteps,
        ClientParam::Optimizer,
        ClientParam::WeightDecay,
        ClientParam::Momentum,
        ClientParam::ProximalMu,
        ClientParam::LabelSmoothing,
        ClientParam::Warmup,
        ClientParam::LrSchedule,
    ];

    /// Every accepted spelling, aliases included.
    pub const NAMES: [&'static str; 12] = [
        "learning_rate",
        "lr",
        "batch_size",
        "local_epochs",
        "local_steps",
        "optimizer",
        "weight_decay",
        "momentum",
        "proximal_mu",
        "label_smoothing",
        "warmup",
        "lr_schedule",
    ];

    /// The parameter a search space calls `name`, if it is one.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "learning_rate" | "lr" => Self::LearningRate,
            "batch_size" => Self::BatchSize,
            "local_epochs" => Self::LocalEpochs,
            "local_steps" => Self::LocalSteps,
            "optimizer" => Self::Optimizer,
            "weight_decay" => Self::WeightDecay,
            "momentum" => Self::Momentum,
            "proximal_mu" => Self::ProximalMu,
            "label_smoothing" => Self::LabelSmoothing,
            "warmup" => Self::Warmup,
            "lr_schedule" => Self::LrSchedule,
            _ => return None,
        })
    }

    /// The canonical name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::LearningRate => "learning_rate",
            Self::BatchSize => "batch_size",
            Self::LocalEpochs => "local_epochs",
            Self::LocalSteps => "local_steps",
            Self::Optimizer => "optimizer",
            Self::WeightDecay => "weight_decay",
            Self::Momentum => "momentum",
            Self::ProximalMu => "proximal_mu",
            Self::LabelSmoothing => "label_smoothing",
            Self::Warmup => "warmup",
            Self::LrSchedule => "lr_schedule",
        }
    }

    /// The parameter's numeric value in `hp` (`None` for the optimizer and the schedule,
    /// which are choices; see [`ClientParam::choice`]).
    #[must_use]
    pub fn get(self, hp: &ClientHyperparameters) -> Option<f64> {
        Some(match self {
            Self::LearningRate => hp.learning_rate,
            Self::BatchSize => f64::from(hp.batch_size),
            Self::LocalEpochs => f64::from(hp.local_epochs),
            Self::LocalSteps => f64::from(hp.local_steps),
            Self::WeightDecay => hp.weight_decay,
            Self::Momentum => hp.momentum,
            Self::ProximalMu => hp.proximal_mu,
            Self::LabelSmoothing => hp.label_smoothing,
            Self::Warmup => hp.warmup,
            Self::Optimizer | Self::LrSchedule => return None,
        })
    }

    /// The value of a choice parameter in `hp`, as a search space writes it (`adam`,
    /// `cosine`); `None` for numeric ones.
    #[must_use]
    pub fn choice(self, hp: &ClientHyperparameters) -> Option<String> {
        match self {
            Self::Optimizer => Some(hp.optimizer.to_string()),
            Self::LrSchedule => Some(hp.lr_schedule.to_string()),
            _ => None,
        }
    }

    /// Writes `value` into `hp`.
    ///
    /// # Errors
    /// [`ClientParamError`] when `value` is not of the parameter's kind (a number, a
    /// positive integer, `adam` or `sgd`). Ranges are checked by
    /// [`ClientHyperparameters::validate`].
    pub fn set(self, hp: &mut ClientHyperparameters, value: &ParamValue) -> Result<(), ClientParamError> {
        let name = self.name();
        let number = || {
            value.as_f64().ok_or_else(|| ClientParamError {
                name,
                expected: "must be numeric",
                got: value.to_string(),
            })
        };
        let count = || {
            let v = number()?;
            if v.fract() != 0.0 || !(1.0..=f64::from(u32::MAX)).contains(&v) {
                return Err(ClientParamError {
                    name,
                    expected: "must be a positive integer",
                    got: value.to_string(),
                });
            }
            Ok(v as u32)
        };
        match self {
            Self::LearningRate => hp.learning_rate = number()?,
            Self::BatchSize => hp.batch_size = count()?,
            Self::LocalEpochs => hp.local_epochs = count()?,
            Self::LocalSteps => hp.local_steps = count()?,
            Self::WeightDecay => hp.weight_decay = number()?,
            Self::Momentum => hp.momentum = number()?,
            Self::ProximalMu => hp.proximal_mu = number()?,
            Self::LabelSmoothing => hp.label_smoothing = number()?,
            Self::Warmup => hp.warmup = number()?,
            Self::LrSchedule => {
                hp.lr_schedule = match value.to_string().to_ascii_lowercase().as_str() {
                    "constant" => fedtune_protocol::LrSchedule::Constant,
                    "cosine" => fedtune_protocol::LrSchedule::Cosine,
                    other => {
                        return Err(ClientParamError {
                            name,
                            expected: "must be constant or cosine",
                            got: other.to_owned(),
                        });
                    }
                }
            }
            Self::Optimizer => {
                hp.optimizer = match value.to_string().to_ascii_lowercase().as_str() {
                    "adam" => Optimizer::Adam,
                    "sgd" => Optimizer::Sgd,
                    other => {
                        return Err(ClientParamError {
                            name,
                            expected: "must be adam or sgd",
                            got: other.to_owned(),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for ClientParam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_maps_to_its_field_and_back() {
        let mut hp = ClientHyperparameters::default();
        for (i, param) in ClientParam::ALL.into_iter().enumerate() {
            assert_eq!(ClientParam::from_name(param.name()), Some(param));
            if param == ClientParam::Optimizer || param == ClientParam::LrSchedule {
                param.set(&mut hp, &ParamValue::Float(1.0)).unwrap_err();
                continue;
            }
            let value = (i + 2) as f64;
            param.set(&mut hp, &ParamValue::Float(value)).unwrap();
            assert_eq!(param.get(&hp), Some(value), "{param}");
        }
        assert_eq!(ClientParam::from_name("lr"), Some(ClientParam::LearningRate));
        ClientParam::LrSchedule
            .set(&mut hp, &ParamValue::Categorical("cosine".into()))
            .unwrap();
        assert_eq!(ClientParam::LrSchedule.choice(&hp).as_deref(), Some("cosine"));
        assert_eq!(ClientParam::Optimizer.choice(&hp).as_deref(), Some("adam"));
        assert_eq!(ClientParam::from_name("dropout"), None);
        assert!(ClientParam::NAMES.iter().all(|n| ClientParam::from_name(n).is_some()));
        let err = ClientParam::BatchSize
            .set(&mut hp, &ParamValue::Float(2.5))
            .unwrap_err();
        assert_eq!(err.to_string(), "`batch_size` must be a positive integer, got 2.5");
    }
}
