//! The configuration file (`--config`, TOML): topic names and everything the fold can be told.
//!
//! Precedence, once for every command: flags, then `FEEDBACK_*` environment variables (both
//! handled by clap in `main.rs`), then this file, then the defaults.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::event::Topic;
use crate::fold::config::{DriftSettings, FoldConfig, LimitOverrides, Limits, ReconcileConfig};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("config {path} is not valid:\n{problems}")]
    Invalid { path: PathBuf, problems: String },
}

/// Names of the topics (SPEC 2); these are the defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicNames {
    pub outcomes: String,
    pub forecasts: String,
    pub feature_importances: String,
    pub alerts: String,
    pub dlq: String,
    pub state: String,
}

impl Default for TopicNames {
    fn default() -> Self {
        TopicNames {
            outcomes: "outcomes".into(),
            forecasts: "forecasts".into(),
            feature_importances: "feature-importances".into(),
            alerts: "alerts".into(),
            dlq: "feedback-dlq".into(),
            state: "feedback-state".into(),
        }
    }
}

impl TopicNames {
    /// Which input a topic name is, if any.
    pub fn input(&self, name: &str) -> Option<Topic> {
        if name == self.outcomes {
            Some(Topic::Outcomes)
        } else if name == self.forecasts {
            Some(Topic::Forecasts)
        } else if name == self.feature_importances {
            Some(Topic::FeatureImportances)
        } else {
            None
        }
    }

    /// The name of an input topic.
    pub fn name(&self, topic: Topic) -> &str {
        match topic {
            Topic::Outcomes => &self.outcomes,
            Topic::Forecasts => &self.forecasts,
            Topic::FeatureImportances => &self.feature_importances,
        }
    }

    /// The three input topics.
    pub fn inputs(&self) -> [&str; 3] {
        [&self.outcomes, &self.forecasts, &self.feature_importances]
    }

    /// All six topics: the inputs, alerts, DLQ and state.
    pub fn all(&self) -> [&str; 6] {
        [
            &self.outcomes,
            &self.forecasts,
            &self.feature_importances,
            &self.alerts,
            &self.dlq,
            &self.state,
        ]
    }
}

/// The whole file. Its fold keys sit at the top level (`reconcile.revenue_sources`, as SPEC 3
/// names them), beside `topics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub topics: TopicNames,
    pub windows: Option<Vec<u32>>,
    pub retention_days: Option<u32>,
    pub horizon_buckets: Option<Vec<u32>>,
    #[serde(default)]
    pub reconcile: Option<ReconcileConfig>,
    #[serde(default)]
    pub drift: Option<DriftSettings>,
    #[serde(default)]
    pub limits: Option<Limits>,
    #[serde(default)]
    pub tenants: BTreeMap<String, LimitOverrides>,
}

impl Config {
    /// Reads a config file, or the defaults when no path is given.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        config
            .fold()
            .check()
            .map_err(|problems| ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })?;
        Ok(config)
    }

    pub fn fold(&self) -> FoldConfig {
        let d = FoldConfig::default();
        FoldConfig {
            windows: self.windows.clone().unwrap_or(d.windows),
            retention_days: self.retention_days.unwrap_or(d.retention_days),
            horizon_buckets: self.horizon_buckets.clone().unwrap_or(d.horizon_buckets),
            reconcile: self.reconcile.clone().unwrap_or(d.reconcile),
            drift: self.drift.clone().unwrap_or(d.drift),
            limits: self.limits.clone().unwrap_or(d.limits),
            tenants: self.tenants.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_keys_and_unknown_keys() {
        let c: Config = toml::from_str(
            "retention_days = 90\n[topics]\noutcomes = \"o\"\n[reconcile]\nrevenue_sources = [\"ga\", \"*\"]\n",
        )
        .unwrap();
        let f = c.fold();
        assert_eq!(f.retention_days, 90);
        assert_eq!(f.reconcile.revenue_sources, ["ga", "*"]);
        assert_eq!(f.reconcile.spend_sources, ["*", "shopify"]);
        assert_eq!(c.topics.input("o"), Some(Topic::Outcomes));
        assert_eq!(c.topics.input("outcomes"), None);
        assert!(toml::from_str::<Config>("retention = 3").is_err());
    }

    #[test]
    fn example_file_is_valid_and_holds_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/feedback.example.toml");
        let c = Config::load(Some(&path)).unwrap();
        assert_eq!(c.fold(), FoldConfig::default());
        assert_eq!(c.topics, TopicNames::default());
    }
}
