//! The rules of SPEC 5: when performance, calibration and drift alerts fire and resolve, and the
//! alert events that carry each transition.
//!
//! Rules read the running windows of `tenant`, never the clock; an alert's time is event time.

use std::cell::RefCell;
use std::collections::BTreeMap;

use chrono::SecondsFormat;
use rustc_hash::FxHashMap;
use serde::Serialize;
use serde_json::json;
use smallvec::SmallVec;

use super::config::{CalibrationLimits, PerformanceLimits};
use super::drift::{DriftFigures, FeatureDrift};
use super::report;
use super::tenant::{date_text, Day, Dirty, RuleWindows, Shared, TenantState, Window};
use crate::alert::{push_json_str, raw_data, Alert, AlertData, AlertType};
use crate::event::FeatureImportance;
use crate::fold::stats::Shares;

/// Status of a calibration scope (SPEC 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CalStatus {
    InsufficientData,
    Ok,
    WarnLow,
    WarnHigh,
}

impl CalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CalStatus::InsufficientData => "insufficient_data",
            CalStatus::Ok => "ok",
            CalStatus::WarnLow => "warn_low",
            CalStatus::WarnHigh => "warn_high",
        }
    }

    /// The status of an interval coverage of `hits` out of `n` pairs.
    pub fn of(hits: u64, n: u64, l: &CalibrationLimits) -> CalStatus {
        if n < l.min_n || n == 0 {
            return CalStatus::InsufficientData;
        }
        let coverage = hits as f64 / n as f64;
        if coverage < l.low {
            CalStatus::WarnLow
        } else if coverage > l.high {
            CalStatus::WarnHigh
        } else {
            CalStatus::Ok
        }
    }
}

/// Where the rules stand for one tenant: hysteresis lives here.
#[derive(Debug, Clone)]
pub struct RuleState {
    pub perf_tenant: bool,
    pub perf_channels: Vec<bool>,
    pub cal_tenant: CalStatus,
    pub cal_horizons: Vec<CalStatus>,
    pub drift: bool,
    /// Alerts already published per (type, scope, status) at the current as_of, so that a
    /// repeated transition at the same time still gets a fresh id.
    pub(super) occurrences: FxHashMap<(AlertType, String, &'static str), u64>,
}

impl RuleState {
    pub fn new(buckets: usize) -> Self {
        RuleState {
            perf_tenant: false,
            perf_channels: Vec::new(),
            cal_tenant: CalStatus::InsufficientData,
            cal_horizons: vec![CalStatus::InsufficientData; buckets],
            drift: false,
            occurrences: FxHashMap::default(),
        }
    }

    pub fn ensure_channels(&mut self, n: usize) {
        if self.perf_channels.len() < n {
            self.perf_channels.resize(n, false);
        }
    }

    fn occurrence(&mut self, kind: AlertType, scope: &str, status: &'static str) -> u64 {
        let n = self
            .occurrences
            .entry((kind, scope.to_owned(), status))
            .or_insert(0);
        *n += 1;
        *n - 1
    }

    /// The context tags of SPEC 5: a tag is active while any scope of its rule holds it.
    pub fn tags(&self) -> Vec<&'static str> {
        let mut tags = Vec::new();
        if self.perf_tenant || self.perf_channels.iter().any(|&f| f) {
            tags.push("model.performance.degraded");
        }
        let cal = || std::iter::once(&self.cal_tenant).chain(&self.cal_horizons);
        if cal().any(|&s| s == CalStatus::WarnLow) {
            tags.push("model.calibration.warn_low");
        }
        if cal().any(|&s| s == CalStatus::WarnHigh) {
            tags.push("model.calibration.warn_high");
        }
        if self.drift {
            tags.push("model.drift_detected");
        }
        tags
    }
}

/// One entry of the drift history (SPEC 6, `_drift.json`).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct DriftEntry {
    pub computed_at: String,
    pub model_version: Option<String>,
    pub importance_shift: Option<f64>,
    pub spearman: Option<f64>,
    /// How many features of the current top 5 are not in the baseline's top 5.
    pub top_k_churn: Option<usize>,
    /// Which features those are.
    pub top_k_entered: Vec<String>,
    pub baseline_events: usize,
    pub features: BTreeMap<String, FeatureDrift>,
    /// `firing` or `ok`; `insufficient_data` for a tenant's first event, which has no baseline.
    pub status: String,
}

/// Whether the performance rule holds, given whether it held before (hysteresis).
pub fn performance_firing(
    was_firing: bool,
    recent: &Window,
    baseline: &Window,
    l: &PerformanceLimits,
) -> bool {
    let enough = recent.n as u64 >= l.min_n;
    let mae = recent.mae().unwrap_or(0.0);
    let baseline_mae = (baseline.n as u64 >= l.baseline_min_n)
        .then(|| baseline.mae())
        .flatten();
    if !was_firing {
        enough
            && (recent.mape().is_some_and(|m| m > l.mape)
                || baseline_mae.is_some_and(|b| mae > l.mae_ratio * b))
    } else {
        // Without enough recent pairs there is no evidence of recovery: stay firing.
        let f = l.resolve_fraction;
        let recovered = enough
            && recent.mape().is_none_or(|m| m < f * l.mape)
            && baseline_mae.is_none_or(|b| mae < f * l.mae_ratio * b);
        !recovered
    }
}

/// An alert's `time` for an as_of date (`YYYY-MM-DD`): its midnight in UTC.
fn as_of_time(date: &str) -> String {
    // Once per daily report: appended, not formatted (`format!` went through `fmt`, about 550
    // instructions).
    let mut time = String::with_capacity(date.len() + 10);
    time.push_str(date);
    time.push_str("T00:00:00Z");
    time
}

fn scope_channel(state: &TenantState, channel: u32) -> String {
    format!("channel:{}", state.channels.name(channel))
}

fn scope_horizon(shared: &Shared, bucket: usize) -> String {
    format!("horizon:{}", shared.config.horizon_labels()[bucket])
}

/// Evaluates a performance scope; publishes on a change. Inlined, as
/// [`evaluate_calibration`] is, with the publishing apart.
#[inline]
fn evaluate_performance(state: &mut TenantState, channel: Option<u32>, out: &mut Vec<Alert>) {
    let Some(as_of) = state.as_of else { return };
    let (windows, was) = match channel {
        None => (&state.windows.tenant, state.rules.perf_tenant),
        Some(c) => (
            &state.windows.channels[c as usize],
            state.rules.perf_channels[c as usize],
        ),
    };
    let l = &state.limits.performance;
    let now = performance_firing(was, &windows.recent, &windows.baseline, l);
    if now != was {
        let windows = *windows;
        publish_performance(state, channel, as_of, now, &windows, out);
    }
}

/// The performance alert of a scope that now fires (`now`) or has resolved.
#[inline(never)]
fn publish_performance(
    state: &mut TenantState,
    channel: Option<u32>,
    as_of: Day,
    now: bool,
    windows: &RuleWindows,
    out: &mut Vec<Alert>,
) {
    let scope = match channel {
        None => "tenant".to_owned(),
        Some(c) => scope_channel(state, c),
    };
    match channel {
        None => state.rules.perf_tenant = now,
        Some(c) => state.rules.perf_channels[c as usize] = now,
    }
    let status = if now { "firing" } else { "resolved" };
    let date = date_text(as_of);
    let data = performance_data(state, &scope, status, &date, windows);
    let occurrence = state
        .rules
        .occurrence(AlertType::PerformanceDegraded, &scope, status);
    out.push(Alert::new(
        AlertType::PerformanceDegraded,
        &state.name,
        &scope,
        as_of_time(&date),
        status,
        occurrence,
        data,
    ));
}

fn performance_data(
    state: &TenantState,
    scope: &str,
    status: &str,
    as_of: &str,
    w: &RuleWindows,
) -> AlertData {
    let l = &state.limits.performance;
    raw_data(&json!({
        "tenant": state.name,
        "status": status,
        "scope": scope,
        "as_of": as_of,
        "window_days": l.window_days,
        "n": w.recent.n,
        "mae": w.recent.mae(),
        "mape": w.recent.mape(),
        "wape": w.recent.wape(),
        "bias": w.recent.bias(),
        "baseline_days": l.baseline_days,
        "baseline_n": w.baseline.n,
        "baseline_mae": w.baseline.mae(),
        "limits": {"mape": l.mape, "mae_ratio": l.mae_ratio, "min_n": l.min_n},
    }))
}

/// Evaluates a calibration scope; publishes on a change of status, or always for the as_of report.
///
/// Inlined where the rules run after every record: most calls find the status unchanged, and
/// the publishing (its own function) is then not even entered.
#[inline]
fn evaluate_calibration(
    state: &mut TenantState,
    shared: &Shared,
    bucket: Option<usize>,
    as_of_report: bool,
    out: &mut Vec<Alert>,
) {
    let Some(as_of) = state.as_of else { return };
    let l = &state.limits.calibration;
    let w = state.windows.calibration[bucket.map_or(0, |b| 1 + b)];
    let now = CalStatus::of(w.hits as u64, w.n as u64, l);
    let was = match bucket {
        None => state.rules.cal_tenant,
        Some(b) => state.rules.cal_horizons[b],
    };
    if now == was && !as_of_report {
        return;
    }
    publish_calibration(state, shared, bucket, as_of_report, as_of, now, out);
}

/// The calibration alert of a scope whose status is now `now`: a change, or the daily report.
#[inline(never)]
fn publish_calibration(
    state: &mut TenantState,
    shared: &Shared,
    bucket: Option<usize>,
    as_of_report: bool,
    as_of: Day,
    now: CalStatus,
    out: &mut Vec<Alert>,
) {
    let l = &state.limits.calibration;
    match bucket {
        None => state.rules.cal_tenant = now,
        Some(b) => state.rules.cal_horizons[b] = now,
    }
    let scope = match bucket {
        None => "tenant".to_owned(),
        Some(b) => scope_horizon(shared, b),
    };
    // The rule reads the running interval counts; the full per-quantile coverage of the alert
    // is summed from the per-day counts only now, when an alert is published.
    let from = as_of - l.window_days as Day + 1;
    let counts = &report::coverage_counts(state, from, as_of, bucket.map(|b| b as u8));
    let trigger = if as_of_report {
        "as_of"
    } else {
        "status_change"
    };
    let date = date_text(as_of);
    let named = counts.named();
    let data = calibration_json(&CalibrationData {
        tenant: &state.name,
        status: now.as_str(),
        scope: &scope,
        as_of: &date,
        window_days: l.window_days,
        n: counts.n,
        coverage: Shares {
            named: &named,
            ci: false,
        },
        ci: Shares {
            named: &named,
            ci: true,
        },
        trigger,
        limits: CalibrationLimitsData {
            low: l.low,
            high: l.high,
            min_n: l.min_n,
        },
    });
    // One count per (scope, status) whatever the trigger: a daily report `ok` and a later
    // return to `ok` at the same as_of are two alerts and need two ids.
    let occurrence = state
        .rules
        .occurrence(AlertType::Calibration, &scope, now.as_str());
    out.push(Alert::new(
        AlertType::Calibration,
        &state.name,
        &scope,
        as_of_time(&date),
        now.as_str(),
        occurrence,
        data,
    ));
}

/// The data of a `model.calibration` alert, serialized straight to JSON text.
#[derive(Serialize)]
struct CalibrationData<'a> {
    tenant: &'a str,
    status: &'static str,
    scope: &'a str,
    as_of: &'a str,
    window_days: u32,
    n: u64,
    coverage: Shares<'a>,
    ci: Shares<'a>,
    trigger: &'static str,
    limits: CalibrationLimitsData,
}

#[derive(Serialize)]
struct CalibrationLimitsData {
    low: f64,
    high: f64,
    min_n: u64,
}

/// The JSON text serde_json makes of `d` (tested), written directly: there is a daily report per
/// tenant per day, and serializing it through serde (which escapes every key) cost more than
/// summing the counts it reports.
fn calibration_json(d: &CalibrationData<'_>) -> AlertData {
    let mut out = Vec::with_capacity(640);
    let int =
        |out: &mut Vec<u8>, n: u64| out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    let float = |out: &mut Vec<u8>, x: f64| {
        // serde_json's own form (`1e+21`, `null` when not finite).
        serde_json::to_writer(&mut *out, &x).expect("a number serializes")
    };
    out.extend_from_slice(b"{\"tenant\":");
    push_json_str(&mut out, d.tenant);
    out.extend_from_slice(b",\"status\":");
    push_json_str(&mut out, d.status);
    out.extend_from_slice(b",\"scope\":");
    push_json_str(&mut out, d.scope);
    out.extend_from_slice(b",\"as_of\":");
    push_json_str(&mut out, d.as_of);
    out.extend_from_slice(b",\"window_days\":");
    int(&mut out, u64::from(d.window_days));
    out.extend_from_slice(b",\"n\":");
    int(&mut out, d.n);
    out.extend_from_slice(b",\"coverage\":");
    d.coverage.write_json(&mut out);
    out.extend_from_slice(b",\"ci\":");
    d.ci.write_json(&mut out);
    out.extend_from_slice(b",\"trigger\":");
    push_json_str(&mut out, d.trigger);
    out.extend_from_slice(b",\"limits\":");
    // The limits are the same for every report of a tenant (and usually of every tenant): their
    // text is kept from the last report written on this thread.
    thread_local! {
        static LIMITS: RefCell<Option<([u64; 3], Vec<u8>)>> = const { RefCell::new(None) };
    }
    let l = &d.limits;
    let key = [l.low.to_bits(), l.high.to_bits(), l.min_n];
    LIMITS.with_borrow_mut(|last| {
        if last.as_ref().is_none_or(|(k, _)| *k != key) {
            let mut text = b"{\"low\":".to_vec();
            float(&mut text, l.low);
            text.extend_from_slice(b",\"high\":");
            float(&mut text, l.high);
            text.extend_from_slice(b",\"min_n\":");
            int(&mut text, l.min_n);
            text.push(b'}');
            *last = Some((key, text));
        }
        out.extend_from_slice(&last.as_ref().expect("just set").1);
    });
    out.push(b'}');
    // Only strings and serde_json's numbers went in.
    AlertData::written(String::from_utf8(out).expect("UTF-8 in, UTF-8 out"))
}

/// Channels in name order, so alerts come out in the same order whatever the interning order.
fn channels_by_name(state: &TenantState, ids: impl IntoIterator<Item = u32>) -> SmallVec<[u32; 8]> {
    let mut ids: SmallVec<[u32; 8]> = ids.into_iter().collect();
    ids.sort_unstable_by(|a, b| state.channels.name(*a).cmp(state.channels.name(*b)));
    ids
}

/// After a record changed pairs without moving as_of: re-evaluate the scopes it touched.
pub fn on_change(state: &mut TenantState, dirty: &Dirty, shared: &Shared, out: &mut Vec<Alert>) {
    evaluate_performance(state, None, out);
    for c in channels_by_name(state, dirty.channels.iter().copied()) {
        evaluate_performance(state, Some(c), out);
    }
    evaluate_calibration(state, shared, None, false, out);
    for b in 0..state.windows.calibration.len() - 1 {
        if dirty.horizons & (1 << b) != 0 {
            evaluate_calibration(state, shared, Some(b), false, out);
        }
    }
}

/// After as_of moved: every window moved, so every scope is re-evaluated, and the tenant's daily
/// calibration report is published whatever its status.
pub fn on_as_of_advance(state: &mut TenantState, shared: &Shared, out: &mut Vec<Alert>) {
    state.rules.occurrences.clear();
    evaluate_performance(state, None, out);
    for c in channels_by_name(state, 0..state.channels.len() as u32) {
        evaluate_performance(state, Some(c), out);
    }
    evaluate_calibration(state, shared, None, true, out);
    for b in 0..state.windows.calibration.len() - 1 {
        evaluate_calibration(state, shared, Some(b), false, out);
    }
}

/// After a feature-importance event: record its drift figures and publish a transition.
pub fn on_drift(
    state: &mut TenantState,
    fi: &FeatureImportance,
    figures: Option<DriftFigures>,
    out: &mut Vec<Alert>,
) {
    let computed_at = fi.computed_at.to_rfc3339_opts(SecondsFormat::AutoSi, true);
    let l = &state.limits.drift;
    let Some(fig) = figures else {
        state.drift_history.push(DriftEntry {
            computed_at,
            model_version: fi.model_version.clone(),
            importance_shift: None,
            spearman: None,
            top_k_churn: None,
            top_k_entered: Vec::new(),
            baseline_events: 0,
            features: BTreeMap::new(),
            status: "insufficient_data".to_owned(),
        });
        return;
    };
    let breaching: Vec<&String> = fig
        .features
        .iter()
        .filter(|(_, f)| {
            f.key
                && f.psi
                    .is_some_and(|p| p >= l.psi && f.psi_critical.is_none_or(|c| p > c))
        })
        .map(|(name, _)| name)
        .collect();
    let firing = fig.importance_shift >= l.importance_shift || !breaching.is_empty();
    let entry = DriftEntry {
        computed_at: computed_at.clone(),
        model_version: fi.model_version.clone(),
        importance_shift: Some(fig.importance_shift),
        spearman: fig.spearman,
        top_k_churn: Some(fig.top_k_churn.len()),
        top_k_entered: fig.top_k_churn.clone(),
        baseline_events: fig.baseline_events,
        features: fig.features.clone(),
        status: if firing { "firing" } else { "ok" }.to_owned(),
    };
    if firing != state.rules.drift {
        state.rules.drift = firing;
        let status = if firing { "firing" } else { "resolved" };
        let data = raw_data(&json!({
            "tenant": state.name,
            "status": status,
            "scope": "tenant",
            "computed_at": computed_at,
            "model_version": fi.model_version,
            "importance_shift": fig.importance_shift,
            "spearman": fig.spearman,
            "top_k_churn": fig.top_k_churn.len(),
            "top_k_entered": fig.top_k_churn,
            "breaching_features": breaching,
            "features": fig.features,
            "limits": {"importance_shift": l.importance_shift, "psi": l.psi},
        }));
        // The event's position in the tenant's feature-importance log tells repeats apart.
        let occurrence = state.counters.feature_importances;
        out.push(Alert::new(
            AlertType::DriftDetected,
            &state.name,
            "tenant",
            computed_at,
            status,
            occurrence,
            data,
        ));
    }
    state.drift_history.push(entry);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fold::stats::Coverage;

    /// The daily report's data written by hand is the text serde_json makes of it, for names
    /// that need escaping or not, counts of every kind and limits of every magnitude, written
    /// anew or kept from the report before.
    #[test]
    fn calibration_json_is_what_serde_json_writes() {
        let c = |hits, n| Coverage { hits, n };
        let counts: [&[(&'static str, Coverage)]; 4] = [
            &[],
            &[("p50", c(0, 0))],
            &[("p10", c(3, 40)), ("p50", c(21, 40)), ("p90", c(40, 40))],
            &[
                ("p05", c(0, 7)),
                ("p10", c(1, 3)),
                ("p95", c(2, 3)),
                ("p05_p95", c(0, 0)),
                ("p10_p90", c(123_456, 1_000_000)),
            ],
        ];
        let names = [
            "acme",
            "a\"b\\c",
            "tab\there",
            "é-ü.x_1",
            "",
            "\u{7f}\u{1}\u{1f}😀",
        ];
        let floats = [
            0.7,
            0.9,
            0.0,
            -0.0,
            1e-7,
            1e21,
            123.456,
            f64::NAN,
            f64::INFINITY,
        ];
        let mut cases = 0;
        for (i, named) in counts.iter().enumerate() {
            for (j, name) in names.iter().enumerate() {
                for (k, &low) in floats.iter().enumerate() {
                    let data = CalibrationData {
                        tenant: name,
                        status: ["ok", "warn_low", "insufficient_data"][k % 3],
                        scope: names[(j + k) % names.len()],
                        as_of: "2026-11-20",
                        window_days: [28, 0, u32::MAX][i % 3],
                        n: [0, 120, u64::MAX][(i + j) % 3],
                        coverage: Shares { named, ci: false },
                        ci: Shares { named, ci: true },
                        trigger: ["as_of", "status_change"][j % 2],
                        limits: CalibrationLimitsData {
                            low,
                            high: floats[(k + 1) % floats.len()],
                            min_n: [30, 0, u64::MAX][k % 3],
                        },
                    };
                    // Twice: the second time with the limits' text kept from the first.
                    for _ in 0..2 {
                        assert_eq!(
                            calibration_json(&data).get(),
                            raw_data(&data).get(),
                            "case {i} {j} {k}"
                        );
                    }
                    cases += 1;
                }
            }
        }
        assert_eq!(cases, 4 * 6 * 9);
    }

    fn window(n: i64, abs_err: f64, ape: f64) -> Window {
        let mut w = Window {
            n,
            n_pos: n,
            ..Window::default()
        };
        w.abs_err.add(abs_err);
        w.ape.add(ape);
        w
    }

    #[test]
    fn performance_fires_on_mape_and_resolves_below_ninety_percent() {
        let l = PerformanceLimits::default();
        let none = Window::default();
        // 20 pairs, mape 0.31 -> fires
        assert!(performance_firing(
            false,
            &window(20, 100.0, 6.2),
            &none,
            &l
        ));
        // 19 pairs: not enough
        assert!(!performance_firing(
            false,
            &window(19, 100.0, 19.0 * 0.5),
            &none,
            &l
        ));
        // firing, mape 0.28: still above 0.27, stays firing
        assert!(performance_firing(true, &window(20, 100.0, 5.6), &none, &l));
        // firing, mape 0.26: resolves
        assert!(!performance_firing(
            true,
            &window(20, 100.0, 5.2),
            &none,
            &l
        ));
    }

    #[test]
    fn performance_fires_on_mae_ratio_only_with_enough_baseline() {
        let l = PerformanceLimits::default();
        // recent mae 16, baseline mae 10 -> ratio 1.6 > 1.5
        let recent = window(20, 320.0, 0.0);
        assert!(performance_firing(
            false,
            &recent,
            &window(20, 200.0, 0.0),
            &l
        ));
        assert!(!performance_firing(
            false,
            &recent,
            &window(19, 190.0, 0.0),
            &l
        ));
        // firing; recent mae 14 < 1.35 * 10 = 13.5? no: 14 > 13.5 stays firing
        assert!(performance_firing(
            true,
            &window(20, 280.0, 0.0),
            &window(20, 200.0, 0.0),
            &l
        ));
        // recent mae 13 < 13.5 resolves
        assert!(!performance_firing(
            true,
            &window(20, 260.0, 0.0),
            &window(20, 200.0, 0.0),
            &l
        ));
    }

    #[test]
    fn calibration_status_bands() {
        let l = CalibrationLimits::default();
        assert_eq!(CalStatus::of(20, 29, &l), CalStatus::InsufficientData);
        assert_eq!(CalStatus::of(20, 30, &l), CalStatus::WarnLow); // 0.667
        assert_eq!(CalStatus::of(21, 30, &l), CalStatus::Ok); // 0.70 is inside
        assert_eq!(CalStatus::of(27, 30, &l), CalStatus::Ok); // 0.90 is inside
        assert_eq!(CalStatus::of(28, 30, &l), CalStatus::WarnHigh);
    }
}
