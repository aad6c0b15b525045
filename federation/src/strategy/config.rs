//! Choosing a strategy by name, in TOML or on a command line.
//!
//! In TOML the name is a tag next to the strategy's parameters, each of which may be
//! left out for its default:
//!
//! ```toml
//! [strategy]
//! name = "fedadam"
//! server_learning_rate = 0.03
//! tau = 1e-3
//! ```
//!
//! On a command line (`--strategy trimmed_mean`) the name alone picks the defaults.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{
    AdaptiveConfig, AdaptiveRule, FedAvg, FedAvgConfig, FedAvgM, FedAvgMConfig, FedOpt, FedProx, FedProxConfig, Krum,
    KrumConfig, Median, MultiKrumConfig, QFedAvg, QFedAvgConfig, Strategy, StrategyError, TrimmedMean,
    TrimmedMeanConfig,
};

/// Every strategy name, as written in configuration.
pub const NAMES: [&str; 11] = [
    "fedavg",
    "fedprox",
    "fedavgm",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "qfedavg",
    "median",
    "trimmed_mean",
    "krum",
    "multi_krum",
];

/// Which strategy to run, with its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name")]
pub enum StrategyConfig {
    /// Sample-weighted mean ([`FedAvg`]).
    #[serde(rename = "fedavg")]
    FedAvg(FedAvgConfig),
    /// FedAvg plus a proximal term on the agents ([`FedProx`]).
    #[serde(rename = "fedprox")]
    FedProx(FedProxConfig),
    /// FedAvg with server momentum ([`FedAvgM`]).
    #[serde(rename = "fedavgm")]
    FedAvgM(FedAvgMConfig),
    /// FedAvg with an Adam server optimizer ([`FedOpt`]).
    #[serde(rename = "fedadam")]
    FedAdam(AdaptiveConfig),
    /// FedAvg with a Yogi server optimizer ([`FedOpt`]).
    #[serde(rename = "fedyogi")]
    FedYogi(AdaptiveConfig),
    /// FedAvg with an Adagrad server optimizer ([`FedOpt`]).
    #[serde(rename = "fedadagrad")]
    FedAdagrad(AdaptiveConfig),
    /// Loss-reweighted averaging for fairness ([`QFedAvg`]).
    #[serde(rename = "qfedavg")]
    QFedAvg(QFedAvgConfig),
    /// Coordinate-wise median ([`Median`]).
    #[serde(rename = "median")]
    Median,
    /// Coordinate-wise trimmed mean ([`TrimmedMean`]).
    #[serde(rename = "trimmed_mean")]
    TrimmedMean(TrimmedMeanConfig),
    /// The single best-scored update ([`Krum`]).
    #[serde(rename = "krum")]
    Krum(KrumConfig),
    /// The mean of the best-scored updates ([`Krum::multi`]).
    #[serde(rename = "multi_krum")]
    MultiKrum(MultiKrumConfig),
}

impl Default for StrategyConfig {
    fn default() -> Self {
        Self::FedAvg(FedAvgConfig::default())
    }
}

impl StrategyConfig {
    /// The strategy's name, as written in configuration.
    pub fn name(&self) -> &'static str {
        match self {
            Self::FedAvg(_) => "fedavg",
            Self::FedProx(_) => "fedprox",
            Self::FedAvgM(_) => "fedavgm",
            Self::FedAdam(_) => "fedadam",
            Self::FedYogi(_) => "fedyogi",
            Self::FedAdagrad(_) => "fedadagrad",
            Self::QFedAvg(_) => "qfedavg",
            Self::Median => "median",
            Self::TrimmedMean(_) => "trimmed_mean",
            Self::Krum(_) => "krum",
            Self::MultiKrum(_) => "multi_krum",
        }
    }

    /// Whether the strategy must see each agent's update on its own (see
    /// [`Strategy::needs_individual_updates`]).
    pub fn needs_individual_updates(&self) -> bool {
        matches!(
            self,
            Self::QFedAvg(_) | Self::Median | Self::TrimmedMean(_) | Self::Krum(_) | Self::MultiKrum(_)
        )
    }

    /// Checks every parameter is in range.
    ///
    /// # Errors
    /// [`StrategyError::InvalidConfig`] naming the strategy and the parameter.
    pub fn validate(&self) -> Result<(), StrategyError> {
        match self {
            Self::FedAvg(c) => c.validate(),
            Self::FedProx(c) => c.validate(),
            Self::FedAvgM(c) => c.validate(),
            Self::FedAdam(c) => c.validate(AdaptiveRule::Adam),
            Self::FedYogi(c) => c.validate(AdaptiveRule::Yogi),
            Self::FedAdagrad(c) => c.validate(AdaptiveRule::Adagrad),
            Self::QFedAvg(c) => c.validate(),
            Self::Median => Ok(()),
            Self::Krum(c) => c.validate(),
            Self::TrimmedMean(c) => c.validate(),
            Self::MultiKrum(c) => c.validate(),
        }
    }

    /// Builds the strategy (its cross-round state starts empty).
    ///
    /// # Errors
    /// As [`validate`](Self::validate).
    pub fn build(&self) -> Result<Box<dyn Strategy>, StrategyError> {
        Ok(match self.clone() {
            Self::FedAvg(c) => Box::new(FedAvg::new(c)?),
            Self::FedProx(c) => Box::new(FedProx::new(c)?),
            Self::FedAvgM(c) => Box::new(FedAvgM::new(c)?),
            Self::FedAdam(c) => Box::new(FedOpt::new(AdaptiveRule::Adam, c)?),
            Self::FedYogi(c) => Box::new(FedOpt::new(AdaptiveRule::Yogi, c)?),
            Self::FedAdagrad(c) => Box::new(FedOpt::new(AdaptiveRule::Adagrad, c)?),
            Self::QFedAvg(c) => Box::new(QFedAvg::new(c)?),
            Self::Median => Box::new(Median),
            Self::TrimmedMean(c) => Box::new(TrimmedMean::new(c)?),
            Self::Krum(c) => Box::new(Krum::new(c)),
            Self::MultiKrum(c) => Box::new(Krum::multi(c)?),
        })
    }

    /// Validates, and refuses a strategy that needs individual updates when
    /// `secure_aggregation` is on; call it at start-up.
    ///
    /// # Errors
    /// As [`validate`](Self::validate) and [`check_compatible`].
    pub fn check(&self, secure_aggregation: bool) -> Result<(), StrategyError> {
        self.validate()?;
        compatible(self.name(), self.needs_individual_updates(), secure_aggregation)
    }
}

impl FromStr for StrategyConfig {
    type Err = StrategyError;

    /// A strategy by name with default parameters; `-` may stand for `_`
    /// (`trimmed-mean`), and case does not matter.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim().to_ascii_lowercase().replace('-', "_");
        Ok(match name.as_str() {
            "fedavg" => Self::FedAvg(FedAvgConfig::default()),
            "fedprox" => Self::FedProx(FedProxConfig::default()),
            "fedavgm" => Self::FedAvgM(FedAvgMConfig::default()),
            "fedadam" => Self::FedAdam(AdaptiveConfig::default()),
            "fedyogi" => Self::FedYogi(AdaptiveConfig::default()),
            "fedadagrad" => Self::FedAdagrad(AdaptiveConfig::default()),
            "qfedavg" | "q_fedavg" => Self::QFedAvg(QFedAvgConfig::default()),
            "median" => Self::Median,
            "trimmed_mean" => Self::TrimmedMean(TrimmedMeanConfig::default()),
            "krum" => Self::Krum(KrumConfig::default()),
            "multi_krum" | "multikrum" => Self::MultiKrum(MultiKrumConfig::default()),
            _ => return Err(StrategyError::UnknownStrategy { name: s.to_owned() }),
        })
    }
}

impl std::fmt::Display for StrategyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Refuses a strategy that needs individual updates when secure aggregation is on:
/// secure aggregation reveals only the sum of a cohort's updates, while robust rules
/// (median, trimmed mean, Krum) compare the updates with each other and q-FedAvg
/// weights each by its own norm and loss.
///
/// # Errors
/// [`StrategyError::IncompatibleWithSecureAggregation`], whose message says why and
/// what to change.
pub fn check_compatible(strategy: &dyn Strategy, secure_aggregation: bool) -> Result<(), StrategyError> {
    compatible(strategy.name(), strategy.needs_individual_updates(), secure_aggregation)
}

fn compatible(name: &'static str, individual: bool, secure_aggregation: bool) -> Result<(), StrategyError> {
    if individual && secure_aggregation {
        Err(StrategyError::IncompatibleWithSecureAggregation { strategy: name })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_builds_and_round_trips() {
        for name in NAMES {
            let config: StrategyConfig = name.parse().unwrap();
            assert_eq!(config.name(), name);
            let strategy = config.build().unwrap();
            assert_eq!(strategy.name(), name);
            assert_eq!(strategy.needs_individual_updates(), config.needs_individual_updates());
            let toml = toml::to_string(&config).unwrap();
            assert_eq!(toml::from_str::<StrategyConfig>(&toml).unwrap(), config, "{toml}");
        }
        assert_eq!(
            "Trimmed-Mean".parse::<StrategyConfig>().unwrap(),
            StrategyConfig::TrimmedMean(TrimmedMeanConfig::default())
        );
        let err = "fedsgd".parse::<StrategyConfig>().unwrap_err().to_string();
        assert!(err.contains("fedsgd") && err.contains("multi_krum"), "{err}");
    }

    #[test]
    fn toml_fills_defaults_and_rejects_unknown_fields() {
        let config: StrategyConfig = toml::from_str("name = \"fedadam\"\ntau = 0.01\n").unwrap();
        assert_eq!(
            config,
            StrategyConfig::FedAdam(AdaptiveConfig {
                tau: 0.01,
                ..Default::default()
            })
        );
        let config: StrategyConfig = toml::from_str("name = \"multi_krum\"\nbyzantine = 3\nkeep = 5\n").unwrap();
        assert_eq!(
            config,
            StrategyConfig::MultiKrum(MultiKrumConfig {
                byzantine: Some(3),
                keep: Some(5),
                ..MultiKrumConfig::default()
            })
        );
        assert!(toml::from_str::<StrategyConfig>("name = \"fedadam\"\nlr = 0.01\n").is_err());
        assert!(toml::from_str::<StrategyConfig>("name = \"median\"\n").is_ok());
    }

    #[test]
    fn validation_names_the_bad_parameter() {
        let bad = StrategyConfig::TrimmedMean(TrimmedMeanConfig {
            beta: Some(0.6),
            ..TrimmedMeanConfig::default()
        });
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("trimmed_mean") && err.contains("beta"), "{err}");
        assert!(bad.build().is_err());
    }

    #[test]
    fn robust_rules_are_refused_with_secure_aggregation() {
        for name in NAMES {
            let config: StrategyConfig = name.parse().unwrap();
            let strategy = config.build().unwrap();
            let robust = matches!(name, "median" | "trimmed_mean" | "krum" | "multi_krum" | "qfedavg");
            assert_eq!(check_compatible(&*strategy, true).is_err(), robust, "{name}");
            assert_eq!(config.check(true).is_err(), robust, "{name}");
            assert!(check_compatible(&*strategy, false).is_ok());
        }
        let err = StrategyConfig::Median.check(true).unwrap_err().to_string();
        assert!(
            err.contains("median") && err.contains("secure aggregation") && err.contains("sum"),
            "{err}"
        );
    }
}
