//! The storage documents of SPEC 6, computed from a tenant's state.
//!
//! Window figures are recomputed from the stored pairs, not read from running sums, so the
//! documents are exact whatever path the state took; this is the slow, plain path, run when a
//! document is written rather than on every record.

use std::collections::BTreeMap;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use super::rules::{CalStatus, DriftEntry};
use super::stats::{ratio, Coverage, CoverageCounts, Pair, Shares, Stats, WindowDoc};
use super::tenant::{
    date_of, date_text, iso_digits, line_actual, Actual, Day, DayData, Line, Shared, TenantState,
};
use crate::alert::push_json_str;

/// The three documents of a tenant.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TenantDocuments {
    pub performance: PerformanceDoc,
    pub calibration: CalibrationHistory,
    pub drift: DriftDoc,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PerformanceDoc {
    pub tenant: String,
    pub as_of: Option<String>,
    /// Keyed `7d`, `28d`, `90d`.
    pub windows: BTreeMap<String, WindowDoc>,
    pub by_channel: BTreeMap<String, BTreeMap<String, WindowDoc>>,
    pub by_horizon: BTreeMap<String, BTreeMap<String, WindowDoc>>,
    pub plans: BTreeMap<String, PlanDoc>,
    pub status: StatusDoc,
    pub tags: Vec<String>,
    pub counts: CountsDoc,
    /// Per channel: how far apart the sources that both report revenue are, over the calibration window.
    pub source_gap: BTreeMap<String, SourceGapDoc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlanDoc {
    pub model_version: Option<String>,
    pub issued_at: Option<String>,
    pub lines: u64,
    pub matched: u64,
    /// Sums over the matched lines, so that planned and actual ROAS compare like with like.
    /// `planned_roas` divides the p50 of the matched lines that carry a planned spend by that
    /// spend, so a line without one does not inflate it.
    pub planned_spend: f64,
    pub predicted_revenue: f64,
    pub actual_spend: f64,
    pub actual_revenue: f64,
    pub planned_roas: Option<f64>,
    pub actual_roas: Option<f64>,
    pub roas_delta: Option<f64>,
    pub roas_delta_pct: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusDoc {
    /// Per scope (`tenant`, `channel:meta`): `firing` or `ok`.
    pub performance: BTreeMap<String, String>,
    /// Per scope (`tenant`, `horizon:0-7`): `ok`, `warn_low`, `warn_high` or `insufficient_data`.
    pub calibration: BTreeMap<String, String>,
    /// `firing` or `ok`.
    pub drift: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CountsDoc {
    /// Outcome records stored now (one per upsert key).
    pub outcomes: u64,
    /// Forecast lines stored now (one per upsert key).
    pub forecast_lines: u64,
    /// Feature-importance events folded.
    pub feature_importances: u64,
    /// Stored lines matched to actuals.
    pub pairs: u64,
    /// Stored lines whose quantiles cross.
    pub crossings: u64,
    /// Records of this tenant refused by validation.
    pub rejected: u64,
    /// Records dropped by retention.
    pub expired: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceGapDoc {
    /// (date, campaign) keys where two or more sources reported revenue.
    pub n: u64,
    pub mean: Option<f64>,
    pub max: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CalibrationDoc {
    pub tenant: String,
    pub window_days: u32,
    pub history: Vec<CalibrationEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CalibrationEntry {
    pub as_of: String,
    pub n: u64,
    pub coverage: BTreeMap<CompactString, f64>,
    pub ci: BTreeMap<CompactString, [f64; 2]>,
    pub status: String,
    pub by_horizon: BTreeMap<String, CalibrationScope>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CalibrationScope {
    pub n: u64,
    pub coverage: BTreeMap<CompactString, f64>,
    pub ci: BTreeMap<CompactString, [f64; 2]>,
    pub status: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DriftDoc {
    pub tenant: String,
    pub history: Vec<DriftEntry>,
}

/// Coverage counts over days `from..=to`, for the tenant (`bucket` None) or one horizon bucket.
pub fn coverage_counts(
    state: &TenantState,
    from: Day,
    to: Day,
    bucket: Option<u8>,
) -> CoverageCounts {
    let i = bucket.map_or(0, |b| 1 + b as usize);
    let mut counts = CoverageCounts::default();
    for data in state.days.range(from..=to).map(|(_, d)| d) {
        if let Some(c) = data.scores.as_ref().and_then(|s| s.coverage.get(i)) {
            counts.merge(c);
        }
    }
    counts
}

fn window_key(days: u32) -> String {
    format!("{days}d")
}

pub fn documents(state: &TenantState, shared: &Shared) -> TenantDocuments {
    TenantDocuments {
        performance: performance(state, shared),
        calibration: calibration(state, shared),
        drift: DriftDoc {
            tenant: state.name.clone(),
            history: state.drift_history.clone(),
        },
    }
}

pub fn performance(state: &TenantState, shared: &Shared) -> PerformanceDoc {
    let config = &shared.config;
    let labels = config.horizon_labels();
    let mut by_channel: BTreeMap<String, BTreeMap<String, WindowDoc>> = BTreeMap::new();
    let mut by_horizon: BTreeMap<String, BTreeMap<String, WindowDoc>> = BTreeMap::new();
    let ranks = &state.source_ranks;

    // Every configured window, bucket and known channel has its window object, empty or not.
    let empty = || {
        config
            .windows
            .iter()
            .map(|&w| (window_key(w), Stats::default().window()))
            .collect()
    };
    let mut windows: BTreeMap<String, WindowDoc> = empty();
    for label in &labels {
        by_horizon.insert(label.clone(), empty());
    }
    for c in 0..state.channels.len() as u32 {
        by_channel.insert(state.channels.name(c).to_owned(), empty());
    }
    if let Some(as_of) = state.as_of {
        // The windows all end at as_of, so each holds the next shorter one: one pass from as_of
        // backwards adds every pair once, to one set of sums, and a window is read off those sums
        // when the pass reaches the first day it does not hold.
        let mut lengths = config.windows.clone();
        lengths.sort_unstable();
        lengths.dedup();
        let mut tenant = Stats::default();
        let mut channels = vec![Stats::default(); state.channels.len()];
        let mut horizons = vec![Stats::default(); labels.len()];
        let mut read_off = |w: u32, tenant: &Stats, channels: &[Stats], horizons: &[Stats]| {
            let key = window_key(w);
            windows.insert(key.clone(), tenant.window());
            for (c, s) in channels.iter().enumerate() {
                by_channel
                    .entry(state.channels.name(c as u32).to_owned())
                    .or_default()
                    .insert(key.clone(), s.window());
            }
            for (b, s) in horizons.iter().enumerate() {
                by_horizon
                    .entry(labels[b].clone())
                    .or_default()
                    .insert(key.clone(), s.window());
            }
        };
        let mut pending = lengths.iter().copied().peekable();
        let longest = lengths.last().copied().unwrap_or(0) as Day;
        for (&day, data) in state.days.range(as_of - longest + 1..=as_of).rev() {
            let age = (as_of - day) as u32;
            while let Some(w) = pending.next_if(|&w| w <= age) {
                read_off(w, &tenant, &channels, &horizons);
            }
            for (&channel, cd) in &data.channels {
                for (line, a) in with_actuals(ranks, data, channel, &cd.lines) {
                    let Some(a) = a else { continue };
                    let set = &state.level_sets[line.levels as usize];
                    let quantiles: smallvec::SmallVec<[(u8, f64); 4]> =
                        set.pairs(&line.values).collect();
                    let pair = Pair {
                        y: a.revenue,
                        quantiles: &quantiles,
                    };
                    tenant.add(&pair);
                    channels[channel as usize].add(&pair);
                    horizons[line.bucket as usize].add(&pair);
                }
            }
        }
        for w in pending {
            read_off(w, &tenant, &channels, &horizons);
        }
    }

    // By plan id (ids are dense); a plan with no line stored has no entry in the document.
    let mut plans: Vec<PlanAcc> = Vec::new();
    plans.resize_with(state.plans.len(), PlanAcc::default);
    let mut pairs = 0;
    let mut crossings = 0;
    for data in state.days.values() {
        for (&channel, cd) in &data.channels {
            for (line, a) in with_actuals(ranks, data, channel, &cd.lines) {
                let id = line.plan as usize;
                if plans.len() <= id {
                    plans.resize_with(id + 1, PlanAcc::default);
                }
                let plan = &mut plans[id];
                plan.lines += 1;
                if line.values.windows(2).any(|w| w[0] > w[1]) {
                    crossings += 1;
                }
                let Some(actual) = a else {
                    continue;
                };
                pairs += 1;
                let p50 = line.values[state.level_sets[line.levels as usize].p50];
                plan.matched += 1;
                if !line.spend.is_nan() {
                    plan.planned_spend.add(line.spend);
                    plan.predicted_with_spend.add(p50);
                }
                plan.predicted.add(p50);
                plan.actual_spend.add(actual.spend);
                plan.actual_revenue.add(actual.revenue);
            }
        }
    }
    let plans = plans
        .into_iter()
        .enumerate()
        .filter(|(_, p)| p.lines > 0)
        .map(|(id, p)| {
            let meta = state.plan_meta.get(id);
            let planned_roas = ratio(p.predicted_with_spend.value(), p.planned_spend.value());
            let actual_roas = ratio(p.actual_revenue.value(), p.actual_spend.value());
            let roas_delta = planned_roas.zip(actual_roas).map(|(plan, act)| act - plan);
            let doc = PlanDoc {
                model_version: meta.and_then(|m| m.model_version.clone()),
                issued_at: meta
                    .and_then(|m| m.issued_at)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
                lines: p.lines,
                matched: p.matched,
                planned_spend: p.planned_spend.value(),
                predicted_revenue: p.predicted.value(),
                actual_spend: p.actual_spend.value(),
                actual_revenue: p.actual_revenue.value(),
                planned_roas,
                actual_roas,
                roas_delta,
                roas_delta_pct: roas_delta
                    .zip(planned_roas)
                    .and_then(|(d, plan)| ratio(d, plan)),
            };
            (state.plans.name(id as u32).to_owned(), doc)
        })
        .collect();

    let (outcomes, forecast_lines) = state.stored_records();
    let rules = &state.rules;
    let mut perf_status = BTreeMap::from([("tenant".to_owned(), firing(rules.perf_tenant))]);
    for (c, &f) in rules.perf_channels.iter().enumerate() {
        perf_status.insert(
            format!("channel:{}", state.channels.name(c as u32)),
            firing(f),
        );
    }
    let mut cal_status =
        BTreeMap::from([("tenant".to_owned(), rules.cal_tenant.as_str().to_owned())]);
    for (b, s) in rules.cal_horizons.iter().enumerate() {
        cal_status.insert(format!("horizon:{}", labels[b]), s.as_str().to_owned());
    }

    PerformanceDoc {
        tenant: state.name.clone(),
        as_of: state.as_of.map(|d| date_of(d).to_string()),
        windows,
        by_channel,
        by_horizon,
        plans,
        status: StatusDoc {
            performance: perf_status,
            calibration: cal_status,
            drift: firing(rules.drift),
        },
        tags: rules.tags().into_iter().map(str::to_owned).collect(),
        counts: CountsDoc {
            outcomes,
            forecast_lines,
            feature_importances: state.counters.feature_importances,
            pairs,
            crossings,
            rejected: state.counters.rejected,
            expired: state.counters.expired,
        },
        source_gap: source_gap(state),
    }
}

fn firing(f: bool) -> String {
    if f { "firing" } else { "ok" }.to_owned()
}

#[derive(Default)]
struct PlanAcc {
    lines: u64,
    matched: u64,
    planned_spend: super::stats::Sum,
    predicted: super::stats::Sum,
    /// p50 of the matched lines that have a planned spend: the numerator of planned ROAS.
    predicted_with_spend: super::stats::Sum,
    actual_spend: super::stats::Sum,
    actual_revenue: super::stats::Sum,
}

/// A channel-day's lines with their actuals. Lines are sorted by campaign, and several plans
/// cover a day: each campaign's actual is looked up once.
fn with_actuals<'a>(
    ranks: &'a [(u16, u16)],
    data: &'a DayData,
    channel: u32,
    lines: &'a [Line],
) -> impl Iterator<Item = (&'a Line, Option<Actual>)> + 'a {
    let mut last: Option<(u32, Option<Actual>)> = None;
    lines.iter().map(move |line| {
        let actual = match last {
            Some((campaign, a)) if campaign == line.campaign => a,
            _ => {
                let a = line_actual(ranks, data, channel, line.campaign);
                last = Some((line.campaign, a));
                a
            }
        };
        (line, actual)
    })
}

/// Relative gap between the sources reporting revenue for the same key: (max - min) / max, which
/// is |a - b| / max(a, b) for two sources.
fn source_gap(state: &TenantState) -> BTreeMap<String, SourceGapDoc> {
    let mut gaps: BTreeMap<&str, (u64, f64, f64)> = BTreeMap::new();
    let Some(as_of) = state.as_of else {
        return BTreeMap::new();
    };
    let from = as_of - state.limits.calibration.window_days as Day + 1;
    for (_, data) in state.days.range(from..=as_of) {
        for (&(channel, _), cell) in &data.cells {
            if cell.reports.len() < 2 {
                continue;
            }
            let max = cell
                .reports
                .iter()
                .map(|r| r.revenue)
                .fold(f64::MIN, f64::max);
            let min = cell
                .reports
                .iter()
                .map(|r| r.revenue)
                .fold(f64::MAX, f64::min);
            let gap = if max > 0.0 { (max - min) / max } else { 0.0 };
            let g = gaps
                .entry(state.channels.name(channel))
                .or_insert((0, 0.0, 0.0));
            g.0 += 1;
            g.1 += gap;
            g.2 = g.2.max(gap);
        }
    }
    gaps.into_iter()
        .map(|(name, (n, sum, max))| {
            (
                name.to_owned(),
                SourceGapDoc {
                    n,
                    mean: ratio(sum, n as f64),
                    max: (n > 0).then_some(max),
                },
            )
        })
        .collect()
}

/// The calibration document of a tenant: one entry a day from its first outcome to as_of, each
/// day's counts summed over the calibration window ending that day.
pub fn calibration(state: &TenantState, shared: &Shared) -> CalibrationHistory {
    let l = &state.limits.calibration;
    let labels = shared.config.horizon_labels();
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.sort_by(|&a, &b| labels[a].cmp(&labels[b]));
    let scopes = labels.len() + 1;
    let mut history = CalibrationHistory {
        tenant: state.name.clone(),
        window_days: l.window_days,
        labels,
        order,
        first: 0,
        scopes: Vec::new(),
    };
    let first = state
        .days
        .iter()
        .find(|(_, d)| !d.cells.is_empty())
        .map(|(day, _)| *day);
    let (Some(first), Some(as_of)) = (first, state.as_of) else {
        return history;
    };
    history.first = first;
    history
        .scopes
        .reserve(scopes * (as_of - first + 1).max(0) as usize);
    let w = l.window_days as Day;
    let mut window: Vec<CoverageCounts> = vec![CoverageCounts::default(); scopes];
    let at = |day: Day, i: usize| {
        state
            .days
            .get(&day)
            .and_then(|d| d.scores.as_ref())
            .and_then(|s| s.coverage.get(i))
    };
    for day in first - w + 1..first {
        for (i, acc) in window.iter_mut().enumerate() {
            if let Some(c) = at(day, i) {
                acc.merge(c);
            }
        }
    }
    for day in first..=as_of {
        for (i, acc) in window.iter_mut().enumerate() {
            if let Some(c) = at(day, i) {
                acc.merge(c);
            }
            if let Some(c) = at(day - w, i) {
                acc.unmerge(c);
            }
            let int = acc.interval(l.interval[0]);
            history.scopes.push(ScopeCounts {
                counts: acc.clone(),
                status: CalStatus::of(int.hits, int.n, l),
            });
        }
    }
    history
}

/// The calibration document (SPEC 6, `_calibration.json`) as the fold computes it: each day's
/// coverage counts per scope. It serializes to exactly the JSON of [`CalibrationDoc`], straight
/// from the counts: building that document's maps, two per scope and day, and dropping them
/// again cost more than writing the JSON. [`CalibrationHistory::doc`] builds the document itself.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationHistory {
    pub tenant: String,
    pub window_days: u32,
    /// Horizon labels by bucket.
    labels: Vec<String>,
    /// The buckets in the order of their labels, the order of the document's `by_horizon` map.
    order: Vec<usize>,
    /// The day of the first entry; the entries follow day by day.
    first: Day,
    /// `labels.len() + 1` scopes a day: the tenant's, then each horizon bucket's.
    scopes: Vec<ScopeCounts>,
}

#[derive(Debug, Clone, PartialEq, Hash)]
struct ScopeCounts {
    counts: CoverageCounts,
    status: CalStatus,
}

impl ScopeCounts {
    /// `"n":..,"coverage":{..},"ci":{..},"status":".."`, as serde_json writes [`Scope`]'s fields.
    fn write_fields(&self, out: &mut Vec<u8>) {
        let named = self.counts.named_sorted();
        out.extend_from_slice(b"\"n\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.counts.n).as_bytes());
        out.extend_from_slice(b",\"coverage\":");
        Shares {
            named: &named,
            ci: false,
        }
        .write_json(out);
        out.extend_from_slice(b",\"ci\":");
        Shares {
            named: &named,
            ci: true,
        }
        .write_json(out);
        out.extend_from_slice(b",\"status\":\"");
        // Statuses are plain ASCII words: nothing to escape.
        out.extend_from_slice(self.status.as_str().as_bytes());
        out.push(b'"');
    }
}

impl CalibrationHistory {
    fn days(&self) -> impl Iterator<Item = (Day, &[ScopeCounts])> + '_ {
        let first = self.first;
        self.scopes
            .chunks(self.labels.len() + 1)
            .enumerate()
            .map(move |(i, scopes)| (first + i as Day, scopes))
    }

    /// About the length of this history's JSON, a little more rather than less: a scope takes
    /// about 60 bytes and 70 more for each quantile or interval (270 bytes with three
    /// quantiles and an interval).
    pub fn json_size_hint(&self) -> usize {
        let keys: usize = self
            .scopes
            .iter()
            .map(|s| s.counts.levels.len() + s.counts.intervals.len())
            .sum();
        128 + self.scopes.len() * 64 + keys * 72
    }

    /// How many entries (days) the history has.
    pub fn entries(&self) -> usize {
        self.scopes.len() / (self.labels.len() + 1)
    }

    /// The day of the first entry.
    pub fn first_day(&self) -> Day {
        self.first
    }

    /// A fingerprint of each entry: a hash of everything its JSON is made from (its day, and
    /// each scope's counts and status; the labels are the same for every entry of a process).
    /// Entries whose JSON differs have different fingerprints (short of a collision of the
    /// 64-bit hash), so a writer that kept the fingerprints of a document it wrote can copy the
    /// entries that did not change from the file instead of rendering them again
    /// (`storage::CalibrationCache`).
    pub fn fingerprints(&self) -> Vec<u64> {
        use std::hash::{Hash, Hasher};
        self.days()
            .map(|(day, scopes)| {
                let mut h = std::hash::DefaultHasher::new();
                (day, scopes).hash(&mut h);
                h.finish()
            })
            .collect()
    }

    /// The start of the document's JSON, up to its first entry. The whole document is this,
    /// then the entries ([`CalibrationHistory::write_entry`]) separated by commas, then
    /// [`CalibrationHistory::JSON_TAIL`]: the same bytes as serializing it at once.
    pub fn write_json_head(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"tenant\":");
        // A string and an integer always serialize.
        serde_json::to_writer(&mut *out, &self.tenant).expect("a string serializes");
        out.extend_from_slice(b",\"window_days\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.window_days).as_bytes());
        out.extend_from_slice(b",\"history\":[");
    }

    /// The JSON of entry `i`, as the document holds it: the bytes serde_json writes for the
    /// entry (its `Serialize`, tested), written directly. A document has an entry a day with
    /// five scopes each, and going through the serializer (every key escaped, every map through
    /// its states) cost more than the rest of writing one.
    pub fn write_entry(&self, i: usize, out: &mut Vec<u8>) {
        let width = self.labels.len() + 1;
        let scopes = &self.scopes[i * width..(i + 1) * width];
        let day = self.first + i as Day;
        out.extend_from_slice(b"{\"as_of\":\"");
        match iso_digits(date_of(day)) {
            Some(digits) => out.extend_from_slice(&digits),
            None => out.extend_from_slice(date_text(day).as_bytes()),
        }
        out.extend_from_slice(b"\",");
        scopes[0].write_fields(out);
        out.extend_from_slice(b",\"by_horizon\":{");
        for (k, &b) in self.order.iter().enumerate() {
            if k > 0 {
                out.push(b',');
            }
            push_json_str(out, &self.labels[b]);
            out.extend_from_slice(b":{");
            scopes[b + 1].write_fields(out);
            out.push(b'}');
        }
        out.extend_from_slice(b"}}");
    }

    /// The whole document's JSON: its head, its entries, its tail.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        self.write_json_head(out);
        for i in 0..self.entries() {
            if i > 0 {
                out.push(b',');
            }
            self.write_entry(i, out);
        }
        out.extend_from_slice(Self::JSON_TAIL);
    }

    /// What the document's JSON ends with after its last entry.
    pub const JSON_TAIL: &'static [u8] = b"]}";

    /// The document, its maps built: what the JSON of this history reads back as.
    pub fn doc(&self) -> CalibrationDoc {
        let scope = |s: &ScopeCounts| {
            let (coverage, ci) = s.counts.shares();
            CalibrationScope {
                n: s.counts.n,
                coverage,
                ci,
                status: s.status.as_str().to_owned(),
            }
        };
        CalibrationDoc {
            tenant: self.tenant.clone(),
            window_days: self.window_days,
            history: self
                .days()
                .map(|(day, scopes)| {
                    let tenant = scope(&scopes[0]);
                    CalibrationEntry {
                        as_of: date_of(day).to_string(),
                        n: tenant.n,
                        coverage: tenant.coverage,
                        ci: tenant.ci,
                        status: tenant.status,
                        by_horizon: self
                            .labels
                            .iter()
                            .zip(&scopes[1..])
                            .map(|(label, s)| (label.clone(), scope(s)))
                            .collect(),
                    }
                })
                .collect(),
        }
    }
}

/// One scope of an entry: its count, coverage, intervals and status.
struct Scope<'a>(&'a ScopeCounts, &'a [(&'static str, Coverage)]);

impl Scope<'_> {
    fn fields<S: serde::ser::SerializeStruct>(&self, s: &mut S) -> Result<(), S::Error> {
        let named = self.1;
        s.serialize_field("coverage", &Shares { named, ci: false })?;
        s.serialize_field("ci", &Shares { named, ci: true })?;
        s.serialize_field("status", self.0.status.as_str())
    }
}

impl Serialize for Scope<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("CalibrationScope", 4)?;
        s.serialize_field("n", &self.0.counts.n)?;
        self.fields(&mut s)?;
        s.end()
    }
}

/// An entry's horizon buckets, in the order of their labels.
struct ByHorizon<'a>(&'a CalibrationHistory, &'a [ScopeCounts]);

impl Serialize for ByHorizon<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.order.len()))?;
        for &b in &self.0.order {
            let scope = &self.1[b + 1];
            let named = scope.counts.named_sorted();
            map.serialize_entry(&self.0.labels[b], &Scope(scope, &named))?;
        }
        map.end()
    }
}

/// One entry of the history: a day and its scopes.
struct Entry<'a>(&'a CalibrationHistory, Day, &'a [ScopeCounts]);

impl Serialize for Entry<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let tenant = &self.2[0];
        let named = tenant.counts.named_sorted();
        let mut s = serializer.serialize_struct("CalibrationEntry", 6)?;
        s.serialize_field("as_of", &date_text(self.1))?;
        s.serialize_field("n", &tenant.counts.n)?;
        Scope(tenant, &named).fields(&mut s)?;
        s.serialize_field("by_horizon", &ByHorizon(self.0, self.2))?;
        s.end()
    }
}

/// The entries, in order.
struct History<'a>(&'a CalibrationHistory);

impl Serialize for History<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.0.entries()))?;
        for (day, scopes) in self.0.days() {
            seq.serialize_element(&Entry(self.0, day, scopes))?;
        }
        seq.end()
    }
}

impl Serialize for CalibrationHistory {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("CalibrationDoc", 3)?;
        s.serialize_field("tenant", &self.tenant)?;
        s.serialize_field("window_days", &self.window_days)?;
        s.serialize_field("history", &History(self))?;
        s.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document written in pieces (head, entries, tail) is the document serialized at
    /// once, and entries whose counts differ have different fingerprints.
    #[test]
    fn a_calibration_history_written_in_pieces_is_its_json() {
        use crate::fold::Engine;
        let engine = Engine::simulated(2, 40);
        for tenant in engine.tenants() {
            let history = engine.documents(tenant).unwrap().calibration;
            assert!(history.entries() >= 39, "{} entries", history.entries());
            let mut pieces = Vec::new();
            history.write_json_head(&mut pieces);
            for i in 0..history.entries() {
                if i > 0 {
                    pieces.push(b',');
                }
                history.write_entry(i, &mut pieces);
            }
            pieces.extend_from_slice(CalibrationHistory::JSON_TAIL);
            let whole = serde_json::to_vec(&history).unwrap();
            assert_eq!(
                String::from_utf8(pieces).unwrap(),
                String::from_utf8(whole.clone()).unwrap()
            );
            let mut written = Vec::new();
            history.write_json(&mut written);
            assert_eq!(written, whole);

            let fingerprints = history.fingerprints();
            assert_eq!(fingerprints.len(), history.entries());
            // A change of one entry's scope changes its fingerprint only: a count, a hit, a
            // horizon bucket's status.
            let width = history.labels.len() + 1;
            type Change = fn(&mut ScopeCounts);
            let changes: [(usize, Change); 3] = [
                (3 * width, |s| s.counts.n += 1),
                (5 * width, |s| s.counts.levels[0].1.hits += 1),
                (7 * width + 2, |s| {
                    s.status = match s.status {
                        CalStatus::Ok => CalStatus::WarnLow,
                        _ => CalStatus::Ok,
                    }
                }),
            ];
            for (at, change) in changes {
                let mut changed = history.clone();
                change(&mut changed.scopes[at]);
                let after = changed.fingerprints();
                let differ: Vec<usize> = (0..fingerprints.len())
                    .filter(|&i| fingerprints[i] != after[i])
                    .collect();
                assert_eq!(differ, [at / width]);
            }
            // The same scopes on another day are another entry.
            let mut later = history.clone();
            later.first += 1;
            let after = later.fingerprints();
            assert!((0..fingerprints.len()).all(|i| fingerprints[i] != after[i]));
        }
    }
}
