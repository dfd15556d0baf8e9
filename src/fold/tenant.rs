//! One tenant's state: outcome cells with their sources, forecast lines joined to actuals, the
//! running windows the rules read, rule status and the drift baseline.
//!
//! Architecture Invariant: the state after a sequence of records depends only on the order of
//! records within each topic, never on how the three topics interleave. Every join is symmetric
//! (whichever side arrives second scores the pair) and every aggregate retracts what it replaces.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate};
use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::config::{FoldConfig, Limits};
use super::drift::{DriftConfig, DriftState};
use super::intern::Interner;
use super::rules::{DriftEntry, RuleState};
use super::snapshot::ChangeSet;
use super::stats::{CoverageCounts, Layout, Sum};
use crate::alert::Alert;
use crate::event::{FeatureImportance, Forecast, Outcome, Quantiles};

/// A date as days since the common era: the fold's unit of event time.
pub type Day = i32;

pub fn day_of(date: NaiveDate) -> Day {
    date.num_days_from_ce()
}

pub fn date_of(day: Day) -> NaiveDate {
    NaiveDate::from_num_days_from_ce_opt(day).unwrap_or_default()
}

/// `YYYY-MM-DD`, as chrono's `Display` writes it, without going through `fmt` (a daily report
/// formats its date twice, and `fmt` cost more than the rest of the alert's id).
pub fn date_text(day: Day) -> String {
    let mut text = String::with_capacity(10);
    push_date(&mut text, day);
    text
}

/// Appends [`date_text`] of `day` to `text`.
pub fn push_date(text: &mut String, day: Day) {
    let date = date_of(day);
    match iso_digits(date) {
        Some(digits) => text.push_str(std::str::from_utf8(&digits).expect("ASCII digits")),
        None => text.push_str(&date.to_string()),
    }
}

/// `YYYY-MM-DD` of a date of a four-digit year, as chrono writes it; `None` for other years
/// (chrono writes those with a sign).
pub fn iso_digits(date: NaiveDate) -> Option<[u8; 10]> {
    let year = u32::try_from(date.year()).ok().filter(|&y| y <= 9999)?;
    let mut text = *b"0000-00-00";
    for (n, at, width) in [(year, 0, 4), (date.month(), 5, 2), (date.day(), 8, 2)] {
        let mut n = n;
        for i in (at..at + width).rev() {
            text[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    }
    Some(text)
}

/// Reconciled actuals of a cell or of a channel-day.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Actual {
    pub revenue: f64,
    pub spend: f64,
}

/// What one source reported for one (date, channel, campaign).
#[derive(Debug, Clone, Copy)]
pub struct Report {
    pub source: u32,
    /// How many records this report absorbed (upserts), so expiry counts every record once.
    pub records: u32,
    /// Position in the tenant's outcome log: among sources of equal rank the latest wins.
    pub seq: u64,
    pub spend: f64,
    pub revenue: f64,
}

/// The outcomes of one (date, channel, campaign): one report per source.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    pub reports: SmallVec<[Report; 1]>,
}

/// The sum of a channel-day's reconciled cells, kept incrementally.
#[derive(Debug, Clone, Copy, Default)]
pub struct Total {
    pub(super) revenue: Sum,
    pub(super) spend: Sum,
    pub(super) cells: u32,
}

impl Total {
    pub fn get(&self) -> Option<Actual> {
        (self.cells > 0).then(|| Actual {
            revenue: self.revenue.value(),
            spend: self.spend.value(),
        })
    }

    fn replace(&mut self, old: Option<Actual>, new: Option<Actual>) {
        if let Some(a) = old {
            self.revenue.sub(a.revenue);
            self.spend.sub(a.spend);
            self.cells -= 1;
        }
        if let Some(a) = new {
            self.revenue.add(a.revenue);
            self.spend.add(a.spend);
            self.cells += 1;
        }
    }
}

/// One forecast line: 64 bytes, most of a tenant's memory is these and the cells.
#[derive(Debug, Clone)]
pub struct Line {
    pub campaign: u32,
    pub plan: u32,
    pub horizon: u32,
    /// Index into the tenant's level sets: which quantiles `values` holds.
    pub levels: u32,
    pub records: u32,
    pub bucket: u8,
    /// Planned spend, NaN when the line had none (kept as NaN to stay at 64 bytes).
    pub spend: f64,
    pub values: SmallVec<[f64; 3]>,
}

/// The lines of one (date, channel), sorted by (campaign, plan), and the channel's total actuals.
#[derive(Debug, Clone, Default)]
pub struct ChannelDay {
    pub total: Total,
    pub lines: Vec<Line>,
}

/// Everything stored for one date.
#[derive(Debug, Clone, Default)]
pub struct DayData {
    pub cells: FxHashMap<(u32, u32), Cell>,
    pub channels: FxHashMap<u32, ChannelDay>,
    /// The day's sums per scope, once the day has a pair.
    pub scores: Option<Box<DayScores>>,
}

/// Sums of one day's pairs per scope. They let the windows move by whole days when as_of
/// advances, instead of by every pair. Each scope keeps what its rules read: the tenant all,
/// a channel the performance rule's sums, a horizon bucket the calibration rule's counts.
#[derive(Debug, Clone, Default)]
pub struct DayScores {
    pub tenant: Window,
    pub horizons: Vec<IntervalCounts>,
    /// (channel id, sums), in the order channels first scored on this day.
    pub channels: SmallVec<[(u32, Window); 4]>,
    /// Coverage counts: index 0 the tenant, 1 + b horizon bucket b.
    pub coverage: Vec<CoverageCounts>,
}

impl DayScores {
    fn new(buckets: usize) -> Self {
        DayScores {
            horizons: vec![IntervalCounts::default(); buckets],
            coverage: vec![CoverageCounts::default(); buckets + 1],
            ..DayScores::default()
        }
    }

    fn channel(&mut self, channel: u32) -> &mut Window {
        let i = match self.channels.iter().position(|c| c.0 == channel) {
            Some(i) => i,
            None => {
                self.channels.push((channel, Window::default()));
                self.channels.len() - 1
            }
        };
        &mut self.channels[i].1
    }
}

/// Which quantiles a line carries, and where p50 and the watched interval sit among them.
#[derive(Debug, Clone)]
pub struct LevelSet {
    pub layout: Layout,
    pub p50: usize,
    pub interval: Option<(usize, usize)>,
}

impl LevelSet {
    pub fn pairs<'a>(&'a self, values: &'a [f64]) -> impl Iterator<Item = (u8, f64)> + Clone + 'a {
        self.layout
            .levels
            .iter()
            .copied()
            .zip(values.iter().copied())
    }
}

#[derive(Debug, Clone, Default)]
pub struct PlanMeta {
    pub issued_at: Option<DateTime<FixedOffset>>,
    pub model_version: Option<String>,
    /// The first and last date the plan has had a line on since the state was built (a line
    /// goes only when its date expires, so once the last one expires the plan has no line
    /// left). Not stored: a restore derives it from the lines.
    pub lines_span: Option<(Day, Day)>,
}

impl PlanMeta {
    pub(super) fn widen_span(&mut self, day: Day) {
        self.lines_span = Some(match self.lines_span {
            Some((first, last)) => (first.min(day), last.max(day)),
            None => (day, day),
        });
    }
}

/// Running sums over one window, enough for the rules: error figures and interval coverage.
#[derive(Debug, Clone, Copy, Default)]
pub struct Window {
    pub n: i64,
    pub n_pos: i64,
    pub abs_err: Sum,
    pub ape: Sum,
    pub y: Sum,
    pub bias: Sum,
    pub int_n: i64,
    pub int_hits: i64,
}

impl Window {
    pub fn merge(&mut self, o: &Window) {
        self.n += o.n;
        self.n_pos += o.n_pos;
        self.abs_err.merge(&o.abs_err);
        self.ape.merge(&o.ape);
        self.y.merge(&o.y);
        self.bias.merge(&o.bias);
        self.int_n += o.int_n;
        self.int_hits += o.int_hits;
    }

    pub fn unmerge(&mut self, o: &Window) {
        self.n -= o.n;
        self.n_pos -= o.n_pos;
        self.abs_err.unmerge(&o.abs_err);
        self.ape.unmerge(&o.ape);
        self.y.unmerge(&o.y);
        self.bias.unmerge(&o.bias);
        self.int_n -= o.int_n;
        self.int_hits -= o.int_hits;
    }

    #[inline]
    fn apply(&mut self, sign: f64, s: &Scored) {
        let err = (s.y - s.p50).abs();
        let k = sign as i64;
        self.n += k;
        self.abs_err.add(sign * err);
        self.y.add(sign * s.y);
        self.bias.add(sign * (s.p50 - s.y));
        if s.y > 0.0 {
            self.n_pos += k;
            self.ape.add(sign * err / s.y);
        }
        if let Some((lo, hi)) = s.interval {
            self.int_n += k;
            self.int_hits += k * i64::from(lo <= s.y && s.y <= hi);
        }
    }

    pub fn mae(&self) -> Option<f64> {
        super::stats::ratio(self.abs_err.value(), self.n as f64)
    }

    pub fn mape(&self) -> Option<f64> {
        super::stats::ratio(self.ape.value(), self.n_pos as f64)
    }

    pub fn wape(&self) -> Option<f64> {
        super::stats::ratio(self.abs_err.value(), self.y.value())
    }

    pub fn bias(&self) -> Option<f64> {
        super::stats::ratio(self.bias.value(), self.n as f64)
    }

    pub fn interval_coverage(&self) -> Option<f64> {
        super::stats::ratio(self.int_hits as f64, self.int_n as f64)
    }
}

/// The watched interval's counts over a window: all the calibration rule reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IntervalCounts {
    /// Pairs whose line carries the interval.
    pub n: i64,
    /// Of those, pairs whose actual lies inside it.
    pub hits: i64,
}

impl IntervalCounts {
    #[inline]
    fn apply(&mut self, sign: f64, s: &Scored) {
        if let Some((lo, hi)) = s.interval {
            let k = sign as i64;
            self.n += k;
            self.hits += k * i64::from(lo <= s.y && s.y <= hi);
        }
    }

    fn merge(&mut self, o: IntervalCounts, add: bool) {
        let k = if add { 1 } else { -1 };
        self.n += k * o.n;
        self.hits += k * o.hits;
    }
}

impl Window {
    /// The window's interval counts.
    pub fn interval(&self) -> IntervalCounts {
        IntervalCounts {
            n: self.int_n,
            hits: self.int_hits,
        }
    }
}

/// The performance rule's two windows, for one scope (the tenant or a channel).
#[derive(Debug, Clone, Copy, Default)]
pub struct RuleWindows {
    pub recent: Window,
    pub baseline: Window,
}

/// The rule windows of every scope of a tenant: the performance rule's per tenant and per
/// channel, the calibration rule's per tenant and per horizon bucket. Nothing else is kept
/// running: a window no rule reads would cost every rescored pair its sums.
#[derive(Debug, Clone, Default)]
pub struct WindowSet {
    pub tenant: RuleWindows,
    pub channels: Vec<RuleWindows>,
    /// The calibration windows: index 0 the tenant, 1 + b horizon bucket b.
    pub calibration: Vec<IntervalCounts>,
}

impl WindowSet {
    fn clear(&mut self) {
        self.tenant = RuleWindows::default();
        self.channels
            .iter_mut()
            .for_each(|w| *w = RuleWindows::default());
        self.calibration
            .iter_mut()
            .for_each(|w| *w = IntervalCounts::default());
    }

    /// Adds (or with `add` false removes) a whole day's sums to the windows of `kind`.
    fn day(&mut self, kind: WindowKind, data: &DayData, add: bool) {
        let Some(scores) = &data.scores else { return };
        let apply = |w: &mut RuleWindows, day: &Window| {
            let target = match kind {
                WindowKind::Recent => &mut w.recent,
                WindowKind::Baseline => &mut w.baseline,
                WindowKind::Calibration => return,
            };
            if add {
                target.merge(day)
            } else {
                target.unmerge(day)
            }
        };
        if kind == WindowKind::Calibration {
            self.calibration[0].merge(scores.tenant.interval(), add);
            for (b, w) in scores.horizons.iter().enumerate() {
                self.calibration[1 + b].merge(*w, add);
            }
            return;
        }
        apply(&mut self.tenant, &scores.tenant);
        for (channel, w) in &scores.channels {
            apply(&mut self.channels[*channel as usize], w);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WindowKind {
    Recent,
    Baseline,
    Calibration,
}

impl WindowKind {
    const ALL: [WindowKind; 3] = [
        WindowKind::Recent,
        WindowKind::Baseline,
        WindowKind::Calibration,
    ];

    /// The window's days relative to as_of, inclusive: recent is `[-(w-1), 0]`.
    fn offsets(self, limits: &Limits) -> (Day, Day) {
        let w = limits.performance.window_days as Day;
        let b = limits.performance.baseline_days as Day;
        let c = limits.calibration.window_days as Day;
        match self {
            WindowKind::Recent => (-(w - 1), 0),
            WindowKind::Baseline => (-(w + b - 1), -w),
            WindowKind::Calibration => (-(c - 1), 0),
        }
    }
}

/// Which rule windows hold a day, given as_of.
#[derive(Debug, Clone, Copy)]
struct InWindows {
    recent: bool,
    baseline: bool,
    calibration: bool,
}

impl InWindows {
    fn of(limits: &Limits, as_of: Option<Day>, day: Day) -> InWindows {
        let outside = InWindows {
            recent: false,
            baseline: false,
            calibration: false,
        };
        // A day past as_of is in no window yet: the record that brings it also moves as_of,
        // and the slide then takes the whole day in.
        let Some(as_of) = as_of.filter(|&a| day <= a) else {
            return outside;
        };
        let p = &limits.performance;
        let recent = day > as_of - p.window_days as Day;
        InWindows {
            recent,
            baseline: !recent && day > as_of - (p.window_days + p.baseline_days) as Day,
            calibration: day > as_of - limits.calibration.window_days as Day,
        }
    }

    /// Moves a pair in (`sign` 1) or out (-1) of the performance windows of a scope that hold
    /// its day.
    fn apply(&self, w: &mut RuleWindows, sign: f64, s: &Scored) {
        if self.recent {
            w.recent.apply(sign, s);
        }
        if self.baseline {
            w.baseline.apply(sign, s);
        }
    }
}

/// Scores pairs into the day sums and the running rule windows.
pub(super) struct Scorer<'a> {
    limits: &'a Limits,
    as_of: Option<Day>,
    sets: &'a [LevelSet],
    windows: &'a mut WindowSet,
}

impl Scorer<'_> {
    /// Moves the pair of `line` from actual revenue `old` to `new` (None: no actual, no pair) in
    /// the day's sums and the running windows.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rescore(
        &mut self,
        scores: &mut Option<Box<DayScores>>,
        day: Day,
        channel: u32,
        line: &Line,
        old: Option<f64>,
        new: Option<f64>,
        dirty: &mut Dirty,
    ) {
        if old == new {
            return;
        }
        let set = &self.sets[line.levels as usize];
        let scored = |y: f64| Scored {
            y,
            p50: line.values[set.p50],
            interval: set
                .interval
                .map(|(lo, hi)| (line.values[lo], line.values[hi])),
        };
        let (old_s, new_s) = (old.map(scored), new.map(scored));
        let apply = |w: &mut Window| {
            if let Some(o) = &old_s {
                w.apply(-1.0, o);
            }
            if let Some(n) = &new_s {
                w.apply(1.0, n);
            }
        };
        let intervals = |w: &mut IntervalCounts| {
            if let Some(o) = &old_s {
                w.apply(-1.0, o);
            }
            if let Some(n) = &new_s {
                w.apply(1.0, n);
            }
        };
        let b = line.bucket as usize;
        let buckets = self.windows.calibration.len() - 1;
        let scores = scores.get_or_insert_with(|| Box::new(DayScores::new(buckets)));
        apply(&mut scores.tenant);
        intervals(&mut scores.horizons[b]);
        apply(scores.channel(channel));
        for i in [0, 1 + b] {
            scores.coverage[i].replace(&set.layout, &line.values, old, new);
        }
        let inw = InWindows::of(self.limits, self.as_of, day);
        if inw.recent || inw.baseline {
            for w in [
                &mut self.windows.tenant,
                &mut self.windows.channels[channel as usize],
            ] {
                if let Some(o) = &old_s {
                    inw.apply(w, -1.0, o);
                }
                if let Some(n) = &new_s {
                    inw.apply(w, 1.0, n);
                }
            }
        }
        if inw.calibration {
            let (tenant, rest) = self.windows.calibration.split_at_mut(1);
            intervals(&mut tenant[0]);
            intervals(&mut rest[b]);
        }
        dirty.mark(channel, line.bucket);
    }
}

/// Reconciles a cell (SPEC 3): per figure, the best-ranked source; among equals, the latest record.
pub fn reconcile(ranks: &[(u16, u16)], cell: &Cell) -> Option<Actual> {
    let best = |rank: fn(&(u16, u16)) -> u16| {
        cell.reports
            .iter()
            .min_by_key(|r| (rank(&ranks[r.source as usize]), std::cmp::Reverse(r.seq)))
    };
    let revenue = best(|r| r.0)?.revenue;
    let spend = best(|r| r.1)?.spend;
    Some(Actual { revenue, spend })
}

/// The actual a line is compared with: its campaign's cell, or the channel total for campaign `""`.
pub fn line_actual(
    ranks: &[(u16, u16)],
    day: &DayData,
    channel: u32,
    campaign: u32,
) -> Option<Actual> {
    if campaign == 0 {
        day.channels.get(&channel).and_then(|cd| cd.total.get())
    } else {
        day.cells
            .get(&(channel, campaign))
            .and_then(|c| reconcile(ranks, c))
    }
}

/// A scored pair reduced to what the rule windows need.
struct Scored {
    y: f64,
    p50: f64,
    interval: Option<(f64, f64)>,
}

/// Scopes whose windows changed since the rules last looked.
#[derive(Debug, Default)]
pub struct Dirty {
    pub tenant: bool,
    pub channels: SmallVec<[u32; 4]>,
    pub horizons: u64,
}

impl Dirty {
    fn mark(&mut self, channel: u32, bucket: u8) {
        self.tenant = true;
        if !self.channels.contains(&channel) {
            self.channels.push(channel);
        }
        self.horizons |= 1 << bucket;
    }

    pub fn is_empty(&self) -> bool {
        !self.tenant
    }
}

/// Counters that are not derived from the stored records.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub feature_importances: u64,
    pub rejected: u64,
    pub expired: u64,
}

/// Settings shared by every tenant, resolved once from the config.
#[derive(Debug, Clone)]
pub struct Shared {
    pub config: FoldConfig,
    pub drift: DriftConfig,
    /// Whether tenants record what changed, for the changelog (`snapshot`).
    pub track_changes: bool,
}

#[derive(Debug, Clone)]
pub struct TenantState {
    pub name: String,
    pub limits: Limits,
    pub channels: Interner,
    pub campaigns: Interner,
    pub sources: Interner,
    /// Per source id: (revenue rank, spend rank).
    pub source_ranks: Vec<(u16, u16)>,
    pub plans: Interner,
    pub plan_meta: Vec<PlanMeta>,
    pub level_sets: Vec<LevelSet>,
    level_set_ids: FxHashMap<Box<[u8]>, u32>,
    pub as_of: Option<Day>,
    /// The retention cutoff last applied: every date before it was dropped.
    pub expired_before: Option<Day>,
    pub days: BTreeMap<Day, DayData>,
    pub(super) outcome_seq: u64,
    pub counters: Counters,
    pub windows: WindowSet,
    pub rules: RuleState,
    pub drift: DriftState,
    pub drift_history: Vec<DriftEntry>,
    /// The date of each drift history entry, to trim the history by retention.
    pub drift_days: Vec<Day>,
    /// The number of the feature-importance event behind each drift history entry (from 0, in
    /// the order folded): its changelog key.
    pub(super) drift_seqs: Vec<u64>,
    /// What changed since the changelog last looked; None when nobody tracks changes.
    pub(super) changes: Option<ChangeSet>,
}

impl TenantState {
    pub fn new(name: &str, shared: &Shared) -> Self {
        let buckets = shared.config.horizon_buckets.len();
        TenantState {
            name: name.to_owned(),
            limits: shared.config.limits_for(name),
            channels: Interner::default(),
            campaigns: Interner::with_empty(),
            sources: Interner::default(),
            source_ranks: Vec::new(),
            plans: Interner::default(),
            plan_meta: Vec::new(),
            level_sets: Vec::new(),
            level_set_ids: FxHashMap::default(),
            as_of: None,
            expired_before: None,
            days: BTreeMap::new(),
            outcome_seq: 0,
            counters: Counters::default(),
            windows: WindowSet {
                calibration: vec![IntervalCounts::default(); buckets + 1],
                ..WindowSet::default()
            },
            rules: RuleState::new(buckets),
            drift: DriftState::default(),
            drift_history: Vec::new(),
            drift_days: Vec::new(),
            drift_seqs: Vec::new(),
            changes: shared.track_changes.then(ChangeSet::default),
        }
    }

    #[inline]
    pub(super) fn mark_head(&mut self) {
        if let Some(c) = self.changes.as_mut() {
            c.head = true;
        }
    }

    #[inline]
    fn mark_day(&mut self, day: Day) {
        if let Some(c) = self.changes.as_mut() {
            c.day(day);
        }
    }

    /// The first day still retained, once an outcome set as_of: SPEC 4 drops data older than
    /// `retention_days` before as_of, so as_of - retention_days is the oldest day kept. Never
    /// before a date already dropped (a longer retention after a restart keeps more of what
    /// comes, and brings back nothing).
    pub fn cutoff(&self, shared: &Shared) -> Option<Day> {
        let cutoff = self.as_of.map(|a| a - shared.config.retention_days as Day);
        cutoff.max(self.expired_before)
    }

    pub(super) fn channel(&mut self, name: &str) -> u32 {
        let id = self.channels.intern(name);
        if self.windows.channels.len() <= id as usize {
            self.windows
                .channels
                .resize(id as usize + 1, RuleWindows::default());
            self.rules.ensure_channels(id as usize + 1);
        }
        id
    }

    pub(super) fn source(&mut self, name: &str, shared: &Shared) -> u32 {
        let id = self.sources.intern(name);
        if self.source_ranks.len() <= id as usize {
            let r = &shared.config.reconcile;
            self.source_ranks.push((
                super::config::ReconcileConfig::rank(&r.revenue_sources, name),
                super::config::ReconcileConfig::rank(&r.spend_sources, name),
            ));
        }
        id
    }

    /// The level set of `q`; `hint` is a set to try first (the previous line's: a plan's lines
    /// nearly always carry the same quantiles), which saves hashing the levels.
    fn level_set(&mut self, q: &Quantiles, hint: Option<u32>, shared: &Shared) -> u32 {
        if let Some(id) = hint {
            let levels = &self.level_sets[id as usize].layout.levels;
            if levels.iter().copied().eq(q.iter().map(|(l, _)| l)) {
                return id;
            }
        }
        let levels: SmallVec<[u8; 8]> = q.iter().map(|(l, _)| l).collect();
        self.level_set_of(&levels, shared)
    }

    /// The id of the level set of these quantile levels (ascending), created on first use.
    pub(super) fn level_set_of(&mut self, levels: &[u8], shared: &Shared) -> u32 {
        if let Some(&id) = self.level_set_ids.get(levels) {
            return id;
        }
        let [lo, hi] = shared.config.limits.calibration.interval;
        let pos = |l: u8| levels.iter().position(|&x| x == l);
        let set = LevelSet {
            layout: Layout::new(levels),
            p50: pos(50).unwrap_or(0),
            interval: pos(lo).zip(pos(hi)),
        };
        let id = self.level_sets.len() as u32;
        self.level_sets.push(set);
        self.level_set_ids.insert(levels.into(), id);
        id
    }

    /// The scorer, the days and the source ranks, borrowed apart so they can be used together.
    pub(super) fn scorer(&mut self) -> (Scorer<'_>, &mut BTreeMap<Day, DayData>, &[(u16, u16)]) {
        (
            Scorer {
                limits: &self.limits,
                as_of: self.as_of,
                sets: &self.level_sets,
                windows: &mut self.windows,
            },
            &mut self.days,
            &self.source_ranks,
        )
    }

    pub fn apply_outcome(&mut self, o: &Outcome, shared: &Shared, out: &mut Vec<Alert>) {
        let day = day_of(o.date);
        let advanced = self.as_of.is_none_or(|a| day > a);
        if !advanced && self.cutoff(shared).is_some_and(|c| day < c) {
            self.counters.expired += 1;
            self.mark_head();
            return;
        }
        self.mark_day(day);
        let channel = self.channel(&o.channel);
        let campaign = self.campaigns.intern(&o.campaign_id);
        let source = self.source(&o.source, shared);
        self.outcome_seq += 1;
        let report = Report {
            source,
            records: 1,
            seq: self.outcome_seq,
            spend: o.spend,
            revenue: o.revenue,
        };

        let ranks = &self.source_ranks;
        let cell = self
            .days
            .entry(day)
            .or_default()
            .cells
            .entry((channel, campaign))
            .or_default();
        let old = reconcile(ranks, cell);
        match cell.reports.iter_mut().find(|r| r.source == source) {
            Some(r) => {
                *r = Report {
                    records: r.records + 1,
                    ..report
                }
            }
            None => cell.reports.push(report),
        }
        let new = reconcile(ranks, cell);

        let mut dirty = Dirty::default();
        if old != new {
            self.actual_changed(day, channel, campaign, old, new, &mut dirty);
        }
        if advanced {
            let old = self.as_of.replace(day);
            self.slide_windows(old);
            self.expire(shared);
            super::rules::on_as_of_advance(self, shared, out);
        } else if !dirty.is_empty() {
            super::rules::on_change(self, &dirty, shared, out);
        }
    }

    /// A cell's reconciled actual changed: rescore the campaign's lines and the channel's lines.
    #[allow(clippy::too_many_arguments)]
    fn actual_changed(
        &mut self,
        day: Day,
        channel: u32,
        campaign: u32,
        old: Option<Actual>,
        new: Option<Actual>,
        dirty: &mut Dirty,
    ) {
        let (mut scorer, days, _) = self.scorer();
        let Some(data) = days.get_mut(&day) else {
            return;
        };
        let cd = data.channels.entry(channel).or_default();
        let old_total = cd.total.get();
        cd.total.replace(old, new);
        let new_total = cd.total.get();
        let lines = &cd.lines;
        let scores = &mut data.scores;
        let channel_lines = lines.partition_point(|l| l.campaign == 0);
        let mut rescore = |line: &Line, old: Option<Actual>, new: Option<Actual>| {
            let revenue = |a: Option<Actual>| a.map(|a| a.revenue);
            scorer.rescore(
                scores,
                day,
                channel,
                line,
                revenue(old),
                revenue(new),
                dirty,
            );
        };
        if campaign != 0 {
            let from = lines.partition_point(|l| l.campaign < campaign);
            let to = lines.partition_point(|l| l.campaign <= campaign);
            for line in &lines[from..to] {
                rescore(line, old, new);
            }
        }
        for line in &lines[..channel_lines] {
            rescore(line, old_total, new_total);
        }
    }

    pub fn apply_forecast(&mut self, f: &Forecast, shared: &Shared, out: &mut Vec<Alert>) {
        let plan = self.plans.intern(&f.plan_id);
        if self.plan_meta.len() <= plan as usize {
            self.plan_meta
                .resize(plan as usize + 1, PlanMeta::default());
        }
        let meta = &mut self.plan_meta[plan as usize];
        meta.issued_at = Some(f.issued_at);
        meta.model_version = f.model_version.clone();
        if let Some(c) = self.changes.as_mut() {
            c.plan(plan);
        }
        let issued = day_of(f.issued_at.date_naive());
        let cutoff = self.cutoff(shared);
        self.mark_head();
        let mut dirty = Dirty::default();
        let mut last_levels = None;
        let mut stored = false;
        // A plan's lines usually come a date at a time: each run of lines of one date has its day
        // looked up, its span widened and its horizon worked out once. Lines of a date that are
        // not together are simply separate runs, with the same result.
        for run in f.lines.chunk_by(|a, b| a.date == b.date) {
            let day = day_of(run[0].date);
            if cutoff.is_some_and(|c| day < c) {
                self.counters.expired += run.len() as u64;
                continue;
            }
            let horizon = (day - issued).max(0) as u32;
            let bucket = shared.config.horizon_bucket(horizon);
            stored = true;
            self.plan_meta[plan as usize].widen_span(day);
            // The names first (interning needs the whole state), in line order as before.
            let mut ids: SmallVec<[(u32, u32, u32); 8]> = SmallVec::with_capacity(run.len());
            for fl in run {
                let channel = self.channel(&fl.channel);
                let campaign = self.campaigns.intern(&fl.campaign_id);
                let levels = self.level_set(&fl.revenue, last_levels, shared);
                last_levels = Some(levels);
                ids.push((channel, campaign, levels));
            }
            let (mut scorer, days, ranks) = self.scorer();
            let data = days.entry(day).or_default();
            for (fl, &(channel, campaign, levels)) in run.iter().zip(&ids) {
                let line = Line {
                    campaign,
                    plan,
                    horizon,
                    levels,
                    records: 1,
                    bucket,
                    spend: fl.spend.unwrap_or(f64::NAN),
                    values: fl.revenue.iter().map(|(_, v)| v).collect(),
                };
                let actual = line_actual(ranks, data, channel, campaign);
                let cd = data.channels.entry(channel).or_default();
                let (i, old) = match cd
                    .lines
                    .binary_search_by_key(&(campaign, plan), |l| (l.campaign, l.plan))
                {
                    Ok(i) => {
                        let records = line.records + cd.lines[i].records;
                        let old = std::mem::replace(&mut cd.lines[i], line);
                        cd.lines[i].records = records;
                        (i, Some(old))
                    }
                    Err(i) => {
                        cd.lines.insert(i, line);
                        (i, None)
                    }
                };
                if let Some(a) = actual {
                    let scores = &mut data.scores;
                    if let Some(old) = &old {
                        scorer.rescore(
                            scores,
                            day,
                            channel,
                            old,
                            Some(a.revenue),
                            None,
                            &mut dirty,
                        );
                    }
                    let line = &cd.lines[i];
                    scorer.rescore(
                        scores,
                        day,
                        channel,
                        line,
                        None,
                        Some(a.revenue),
                        &mut dirty,
                    );
                }
            }
        }
        if let Some(c) = self.changes.as_mut().filter(|_| stored) {
            c.plan_lines(plan);
        }
        if !dirty.is_empty() {
            super::rules::on_change(self, &dirty, shared, out);
        }
    }

    pub fn apply_feature_importance(
        &mut self,
        fi: &FeatureImportance,
        shared: &Shared,
        out: &mut Vec<Alert>,
    ) {
        self.counters.feature_importances += 1;
        if let Some(c) = self.changes.as_mut() {
            c.feature_importance(self.drift.kept().0, self.drift.events_seen());
        }
        let seq = self.drift.events_seen();
        let figures = self.drift.observe(fi, &shared.drift);
        super::rules::on_drift(self, fi, figures, out);
        // The history keeps the events not older than retention before the latest one
        // (feature-importance time only, so the trim does not depend on how the topics
        // interleave).
        let day = day_of(fi.computed_at.date_naive());
        self.drift_days.push(day);
        self.drift_seqs.push(seq);
        let latest = self.drift_days.iter().copied().max().unwrap_or(day);
        let cutoff = latest - shared.config.retention_days as Day;
        if self.drift_days.iter().any(|&d| d < cutoff) {
            let keep = |i: usize| self.drift_days[i] >= cutoff;
            let kept: Vec<bool> = (0..self.drift_days.len()).map(keep).collect();
            // Dropped by retention, so counted as expired (SPEC 4), as outcomes and lines are.
            self.counters.expired += kept.iter().filter(|&&k| !k).count() as u64;
            if let Some(c) = self.changes.as_mut() {
                let gone = self.drift_seqs.iter().zip(&kept).filter(|(_, &k)| !k);
                c.history_removed.extend(gone.map(|(&seq, _)| seq));
            }
            let mut keep = kept.iter().copied();
            self.drift_history.retain(|_| keep.next().unwrap_or(true));
            let mut keep = kept.iter().copied();
            self.drift_seqs.retain(|_| keep.next().unwrap_or(true));
            self.drift_days.retain(|&d| d >= cutoff);
        }
    }

    /// Drops every day before the retention cutoff, counting the records it held.
    fn expire(&mut self, shared: &Shared) {
        let Some(cutoff) = self.cutoff(shared) else {
            return;
        };
        self.expired_before = Some(cutoff);
        while let Some(entry) = self.days.first_entry() {
            if *entry.key() >= cutoff {
                break;
            }
            let day = *entry.key();
            let data = entry.remove();
            if let Some(c) = self.changes.as_mut() {
                c.expired(day, &data, &self.plan_meta);
            }
            let inw = InWindows::of(&self.limits, self.as_of, day);
            for (kind, inside) in [
                (WindowKind::Recent, inw.recent),
                (WindowKind::Baseline, inw.baseline),
                (WindowKind::Calibration, inw.calibration),
            ] {
                if inside {
                    self.windows.day(kind, &data, false);
                }
            }
            let records: u64 = data
                .cells
                .values()
                .flat_map(|c| &c.reports)
                .map(|r| u64::from(r.records))
                .sum::<u64>()
                + data
                    .channels
                    .values()
                    .flat_map(|cd| &cd.lines)
                    .map(|l| u64::from(l.records))
                    .sum::<u64>();
            self.counters.expired += records;
        }
    }

    /// Moves the rule windows from the old as_of to the current one: the days that left a
    /// window come out of it, the days that entered go in. Integer counts move exactly and the
    /// sums are compensated, so this agrees with a rebuild (`rebuilt_windows`, used by the tests).
    fn slide_windows(&mut self, old: Option<Day>) {
        let Some(new) = self.as_of else { return };
        let Some(old) = old else {
            self.windows = self.rebuilt_windows();
            return;
        };
        for kind in WindowKind::ALL {
            let (lo, hi) = kind.offsets(&self.limits);
            let leaving = (old + lo)..=(old + hi).min(new + lo - 1);
            let entering = (old + hi + 1).max(new + lo)..=(new + hi);
            for (_, data) in self.days.range(leaving) {
                self.windows.day(kind, data, false);
            }
            for (_, data) in self.days.range(entering) {
                self.windows.day(kind, data, true);
            }
        }
    }

    /// The rule windows rebuilt from the per-day sums.
    pub fn rebuilt_windows(&self) -> WindowSet {
        let mut windows = self.windows.clone();
        windows.clear();
        let Some(as_of) = self.as_of else {
            return windows;
        };
        for kind in WindowKind::ALL {
            let (lo, hi) = kind.offsets(&self.limits);
            for (_, data) in self.days.range(as_of + lo..=as_of + hi) {
                windows.day(kind, data, true);
            }
        }
        windows
    }

    /// The stored outcome records and forecast lines, for the counts of the storage document.
    pub fn stored_records(&self) -> (u64, u64) {
        let mut outcomes = 0;
        let mut lines = 0;
        for data in self.days.values() {
            outcomes += data
                .cells
                .values()
                .map(|c| c.reports.len() as u64)
                .sum::<u64>();
            lines += data
                .channels
                .values()
                .map(|cd| cd.lines.len() as u64)
                .sum::<u64>();
        }
        (outcomes, lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::fold::{Engine, FoldConfig};
    use crate::simulate::{generate, Scenario, SimConfig, SimPayload};

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
    }

    fn same(a: &Window, b: &Window) -> bool {
        a.n == b.n
            && a.n_pos == b.n_pos
            && a.int_n == b.int_n
            && a.int_hits == b.int_hits
            && close(a.abs_err.value(), b.abs_err.value())
            && close(a.ape.value(), b.ape.value())
            && close(a.y.value(), b.y.value())
            && close(a.bias.value(), b.bias.value())
    }

    fn check(state: &TenantState) {
        let rebuilt = state.rebuilt_windows();
        let pairs = std::iter::once((&state.windows.tenant, &rebuilt.tenant))
            .chain(state.windows.channels.iter().zip(&rebuilt.channels));
        for (running, fresh) in pairs {
            assert!(
                same(&running.recent, &fresh.recent),
                "recent: {running:?} vs {fresh:?}"
            );
            assert!(
                same(&running.baseline, &fresh.baseline),
                "baseline: {running:?} vs {fresh:?}"
            );
        }
        assert_eq!(
            state.windows.calibration, rebuilt.calibration,
            "calibration"
        );
    }

    #[test]
    fn date_text_is_chrono_display() {
        for date in [
            "0001-01-01",
            "0999-12-31",
            "1970-01-01",
            "2024-02-29",
            "9999-12-31",
        ] {
            let day = day_of(date.parse().unwrap());
            assert_eq!(date_text(day), date);
            assert_eq!(date_text(day), date_of(day).to_string());
        }
        let far = day_of(NaiveDate::from_ymd_opt(12345, 6, 7).unwrap());
        assert_eq!(date_text(far), date_of(far).to_string());
    }

    #[test]
    fn drift_history_keeps_the_retention_period_of_the_latest_event() {
        use chrono::TimeZone;
        let mut engine = Engine::new(FoldConfig {
            retention_days: 10,
            ..FoldConfig::default()
        });
        let mut alerts = Vec::new();
        for day in 0..30 {
            let fi = crate::event::FeatureImportance {
                tenant: "acme".into(),
                model_version: None,
                computed_at: chrono::Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap()
                    + chrono::Duration::days(day),
                method: None,
                importances: [("a".to_owned(), 1.0 + day as f64), ("b".to_owned(), 1.0)].into(),
                samples: Default::default(),
            };
            engine.apply(&Event::FeatureImportance(fi), &mut alerts);
        }
        // Retention 10 from the latest event (30 November): 20 November is exactly 10 days
        // before it, not older, so it is kept; 19 November is dropped.
        let history = engine.documents("acme").unwrap().drift.history;
        assert_eq!(history.len(), 11);
        assert!(
            history[0].computed_at.starts_with("2026-11-20"),
            "{}",
            history[0].computed_at
        );
        assert!(history[10].computed_at.starts_with("2026-11-30"));
    }

    /// The running windows, moved by every record and slid on every as_of advance, always equal
    /// windows rebuilt from the per-day sums, also when retention is shorter than the windows.
    #[test]
    fn running_windows_equal_rebuilt_windows() {
        for retention_days in [548, 20] {
            let config = FoldConfig {
                retention_days,
                ..FoldConfig::default()
            };
            let mut engine = Engine::new(config);
            let sim = SimConfig {
                tenants: 2,
                days: 75,
                scenario: Scenario::Degraded,
                ..SimConfig::default()
            };
            let mut records = generate(&sim);
            // Late and corrected records: replay every 5th outcome at the end with a new revenue.
            let late: Vec<_> = records
                .iter()
                .filter_map(|r| match &r.payload {
                    SimPayload::Event(Event::Outcome(o)) => Some(o.clone()),
                    _ => None,
                })
                .step_by(5)
                .map(|mut o| {
                    o.revenue *= 1.7;
                    o
                })
                .collect();
            records.extend(late.into_iter().map(|o| crate::simulate::SimRecord {
                topic: crate::event::Topic::Outcomes,
                tenant: o.tenant.to_string(),
                payload: SimPayload::Event(Event::Outcome(o)),
            }));
            let mut alerts = Vec::new();
            for (i, r) in records.iter().enumerate() {
                let SimPayload::Event(event) = &r.payload else {
                    continue;
                };
                engine.apply(event, &mut alerts);
                if i % 7 == 0 || i + 1 == records.len() {
                    check(engine.tenant(event.tenant()).unwrap());
                }
            }
        }
    }
}
