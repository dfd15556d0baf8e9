//! What the fold can be told: windows, retention, reconciliation, drift settings and rule limits.
//!
//! Plain data with defaults from SPEC 4 and 5. Loading it from a file, the environment or flags is
//! the edges' business (`crate::config`); the fold only sees the resolved values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FoldConfig {
    /// Rolling windows reported in the storage documents, in days.
    pub windows: Vec<u32>,
    /// Data older than this many days before as_of is dropped and counted as expired.
    pub retention_days: u32,
    /// Lower bounds of the horizon buckets, in days, ascending and starting at 0: `[0, 8, 15, 29]`
    /// are the buckets `0-7`, `8-14`, `15-28`, `29+`.
    pub horizon_buckets: Vec<u32>,
    pub reconcile: ReconcileConfig,
    pub drift: DriftSettings,
    /// Rule limits for every tenant unless overridden in `tenants`.
    pub limits: Limits,
    /// Per-tenant overrides of the limits.
    pub tenants: BTreeMap<String, LimitOverrides>,
}

impl Default for FoldConfig {
    fn default() -> Self {
        FoldConfig {
            windows: vec![7, 28, 90],
            retention_days: 548,
            horizon_buckets: vec![0, 8, 15, 29],
            reconcile: ReconcileConfig::default(),
            drift: DriftSettings::default(),
            limits: Limits::default(),
            tenants: BTreeMap::new(),
        }
    }
}

/// Source priority lists (SPEC 3, reconciliation). `*` stands for any source not named.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    pub revenue_sources: Vec<String>,
    pub spend_sources: Vec<String>,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            revenue_sources: vec!["shopify".into(), "*".into()],
            spend_sources: vec!["*".into(), "shopify".into()],
        }
    }
}

impl ReconcileConfig {
    /// Rank of a source in a priority list: lower wins. An unnamed source takes the rank of `*`,
    /// or comes after every named one when the list has no `*`.
    pub fn rank(list: &[String], source: &str) -> u16 {
        let named = list.iter().position(|s| s == source);
        let star = list.iter().position(|s| s == "*");
        named.or(star).unwrap_or(list.len()) as u16
    }
}

/// How drift is computed (SPEC 4, drift).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftSettings {
    /// K: how many previous events form the rolling baseline.
    pub baseline_events: usize,
    /// Features always treated as key features, besides the baseline's top 10.
    pub key_features: Vec<String>,
}

impl Default for DriftSettings {
    fn default() -> Self {
        DriftSettings {
            baseline_events: 4,
            key_features: Vec::new(),
        }
    }
}

/// The limits of the three rules of SPEC 5.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub performance: PerformanceLimits,
    pub calibration: CalibrationLimits,
    pub drift: DriftLimits,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PerformanceLimits {
    /// The recent window the rule looks at.
    pub window_days: u32,
    /// The baseline: this many days just before the recent window.
    pub baseline_days: u32,
    /// Pairs the recent window needs before the rule can fire.
    pub min_n: u64,
    /// Pairs the baseline needs before the MAE ratio counts.
    pub baseline_min_n: u64,
    pub mape: f64,
    /// The recent MAE may be at most this multiple of the baseline MAE.
    pub mae_ratio: f64,
    /// A firing alert resolves once both figures are below this fraction of their limits.
    pub resolve_fraction: f64,
}

impl Default for PerformanceLimits {
    fn default() -> Self {
        PerformanceLimits {
            window_days: 7,
            baseline_days: 28,
            min_n: 20,
            baseline_min_n: 20,
            mape: 0.30,
            mae_ratio: 1.5,
            resolve_fraction: 0.9,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CalibrationLimits {
    pub window_days: u32,
    pub min_n: u64,
    /// The interval whose coverage the rule watches, as quantile levels: `[10, 90]` is p10_p90.
    pub interval: [u8; 2],
    pub low: f64,
    pub high: f64,
}

impl Default for CalibrationLimits {
    fn default() -> Self {
        CalibrationLimits {
            window_days: 28,
            min_n: 30,
            interval: [10, 90],
            low: 0.70,
            high: 0.90,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftLimits {
    pub importance_shift: f64,
    pub psi: f64,
}

impl Default for DriftLimits {
    fn default() -> Self {
        DriftLimits {
            importance_shift: 0.20,
            psi: 0.25,
        }
    }
}

/// A tenant's overrides: every field optional, unset ones fall back to the global limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LimitOverrides {
    pub performance: Option<PerformanceOverrides>,
    pub calibration: Option<CalibrationOverrides>,
    pub drift: Option<DriftOverrides>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PerformanceOverrides {
    pub min_n: Option<u64>,
    pub baseline_min_n: Option<u64>,
    pub mape: Option<f64>,
    pub mae_ratio: Option<f64>,
    pub resolve_fraction: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CalibrationOverrides {
    pub min_n: Option<u64>,
    pub low: Option<f64>,
    pub high: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DriftOverrides {
    pub importance_shift: Option<f64>,
    pub psi: Option<f64>,
}

impl FoldConfig {
    /// The limits in force for one tenant. Window lengths are global: they shape the state, not
    /// only the decision, so they are not overridable per tenant.
    pub fn limits_for(&self, tenant: &str) -> Limits {
        let mut limits = self.limits.clone();
        let Some(o) = self.tenants.get(tenant) else {
            return limits;
        };
        if let Some(p) = &o.performance {
            let l = &mut limits.performance;
            l.min_n = p.min_n.unwrap_or(l.min_n);
            l.baseline_min_n = p.baseline_min_n.unwrap_or(l.baseline_min_n);
            l.mape = p.mape.unwrap_or(l.mape);
            l.mae_ratio = p.mae_ratio.unwrap_or(l.mae_ratio);
            l.resolve_fraction = p.resolve_fraction.unwrap_or(l.resolve_fraction);
        }
        if let Some(c) = &o.calibration {
            let l = &mut limits.calibration;
            l.min_n = c.min_n.unwrap_or(l.min_n);
            l.low = c.low.unwrap_or(l.low);
            l.high = c.high.unwrap_or(l.high);
        }
        if let Some(d) = &o.drift {
            let l = &mut limits.drift;
            l.importance_shift = d.importance_shift.unwrap_or(l.importance_shift);
            l.psi = d.psi.unwrap_or(l.psi);
        }
        limits
    }

    /// Checks what serde cannot: orderings and ranges. Returns every problem, one per line.
    pub fn check(&self) -> Result<(), String> {
        /// Longest window or retention accepted: 100 years, far below where day arithmetic
        /// in i32 could overflow.
        const MAX_DAYS: u32 = 36_500;
        let days_ok = |d: u32| (1..=MAX_DAYS).contains(&d);
        let mut problems = Vec::new();
        if self.windows.is_empty() || !self.windows.iter().all(|&w| days_ok(w)) {
            problems.push(format!(
                "windows: need at least one window, each 1 to {MAX_DAYS} days"
            ));
        }
        if !days_ok(self.retention_days) {
            problems.push(format!("retention_days: must be 1 to {MAX_DAYS}"));
        }
        if self.horizon_buckets.first() != Some(&0)
            || self.horizon_buckets.windows(2).any(|w| w[0] >= w[1])
            || self.horizon_buckets.len() > 32
        {
            problems.push(
                "horizon_buckets: lower bounds must start at 0 and increase strictly (at most 32)"
                    .to_owned(),
            );
        }
        if self.drift.baseline_events == 0 || self.drift.baseline_events > 1000 {
            problems.push("drift.baseline_events: must be 1 to 1000".to_owned());
        }
        let mut check_limits = |who: &str, l: &Limits| {
            let p = &l.performance;
            if !days_ok(p.window_days) || !days_ok(p.baseline_days) {
                problems.push(format!(
                    "{who}performance: window_days and baseline_days must be 1 to {MAX_DAYS}"
                ));
            }
            if !(p.resolve_fraction > 0.0 && p.resolve_fraction <= 1.0) {
                problems.push(format!(
                    "{who}performance.resolve_fraction: must be in (0, 1]"
                ));
            }
            let c = &l.calibration;
            let [lo, hi] = c.interval;
            if !days_ok(c.window_days) || !(1..50).contains(&lo) || hi != 100 - lo {
                problems.push(format!(
                    "{who}calibration: window_days must be 1 to {MAX_DAYS} and interval a symmetric pair [lo, 100 - lo] with 1 <= lo < 50"
                ));
            }
            if !(0.0..=1.0).contains(&c.low) || !(0.0..=1.0).contains(&c.high) || c.low > c.high {
                problems.push(format!("{who}calibration: need 0 <= low <= high <= 1"));
            }
        };
        check_limits("limits.", &self.limits);
        for name in self.tenants.keys() {
            check_limits(&format!("tenants.{name}."), &self.limits_for(name));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    /// The label of each horizon bucket: `0-7`, `8-14`, `15-28`, `29+`.
    pub fn horizon_labels(&self) -> Vec<String> {
        let b = &self.horizon_buckets;
        (0..b.len())
            .map(|i| match b.get(i + 1) {
                Some(next) => format!("{}-{}", b[i], next - 1),
                None => format!("{}+", b[i]),
            })
            .collect()
    }

    /// The bucket a horizon (in days, >= 0) falls in.
    pub fn horizon_bucket(&self, horizon: u32) -> u8 {
        (self
            .horizon_buckets
            .partition_point(|&lower| lower <= horizon)
            .max(1)
            - 1) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_horizon_buckets() {
        let c = FoldConfig::default();
        assert_eq!(c.horizon_labels(), ["0-7", "8-14", "15-28", "29+"]);
        assert_eq!(c.horizon_bucket(0), 0);
        assert_eq!(c.horizon_bucket(7), 0);
        assert_eq!(c.horizon_bucket(8), 1);
        assert_eq!(c.horizon_bucket(28), 2);
        assert_eq!(c.horizon_bucket(29), 3);
        assert_eq!(c.horizon_bucket(400), 3);
        assert!(c.check().is_ok());
    }

    #[test]
    fn source_rank_uses_star_for_unnamed_sources() {
        let list = vec!["shopify".to_owned(), "*".to_owned()];
        assert_eq!(ReconcileConfig::rank(&list, "shopify"), 0);
        assert_eq!(ReconcileConfig::rank(&list, "meta_ads"), 1);
        let no_star = vec!["shopify".to_owned()];
        assert_eq!(ReconcileConfig::rank(&no_star, "meta_ads"), 1);
    }

    #[test]
    fn tenant_overrides_fall_back_to_global_limits() {
        let toml = r#"
            [limits.performance]
            mape = 0.4
            [tenants.acme.performance]
            min_n = 5
            [tenants.acme.calibration]
            low = 0.6
        "#;
        let c: FoldConfig = toml::from_str(toml).unwrap();
        let acme = c.limits_for("acme");
        assert_eq!(acme.performance.min_n, 5);
        assert_eq!(acme.performance.mape, 0.4);
        assert_eq!(acme.calibration.low, 0.6);
        assert_eq!(c.limits_for("other").performance.min_n, 20);
        assert!(toml::from_str::<FoldConfig>("[limits.performance]\nmapee = 1").is_err());
    }

    #[test]
    fn check_refuses_windows_that_would_overflow_and_asymmetric_intervals() {
        let mut c = FoldConfig {
            windows: vec![7, u32::MAX],
            ..FoldConfig::default()
        };
        assert!(c.check().unwrap_err().contains("windows"));
        c.windows = vec![7];
        c.limits.calibration.window_days = 4_000_000_000;
        assert!(c.check().unwrap_err().contains("calibration"));
        c.limits.calibration.window_days = 28;
        c.limits.calibration.interval = [10, 80];
        assert!(c.check().unwrap_err().contains("symmetric"));
        c.limits.calibration.interval = [25, 75];
        assert!(c.check().is_ok());
    }
}
