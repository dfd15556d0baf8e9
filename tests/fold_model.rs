//! Proves that the incremental fold agrees, after every record, with a naive batch recomputation of
//! SPEC 4 over random streams (corrections, late, out-of-order and expired records included), and
//! that the final figures do not depend on how the three input topics interleave.
//!
//! The model (`mod naive`) shares nothing with `src/fold` but the event and document types: it keeps
//! the whole log and recomputes every figure from scratch, the slow and obvious way.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;

use chrono::{NaiveDate, TimeDelta, TimeZone, Utc};
use compact_str::CompactString;
use feedback::event::{Event, FeatureImportance, Forecast, ForecastLine, Outcome, Quantiles};
use feedback::fold::config::{CalibrationOverrides, LimitOverrides, ReconcileConfig};
use feedback::fold::report::{
    CalibrationDoc, CalibrationEntry, CalibrationScope, CountsDoc, PlanDoc, SourceGapDoc,
    TenantDocuments,
};
use feedback::fold::stats::WindowDoc;
use feedback::fold::{Engine, FoldConfig};
use proptest::prelude::*;
use proptest::sample::Index;

const TENANTS: [&str; 3] = ["t0", "t1", "t2"];
const CHANNELS: [&str; 2] = ["meta", "google"];
const CAMPAIGNS: [&str; 3] = ["", "c1", "c2"];
const SOURCES: [&str; 3] = ["shopify", "meta_ads", "google_ads"];
const PLANS: [&str; 3] = ["plan-a", "plan-b", "plan-c"];
const FEATURES: [&str; 4] = ["meta_spend", "google_spend", "seasonality", "price"];
/// Every date of a stream falls within this many days from `first_day()`.
const DAYS: i64 = 40;

fn first_day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 10, 1).unwrap()
}

/// Test cases to run: `PROPTEST_CASES` when set, else 64.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn fold_matches_naive_model_after_every_record(case in case()) {
        check(&case)?;
    }
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let mut engine = Engine::new(case.config.clone());
    let mut alerts = Vec::new();
    for (k, event) in case.events.iter().enumerate() {
        engine.apply(event, &mut alerts);
        for tenant in TENANTS {
            let want = naive::figures(&case.config, &case.events[..=k], tenant);
            let got = engine.documents(tenant).map(|d| Figures::of(&d));
            let agree = match (&got, &want) {
                (Some(got), Some(want)) => got.close(want),
                (None, None) => Ok(()),
                _ => Err(format!(
                    ": documents exist {}, tenant has records {}",
                    got.is_some(),
                    want.is_some()
                )),
            };
            if let Err(e) = agree {
                let k = k + 1;
                return Err(TestCaseError::fail(format!(
                    "after {k} records, tenant {tenant}: figures{e}"
                )));
            }
        }
    }

    let again = fold(&case.config, &reinterleave(&case.events, &case.shuffle));
    for tenant in TENANTS {
        let (a, b) = (engine.documents(tenant), again.documents(tenant));
        prop_assert_eq!(a.is_some(), b.is_some());
        let (Some(a), Some(b)) = (a, b) else { continue };
        if let Err(e) = Figures::of(&b).close(&Figures::of(&a)) {
            return Err(TestCaseError::fail(format!(
                "tenant {tenant}: another interleaving of the topics changed figures{e}"
            )));
        }
        prop_assert_eq!(
            serde_json::to_value(&b.drift).unwrap(),
            serde_json::to_value(&a.drift).unwrap(),
            "tenant {}: another interleaving of the topics changed the drift history",
            tenant
        );
    }
    Ok(())
}

fn fold(config: &FoldConfig, events: &[Event]) -> Engine {
    let mut engine = Engine::new(config.clone());
    let mut alerts = Vec::new();
    for e in events {
        engine.apply(e, &mut alerts);
    }
    engine
}

/// The same records, each topic in its own order, the topics interleaved differently: shuffle
/// the sequence of topic labels, then deal each topic's records into its slots in order.
fn reinterleave(events: &[Event], shuffle: &[Index]) -> Vec<Event> {
    let mut topics: Vec<_> = events.iter().map(Event::topic).collect();
    for i in (1..topics.len()).rev() {
        let j = shuffle[i % shuffle.len()].index(i + 1);
        topics.swap(i, j);
    }
    let mut queues: BTreeMap<_, VecDeque<&Event>> = BTreeMap::new();
    for e in events {
        queues.entry(e.topic()).or_default().push_back(e);
    }
    topics
        .into_iter()
        .map(|t| queues.get_mut(&t).unwrap().pop_front().unwrap().clone())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// What is compared
// ---------------------------------------------------------------------------------------------

/// The figures of a tenant that SPEC 4 and 6 define, none of which may depend on the path taken.
/// Rule status with hysteresis (performance, drift) and the tags are left out: they may.
#[derive(Debug, Clone)]
struct Figures {
    as_of: Option<String>,
    windows: BTreeMap<String, WindowDoc>,
    /// Channels with a pair in some window; whether an empty channel is listed is not specified.
    by_channel: BTreeMap<String, BTreeMap<String, WindowDoc>>,
    by_horizon: BTreeMap<String, BTreeMap<String, WindowDoc>>,
    plans: BTreeMap<String, PlanDoc>,
    counts: CountsDoc,
    source_gap: BTreeMap<String, SourceGapDoc>,
    /// The calibration rule's status per scope: it has no hysteresis, so it is a figure too.
    calibration_status: BTreeMap<String, String>,
    calibration: CalibrationDoc,
}

impl Figures {
    /// The figures as the fold's documents report them.
    fn of(docs: &TenantDocuments) -> Figures {
        let p = &docs.performance;
        // The calibration document as written: JSON straight from the counts, read back. The
        // document with its maps built must write the very same bytes.
        let written = serde_json::to_string(&docs.calibration).unwrap();
        assert_eq!(
            written,
            serde_json::to_string(&docs.calibration.doc()).unwrap(),
            "the calibration JSON written from the counts is not the document's"
        );
        let mut by_channel = p.by_channel.clone();
        by_channel.retain(|_, windows| windows.values().any(|w| w.n > 0));
        Figures {
            as_of: p.as_of.clone(),
            windows: p.windows.clone(),
            by_channel,
            by_horizon: p.by_horizon.clone(),
            plans: p.plans.clone(),
            counts: p.counts.clone(),
            source_gap: p.source_gap.clone(),
            calibration_status: p.status.calibration.clone(),
            calibration: serde_json::from_str(&written).unwrap(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The naive model
// ---------------------------------------------------------------------------------------------

mod naive {
    use super::*;

    type OutcomeKey<'a> = (NaiveDate, &'a str, &'a str, &'a str);
    type LineKey<'a> = (&'a str, NaiveDate, &'a str, &'a str);
    /// (date, channel, campaign): what reconciliation works on.
    type CellKey<'a> = (NaiveDate, &'a str, &'a str);
    /// An outcome record with its position in the tenant's outcome log.
    type Logged<'a> = (usize, &'a Outcome);

    /// Every figure of `tenant` after the records of `log`, recomputed from scratch; None when the
    /// log holds no record of the tenant.
    pub fn figures(config: &FoldConfig, log: &[Event], tenant: &str) -> Option<Figures> {
        let state = State::of(config, log, tenant)?;
        let cells = state.cells();
        let actuals = state.reconcile(&cells);
        let pairs = state.pairs(&actuals);
        let labels = bucket_labels(config);
        let cal_days = config.limits.calibration.window_days;

        let mut windows = BTreeMap::new();
        let mut by_channel: BTreeMap<String, BTreeMap<String, WindowDoc>> = BTreeMap::new();
        let mut by_horizon: BTreeMap<String, BTreeMap<String, WindowDoc>> = BTreeMap::new();
        let mut calibration_status = BTreeMap::new();
        // SPEC 6 names the window keys: every window and bucket is there, empty before any outcome.
        let channels: BTreeSet<&str> = pairs.iter().map(|p| p.channel).collect();
        for &w in &config.windows {
            let name = format!("{w}d");
            let in_window = match state.as_of {
                Some(as_of) => between(&pairs, window_start(as_of, w), as_of),
                None => Vec::new(),
            };
            windows.insert(name.clone(), window(&in_window));
            for &channel in &channels {
                let these = only(&in_window, |p| p.channel == channel);
                let doc = window(&these);
                by_channel
                    .entry(channel.into())
                    .or_default()
                    .insert(name.clone(), doc);
            }
            for (b, label) in labels.iter().enumerate() {
                let doc = window(&only(&in_window, |p| p.bucket == b));
                by_horizon
                    .entry(label.clone())
                    .or_default()
                    .insert(name.clone(), doc);
            }
        }
        by_channel.retain(|_, windows| windows.values().any(|w| w.n > 0));
        // The calibration rule looks at the window ending at as_of; with no outcome, at nothing.
        let now = match state.as_of {
            Some(as_of) => between(&pairs, window_start(as_of, cal_days), as_of),
            None => Vec::new(),
        };
        calibration_status.insert("tenant".to_owned(), status(&state.rule, &now));
        for (b, label) in labels.iter().enumerate() {
            let these = only(&now, |p| p.bucket == b);
            calibration_status.insert(format!("horizon:{label}"), status(&state.rule, &these));
        }

        Some(Figures {
            as_of: state.as_of.map(|d| d.to_string()),
            windows,
            by_channel,
            by_horizon,
            plans: state.plans(&pairs),
            counts: state.counts(&pairs),
            source_gap: state.source_gaps(&cells),
            calibration_status,
            calibration: CalibrationDoc {
                tenant: tenant.to_owned(),
                window_days: cal_days,
                history: state.calibration_history(&pairs),
            },
        })
    }

    /// What survives of a tenant's records.
    struct State<'a> {
        config: &'a FoldConfig,
        rule: Rule,
        /// The latest outcome date seen.
        as_of: Option<NaiveDate>,
        /// The last record per outcome upsert key.
        outcomes: BTreeMap<OutcomeKey<'a>, Logged<'a>>,
        /// The last line per line upsert key, with the record that wrote it.
        lines: BTreeMap<LineKey<'a>, (&'a Forecast, &'a ForecastLine)>,
        /// Every forecast record of the tenant, in log order.
        forecasts: Vec<&'a Forecast>,
        /// Outcome records and forecast lines whose date fell out of retention.
        expired: u64,
        importances: u64,
    }

    /// One scored prediction: a surviving forecast line matched to reconciled actuals.
    struct Pair<'a> {
        plan: &'a str,
        date: NaiveDate,
        channel: &'a str,
        bucket: usize,
        line: &'a ForecastLine,
        /// Actual revenue and spend: of the line's campaign, or summed over the channel's cells.
        y: f64,
        spend: f64,
    }

    impl<'a> State<'a> {
        fn of(config: &'a FoldConfig, log: &'a [Event], tenant: &str) -> Option<State<'a>> {
            let mut outcome_log = Vec::new();
            let mut forecasts = Vec::new();
            let mut importances = 0;
            let mut importance_dates = Vec::new();
            for e in log.iter().filter(|e| e.tenant() == tenant) {
                match e {
                    Event::Outcome(o) => outcome_log.push(o),
                    Event::Forecast(f) => forecasts.push(f),
                    Event::FeatureImportance(fi) => {
                        importances += 1;
                        importance_dates.push(fi.computed_at.date_naive());
                    }
                }
            }
            if outcome_log.is_empty() && forecasts.is_empty() && importances == 0 {
                return None;
            }
            // The cutoff only grows, so what survives is what the final cutoff keeps.
            let as_of = outcome_log.iter().map(|o| o.date).max();
            // SPEC 4: data older than retention_days before as_of is dropped.
            let cutoff = as_of.map(|a| a - TimeDelta::days(i64::from(config.retention_days)));
            let kept = |date: NaiveDate| cutoff.is_none_or(|c| date >= c);

            let retention = TimeDelta::days(i64::from(config.retention_days));
            // The drift history drops the events older than retention before the latest one
            // (README: its own clock, not as_of); they count as expired too.
            let latest_importance = importance_dates.iter().max().copied();
            let mut expired = latest_importance.map_or(0, |latest| {
                (importance_dates.iter())
                    .filter(|&&d| d < latest - retention)
                    .count() as u64
            });
            let mut outcomes = BTreeMap::new();
            for (pos, o) in outcome_log.into_iter().enumerate() {
                if kept(o.date) {
                    let key = (o.date, &*o.channel, &*o.campaign_id, &*o.source);
                    outcomes.insert(key, (pos, o));
                } else {
                    expired += 1;
                }
            }
            let mut lines = BTreeMap::new();
            for &f in &forecasts {
                for l in &f.lines {
                    if kept(l.date) {
                        lines.insert((&*f.plan_id, l.date, &*l.channel, &*l.campaign_id), (f, l));
                    } else {
                        expired += 1;
                    }
                }
            }
            Some(State {
                config,
                rule: Rule::of(config, tenant),
                as_of,
                outcomes,
                lines,
                forecasts,
                expired,
                importances,
            })
        }

        /// The surviving records of each cell, one per source.
        fn cells(&self) -> BTreeMap<CellKey<'a>, Vec<Logged<'a>>> {
            let mut cells: BTreeMap<CellKey, Vec<Logged>> = BTreeMap::new();
            for (&(date, channel, campaign, _), &record) in &self.outcomes {
                cells
                    .entry((date, channel, campaign))
                    .or_default()
                    .push(record);
            }
            cells
        }

        /// (revenue, spend) per cell, each from its best-ranked source; among sources of equal
        /// rank, the one whose record came last in the outcome log.
        fn reconcile(
            &self,
            cells: &BTreeMap<CellKey<'a>, Vec<Logged<'a>>>,
        ) -> BTreeMap<CellKey<'a>, (f64, f64)> {
            let best = |list: &[String], records: &[Logged<'a>]| -> &'a Outcome {
                let by_rank =
                    |&&(pos, o): &&Logged| (rank(list, &o.source), std::cmp::Reverse(pos));
                records.iter().min_by_key(by_rank).unwrap().1
            };
            let r = &self.config.reconcile;
            cells
                .iter()
                .map(|(&key, records)| {
                    let revenue = best(&r.revenue_sources, records).revenue;
                    let spend = best(&r.spend_sources, records).spend;
                    (key, (revenue, spend))
                })
                .collect()
        }

        /// Lines with campaign `""` take the sum of every cell of their (date, channel), the `""`
        /// row included; other lines their own cell. A line with no such cell is not a pair.
        fn pairs(&self, actuals: &BTreeMap<CellKey<'a>, (f64, f64)>) -> Vec<Pair<'a>> {
            let mut pairs = Vec::new();
            for (&(plan, date, channel, campaign), &(record, line)) in &self.lines {
                let matched: Vec<(f64, f64)> = actuals
                    .iter()
                    .filter(|((d, ch, c), _)| {
                        *d == date && *ch == channel && (campaign.is_empty() || *c == campaign)
                    })
                    .map(|(_, &actual)| actual)
                    .collect();
                if matched.is_empty() {
                    continue;
                }
                let horizon = (date - record.issued_at.date_naive()).num_days();
                pairs.push(Pair {
                    plan,
                    date,
                    channel,
                    bucket: bucket(self.config, horizon),
                    line,
                    y: matched.iter().map(|a| a.0).sum(),
                    spend: matched.iter().map(|a| a.1).sum(),
                });
            }
            pairs
        }

        fn plans(&self, pairs: &[Pair]) -> BTreeMap<String, PlanDoc> {
            let mut lines: BTreeMap<&str, u64> = BTreeMap::new();
            for &(plan, ..) in self.lines.keys() {
                *lines.entry(plan).or_default() += 1;
            }
            lines
                .into_iter()
                .map(|(plan, lines)| {
                    let matched: Vec<&Pair> = pairs.iter().filter(|p| p.plan == plan).collect();
                    let sum = |f: fn(&Pair) -> f64| -> f64 { matched.iter().map(|p| f(p)).sum() };
                    let planned_spend = sum(|p| p.line.spend.unwrap_or(0.0));
                    let predicted_revenue = sum(|p| p.line.revenue.p50().unwrap());
                    let actual_spend = sum(|p| p.spend);
                    let actual_revenue = sum(|p| p.y);
                    // Planned ROAS over the matched lines that carry a planned spend only.
                    let predicted_with_spend = sum(|p| {
                        if p.line.spend.is_some() {
                            p.line.revenue.p50().unwrap()
                        } else {
                            0.0
                        }
                    });
                    let planned_roas = ratio(predicted_with_spend, planned_spend);
                    let actual_roas = ratio(actual_revenue, actual_spend);
                    let roas_delta = planned_roas.zip(actual_roas).map(|(p, a)| a - p);
                    // Plan metadata: from the plan's last record, whatever happened to its lines.
                    let last = self
                        .forecasts
                        .iter()
                        .rev()
                        .find(|f| f.plan_id == plan)
                        .unwrap();
                    let issued_at = last
                        .issued_at
                        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
                    let doc = PlanDoc {
                        model_version: last.model_version.clone(),
                        issued_at: Some(issued_at),
                        lines,
                        matched: matched.len() as u64,
                        planned_spend,
                        predicted_revenue,
                        actual_spend,
                        actual_revenue,
                        planned_roas,
                        actual_roas,
                        roas_delta,
                        roas_delta_pct: roas_delta.zip(planned_roas).and_then(|(d, p)| ratio(d, p)),
                    };
                    (plan.to_owned(), doc)
                })
                .collect()
        }

        fn counts(&self, pairs: &[Pair]) -> CountsDoc {
            let crossing = |line: &ForecastLine| {
                let values: Vec<f64> = line.revenue.iter().map(|(_, v)| v).collect();
                values.windows(2).any(|w| w[0] > w[1])
            };
            CountsDoc {
                outcomes: self.outcomes.len() as u64,
                forecast_lines: self.lines.len() as u64,
                feature_importances: self.importances,
                pairs: pairs.len() as u64,
                crossings: self.lines.values().filter(|(_, l)| crossing(l)).count() as u64,
                rejected: 0,
                expired: self.expired,
            }
        }

        /// Per channel, over the calibration window: cells where two or more sources report
        /// revenue, and how far apart they are, (max - min) / max.
        fn source_gaps(
            &self,
            cells: &BTreeMap<CellKey<'a>, Vec<Logged<'a>>>,
        ) -> BTreeMap<String, SourceGapDoc> {
            let Some(as_of) = self.as_of else {
                return BTreeMap::new();
            };
            let from = window_start(as_of, self.config.limits.calibration.window_days);
            let mut gaps: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
            for (&(date, channel, _), records) in cells {
                if records.len() < 2 || date < from || date > as_of {
                    continue;
                }
                let revenues = || records.iter().map(|r| r.1.revenue);
                let max = revenues().fold(f64::MIN, f64::max);
                let min = revenues().fold(f64::MAX, f64::min);
                let gap = if max > 0.0 { (max - min) / max } else { 0.0 };
                gaps.entry(channel).or_default().push(gap);
            }
            gaps.into_iter()
                .map(|(channel, g)| {
                    let doc = SourceGapDoc {
                        n: g.len() as u64,
                        mean: ratio(g.iter().sum(), g.len() as f64),
                        max: g.iter().copied().reduce(f64::max),
                    };
                    (channel.to_owned(), doc)
                })
                .collect()
        }

        /// One entry per date D from the first surviving outcome date to as_of, over the pairs
        /// dated within the calibration window ending at D.
        fn calibration_history(&self, pairs: &[Pair]) -> Vec<CalibrationEntry> {
            let (Some(as_of), Some(first)) = (self.as_of, self.outcomes.keys().map(|k| k.0).min())
            else {
                return Vec::new();
            };
            let labels = bucket_labels(self.config);
            let days = self.config.limits.calibration.window_days;
            first
                .iter_days()
                .take_while(|d| *d <= as_of)
                .map(|d| {
                    let in_window = between(pairs, window_start(d, days), d);
                    let tenant = coverage(&self.rule, &in_window);
                    let by_horizon = labels
                        .iter()
                        .enumerate()
                        .map(|(b, label)| {
                            let these = only(&in_window, |p| p.bucket == b);
                            (label.clone(), coverage(&self.rule, &these))
                        })
                        .collect();
                    CalibrationEntry {
                        as_of: d.to_string(),
                        n: tenant.n,
                        coverage: tenant.coverage,
                        ci: tenant.ci,
                        status: tenant.status,
                        by_horizon,
                    }
                })
                .collect()
        }
    }

    /// The first day of the `days`-day window that ends on `end`.
    fn window_start(end: NaiveDate, days: u32) -> NaiveDate {
        end - TimeDelta::days(i64::from(days) - 1)
    }

    fn between<'p, 'a>(pairs: &'p [Pair<'a>], from: NaiveDate, to: NaiveDate) -> Vec<&'p Pair<'a>> {
        pairs
            .iter()
            .filter(|p| from <= p.date && p.date <= to)
            .collect()
    }

    fn only<'p, 'a>(pairs: &[&'p Pair<'a>], keep: impl Fn(&Pair) -> bool) -> Vec<&'p Pair<'a>> {
        pairs.iter().copied().filter(|p| keep(p)).collect()
    }

    /// Rank of a source in a priority list: its position, else the position of `*`, else last.
    fn rank(list: &[String], source: &str) -> usize {
        list.iter()
            .position(|s| s == source)
            .or_else(|| list.iter().position(|s| s == "*"))
            .unwrap_or(list.len())
    }

    /// A ratio that is None rather than NaN or infinite.
    fn ratio(num: f64, den: f64) -> Option<f64> {
        (den != 0.0).then(|| num / den).filter(|r| r.is_finite())
    }

    fn key(level: u8) -> String {
        format!("p{level:02}")
    }

    fn bucket_labels(config: &FoldConfig) -> Vec<String> {
        let b = &config.horizon_buckets;
        (0..b.len())
            .map(|i| match b.get(i + 1) {
                Some(next) => format!("{}-{}", b[i], next - 1),
                None => format!("{}+", b[i]),
            })
            .collect()
    }

    fn bucket(config: &FoldConfig, horizon: i64) -> usize {
        let lower_bounds = &config.horizon_buckets;
        lower_bounds
            .iter()
            .rposition(|&lower| i64::from(lower) <= horizon)
            .unwrap()
    }

    fn levels(pairs: &[&Pair]) -> BTreeSet<u8> {
        pairs
            .iter()
            .flat_map(|p| p.line.revenue.iter().map(|(l, _)| l))
            .collect()
    }

    /// (y, value of the quantile) over the pairs whose line has that quantile.
    fn at_level(pairs: &[&Pair], level: u8) -> Vec<(f64, f64)> {
        pairs
            .iter()
            .filter_map(|p| Some((p.y, p.line.revenue.get(level)?)))
            .collect()
    }

    /// (lo, y, hi) over the pairs whose line has both quantiles.
    fn in_interval(pairs: &[&Pair], lo: u8, hi: u8) -> Vec<(f64, f64, f64)> {
        let both = |p: &&&Pair| Some((p.line.revenue.get(lo)?, p.y, p.line.revenue.get(hi)?));
        pairs.iter().filter_map(|p| both(&p)).collect()
    }

    fn window(pairs: &[&Pair]) -> WindowDoc {
        let n = pairs.len();
        let p50 = |p: &Pair| p.line.revenue.p50().unwrap();
        let positive: Vec<&&Pair> = pairs.iter().filter(|p| p.y > 0.0).collect();
        let abs_err: f64 = pairs.iter().map(|p| (p.y - p50(p)).abs()).sum();
        let pinball = levels(pairs)
            .into_iter()
            .map(|level| {
                let q = f64::from(level) / 100.0;
                let at = at_level(pairs, level);
                let loss: f64 = at
                    .iter()
                    .map(|&(y, v)| (q * (y - v)).max((q - 1.0) * (y - v)))
                    .sum();
                (key(level), ratio(loss, at.len() as f64))
            })
            .collect();
        WindowDoc {
            n: n as u64,
            mae: ratio(abs_err, n as f64),
            mape: ratio(
                positive.iter().map(|p| (p.y - p50(p)).abs() / p.y).sum(),
                positive.len() as f64,
            ),
            wape: ratio(abs_err, pairs.iter().map(|p| p.y).sum()),
            bias: ratio(pairs.iter().map(|p| p50(p) - p.y).sum(), n as f64),
            n_zero_actual: (n - positive.len()) as u64,
            pinball,
        }
    }

    fn wilson(hits: usize, n: usize) -> [f64; 2] {
        let z = 1.959_963_984_540_054_f64;
        let (k, n) = (hits as f64, n as f64);
        let p = k / n;
        let denom = 1.0 + z * z / n;
        let centre = (p + z * z / (2.0 * n)) / denom;
        let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
        [(centre - half).max(0.0), (centre + half).min(1.0)]
    }

    /// The calibration rule (SPEC 5) on the watched interval's coverage.
    /// The calibration rule's limits for one tenant: the global ones unless overridden.
    struct Rule {
        interval: [u8; 2],
        min_n: u64,
        low: f64,
        high: f64,
    }

    impl Rule {
        fn of(config: &FoldConfig, tenant: &str) -> Rule {
            let global = &config.limits.calibration;
            let own = config
                .tenants
                .get(tenant)
                .and_then(|o| o.calibration.as_ref());
            Rule {
                interval: global.interval,
                min_n: own.and_then(|o| o.min_n).unwrap_or(global.min_n),
                low: own.and_then(|o| o.low).unwrap_or(global.low),
                high: own.and_then(|o| o.high).unwrap_or(global.high),
            }
        }
    }

    fn status(l: &Rule, pairs: &[&Pair]) -> String {
        let inside = in_interval(pairs, l.interval[0], l.interval[1]);
        let n = inside.len();
        let share = || {
            inside
                .iter()
                .filter(|(lo, y, hi)| lo <= y && y <= hi)
                .count() as f64
                / n as f64
        };
        if n == 0 || (n as u64) < l.min_n {
            "insufficient_data"
        } else if share() < l.low {
            "warn_low"
        } else if share() > l.high {
            "warn_high"
        } else {
            "ok"
        }
        .to_owned()
    }

    /// Coverage of each quantile (y <= value) and of each symmetric interval (lo <= y <= hi).
    fn coverage(rule: &Rule, pairs: &[&Pair]) -> CalibrationScope {
        let mut shares: Vec<(String, usize, usize)> = Vec::new();
        let levels = levels(pairs);
        for &level in &levels {
            let at = at_level(pairs, level);
            let hits = at.iter().filter(|(y, v)| y <= v).count();
            shares.push((key(level), hits, at.len()));
        }
        for &lo in levels.iter().filter(|&&l| l < 50) {
            let inside = in_interval(pairs, lo, 100 - lo);
            let hits = inside
                .iter()
                .filter(|(lo, y, hi)| lo <= y && y <= hi)
                .count();
            if !inside.is_empty() {
                shares.push((format!("{}_{}", key(lo), key(100 - lo)), hits, inside.len()));
            }
        }
        CalibrationScope {
            n: pairs.len() as u64,
            coverage: shares
                .iter()
                .map(|(k, hits, n)| (k.as_str().into(), *hits as f64 / *n as f64))
                .collect(),
            ci: shares
                .iter()
                .map(|(k, hits, n)| (k.as_str().into(), wilson(*hits, *n)))
                .collect(),
            status: status(rule, pairs),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Comparison: numbers within 1e-9 relative, everything else exactly
// ---------------------------------------------------------------------------------------------

/// `self` (the fold) against `want` (the model); the error names the path to the first difference.
trait Close {
    fn close(&self, want: &Self) -> Result<(), String>;
}

fn differ(got: &dyn Debug, want: &dyn Debug) -> Result<(), String> {
    Err(format!(": got {got:?}, want {want:?}"))
}

impl Close for f64 {
    fn close(&self, want: &f64) -> Result<(), String> {
        let (a, b) = (*self, *want);
        let tolerance = 1e-9 * 1f64.max(a.abs()).max(b.abs());
        if a.is_finite() && b.is_finite() && (a - b).abs() <= tolerance {
            Ok(())
        } else {
            differ(&a, &b)
        }
    }
}

macro_rules! close_exact {
    ($($t:ty),*) => {$(
        impl Close for $t {
            fn close(&self, want: &$t) -> Result<(), String> {
                if self == want { Ok(()) } else { differ(self, want) }
            }
        }
    )*};
}
close_exact!(u32, u64, String);

impl<T: Close + Debug> Close for Option<T> {
    fn close(&self, want: &Option<T>) -> Result<(), String> {
        match (self, want) {
            (None, None) => Ok(()),
            (Some(a), Some(b)) => a.close(b),
            _ => differ(self, want),
        }
    }
}

impl Close for [f64; 2] {
    fn close(&self, want: &[f64; 2]) -> Result<(), String> {
        for i in 0..2 {
            self[i].close(&want[i]).map_err(|e| format!("[{i}]{e}"))?;
        }
        Ok(())
    }
}

impl<T: Close> Close for Vec<T> {
    fn close(&self, want: &Vec<T>) -> Result<(), String> {
        if self.len() != want.len() {
            return Err(format!(".len(): got {}, want {}", self.len(), want.len()));
        }
        for (i, (a, b)) in self.iter().zip(want).enumerate() {
            a.close(b).map_err(|e| format!("[{i}]{e}"))?;
        }
        Ok(())
    }
}

impl<K: Ord + Debug, V: Close> Close for BTreeMap<K, V> {
    fn close(&self, want: &BTreeMap<K, V>) -> Result<(), String> {
        if !self.keys().eq(want.keys()) {
            let got: Vec<_> = self.keys().collect();
            let want: Vec<_> = want.keys().collect();
            return Err(format!(" keys: got {got:?}, want {want:?}"));
        }
        for (k, a) in self {
            a.close(&want[k]).map_err(|e| format!("[{k:?}]{e}"))?;
        }
        Ok(())
    }
}

/// Compares every field; the pattern makes a field added to a document a compile error here.
macro_rules! close_fields {
    ($t:ident { $($field:ident),* }) => {
        impl Close for $t {
            fn close(&self, want: &$t) -> Result<(), String> {
                let $t { $($field: _),* } = want;
                $(
                    self.$field
                        .close(&want.$field)
                        .map_err(|e| format!(".{}{e}", stringify!($field)))?;
                )*
                Ok(())
            }
        }
    };
}
close_fields!(WindowDoc {
    n,
    mae,
    mape,
    wape,
    bias,
    n_zero_actual,
    pinball
});
close_fields!(PlanDoc {
    model_version,
    issued_at,
    lines,
    matched,
    planned_spend,
    predicted_revenue,
    actual_spend,
    actual_revenue,
    planned_roas,
    actual_roas,
    roas_delta,
    roas_delta_pct
});
close_fields!(CountsDoc {
    outcomes,
    forecast_lines,
    feature_importances,
    pairs,
    crossings,
    rejected,
    expired
});
close_fields!(SourceGapDoc { n, mean, max });
close_fields!(CalibrationScope {
    n,
    coverage,
    ci,
    status
});
close_fields!(CalibrationEntry {
    as_of,
    n,
    coverage,
    ci,
    status,
    by_horizon
});
close_fields!(CalibrationDoc {
    tenant,
    window_days,
    history
});
close_fields!(Figures {
    as_of,
    windows,
    by_channel,
    by_horizon,
    plans,
    counts,
    source_gap,
    calibration_status,
    calibration
});

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Case {
    config: FoldConfig,
    events: Vec<Event>,
    /// Draws for a second interleaving of the same per-topic sequences.
    shuffle: Vec<Index>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        config(),
        1..=3usize,
        prop::collection::vec(raw_event(), 1..120),
        prop::collection::vec(any::<Index>(), 120),
    )
        .prop_map(|(config, n_tenants, raw, shuffle)| Case {
            config,
            events: Stream {
                len: raw.len(),
                n_tenants,
            }
            .build(&raw),
            shuffle,
        })
}

/// Small windows, retention and calibration window, so that expiry and window edges happen within
/// a 40-day stream; two watched intervals, calibration limits overridden for one tenant or not;
/// three reconciliation settings, one where every source ties.
fn config() -> impl Strategy<Value = FoldConfig> {
    (
        prop::sample::select(vec![12u32, 20, 30]),
        prop::sample::select(vec![5u32, 28]),
        prop::sample::select(vec![[10u8, 90], [25, 75]]),
        any::<bool>(),
        0..3usize,
    )
        .prop_map(
            |(retention_days, calibration_days, interval, override_t1, reconcile)| {
                let mut c = FoldConfig {
                    windows: vec![3, 7, 30],
                    retention_days,
                    horizon_buckets: vec![0, 3, 8, 15],
                    ..FoldConfig::default()
                };
                c.limits.calibration.window_days = calibration_days;
                c.limits.calibration.min_n = 3;
                c.limits.calibration.interval = interval;
                if override_t1 {
                    let calibration = CalibrationOverrides {
                        min_n: Some(1),
                        low: Some(0.5),
                        high: Some(0.8),
                    };
                    let overrides = LimitOverrides {
                        calibration: Some(calibration),
                        ..LimitOverrides::default()
                    };
                    c.tenants.insert("t1".to_owned(), overrides);
                }
                let list = |names: &[&str]| names.iter().map(|s| s.to_string()).collect();
                c.reconcile = match reconcile {
                    0 => ReconcileConfig::default(),
                    1 => ReconcileConfig {
                        revenue_sources: list(&["meta_ads", "google_ads", "shopify"]),
                        spend_sources: list(&["shopify"]),
                    },
                    _ => ReconcileConfig {
                        revenue_sources: list(&["*"]),
                        spend_sources: list(&["*"]),
                    },
                };
                assert!(c.check().is_ok());
                c
            },
        )
}

/// Money: multiples of 0.25 in 0..2000, with zeros and round values often enough to tie.
fn money() -> impl Strategy<Value = f64> {
    prop_oneof![
        1 => Just(0.0),
        2 => prop::sample::select(vec![50.0, 100.0, 250.0, 500.0, 1000.0]),
        5 => (0u32..8000).prop_map(|n| f64::from(n) * 0.25),
    ]
}

/// How far a quantile sits from its neighbour towards p50; negative means the quantiles cross.
fn spread() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => (0u32..2400).prop_map(|n| f64::from(n) * 0.25),
        1 => (1u32..400).prop_map(|n| -f64::from(n) * 0.25),
    ]
}

/// Where a record lands.
#[derive(Debug, Clone)]
enum Place {
    /// `delta` days from the stream's clock at the record's position.
    Near {
        delta: i64,
        channel: usize,
        campaign: usize,
    },
    /// The (date, channel, campaign) of another outcome of the stream, earlier or later.
    Like(Index),
}

/// `like` in 4: how often a record lands on the cell of an outcome rather than near the clock.
fn place(delta: impl Strategy<Value = i64>, like: u32) -> impl Strategy<Value = Place> {
    let near =
        (delta, 0..CHANNELS.len(), 0..CAMPAIGNS.len()).prop_map(|(delta, channel, campaign)| {
            Place::Near {
                delta,
                channel,
                campaign,
            }
        });
    prop_oneof![4 - like => near, like => any::<Index>().prop_map(Place::Like)]
}

#[derive(Debug, Clone)]
enum Raw {
    Outcome(RawOutcome),
    Forecast(RawForecast),
    Importance(RawImportance),
}

#[derive(Debug, Clone)]
struct RawOutcome {
    tenant: usize,
    place: Place,
    /// None with `Place::Like`: the same source as that outcome, so a correction.
    source: Option<usize>,
    spend: f64,
    revenue: f64,
}

#[derive(Debug, Clone)]
struct RawForecast {
    tenant: usize,
    plan: usize,
    /// Days between issued_at and the record's earliest line date: every horizon is >= 0.
    lead: i64,
    hour: u32,
    lines: Vec<RawLine>,
    /// Re-send the tenant, plan and line keys of an earlier forecast record, with new values.
    resend: Option<Index>,
}

#[derive(Debug, Clone)]
struct RawLine {
    place: Place,
    /// Forecast the whole channel (campaign `""`) rather than the place's campaign.
    whole_channel: bool,
    spend: Option<f64>,
    /// 0: p50 only; 1: p10/p50/p90; 2: p05/p10/p50/p90/p95; 3: p10/p50; 4: p25/p50/p75.
    shape: usize,
    p50: f64,
    spreads: [f64; 4],
}

#[derive(Debug, Clone)]
struct RawImportance {
    tenant: usize,
    weights: Vec<(usize, u32)>,
    samples: Option<Vec<u32>>,
}

fn raw_event() -> impl Strategy<Value = Raw> {
    let outcome_delta = prop_oneof![5 => -6i64..=1, 1 => -30i64..=-7];
    let outcome = (
        0..3usize,
        place(outcome_delta, 2),
        prop::option::weighted(0.6, 0..SOURCES.len()),
        money(),
        money(),
    )
        .prop_map(|(tenant, place, source, spend, revenue)| {
            Raw::Outcome(RawOutcome {
                tenant,
                place,
                source,
                spend,
                revenue,
            })
        });
    let forecast = (
        0..3usize,
        0..PLANS.len(),
        0i64..=8,
        0u32..24,
        prop::collection::vec(raw_line(), 1..6),
        prop::option::weighted(0.2, any::<Index>()),
    )
        .prop_map(|(tenant, plan, lead, hour, lines, resend)| {
            Raw::Forecast(RawForecast {
                tenant,
                plan,
                lead,
                hour,
                lines,
                resend,
            })
        });
    let importance = (
        0..3usize,
        prop::collection::vec((0..FEATURES.len(), 1u32..100), 1..5),
        prop::option::of(prop::collection::vec(0u32..1000, 1..20)),
    )
        .prop_map(|(tenant, weights, samples)| {
            Raw::Importance(RawImportance {
                tenant,
                weights,
                samples,
            })
        });
    prop_oneof![6 => outcome, 3 => forecast, 1 => importance]
}

fn raw_line() -> impl Strategy<Value = RawLine> {
    let delta = prop_oneof![5 => -6i64..=6, 1 => -30i64..=-7];
    (
        place(delta, 3),
        prop::bool::weighted(0.3),
        prop::option::weighted(0.7, money()),
        0..5usize,
        money(),
        [spread(), spread(), spread(), spread()],
    )
        .prop_map(
            |(place, whole_channel, spend, shape, p50, spreads)| RawLine {
                place,
                whole_channel,
                spend,
                shape,
                p50,
                spreads,
            },
        )
}

impl RawLine {
    fn quantiles(&self) -> Quantiles {
        let p = self.p50;
        let [a, b, c, d] = self.spreads;
        let levels = match self.shape {
            0 => vec![(50, p)],
            1 => vec![(10, p - a), (50, p), (90, p + b)],
            2 => vec![
                (5, p - a - c),
                (10, p - a),
                (50, p),
                (90, p + b),
                (95, p + b + d),
            ],
            3 => vec![(10, p - a), (50, p)],
            _ => vec![(25, p - a), (50, p), (75, p + b)],
        };
        Quantiles::from_pairs(
            levels
                .into_iter()
                .map(|(level, v)| (level, f64::max(v, 0.0))),
        )
    }
}

/// A (date, channel, campaign) by name.
type Cell = (NaiveDate, CompactString, CompactString);

/// Turns raw draws into valid events. The stream has a clock that walks through the 40 days, so
/// as_of advances and retention expires data part-way; records land around it, some far behind.
struct Stream {
    len: usize,
    n_tenants: usize,
}

impl Stream {
    fn build(&self, raw: &[Raw]) -> Vec<Event> {
        let outcomes = self.outcomes(raw);
        let mut cells: BTreeMap<&str, Vec<Cell>> = BTreeMap::new();
        for o in outcomes.iter().flatten() {
            let cell = (o.date, o.channel.clone(), o.campaign_id.clone());
            cells.entry(&o.tenant).or_default().push(cell);
        }
        let mut sent: Vec<Forecast> = Vec::new();
        let mut events = Vec::new();
        for (i, r) in raw.iter().enumerate() {
            events.push(match r {
                Raw::Outcome(_) => Event::Outcome(outcomes[i].clone().unwrap()),
                Raw::Forecast(f) => {
                    let forecast = self.forecast(i, f, &cells, &sent);
                    sent.push(forecast.clone());
                    Event::Forecast(forecast)
                }
                Raw::Importance(fi) => Event::FeatureImportance(self.importance(i, fi)),
            });
        }
        events
    }

    fn tenant(&self, t: usize) -> String {
        TENANTS[t % self.n_tenants].to_owned()
    }

    /// The cell `delta` days from the clock at position `i`, within the stream's 40 days.
    fn near(&self, i: usize, delta: i64, channel: usize, campaign: usize) -> Cell {
        let clock = i as i64 * DAYS / self.len as i64;
        let date = first_day() + TimeDelta::days((clock + delta).clamp(0, DAYS - 1));
        (date, CHANNELS[channel].into(), CAMPAIGNS[campaign].into())
    }

    /// Outcomes `Like` another copy one placed near the clock: its tenant and cell, and its
    /// source unless they draw their own (so a correction, or a second source for the cell).
    fn outcomes(&self, raw: &[Raw]) -> Vec<Option<Outcome>> {
        let placed = |i: usize, r: &RawOutcome| {
            let (date, channel, campaign_id) = match r.place {
                Place::Near {
                    delta,
                    channel,
                    campaign,
                } => self.near(i, delta, channel, campaign),
                Place::Like(_) => self.near(i, 0, 0, 0),
            };
            Outcome {
                tenant: self.tenant(r.tenant).into(),
                date,
                channel,
                campaign_id,
                spend: r.spend,
                revenue: r.revenue,
                source: SOURCES[r.source.unwrap_or(0)].into(),
                observed_at: None,
            }
        };
        let near: Vec<Outcome> = raw
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match r {
                Raw::Outcome(o) if matches!(o.place, Place::Near { .. }) => Some(placed(i, o)),
                _ => None,
            })
            .collect();
        raw.iter()
            .enumerate()
            .map(|(i, r)| {
                let Raw::Outcome(r) = r else { return None };
                let mut o = placed(i, r);
                if let (Place::Like(ix), false) = (&r.place, near.is_empty()) {
                    let like = &near[ix.index(near.len())];
                    o.tenant = like.tenant.clone();
                    o.date = like.date;
                    o.channel = like.channel.clone();
                    o.campaign_id = like.campaign_id.clone();
                    if r.source.is_none() {
                        o.source = like.source.clone();
                    }
                }
                Some(o)
            })
            .collect()
    }

    /// Lines `Like` an outcome take the cell of one of their own tenant's outcomes.
    fn forecast(
        &self,
        i: usize,
        f: &RawForecast,
        cells: &BTreeMap<&str, Vec<Cell>>,
        sent: &[Forecast],
    ) -> Forecast {
        let (tenant, plan_id, keys): (String, String, Vec<Cell>) = match f.resend {
            Some(ix) if !sent.is_empty() => {
                let old = &sent[ix.index(sent.len())];
                let keys = old
                    .lines
                    .iter()
                    .map(|l| (l.date, l.channel.clone(), l.campaign_id.clone()));
                (
                    old.tenant.to_string(),
                    old.plan_id.to_string(),
                    keys.collect(),
                )
            }
            _ => {
                let tenant = self.tenant(f.tenant);
                let keys = f.lines.iter().map(|l| {
                    let (date, channel, campaign) = match (&l.place, cells.get(&*tenant)) {
                        (Place::Like(ix), Some(cells)) => cells[ix.index(cells.len())].clone(),
                        (
                            &Place::Near {
                                delta,
                                channel,
                                campaign,
                            },
                            _,
                        ) => self.near(i, delta, channel, campaign),
                        (Place::Like(_), None) => self.near(i, 0, 0, 0),
                    };
                    (
                        date,
                        channel,
                        if l.whole_channel {
                            CompactString::default()
                        } else {
                            campaign
                        },
                    )
                });
                let keys = keys.collect();
                (tenant, PLANS[f.plan].to_owned(), keys)
            }
        };
        let first = keys.iter().map(|k| k.0).min().unwrap();
        let issued = first - TimeDelta::days(f.lead);
        let lines = keys
            .into_iter()
            .enumerate()
            .map(|(j, (date, channel, campaign_id))| {
                let l = &f.lines[j % f.lines.len()];
                ForecastLine {
                    date,
                    channel,
                    campaign_id,
                    spend: l.spend,
                    revenue: l.quantiles(),
                }
            })
            .collect();
        Forecast {
            tenant: tenant.into(),
            plan_id: plan_id.into(),
            model_version: Some(format!("mmm-v{i}")),
            issued_at: Utc
                .from_utc_datetime(&issued.and_hms_opt(f.hour, 30, 0).unwrap())
                .fixed_offset(),
            lines,
        }
    }

    fn importance(&self, i: usize, fi: &RawImportance) -> FeatureImportance {
        let midnight = Utc.from_utc_datetime(&first_day().and_hms_opt(0, 0, 0).unwrap());
        let importances = fi
            .weights
            .iter()
            .map(|&(f, w)| (FEATURES[f].to_owned(), f64::from(w)));
        let samples = fi.samples.iter().map(|s| {
            (
                FEATURES[0].to_owned(),
                s.iter().map(|&v| f64::from(v) * 0.5).collect(),
            )
        });
        FeatureImportance {
            tenant: self.tenant(fi.tenant).into(),
            model_version: Some("mmm-v1".to_owned()),
            // Six hours apart in the stream's order: up to 30 days, so that the drift history
            // outgrows the shorter retentions.
            computed_at: midnight + TimeDelta::hours(6 * i as i64),
            method: Some("shap".to_owned()),
            importances: importances.collect(),
            samples: samples.collect(),
        }
    }
}

/// The generators must produce what the property is about; otherwise it passes vacuously.
#[test]
fn generated_streams_exercise_the_interesting_cases() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let strategy = case();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for _ in 0..64 {
        let case = strategy.new_tree(&mut runner).unwrap().current();
        for tenant in TENANTS {
            let Some(f) = naive::figures(&case.config, &case.events, tenant) else {
                continue;
            };
            for (what, yes) in traits(&case, tenant, &f) {
                *seen.entry(what).or_default() += usize::from(yes);
            }
        }
    }
    for (what, n) in &seen {
        assert!(*n >= 10, "only {n} generated tenants had {what}: {seen:?}");
    }
}

/// What a generated stream holds for one tenant, and what its final figures show.
fn traits(case: &Case, tenant: &str, f: &Figures) -> Vec<(&'static str, bool)> {
    let mut outcomes = Vec::new();
    let mut lines = Vec::new();
    let mut importance_dates = Vec::new();
    for (pos, e) in case.events.iter().enumerate() {
        match e {
            Event::Outcome(o) if o.tenant == tenant => outcomes.push((pos, o)),
            Event::FeatureImportance(fi) if fi.tenant == tenant => {
                importance_dates.push(fi.computed_at.date_naive())
            }
            Event::Forecast(fc) if fc.tenant == tenant => {
                lines.extend(fc.lines.iter().map(|l| (pos, &fc.plan_id, l)))
            }
            _ => {}
        }
    }
    let retention = TimeDelta::days(i64::from(case.config.retention_days));
    let outcome_keys: BTreeSet<_> = outcomes
        .iter()
        .map(|(_, o)| (o.date, &o.channel, &o.campaign_id, &o.source))
        .collect();
    let line_keys: BTreeSet<_> = lines
        .iter()
        .map(|(_, plan, l)| (plan, l.date, &l.channel, &l.campaign_id))
        .collect();
    let earlier = |i: usize, late: &dyn Fn(&Outcome, &Outcome) -> bool| {
        outcomes[..i].iter().any(|(_, e)| late(e, outcomes[i].1))
    };
    let history = &f.calibration.history;
    vec![
        ("outcome corrections", outcome_keys.len() < outcomes.len()),
        ("forecast line corrections", line_keys.len() < lines.len()),
        (
            "late outcomes",
            (0..outcomes.len()).any(|i| earlier(i, &|e, o| e.date > o.date)),
        ),
        (
            "outcomes already expired on arrival",
            (0..outcomes.len()).any(|i| earlier(i, &|e, o| e.date - o.date > retention)),
        ),
        (
            "lines before their outcomes",
            lines.iter().any(|(pos, _, l)| {
                outcomes
                    .iter()
                    .any(|(p, o)| p > pos && o.date == l.date && o.channel == l.channel)
            }),
        ),
        (
            "channel lines over several campaigns",
            lines.iter().any(|(_, _, l)| {
                let campaigns: BTreeSet<_> = outcomes
                    .iter()
                    .filter(|(_, o)| o.date == l.date && o.channel == l.channel)
                    .map(|(_, o)| &o.campaign_id)
                    .collect();
                l.campaign_id.is_empty() && campaigns.len() >= 2
            }),
        ),
        ("expired records", f.counts.expired > 0),
        ("crossing lines", f.counts.crossings > 0),
        ("pairs", f.counts.pairs > 0),
        (
            "zero actuals",
            f.windows.values().any(|w| w.n_zero_actual > 0),
        ),
        (
            "3+ horizon buckets",
            f.by_horizon.values().filter(|w| w["30d"].n > 0).count() >= 3,
        ),
        ("source gaps", !f.source_gap.is_empty()),
        (
            "p05_p95 coverage",
            history.iter().any(|h| h.coverage.contains_key("p05_p95")),
        ),
        (
            "a calibration status",
            history.iter().any(|h| h.status != "insufficient_data"),
        ),
        (
            "undefined planned roas",
            f.plans
                .values()
                .any(|p| p.matched > 0 && p.planned_roas.is_none()),
        ),
        ("feature importances", f.counts.feature_importances > 1),
        (
            "drift history past retention",
            importance_dates
                .iter()
                .max()
                .is_some_and(|&latest| importance_dates.iter().any(|&d| d < latest - retention)),
        ),
    ]
}
