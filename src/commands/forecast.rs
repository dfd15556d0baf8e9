//! `feedback alert-forecast TENANT`: quantile coverage against nominal per horizon bucket, from
//! the calibration document, with a warning for each scope whose interval coverage is below a
//! threshold.
//!
//! The document holds the coverage of its own window (`window_days`, 28 by default) for every
//! date. Another window is derived from that history: each entry is a sliding sum of daily
//! counts, so the daily counts come back as `c(D) = w(D) - w(D-1) + c(D - window_days)`, with
//! nothing before the first outcome date. That needs the hit counts, which are `coverage x n`
//! only when every scored line carries every quantile; this is checked against the Wilson
//! interval stored beside each share (it depends on the count the share was taken over), and
//! when it does not hold the command says so rather than guess.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::NaiveDate;
use compact_str::CompactString;
use serde::Serialize;

use super::{read_document, DocumentError};
use crate::event::parse_quantile_key;
use crate::fold::report::{CalibrationDoc, CalibrationEntry, CalibrationScope};
use crate::fold::stats::wilson;
use crate::storage::{Document, Storage};

#[derive(Debug, thiserror::Error)]
pub enum ForecastError {
    #[error(transparent)]
    Document(#[from] DocumentError),
    #[error("--threshold must be between 0 and 1, got {0}")]
    Threshold(f64),
    #[error("--window must be at least 1 day")]
    Window,
    #[error("--interval must name a symmetric interval such as p10_p90, got {0:?}")]
    Interval(String),
    #[error(
        "the calibration document of {tenant} has no {interval} coverage (its plans' quantiles \
         give {}); pass one of those to --interval",
        available.join(", ")
    )]
    IntervalAbsent {
        tenant: String,
        interval: String,
        available: Vec<String>,
    },
    #[error(
        "cannot derive a {window}-day window from the {doc_window}-day calibration history of \
         {tenant}: {reason}. Fold with limits.calibration.window_days = {window} in --config to \
         get it, or leave --window out"
    )]
    NotDerivable {
        tenant: String,
        window: u32,
        doc_window: u32,
        reason: String,
    },
}

/// What `alert-forecast` was asked.
#[derive(Debug, Clone)]
pub struct ForecastOptions {
    pub tenant: String,
    /// Interval coverage below this is a warning.
    pub threshold: f64,
    /// The window in days; None: the document's own.
    pub window: Option<u32>,
    /// Scopes with fewer pairs are `insufficient_data` and never warn.
    pub min_n: u64,
    /// The interval the threshold applies to, as `pNN_pMM`.
    pub interval: String,
}

impl Default for ForecastOptions {
    fn default() -> Self {
        ForecastOptions {
            tenant: String::new(),
            threshold: 0.70,
            window: None,
            min_n: 30,
            interval: "p10_p90".into(),
        }
    }
}

/// What it found; `--json` prints it as it is.
#[derive(Debug, Clone, Serialize)]
pub struct ForecastCheck {
    pub tenant: String,
    /// The date the window ends on (the tenant's as_of); None before the first outcome.
    pub as_of: Option<String>,
    pub window_days: u32,
    /// Days of calibration history, from the first outcome date to as_of: a longer window
    /// holds all of them.
    pub history_days: usize,
    /// `document` when the window is the calibration document's own, `derived` otherwise.
    pub window_source: &'static str,
    pub threshold: f64,
    pub min_n: u64,
    pub interval: String,
    /// The tenant overall (`scope` = `tenant`), then each horizon bucket (`horizon:0-7`, ...).
    pub scopes: Vec<ScopeCoverage>,
    /// One line per scope whose interval coverage is below the threshold.
    pub warnings: Vec<String>,
    /// Some scope is below the threshold: the exit code is 1.
    pub alerting: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScopeCoverage {
    pub scope: String,
    pub n: u64,
    /// Per quantile (`p10`) and symmetric interval (`p10_p90`), ascending.
    pub coverage: BTreeMap<String, KeyCoverage>,
    /// `ok`, `below_threshold` or `insufficient_data` (fewer than `min_n` pairs, or no interval).
    pub status: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyCoverage {
    /// Share of pairs with y <= the quantile, or inside the interval.
    pub value: f64,
    /// Wilson 95% interval of the share.
    pub ci: [f64; 2],
    /// What a calibrated model gives: the level for a quantile, the width for an interval.
    pub nominal: f64,
}

/// The nominal coverage of `p10` (0.10) or `p10_p90` (0.80).
pub fn nominal(key: &str) -> Option<f64> {
    match key.split_once('_') {
        None => parse_quantile_key(key).map(|l| f64::from(l) / 100.0),
        Some((lo, hi)) => {
            let (lo, hi) = (parse_quantile_key(lo)?, parse_quantile_key(hi)?);
            (lo < hi).then(|| f64::from(hi - lo) / 100.0)
        }
    }
}

/// The lower bound of a horizon bucket label (`15-28`, `29+`).
fn bucket_start(label: &str) -> u32 {
    let digits: String = label.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or(u32::MAX)
}

/// Quantiles by level, then intervals by lower level.
fn key_order(key: &str) -> (u8, u8, u8) {
    match key.split_once('_') {
        None => (0, parse_quantile_key(key).unwrap_or(0), 0),
        Some((lo, hi)) => (
            1,
            parse_quantile_key(lo).unwrap_or(0),
            parse_quantile_key(hi).unwrap_or(0),
        ),
    }
}

/// Reads the tenant's calibration document and checks its coverage.
pub fn alert_forecast(
    storage: &Storage,
    options: &ForecastOptions,
) -> Result<ForecastCheck, ForecastError> {
    if !(0.0..=1.0).contains(&options.threshold) {
        return Err(ForecastError::Threshold(options.threshold));
    }
    if options.window == Some(0) {
        return Err(ForecastError::Window);
    }
    let symmetric = options
        .interval
        .split_once('_')
        .and_then(|(lo, hi)| Some((parse_quantile_key(lo)?, parse_quantile_key(hi)?)))
        .is_some_and(|(lo, hi)| lo < 50 && lo + hi == 100);
    if !symmetric {
        return Err(ForecastError::Interval(options.interval.clone()));
    }
    let doc: CalibrationDoc = read_document(storage, &options.tenant, Document::Calibration)?;
    check(&doc, options)
}

/// The check over a calibration document already read.
pub fn check(
    doc: &CalibrationDoc,
    options: &ForecastOptions,
) -> Result<ForecastCheck, ForecastError> {
    let window = options.window.unwrap_or(doc.window_days);
    let derived = window != doc.window_days;
    let mut scopes = Vec::new();
    if derived {
        let counts = derive(doc, window).map_err(|reason| ForecastError::NotDerivable {
            tenant: doc.tenant.clone(),
            window,
            doc_window: doc.window_days,
            reason,
        })?;
        for (scope, c) in counts {
            scopes.push(scope_of(scope, c.n.max(0) as u64, c.coverage(), options));
        }
    } else if let Some(last) = doc.history.last() {
        scopes.push(scope_of(
            "tenant".into(),
            last.n,
            merge(&last.coverage, &last.ci),
            options,
        ));
        for (label, s) in &last.by_horizon {
            scopes.push(scope_of(
                format!("horizon:{label}"),
                s.n,
                merge(&s.coverage, &s.ci),
                options,
            ));
        }
    }
    // An interval no scope has, while some have others, is a mistake in the command, not missing
    // data: read as `insufficient_data` everywhere, it would pass the check whatever the coverage.
    let available: BTreeSet<&String> = scopes
        .iter()
        .flat_map(|s| s.coverage.keys())
        .filter(|k| k.contains('_'))
        .collect();
    if !available.is_empty() && !available.contains(&options.interval) {
        return Err(ForecastError::IntervalAbsent {
            tenant: doc.tenant.clone(),
            interval: options.interval.clone(),
            available: available.into_iter().cloned().collect(),
        });
    }
    // Horizon buckets in the order of their lower bounds (`8-14` before `15-28`).
    scopes.sort_by_key(|s| match s.scope.strip_prefix("horizon:") {
        None => (0, 0),
        Some(label) => (1, bucket_start(label)),
    });
    let warnings: Vec<String> = scopes
        .iter()
        .filter(|s| s.status == "below_threshold")
        .map(|s| {
            let c = &s.coverage[&options.interval];
            format!(
                "warning: {} {}: {} coverage {:.3} [{:.3}, {:.3}] is below the threshold {:.2} (nominal {:.2}, n {})",
                doc.tenant, s.scope, options.interval, c.value, c.ci[0], c.ci[1], options.threshold, c.nominal, s.n
            )
        })
        .collect();
    Ok(ForecastCheck {
        tenant: doc.tenant.clone(),
        as_of: doc.history.last().map(|e| e.as_of.clone()),
        window_days: window,
        history_days: doc.history.len(),
        window_source: if derived { "derived" } else { "document" },
        threshold: options.threshold,
        min_n: options.min_n,
        interval: options.interval.clone(),
        alerting: !warnings.is_empty(),
        warnings,
        scopes,
    })
}

fn merge(
    coverage: &BTreeMap<CompactString, f64>,
    ci: &BTreeMap<CompactString, [f64; 2]>,
) -> Vec<(String, f64, [f64; 2])> {
    coverage
        .iter()
        .map(|(k, &v)| {
            (
                k.to_string(),
                v,
                ci.get(k).copied().unwrap_or([f64::NAN, f64::NAN]),
            )
        })
        .collect()
}

fn scope_of(
    scope: String,
    n: u64,
    keys: Vec<(String, f64, [f64; 2])>,
    options: &ForecastOptions,
) -> ScopeCoverage {
    let coverage: BTreeMap<String, KeyCoverage> = keys
        .into_iter()
        .filter_map(|(k, value, ci)| {
            Some((
                k.clone(),
                KeyCoverage {
                    value,
                    ci,
                    nominal: nominal(&k)?,
                },
            ))
        })
        .collect();
    let status = match coverage.get(&options.interval) {
        Some(c) if n >= options.min_n && c.value < options.threshold => "below_threshold",
        Some(_) if n >= options.min_n => "ok",
        _ => "insufficient_data",
    };
    ScopeCoverage {
        scope,
        n,
        coverage,
        status,
    }
}

/// Pair and hit counts of one scope's window.
#[derive(Debug, Clone, Default, PartialEq)]
struct Counts {
    n: i64,
    hits: BTreeMap<String, i64>,
}

impl Counts {
    fn coverage(&self) -> Vec<(String, f64, [f64; 2])> {
        if self.n <= 0 {
            return Vec::new();
        }
        let n = self.n as u64;
        self.hits
            .iter()
            .filter_map(|(k, &h)| {
                let ci = wilson(h as u64, n)?;
                Some((k.clone(), h as f64 / n as f64, ci))
            })
            .collect()
    }

    fn add(&mut self, o: &Counts, sign: i64) {
        self.n += sign * o.n;
        for (k, h) in &o.hits {
            *self.hits.entry(k.clone()).or_default() += sign * h;
        }
    }
}

/// The counts behind one document scope: hits are `coverage x n`, which holds only if the
/// stored Wilson interval is the one of (hits, n), i.e. every pair carried the quantile.
fn counts_of(
    s: &CalibrationScope,
    keys: &BTreeSet<String>,
    as_of: &str,
    scope: &str,
) -> Result<Counts, String> {
    let mut hits = BTreeMap::new();
    for key in keys {
        let h = match (s.coverage.get(key.as_str()), s.ci.get(key.as_str())) {
            (None, _) if s.n == 0 => 0,
            (Some(&share), Some(ci)) if s.n > 0 => {
                let h = (share * s.n as f64).round();
                let same = |a: f64, b: f64| (a - b).abs() <= 1e-9;
                let expected = wilson(h as u64, s.n);
                let fits = same(h / s.n as f64, share)
                    && expected.is_some_and(|w| same(w[0], ci[0]) && same(w[1], ci[1]));
                if !fits {
                    return Err(format!(
                        "on {as_of} the {scope} coverage of {key} is not taken over all its {} pairs (some forecast lines lack that quantile)",
                        s.n
                    ));
                }
                h as i64
            }
            _ => {
                return Err(format!(
                    "on {as_of} the {scope} window of {} pairs has no coverage of {key} (some forecast lines lack that quantile)",
                    s.n
                ))
            }
        };
        hits.insert(key.clone(), h);
    }
    Ok(Counts {
        n: s.n as i64,
        hits,
    })
}

/// Every scope of an entry: the tenant first, then the horizons.
fn entry_scopes(e: &CalibrationEntry) -> Vec<(String, CalibrationScope)> {
    let mut v = vec![(
        "tenant".to_owned(),
        CalibrationScope {
            n: e.n,
            coverage: e.coverage.clone(),
            ci: e.ci.clone(),
            status: e.status.clone(),
        },
    )];
    for (label, s) in &e.by_horizon {
        v.push((format!("horizon:{label}"), s.clone()));
    }
    v
}

/// The counts of a `window`-day window ending at the last entry, per scope, from the history of
/// `doc.window_days`-day windows.
fn derive(doc: &CalibrationDoc, window: u32) -> Result<Vec<(String, Counts)>, String> {
    let w0 = doc.window_days as usize;
    if w0 == 0 {
        return Err("the document's window is 0 days".into());
    }
    let mut dates: Vec<NaiveDate> = Vec::with_capacity(doc.history.len());
    for e in &doc.history {
        let d = NaiveDate::parse_from_str(&e.as_of, "%Y-%m-%d")
            .map_err(|_| format!("entry date {:?} is not a date", e.as_of))?;
        if let Some(prev) = dates.last() {
            if prev.succ_opt() != Some(d) {
                return Err(format!("the history jumps from {prev} to {d}"));
            }
        }
        dates.push(d);
    }
    let Some(first) = doc.history.first() else {
        return Ok(Vec::new());
    };
    let scope_names: Vec<String> = entry_scopes(first).into_iter().map(|(s, _)| s).collect();
    let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in &doc.history {
        for (scope, s) in entry_scopes(e) {
            keys.entry(scope)
                .or_default()
                .extend(s.coverage.keys().map(|k| k.to_string()));
        }
    }
    let mut out = Vec::new();
    for scope in scope_names {
        let keys = keys.remove(&scope).unwrap_or_default();
        // Daily counts, oldest first; days before the first outcome hold nothing.
        let mut daily: Vec<Counts> = Vec::with_capacity(doc.history.len());
        let mut previous = Counts::default();
        for e in &doc.history {
            let s = entry_scopes(e)
                .into_iter()
                .find(|(name, _)| *name == scope)
                .map(|(_, s)| s)
                .ok_or_else(|| format!("the entry of {} has no {scope} scope", e.as_of))?;
            let current = counts_of(&s, &keys, &e.as_of, &scope)?;
            let mut day = current.clone();
            day.add(&previous, -1);
            if let Some(old) = daily.len().checked_sub(w0).and_then(|i| daily.get(i)) {
                day.add(old, 1);
            }
            if day.n < 0 || day.hits.values().any(|&h| h < 0 || h > day.n) {
                return Err(format!("the {scope} counts of {} do not add up", e.as_of));
            }
            daily.push(day);
            previous = current;
        }
        let mut total = Counts::default();
        for day in daily.iter().rev().take(window as usize) {
            total.add(day, 1);
        }
        out.push((scope, total));
    }
    Ok(out)
}

impl fmt::Display for ForecastCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(as_of) = &self.as_of else {
            writeln!(f, "tenant    {}", self.tenant)?;
            return write!(
                f,
                "no calibration yet: no outcome has been folded for this tenant"
            );
        };
        writeln!(f, "tenant    {}", self.tenant)?;
        writeln!(f, "as_of     {as_of}")?;
        let source = if self.window_source == "derived" {
            "derived from the calibration history"
        } else {
            "the calibration document's window"
        };
        let clipped = if self.window_days as usize > self.history_days {
            format!(
                "; the history holds {} days, all of them in the window",
                self.history_days
            )
        } else {
            String::new()
        };
        writeln!(f, "window    {} days ({source}{clipped})", self.window_days)?;
        writeln!(
            f,
            "threshold {} coverage >= {:.2} with at least {} pairs",
            self.interval, self.threshold, self.min_n
        )?;
        writeln!(f)?;
        let mut keys: Vec<&String> = self
            .scopes
            .iter()
            .flat_map(|s| s.coverage.keys())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        keys.sort_by_key(|k| key_order(k));
        let mut header = format!("{:<16} {:>6}", "scope", "n");
        for k in &keys {
            let label = format!("{k} ({:.2})", nominal(k).unwrap_or(f64::NAN));
            header.push_str(&format!("  {label:<22}"));
        }
        writeln!(f, "{}  status", header)?;
        for s in &self.scopes {
            let mut line = format!("{:<16} {:>6}", s.scope, s.n);
            for k in &keys {
                let cell = s.coverage.get(*k).map_or_else(
                    || "-".to_owned(),
                    |c| format!("{:.3} [{:.2}, {:.2}]", c.value, c.ci[0], c.ci[1]),
                );
                line.push_str(&format!("  {cell:<22}"));
            }
            writeln!(f, "{line}  {}", s.status)?;
        }
        write!(
            f,
            "(nominal coverage in parentheses after each key; [lo, hi] the Wilson 95% interval)"
        )?;
        for w in &self.warnings {
            write!(f, "\n{w}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::fold::{Engine, FoldConfig};
    use crate::simulate::{generate, SimConfig, SimPayload};

    fn calibration(window: u32, days: u32) -> CalibrationDoc {
        let mut config = FoldConfig::default();
        config.limits.calibration.window_days = window;
        let mut engine = Engine::new(config);
        let mut alerts = Vec::new();
        let sim = SimConfig {
            tenants: 3,
            days,
            ..SimConfig::default()
        };
        for r in generate(&sim) {
            if let SimPayload::Event(e) = r.payload {
                engine.apply(&e, &mut alerts);
            }
        }
        written(&engine.documents("miscal-002").unwrap().calibration)
    }

    /// The document as `forecast` reads it from the file the fold writes.
    fn written(history: &crate::fold::report::CalibrationHistory) -> CalibrationDoc {
        serde_json::from_slice(&serde_json::to_vec(history).unwrap()).unwrap()
    }

    #[test]
    fn nominal_levels() {
        assert_eq!(nominal("p10"), Some(0.10));
        assert_eq!(nominal("p10_p90"), Some(0.80));
        assert_eq!(nominal("p05_p95"), Some(0.90));
        assert_eq!(nominal("ci"), None);
    }

    #[test]
    fn a_derived_window_equals_the_one_folded_with_that_window() {
        let doc28 = calibration(28, 75);
        for w in [7, 14, 28, 60] {
            let wanted = calibration(w, 75);
            let options = ForecastOptions {
                window: Some(w),
                ..ForecastOptions::default()
            };
            let got = check(&doc28, &options).unwrap();
            let want = check(&wanted, &ForecastOptions::default()).unwrap();
            assert_eq!(
                got.window_source,
                if w == 28 { "document" } else { "derived" }
            );
            assert_eq!(got.scopes.len(), want.scopes.len());
            for (g, x) in got.scopes.iter().zip(&want.scopes) {
                assert_eq!((&g.scope, g.n), (&x.scope, x.n), "window {w}");
                assert_eq!(
                    g.coverage.keys().collect::<Vec<_>>(),
                    x.coverage.keys().collect::<Vec<_>>()
                );
                for (k, c) in &g.coverage {
                    let d = &x.coverage[k];
                    assert!(
                        (c.value - d.value).abs() < 1e-12,
                        "window {w} {} {k}",
                        g.scope
                    );
                    assert!((c.ci[0] - d.ci[0]).abs() < 1e-12 && (c.ci[1] - d.ci[1]).abs() < 1e-12);
                }
                assert_eq!(g.status, x.status);
            }
            assert_eq!(got.alerting, want.alerting);
        }
    }

    #[test]
    fn lines_without_every_quantile_cannot_be_derived() {
        let mut engine = Engine::new(FoldConfig::default());
        let mut alerts = Vec::new();
        let sim = SimConfig {
            tenants: 1,
            days: 40,
            ..SimConfig::default()
        };
        for (i, r) in generate(&sim).into_iter().enumerate() {
            if let SimPayload::Event(mut e) = r.payload {
                // Every other plan carries p50 only.
                if let Event::Forecast(f) = &mut e {
                    if i % 2 == 0 {
                        for line in &mut f.lines {
                            line.revenue = crate::event::Quantiles::from_pairs(
                                line.revenue.p50().map(|v| (50, v)),
                            );
                        }
                    }
                }
                engine.apply(&e, &mut alerts);
            }
        }
        let doc = written(&engine.documents("healthy-000").unwrap().calibration);
        let options = ForecastOptions {
            window: Some(7),
            ..ForecastOptions::default()
        };
        let err = check(&doc, &options).unwrap_err();
        assert!(err.to_string().contains("lack that quantile"), "{err}");
        assert!(check(&doc, &ForecastOptions::default()).is_ok());
    }

    #[test]
    fn a_narrow_interval_warns() {
        let doc = calibration(28, 75);
        let got = check(&doc, &ForecastOptions::default()).unwrap();
        assert!(got.alerting);
        assert!(
            got.warnings.iter().any(|w| w.contains("horizon:0-7")),
            "{:?}",
            got.warnings
        );
        let text = got.to_string();
        assert!(text.contains("p10_p90 (0.80)"), "{text}");
        // A window longer than the history says that it holds all of it.
        let options = ForecastOptions {
            window: Some(1000),
            ..ForecastOptions::default()
        };
        let long = check(&doc, &options).unwrap();
        assert_eq!(long.history_days, doc.history.len());
        let text = long.to_string();
        let said = format!("the history holds {} days, all of them", doc.history.len());
        assert!(text.contains(&said), "{text}");
    }

    #[test]
    fn an_interval_the_document_lacks_is_an_error_not_a_pass() {
        // miscal-002's plans carry p10, p50 and p90: p20_p80 is no interval of theirs, and read
        // as missing data it would have passed the check of a miscalibrated tenant.
        let doc = calibration(28, 75);
        for window in [None, Some(14)] {
            let options = ForecastOptions {
                interval: "p20_p80".into(),
                window,
                ..ForecastOptions::default()
            };
            let err = check(&doc, &options).unwrap_err();
            assert!(
                matches!(&err, ForecastError::IntervalAbsent { available, .. }
                    if available == &["p10_p90".to_owned()]),
                "{err}"
            );
            assert!(err.to_string().contains("give p10_p90"), "{err}");
        }
        // A document without any pair yet has no interval at all: insufficient data, no error.
        let empty = calibration(28, 1);
        let options = ForecastOptions {
            interval: "p20_p80".into(),
            ..ForecastOptions::default()
        };
        let got = check(&empty, &options).unwrap();
        assert!(got.scopes.iter().all(|s| s.status == "insufficient_data"));
    }
}
