//! A tenant's state as changelog records, and back (SPEC 7).
//!
//! The processor keeps each tenant's state in the compacted `feedback-state` topic so that a
//! restarted or newly assigned instance can carry on without replaying the inputs. Writing a
//! tenant's whole state on every change would not scale (a year of outcomes and plan lines is
//! megabytes), so the state is cut into records that change independently, each under its own
//! key; compaction keeps the latest of each:
//!
//! | key | holds | written when |
//! |---|---|---|
//! | `{tenant}` | names, how many plans, as_of, the retention cutoff last applied, counters, rule status, alert occurrence counts | the tenant changed |
//! | `{tenant}/plan/{n}` | the n-th plan's id, issue time and model version | a forecast of that plan |
//! | `{tenant}/plan/{n}/lines` | every line the n-th plan has, by date and channel | a forecast of that plan |
//! | `{tenant}/drift` | how many feature-importance events were folded and kept, which history entries there are | a feature-importance event |
//! | `{tenant}/drift/{n}` | the n-th feature-importance event (from 0) as the baseline keeps it | the event joined the baseline |
//! | `{tenant}/drift/history/{n}` | the drift history entry of the n-th feature-importance event | the event was folded |
//! | `{tenant}/day/{YYYY-MM-DD}` | that date's outcome reports and channel totals | an outcome of the date |
//!
//! An expired date's record, the lines of a plan whose last date expired, an event that left
//! the baseline, and a history entry past retention are written as tombstones (no value); a
//! plan whose earlier dates expired keeps their lines in its record until its last one does,
//! and a restore drops them (the head names the cutoff last applied). Each piece is written
//! when it changes and not with the pieces beside it: when a date's record held every plan's
//! lines, a plan rewrote 28 of them whole, and a baseline event was rewritten with each event
//! after it; together that made the changelog bigger than the input (838 MB for 1.1 million
//! input records, 258 MB in format 5). A plan's lines are one record because a plan comes as
//! one record: format 5 wrote them one record per date (`{tenant}/day/{YYYY-MM-DD}/{plan}`),
//! 28 messages for each plan the processor folded, two thirds of the changelog's messages
//! (`examples/statebytes.rs`). Only what cannot be derived is stored: the per-day scope sums and
//! the running rule windows are rebuilt on restore from the stored pairs, the same way the fold
//! keeps them. The channel totals are stored with their compensation term, so a restored
//! tenant publishes the same figures to the last bit.
//!
//! Values are binary (postcard) behind a one-byte format tag (7): as JSON their encoding was a
//! third of the processor's loop. The floats that come from the inputs (spend, revenue,
//! quantile values, feature samples) are written as the decimals they are
//! ([`super::decimals`]): as plain doubles (format 6) they were most of the changelog's bytes.
//! Records of earlier builds are still read, so a changelog written by one is restored as it
//! is: values that start with `{` are the JSON of format 1; format 2 kept the drift baseline
//! whole in `{tenant}/drift`, formats 1 to 3 a date's reports and all its lines in
//! `{tenant}/day/{date}`, formats 1 to 4 the whole drift history in `{tenant}/drift` (rewritten
//! with every feature-importance event, it was a tenth of the processor's loop) and every plan
//! in the head (which grew by a plan a week and was rewritten with every change of the tenant),
//! formats 4 and 5 a plan's lines per date, heads before format 6 no cutoff, and formats before
//! 7 plain doubles. Such a record is rewritten in this format when what it holds next changes;
//! the first commit after the restore rewrites the heads and drift records of formats 1 to 4,
//! every whole day (formats 1 to 3) and every plan whose lines were kept per date (formats 4
//! and 5), and deletes those per-date records. A record of an unknown version is refused
//! instead of being misread. [`readable`] renders any value as JSON for people.
//!
//! Architecture Invariant: like the rest of `fold`, this is pure data to bytes and back. Where
//! the records go is the processor's business.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, FixedOffset, NaiveDate};
use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::decimals::{Decimal, Decimals, DecimalsRef};
use super::drift::{DriftState, KeptEvent};
use super::rules::{CalStatus, DriftEntry};
use super::stats::Sum;
use super::tenant::{
    date_of, day_of, line_actual, push_date, Cell, ChannelDay, Counters, Day, DayData, Line,
    PlanMeta, Report, Shared, TenantState, Total,
};
use crate::alert::AlertType;

/// The format of the records this code writes: postcard behind the tag byte `7`.
pub const FORMAT_VERSION: u32 = 7;

/// Binary formats of earlier builds, still read (postcard behind the tag byte): format 2 kept
/// the drift baseline whole in `{tenant}/drift`, formats 2 and 3 a date's outcome reports and
/// every plan's lines in one `{tenant}/day/{date}`.
const WHOLE_DRIFT_VERSION: u32 = 2;
const WHOLE_DAY_VERSION: u32 = 3;
/// Format 4 split a date's lines by plan, and still kept the drift history in `{tenant}/drift`.
const WHOLE_HISTORY_VERSION: u32 = 4;
/// Format 5 kept each date's lines of a plan in `{tenant}/day/{date}/{plan}`, and its head
/// named no cutoff; its other records are this format's.
const PLAN_DAYS_VERSION: u32 = 5;
/// Format 6 wrote a plan's lines, a date's outcome reports and a baseline event's samples as
/// plain doubles; its other records are this format's.
const PLAIN_FLOATS_VERSION: u32 = 6;

/// The versions of a baseline event record with plain samples, of a drift record holding its
/// history, of a whole day, of a date's actuals with plain floats, of a date's lines of one
/// plan, of the records formats 5 to 7 share (a plan, the drift record, a history entry), and
/// of a head with a cutoff.
const PLAIN_DRIFT_EVENT: &[u32] = &[
    WHOLE_DAY_VERSION,
    WHOLE_HISTORY_VERSION,
    PLAN_DAYS_VERSION,
    PLAIN_FLOATS_VERSION,
];
const WHOLE_HISTORY: &[u32] = &[WHOLE_DAY_VERSION, WHOLE_HISTORY_VERSION];
const WHOLE_DAY: &[u32] = &[JSON_VERSION, WHOLE_DRIFT_VERSION, WHOLE_DAY_VERSION];
const PLAIN_ACTUALS: &[u32] = &[
    WHOLE_HISTORY_VERSION,
    PLAN_DAYS_VERSION,
    PLAIN_FLOATS_VERSION,
];
const PLAN_DAY: &[u32] = &[WHOLE_HISTORY_VERSION, PLAN_DAYS_VERSION];
const SINCE_5: &[u32] = &[PLAN_DAYS_VERSION, PLAIN_FLOATS_VERSION, FORMAT_VERSION];
const SINCE_6: &[u32] = &[PLAIN_FLOATS_VERSION, FORMAT_VERSION];
/// The versions of a drift record whose baseline events are records of their own, and of a
/// date's record holding only its actuals.
const SPLIT_DRIFT: &[u32] = &[
    WHOLE_DAY_VERSION,
    WHOLE_HISTORY_VERSION,
    PLAN_DAYS_VERSION,
    PLAIN_FLOATS_VERSION,
    FORMAT_VERSION,
];
const SPLIT_DAY: &[u32] = &[
    WHOLE_HISTORY_VERSION,
    PLAN_DAYS_VERSION,
    PLAIN_FLOATS_VERSION,
    FORMAT_VERSION,
];

/// The format of earlier builds, still read: JSON objects with `"v": 1`.
const JSON_VERSION: u32 = 1;

/// What changed in a tenant since its changes were last taken.
#[derive(Debug, Clone, Default)]
pub struct ChangeSet {
    pub(super) head: bool,
    pub(super) drift: bool,
    /// The first baseline event not yet written (`drift`), and the oldest one kept when the
    /// changes were last taken: events before the current oldest become tombstones.
    pub(super) drift_from: Option<u64>,
    pub(super) drift_first: Option<u64>,
    /// Dates whose outcome reports or channel totals changed.
    pub(super) days: FxHashSet<Day>,
    /// Plans whose lines changed.
    pub(super) plan_lines: FxHashSet<u32>,
    /// Expired dates.
    pub(super) removed: Vec<Day>,
    /// Plans whose last date with lines expired.
    pub(super) lines_removed: Vec<u32>,
    /// Per-date records of a plan's lines (formats 4 and 5) a restore read: deleted once the
    /// plan's lines are written in this format.
    pub(super) plan_days_removed: Vec<(Day, u32)>,
    /// Drift history entries (by event number) that went past retention.
    pub(super) history_removed: Vec<u64>,
    /// Plans whose id, issue time or model version is new.
    pub(super) plans: FxHashSet<u32>,
}

impl ChangeSet {
    pub fn is_empty(&self) -> bool {
        !self.head
            && !self.drift
            && self.days.is_empty()
            && self.plan_lines.is_empty()
            && self.removed.is_empty()
            && self.lines_removed.is_empty()
            && self.plan_days_removed.is_empty()
            && self.history_removed.is_empty()
    }

    /// The outcome reports or channel totals of `day` changed.
    pub(super) fn day(&mut self, day: Day) {
        self.head = true;
        self.days.insert(day);
    }

    /// A forecast of `plan` came: its issue time and model version are written again.
    pub(super) fn plan(&mut self, plan: u32) {
        self.head = true;
        self.plans.insert(plan);
    }

    /// The lines of `plan` changed (and possibly the names and level sets the head lists).
    /// Its record is written whole: a tombstone planned for it since (its last date expired,
    /// then it came again with later ones) must not follow.
    pub(super) fn plan_lines(&mut self, plan: u32) {
        self.head = true;
        self.plan_lines.insert(plan);
        self.lines_removed.retain(|&p| p != plan);
    }

    /// A feature-importance event numbered `seq` is about to be folded into a baseline whose
    /// oldest event is `first_kept`.
    pub(super) fn feature_importance(&mut self, first_kept: u64, seq: u64) {
        self.head = true;
        self.drift = true;
        self.drift_from.get_or_insert(seq);
        self.drift_first.get_or_insert(first_kept);
    }

    /// `day` expired; `data` is what it held. A plan with lines on it and none later has no
    /// line left: its lines record goes.
    pub(super) fn expired(&mut self, day: Day, data: &DayData, plans: &[PlanMeta]) {
        self.days.remove(&day);
        self.removed.push(day);
        for plan in plans_of(data) {
            let last = plans
                .get(plan as usize)
                .and_then(|p| p.lines_span)
                .map(|s| s.1);
            if last.is_none_or(|last| last <= day) {
                self.plan_lines.remove(&plan);
                self.lines_removed.push(plan);
            }
        }
    }
}

/// One changelog record: a key and its new value, `None` for a tombstone.
#[derive(Debug, Clone, PartialEq)]
pub struct StateRecord {
    pub key: String,
    pub value: Option<Vec<u8>>,
}

/// What a changelog key refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StateKey<'a> {
    Head {
        tenant: &'a str,
    },
    Plan {
        tenant: &'a str,
        plan: u32,
    },
    Drift {
        tenant: &'a str,
    },
    DriftEvent {
        tenant: &'a str,
        seq: u64,
    },
    DriftHistory {
        tenant: &'a str,
        seq: u64,
    },
    Day {
        tenant: &'a str,
        date: NaiveDate,
    },
    PlanDay {
        tenant: &'a str,
        date: NaiveDate,
        plan: u32,
    },
    PlanLines {
        tenant: &'a str,
        plan: u32,
    },
}

impl<'a> StateKey<'a> {
    pub fn parse(key: &'a str) -> Option<StateKey<'a>> {
        let mut parts = key.splitn(3, '/');
        let tenant = parts.next().filter(|t| !t.is_empty())?;
        match (parts.next(), parts.next()) {
            (None, _) => Some(StateKey::Head { tenant }),
            (Some("drift"), None) => Some(StateKey::Drift { tenant }),
            (Some("plan"), Some(n)) if digits(n) => {
                n.parse().ok().map(|plan| StateKey::Plan { tenant, plan })
            }
            (Some("plan"), Some(rest)) => rest
                .strip_suffix("/lines")
                .filter(|n| digits(n))
                .and_then(|n| n.parse().ok())
                .map(|plan| StateKey::PlanLines { tenant, plan }),
            (Some("drift"), Some(n)) if digits(n) => n
                .parse()
                .ok()
                .map(|seq| StateKey::DriftEvent { tenant, seq }),
            (Some("drift"), Some(rest)) => rest
                .strip_prefix("history/")
                .filter(|n| digits(n))
                .and_then(|n| n.parse().ok())
                .map(|seq| StateKey::DriftHistory { tenant, seq }),
            (Some("day"), Some(rest)) => {
                let (date, plan) = match rest.split_once('/') {
                    Some((date, plan)) => (date, Some(plan)),
                    None => (rest, None),
                };
                // Zero-padded only: chrono also takes `2024-1-5`, which would be a second key
                // for the same date.
                let date = (date.len() == 10)
                    .then(|| NaiveDate::parse_from_str(date, "%Y-%m-%d").ok())
                    .flatten()?;
                match plan {
                    None => Some(StateKey::Day { tenant, date }),
                    Some(p) if digits(p) => {
                        p.parse()
                            .ok()
                            .map(|plan| StateKey::PlanDay { tenant, date, plan })
                    }
                    Some(_) => None,
                }
            }
            _ => None,
        }
    }

    pub fn tenant(&self) -> &'a str {
        match *self {
            StateKey::Head { tenant }
            | StateKey::Plan { tenant, .. }
            | StateKey::Drift { tenant }
            | StateKey::DriftEvent { tenant, .. }
            | StateKey::DriftHistory { tenant, .. }
            | StateKey::Day { tenant, .. }
            | StateKey::PlanDay { tenant, .. }
            | StateKey::PlanLines { tenant, .. } => tenant,
        }
    }
}

/// A non-empty run of ASCII digits: `u64::from_str` would also take a leading `+`.
fn digits(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
}

fn head_key(tenant: &str) -> String {
    tenant.to_owned()
}

// The keys are built without `fmt`: a transaction writes one per changed day and plan, and
// `format!` with chrono's date `Display` was a twentieth of the processor's loop.

/// `{tenant}{path}{n}`.
fn numbered_key(tenant: &str, path: &str, n: u64) -> String {
    let mut key = String::with_capacity(tenant.len() + path.len() + 20);
    key.push_str(tenant);
    key.push_str(path);
    key.push_str(itoa::Buffer::new().format(n));
    key
}

fn plan_key(tenant: &str, plan: u32) -> String {
    numbered_key(tenant, "/plan/", u64::from(plan))
}

fn plan_lines_key(tenant: &str, plan: u32) -> String {
    let mut key = plan_key(tenant, plan);
    key.push_str("/lines");
    key
}

fn drift_key(tenant: &str) -> String {
    let mut key = String::with_capacity(tenant.len() + 6);
    key.push_str(tenant);
    key.push_str("/drift");
    key
}

fn drift_event_key(tenant: &str, seq: u64) -> String {
    numbered_key(tenant, "/drift/", seq)
}

fn drift_history_key(tenant: &str, seq: u64) -> String {
    numbered_key(tenant, "/drift/history/", seq)
}

fn day_key(tenant: &str, day: Day) -> String {
    let mut key = String::with_capacity(tenant.len() + 16);
    key.push_str(tenant);
    key.push_str("/day/");
    push_date(&mut key, day);
    key
}

fn plan_day_key(tenant: &str, day: Day, plan: u32) -> String {
    let mut key = String::with_capacity(tenant.len() + 27);
    key.push_str(tenant);
    key.push_str("/day/");
    push_date(&mut key, day);
    key.push('/');
    key.push_str(itoa::Buffer::new().format(plan));
    key
}

/// A state record that cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("state record {key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: &str, reason: impl ToString) -> SnapshotError {
    SnapshotError::Invalid {
        key: key.to_owned(),
        reason: reason.to_string(),
    }
}

/// `{tenant}` of formats 1 to 4: every plan inside. Read, no longer written.
#[derive(Serialize, Deserialize)]
struct HeadWithPlans {
    v: u32,
    channels: Vec<String>,
    campaigns: Vec<String>,
    sources: Vec<String>,
    plans: Vec<PlanRecord>,
    level_sets: Vec<Vec<u8>>,
    as_of: Option<NaiveDate>,
    outcome_seq: u64,
    feature_importances: u64,
    rejected: u64,
    expired: u64,
    rules: RulesRecord,
}

impl HeadWithPlans {
    /// The head of this format, and the plans it no longer holds.
    fn split(self) -> (Head, Vec<PlanRecord>) {
        let head = Head {
            v: self.v,
            channels: self.channels,
            campaigns: self.campaigns,
            sources: self.sources,
            plans: self.plans.len() as u32,
            level_sets: self.level_sets,
            as_of: self.as_of.map(IsoDate),
            outcome_seq: self.outcome_seq,
            feature_importances: self.feature_importances,
            rejected: self.rejected,
            expired: self.expired,
            rules: self.rules,
            expired_before: None,
        };
        (head, self.plans)
    }
}

/// `{tenant}`: the plans are `{tenant}/plan/{n}` for n in `0..plans`.
#[derive(Serialize, Deserialize)]
struct Head {
    v: u32,
    channels: Vec<String>,
    campaigns: Vec<String>,
    sources: Vec<String>,
    plans: u32,
    /// The quantile levels of each level set, in id order.
    level_sets: Vec<Vec<u8>>,
    as_of: Option<IsoDate>,
    outcome_seq: u64,
    feature_importances: u64,
    rejected: u64,
    expired: u64,
    rules: RulesRecord,
    /// The retention cutoff last applied: lines a plan's record still holds of earlier dates
    /// are not restored.
    expired_before: Option<IsoDate>,
}

/// `{tenant}` of format 5: no cutoff (its lines were deleted with their dates). Read, no
/// longer written.
#[derive(Serialize, Deserialize)]
struct HeadWithoutCutoff {
    v: u32,
    channels: Vec<String>,
    campaigns: Vec<String>,
    sources: Vec<String>,
    plans: u32,
    /// The quantile levels of each level set, in id order.
    level_sets: Vec<Vec<u8>>,
    as_of: Option<NaiveDate>,
    outcome_seq: u64,
    feature_importances: u64,
    rejected: u64,
    expired: u64,
    rules: RulesRecord,
}

impl HeadWithoutCutoff {
    fn with_cutoff(self) -> Head {
        Head {
            v: self.v,
            channels: self.channels,
            campaigns: self.campaigns,
            sources: self.sources,
            plans: self.plans,
            level_sets: self.level_sets,
            as_of: self.as_of.map(IsoDate),
            outcome_seq: self.outcome_seq,
            feature_importances: self.feature_importances,
            rejected: self.rejected,
            expired: self.expired,
            rules: self.rules,
            expired_before: None,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct PlanRecord {
    id: String,
    issued_at: Option<DateTime<FixedOffset>>,
    model_version: Option<String>,
}

/// `{tenant}/plan/{n}`.
#[derive(Serialize, Deserialize)]
struct PlanEntryRecord {
    v: u32,
    plan: PlanRecord,
}

#[derive(Serialize, Deserialize)]
struct RulesRecord {
    perf_tenant: bool,
    perf_channels: Vec<bool>,
    cal_tenant: CalStatus,
    cal_horizons: Vec<CalStatus>,
    drift: bool,
    /// (type, scope, status, count) of the alerts published at the current as_of.
    occurrences: Vec<(AlertType, String, String, u64)>,
}

/// `{tenant}/drift` of formats 1 and 2: the baseline whole. Read, no longer written.
#[derive(Serialize, Deserialize)]
struct DriftRecord {
    v: u32,
    state: DriftState,
    history: Vec<DriftEntry>,
    days: Vec<NaiveDate>,
}

/// `{tenant}/drift` of formats 3 and 4: the baseline's events apart, the history inside. Read,
/// no longer written.
#[derive(Serialize, Deserialize)]
struct DriftHeadWithHistory {
    v: u32,
    seen: u64,
    kept: u64,
    history: Vec<DriftEntry>,
    days: Vec<NaiveDate>,
}

/// `{tenant}/drift`: the baseline's events are `{tenant}/drift/{n}` for n in
/// `seen - kept .. seen`; the history's entries, oldest first, are
/// `{tenant}/drift/history/{n}` for the (n, date) of `history`.
#[derive(Serialize, Deserialize)]
struct DriftHead {
    v: u32,
    seen: u64,
    kept: u64,
    history: Vec<(u64, IsoDate)>,
}

/// `{tenant}/drift/history/{n}`: the history entry of the n-th feature-importance event.
#[derive(Serialize, Deserialize)]
struct DriftHistoryRecord {
    v: u32,
    entry: DriftEntry,
}

#[derive(Serialize)]
struct DriftHistoryRef<'a> {
    v: u32,
    entry: &'a DriftEntry,
}

/// `{tenant}/drift/{n}`: one event of the baseline; `E` is [`KeptEvent`] (its samples as plain
/// doubles) in formats 3 to 6.
#[derive(Serialize, Deserialize)]
struct DriftEventRecord<E = KeptEventRecord> {
    v: u32,
    event: E,
}

/// A baseline event as this format keeps it: its shares, and its sorted samples as decimals.
#[derive(Serialize, Deserialize)]
struct KeptEventRecord {
    shares: BTreeMap<String, f64>,
    order_statistics: BTreeMap<String, Decimals>,
}

#[derive(Serialize)]
struct KeptEventRef<'a> {
    shares: &'a BTreeMap<String, f64>,
    order_statistics: BTreeMap<&'a str, DecimalsRef<'a>>,
}

#[derive(Serialize)]
struct DriftEventRef<'a> {
    v: u32,
    event: KeptEventRef<'a>,
}

#[derive(Serialize, Deserialize)]
struct DayRecord {
    v: u32,
    cells: Vec<PlainCellRecord>,
    channels: Vec<ChannelRecord>,
}

/// `{tenant}/day/{date}` of this format: the date's outcome reports and channel totals (every
/// channel the date has, lines or not); `C` is [`PlainCellRecord`] in formats 4 to 6.
#[derive(Serialize, Deserialize)]
struct ActualsRecord<C = CellRecord> {
    v: u32,
    cells: Vec<C>,
    totals: Vec<(u32, TotalRecord)>,
}

/// `{tenant}/day/{date}/{plan}` of formats 4 and 5: one plan's lines for the date. Read, no
/// longer written.
#[derive(Serialize, Deserialize)]
struct PlanDayRecord {
    v: u32,
    channels: LinesOf<PlainLineRecord>,
}

/// `{tenant}/plan/{n}/lines`: the plan's lines, by date (ascending) and channel; `L` is
/// [`PlainLineRecord`] in format 6.
#[derive(Serialize, Deserialize)]
struct PlanLinesRecord<L = PlanLineRecord> {
    v: u32,
    days: Vec<(IsoDate, LinesOf<L>)>,
}

/// A date of a state record, as chrono's serde writes and reads it (`YYYY-MM-DD`), written
/// without `fmt`: through chrono's `Debug` the dates of the plans' lines, the heads and the
/// drift histories were a tenth of the instructions of taking a tenant's changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(transparent)]
struct IsoDate(NaiveDate);

impl IsoDate {
    fn of(day: Day) -> IsoDate {
        IsoDate(date_of(day))
    }

    fn day(self) -> Day {
        day_of(self.0)
    }
}

impl Serialize for IsoDate {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match super::tenant::iso_digits(self.0) {
            Some(digits) => {
                serializer.serialize_str(std::str::from_utf8(&digits).expect("ASCII digits"))
            }
            None => self.0.serialize(serializer),
        }
    }
}

/// One plan's lines of a date: (channel, lines), ascending by channel.
type LinesOf<L> = Vec<(u32, Vec<L>)>;

type ChannelLines = LinesOf<PlanLineRecord>;

/// (campaign, horizon, level set, records, planned spend, quantile values).
type LineOf<F, V> = (u32, u32, u32, u32, Option<F>, V);
type PlanLineRecord = LineOf<Decimal, Decimals>;

/// A [`PlanLineRecord`] as written, its values borrowed from the state.
type PlanLineRef<'a> = LineOf<Decimal, DecimalsRef<'a>>;

/// A [`PlanLineRecord`] with plain doubles (formats 4 to 6).
type PlainLineRecord = LineOf<f64, Vec<f64>>;

fn from_plain_lines(channels: LinesOf<PlainLineRecord>) -> ChannelLines {
    (channels.into_iter())
        .map(|(channel, lines)| {
            let lines = (lines.into_iter())
                .map(|(c, h, l, r, spend, values)| {
                    (c, h, l, r, spend.map(Decimal), Decimals(values))
                })
                .collect();
            (channel, lines)
        })
        .collect()
}

/// (revenue hi, revenue lo, spend hi, spend lo, cells).
type TotalRecord = (f64, f64, f64, f64, u32);

/// (channel, campaign, reports as (source, records, seq, spend, revenue)).
type CellOf<F> = (u32, u32, Vec<(u32, u32, u64, F, F)>);
type CellRecord = CellOf<Decimal>;

/// A [`CellRecord`] with plain doubles (formats 1 to 6).
type PlainCellRecord = CellOf<f64>;

/// A float of a record: a plain double (formats 1 to 6) or a [`Decimal`].
trait Float: Copy {
    fn get(self) -> f64;
}

impl Float for f64 {
    fn get(self) -> f64 {
        self
    }
}

impl Float for Decimal {
    fn get(self) -> f64 {
        self.0
    }
}

/// (channel, total as (revenue hi, revenue lo, spend hi, spend lo, cells), lines).
type ChannelRecord = (u32, (f64, f64, f64, f64, u32), Vec<LineRecord>);

/// (campaign, plan, horizon, level set, records, planned spend, quantile values).
type LineRecord = (u32, u32, u32, u32, u32, Option<f64>, Vec<f64>);

const STATUSES: [&str; 6] = [
    "firing",
    "resolved",
    "ok",
    "warn_low",
    "warn_high",
    "insufficient_data",
];

thread_local! {
    /// Where records are encoded before they are copied out at their exact size: growing a
    /// fresh vector to a 20 KB drift record took a dozen reallocations and fresh pages each
    /// time (measured: 9% of the processor's loop in the kernel zeroing pages).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A value as this build writes it: the format tag, then the record in postcard.
fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    SCRATCH.with_borrow_mut(|scratch| {
        let mut buf = std::mem::take(scratch);
        buf.clear();
        buf.push(FORMAT_VERSION as u8);
        // The record types hold no fallible Serialize impls and no sequences of unknown length.
        let buf = postcard::to_extend(value, buf).expect("state records always serialize");
        let record = buf.to_vec();
        *scratch = buf;
        record
    })
}

/// Whether `state` has changes for [`take_changes`] to write.
pub(super) fn has_changes(state: &TenantState) -> bool {
    state.changes.as_ref().is_some_and(|c| !c.is_empty())
}

/// The records of what changed in `state` since the last call; clears the change set.
pub(super) fn take_changes(state: &mut TenantState, out: &mut Vec<StateRecord>) {
    let Some(changes) = state.changes.as_mut() else {
        return;
    };
    if changes.is_empty() {
        return;
    }
    let taken = std::mem::take(changes);
    records(state, taken, out);
}

/// Every record of `state`, as if all of it had changed.
pub(super) fn full(state: &TenantState) -> Vec<StateRecord> {
    let all = ChangeSet {
        head: true,
        drift: state.drift.events_seen() > 0,
        drift_from: None,
        drift_first: None,
        plan_lines: (state.plan_meta.iter().enumerate())
            .filter(|(_, m)| m.lines_span.is_some())
            .map(|(plan, _)| plan as u32)
            .collect(),
        days: state.days.keys().copied().collect(),
        removed: Vec::new(),
        lines_removed: Vec::new(),
        plan_days_removed: Vec::new(),
        history_removed: Vec::new(),
        plans: (0..state.plans.len() as u32).collect(),
    };
    let mut out = Vec::new();
    records(state, all, &mut out);
    out
}

fn records(state: &TenantState, changes: ChangeSet, out: &mut Vec<StateRecord>) {
    // New plans, then the head that counts them, then the rest: ids are only ever added, so a
    // head written ahead of the day records names every id they use, and its plans exist,
    // even if a crash cuts the batch short (at-least-once, where the records are not one
    // transaction).
    let mut plans: Vec<u32> = changes.plans.into_iter().collect();
    plans.sort_unstable();
    for plan in plans {
        out.push(StateRecord {
            key: plan_key(&state.name, plan),
            value: Some(encode(&PlanEntryRecord {
                v: FORMAT_VERSION,
                plan: plan_record(state, plan),
            })),
        });
    }
    out.push(StateRecord {
        key: head_key(&state.name),
        value: Some(encode(&head_record(state))),
    });
    // The plans' lines before the dates' records and before the tombstones of their per-date
    // records of an earlier format: a whole-day record or a date's lines of one plan is
    // replaced only once the lines it holds are written in the plan's record.
    let mut plans: Vec<u32> = changes.plan_lines.into_iter().collect();
    plans.sort_unstable();
    for plan in plans {
        out.push(StateRecord {
            key: plan_lines_key(&state.name, plan),
            value: plan_lines_record(state, plan).map(|r| encode(&r)),
        });
    }
    let mut days: Vec<Day> = changes.days.into_iter().collect();
    days.sort_unstable();
    for day in days {
        if let Some(data) = state.days.get(&day) {
            out.push(StateRecord {
                key: day_key(&state.name, day),
                value: Some(encode(&actuals_record(data))),
            });
        }
    }
    for (day, plan) in changes.plan_days_removed {
        out.push(StateRecord {
            key: plan_day_key(&state.name, day, plan),
            value: None,
        });
    }
    for day in changes.removed {
        out.push(StateRecord {
            key: day_key(&state.name, day),
            value: None,
        });
    }
    for plan in changes.lines_removed {
        out.push(StateRecord {
            key: plan_lines_key(&state.name, plan),
            value: None,
        });
    }
    if changes.drift {
        // New events first, then the head that names them, then the tombstones of events it no
        // longer names: a batch cut short (at-least-once) leaves a head whose events all exist.
        let (first, kept) = state.drift.kept();
        let from = changes.drift_from.unwrap_or(first);
        for (seq, event) in state.drift.kept_events().filter(|&(seq, _)| seq >= from) {
            out.push(StateRecord {
                key: drift_event_key(&state.name, seq),
                value: Some(encode(&DriftEventRef {
                    v: FORMAT_VERSION,
                    event: KeptEventRef {
                        shares: event.shares(),
                        order_statistics: (event.order_statistics().iter())
                            .map(|(f, v)| (f.as_str(), DecimalsRef(v)))
                            .collect(),
                    },
                })),
            });
        }
        // History entries are numbered by their event: those folded since the last take are
        // new (all of them for a whole write, `drift_from` unset).
        let new_from = changes.drift_from.unwrap_or(0);
        let history = state.drift_seqs.iter().zip(&state.drift_history);
        for (&seq, entry) in history.filter(|&(&seq, _)| seq >= new_from) {
            out.push(StateRecord {
                key: drift_history_key(&state.name, seq),
                value: Some(encode(&DriftHistoryRef {
                    v: FORMAT_VERSION,
                    entry,
                })),
            });
        }
        out.push(StateRecord {
            key: drift_key(&state.name),
            value: Some(encode(&DriftHead {
                v: FORMAT_VERSION,
                seen: state.drift.events_seen(),
                kept: kept as u64,
                history: (state.drift_seqs.iter().copied())
                    .zip(state.drift_days.iter().map(|&d| IsoDate::of(d)))
                    .collect(),
            })),
        });
        for seq in changes.drift_first.unwrap_or(first)..first {
            out.push(StateRecord {
                key: drift_event_key(&state.name, seq),
                value: None,
            });
        }
        // An entry the history holds again is not deleted: a batch cut short after a new
        // entry but before the drift record leaves the entry unnamed (deleted after the
        // restore), and folding its event again numbers it the same.
        for seq in changes.history_removed {
            if state.drift_seqs.contains(&seq) {
                continue;
            }
            out.push(StateRecord {
                key: drift_history_key(&state.name, seq),
                value: None,
            });
        }
    }
}

fn head_record(state: &TenantState) -> Head {
    let names = |i: &super::intern::Interner| {
        (0..i.len() as u32)
            .map(|id| i.name(id).to_owned())
            .collect()
    };
    Head {
        v: FORMAT_VERSION,
        channels: names(&state.channels),
        campaigns: names(&state.campaigns),
        sources: names(&state.sources),
        plans: state.plans.len() as u32,
        level_sets: state
            .level_sets
            .iter()
            .map(|s| s.layout.levels.to_vec())
            .collect(),
        as_of: state.as_of.map(IsoDate::of),
        outcome_seq: state.outcome_seq,
        feature_importances: state.counters.feature_importances,
        rejected: state.counters.rejected,
        expired: state.counters.expired,
        rules: RulesRecord {
            perf_tenant: state.rules.perf_tenant,
            perf_channels: state.rules.perf_channels.clone(),
            cal_tenant: state.rules.cal_tenant,
            cal_horizons: state.rules.cal_horizons.clone(),
            drift: state.rules.drift,
            occurrences: {
                let mut o: Vec<_> = state
                    .rules
                    .occurrences
                    .iter()
                    .map(|((kind, scope, status), n)| {
                        (*kind, scope.clone(), (*status).to_owned(), *n)
                    })
                    .collect();
                o.sort_by(|a, b| (a.0, &a.1, &a.2).cmp(&(b.0, &b.1, &b.2)));
                o
            },
        },
        expired_before: state.expired_before.map(IsoDate::of),
    }
}

fn plan_record(state: &TenantState, plan: u32) -> PlanRecord {
    let meta = state
        .plan_meta
        .get(plan as usize)
        .cloned()
        .unwrap_or_default();
    PlanRecord {
        id: state.plans.name(plan).to_owned(),
        issued_at: meta.issued_at,
        model_version: meta.model_version,
    }
}

/// The plans with lines on a date, ascending.
pub(super) fn plans_of(data: &DayData) -> Vec<u32> {
    let mut plans: Vec<u32> = data
        .channels
        .values()
        .flat_map(|cd| cd.lines.iter().map(|l| l.plan))
        .collect();
    plans.sort_unstable();
    plans.dedup();
    plans
}

fn actuals_record(data: &DayData) -> ActualsRecord {
    let mut cells: Vec<_> = data
        .cells
        .iter()
        .map(|(&(channel, campaign), cell)| {
            let reports = cell
                .reports
                .iter()
                .map(|r| {
                    let (spend, revenue) = (Decimal(r.spend), Decimal(r.revenue));
                    (r.source, r.records, r.seq, spend, revenue)
                })
                .collect();
            (channel, campaign, reports)
        })
        .collect();
    cells.sort_by_key(|c| (c.0, c.1));
    let mut totals: Vec<_> = data
        .channels
        .iter()
        .map(|(&channel, cd)| {
            let t = &cd.total;
            (
                channel,
                (t.revenue.hi, t.revenue.lo, t.spend.hi, t.spend.lo, t.cells),
            )
        })
        .collect();
    totals.sort_by_key(|t| t.0);
    ActualsRecord {
        v: FORMAT_VERSION,
        cells,
        totals,
    }
}

/// Every line of `plan`, by date and channel; `None` when it has none.
fn plan_lines_record(state: &TenantState, plan: u32) -> Option<PlanLinesRecord<PlanLineRef<'_>>> {
    let (first, last) = state.plan_meta.get(plan as usize)?.lines_span?;
    let mut days = Vec::new();
    for (&day, data) in state.days.range(first..=last) {
        let mut channels: LinesOf<PlanLineRef> = data
            .channels
            .iter()
            .filter_map(|(&channel, cd)| {
                let lines: Vec<PlanLineRef> = cd
                    .lines
                    .iter()
                    .filter(|l| l.plan == plan)
                    .map(|l| {
                        let spend = (!l.spend.is_nan()).then_some(Decimal(l.spend));
                        (
                            l.campaign,
                            l.horizon,
                            l.levels,
                            l.records,
                            spend,
                            DecimalsRef(&l.values),
                        )
                    })
                    .collect();
                (!lines.is_empty()).then_some((channel, lines))
            })
            .collect();
        if !channels.is_empty() {
            channels.sort_by_key(|c| c.0);
            days.push((IsoDate::of(day), channels));
        }
    }
    (!days.is_empty()).then_some(PlanLinesRecord {
        v: FORMAT_VERSION,
        days,
    })
}

/// The latest value of each key of one tenant, as read back from the changelog.
#[derive(Debug, Default)]
pub struct TenantRecords {
    pub head: Option<Vec<u8>>,
    pub plans: BTreeMap<u32, Vec<u8>>,
    pub plan_lines: BTreeMap<u32, Vec<u8>>,
    pub drift: Option<Vec<u8>>,
    pub drift_events: BTreeMap<u64, Vec<u8>>,
    pub drift_history: BTreeMap<u64, Vec<u8>>,
    pub days: BTreeMap<NaiveDate, Vec<u8>>,
    pub plan_days: BTreeMap<(NaiveDate, u32), Vec<u8>>,
}

impl TenantRecords {
    /// Takes one changelog record in log order: a later value replaces an earlier one, a
    /// tombstone removes it. Keys that are not state keys are reported as errors.
    pub fn apply(
        tenants: &mut BTreeMap<String, TenantRecords>,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> Result<(), SnapshotError> {
        let parsed = StateKey::parse(key).ok_or_else(|| invalid(key, "not a state key"))?;
        let records = tenants.entry(parsed.tenant().to_owned()).or_default();
        match (parsed, value) {
            (StateKey::Head { .. }, v) => records.head = v,
            (StateKey::Plan { plan, .. }, Some(v)) => {
                records.plans.insert(plan, v);
            }
            (StateKey::Plan { plan, .. }, None) => {
                records.plans.remove(&plan);
            }
            (StateKey::Drift { .. }, v) => records.drift = v,
            (StateKey::DriftEvent { seq, .. }, Some(v)) => {
                records.drift_events.insert(seq, v);
            }
            (StateKey::DriftEvent { seq, .. }, None) => {
                records.drift_events.remove(&seq);
            }
            (StateKey::DriftHistory { seq, .. }, Some(v)) => {
                records.drift_history.insert(seq, v);
            }
            (StateKey::DriftHistory { seq, .. }, None) => {
                records.drift_history.remove(&seq);
            }
            (StateKey::Day { date, .. }, Some(v)) => {
                records.days.insert(date, v);
            }
            (StateKey::Day { date, .. }, None) => {
                records.days.remove(&date);
            }
            (StateKey::PlanDay { date, plan, .. }, Some(v)) => {
                records.plan_days.insert((date, plan), v);
            }
            (StateKey::PlanDay { date, plan, .. }, None) => {
                records.plan_days.remove(&(date, plan));
            }
            (StateKey::PlanLines { plan, .. }, Some(v)) => {
                records.plan_lines.insert(plan, v);
            }
            (StateKey::PlanLines { plan, .. }, None) => {
                records.plan_lines.remove(&plan);
            }
        }
        Ok(())
    }
}

/// The records that carry their format version.
trait Versioned {
    fn version(&self) -> u32;
}

macro_rules! versioned {
    ($($record:ty),*) => {
        $(impl Versioned for $record {
            fn version(&self) -> u32 {
                self.v
            }
        })*
    };
}

versioned!(
    Head,
    HeadWithoutCutoff,
    HeadWithPlans,
    PlanEntryRecord,
    DayRecord,
    DriftRecord,
    PlanDayRecord,
    DriftHeadWithHistory,
    DriftHead,
    DriftHistoryRecord
);

impl<C> Versioned for ActualsRecord<C> {
    fn version(&self) -> u32 {
        self.v
    }
}

impl<L> Versioned for PlanLinesRecord<L> {
    fn version(&self) -> u32 {
        self.v
    }
}

impl<E> Versioned for DriftEventRecord<E> {
    fn version(&self) -> u32 {
        self.v
    }
}

/// The versions of a head record with its plans inside: it did not change from format 1 to 4.
const HEAD_WITH_PLANS: &[u32] = &[
    JSON_VERSION,
    WHOLE_DRIFT_VERSION,
    WHOLE_DAY_VERSION,
    WHOLE_HISTORY_VERSION,
];

fn unknown_version(key: &str, v: impl std::fmt::Display) -> SnapshotError {
    invalid(
        key,
        format!(
            "format version {v}, this build reads versions {JSON_VERSION} (JSON), \
             {WHOLE_DRIFT_VERSION}, {WHOLE_DAY_VERSION}, {WHOLE_HISTORY_VERSION}, \
             {PLAN_DAYS_VERSION}, {PLAIN_FLOATS_VERSION} and {FORMAT_VERSION}"
        ),
    )
}

/// The version a value says it is: the tag byte, or the `v` of a JSON object.
fn version_of(key: &str, bytes: &[u8]) -> Result<u32, SnapshotError> {
    #[derive(Deserialize)]
    struct Version {
        v: u32,
    }
    match bytes.first() {
        Some(b'{') => serde_json::from_slice::<Version>(bytes)
            .map(|r| r.v)
            .map_err(|e| invalid(key, e)),
        Some(&tag) => Ok(u32::from(tag)),
        None => Err(invalid(key, "empty value")),
    }
}

/// Reads a value in one of `versions`: JSON (starts with `{`; format 1, or a record rendered by
/// [`readable`]) or a tag byte and postcard. The version inside must be the tag's.
fn parse<'a, T: Deserialize<'a> + Versioned>(
    key: &str,
    bytes: &'a [u8],
    versions: &[u32],
) -> Result<T, SnapshotError> {
    let (value, tag): (T, Option<u32>) = match bytes.first() {
        Some(b'{') => (
            serde_json::from_slice(bytes).map_err(|e| invalid(key, e))?,
            None,
        ),
        Some(&tag) if u32::from(tag) != JSON_VERSION => {
            if !versions.contains(&u32::from(tag)) {
                return Err(unknown_version(key, tag));
            }
            // postcard is not self-describing: a value read in the wrong layout can end early
            // instead of failing, so bytes left over are refused too.
            let (value, rest) =
                postcard::take_from_bytes(&bytes[1..]).map_err(|e| invalid(key, e))?;
            if !rest.is_empty() {
                return Err(invalid(
                    key,
                    format!("{} bytes after the record", rest.len()),
                ));
            }
            (value, Some(u32::from(tag)))
        }
        Some(&tag) => return Err(unknown_version(key, tag)),
        None => return Err(invalid(key, "empty value")),
    };
    let v = value.version();
    let known = match tag {
        Some(tag) => v == tag,
        None => versions.contains(&v),
    };
    if known {
        Ok(value)
    } else {
        Err(unknown_version(key, v))
    }
}

/// A changelog value of any format as JSON, for people and tools (`kcat` shows the binary
/// formats as bytes). Records of a layout format 1 had (heads with their plans, whole days,
/// whole drift records) are written the way format 1 stored them, the others with their
/// version; either way a value converted this way is also one that [`restore`] reads.
pub fn readable(key: &str, value: &[u8]) -> Result<String, SnapshotError> {
    fn json<'a, T: Deserialize<'a> + Versioned + Serialize>(
        key: &str,
        value: &'a [u8],
        versions: &[u32],
        set_version: impl FnOnce(&mut T),
    ) -> Result<String, SnapshotError> {
        let mut record: T = parse(key, value, versions)?;
        set_version(&mut record);
        Ok(serde_json::to_string(&record).expect("state records always serialize"))
    }
    let this = &[FORMAT_VERSION];
    match StateKey::parse(key).ok_or_else(|| invalid(key, "not a state key"))? {
        StateKey::Head { .. } if SINCE_6.contains(&version_of(key, value)?) => {
            json(key, value, SINCE_6, |_: &mut Head| {})
        }
        StateKey::Head { .. } if version_of(key, value)? == PLAN_DAYS_VERSION => json(
            key,
            value,
            &[PLAN_DAYS_VERSION],
            |_: &mut HeadWithoutCutoff| {},
        ),
        StateKey::Head { .. } => json(key, value, HEAD_WITH_PLANS, |r: &mut HeadWithPlans| {
            r.v = JSON_VERSION
        }),
        StateKey::Plan { .. } => json(key, value, SINCE_5, |_: &mut PlanEntryRecord| {}),
        StateKey::PlanLines { .. } if version_of(key, value)? == PLAIN_FLOATS_VERSION => json(
            key,
            value,
            &[PLAIN_FLOATS_VERSION],
            |_: &mut PlanLinesRecord<PlainLineRecord>| {},
        ),
        StateKey::PlanLines { .. } => json(key, value, this, |_: &mut PlanLinesRecord| {}),
        StateKey::Day { .. } if PLAIN_ACTUALS.contains(&version_of(key, value)?) => json(
            key,
            value,
            PLAIN_ACTUALS,
            |_: &mut ActualsRecord<PlainCellRecord>| {},
        ),
        StateKey::Day { .. } if version_of(key, value)? == FORMAT_VERSION => {
            json(key, value, this, |_: &mut ActualsRecord| {})
        }
        StateKey::Day { .. } => json(key, value, WHOLE_DAY, |r: &mut DayRecord| {
            r.v = JSON_VERSION
        }),
        StateKey::PlanDay { .. } => json(key, value, PLAN_DAY, |_: &mut PlanDayRecord| {}),
        StateKey::Drift { .. } if SINCE_5.contains(&version_of(key, value)?) => {
            json(key, value, SINCE_5, |_: &mut DriftHead| {})
        }
        StateKey::Drift { .. } if WHOLE_HISTORY.contains(&version_of(key, value)?) => {
            json(key, value, WHOLE_HISTORY, |_: &mut DriftHeadWithHistory| {})
        }
        StateKey::Drift { .. } => json(
            key,
            value,
            &[JSON_VERSION, WHOLE_DRIFT_VERSION],
            |r: &mut DriftRecord| r.v = JSON_VERSION,
        ),
        StateKey::DriftEvent { .. } if PLAIN_DRIFT_EVENT.contains(&version_of(key, value)?) => {
            json(
                key,
                value,
                PLAIN_DRIFT_EVENT,
                |_: &mut DriftEventRecord<KeptEvent>| {},
            )
        }
        StateKey::DriftEvent { .. } => json(key, value, this, |_: &mut DriftEventRecord| {}),
        StateKey::DriftHistory { .. } => json(key, value, SINCE_5, |_: &mut DriftHistoryRecord| {}),
    }
}

/// Rebuilds a tenant from its changelog records. `None` when the tenant has no head record
/// (everything it had was deleted).
pub(super) fn restore(
    name: &str,
    records: &TenantRecords,
    shared: &Shared,
) -> Result<Option<TenantState>, SnapshotError> {
    let Some(head_bytes) = &records.head else {
        return Ok(None);
    };
    let hk = head_key(name);
    let version = version_of(&hk, head_bytes)?;
    let (head, plans) = if SINCE_5.contains(&version) {
        let head = if SINCE_6.contains(&version) {
            parse::<Head>(&hk, head_bytes, SINCE_6)?
        } else {
            parse::<HeadWithoutCutoff>(&hk, head_bytes, &[PLAN_DAYS_VERSION])?.with_cutoff()
        };
        let mut plans = Vec::with_capacity(head.plans.min(10_000) as usize);
        for plan in 0..head.plans {
            let key = plan_key(name, plan);
            let bytes = records
                .plans
                .get(&plan)
                .ok_or_else(|| invalid(&key, "missing; the head counts it"))?;
            let r: PlanEntryRecord = parse(&key, bytes, SINCE_5)?;
            plans.push(r.plan);
        }
        (head, plans)
    } else if HEAD_WITH_PLANS.contains(&version) {
        parse::<HeadWithPlans>(&hk, head_bytes, HEAD_WITH_PLANS)?.split()
    } else {
        return Err(unknown_version(&hk, version));
    };
    let legacy_head = HEAD_WITH_PLANS.contains(&head.v);

    let mut state = TenantState::new(name, shared);
    for (i, c) in head.channels.iter().enumerate() {
        if state.channel(c) as usize != i {
            return Err(invalid(&hk, format!("channel {c:?} named twice")));
        }
    }
    for (i, c) in head.campaigns.iter().enumerate() {
        if state.campaigns.intern(c) as usize != i {
            return Err(invalid(
                &hk,
                format!("campaign {c:?} named twice or \"\" not first"),
            ));
        }
    }
    for (i, s) in head.sources.iter().enumerate() {
        if state.source(s, shared) as usize != i {
            return Err(invalid(&hk, format!("source {s:?} named twice")));
        }
    }
    for (i, p) in plans.iter().enumerate() {
        if state.plans.intern(&p.id) as usize != i {
            return Err(invalid(&hk, format!("plan {:?} named twice", p.id)));
        }
        state.plan_meta.push(PlanMeta {
            issued_at: p.issued_at,
            model_version: p.model_version.clone(),
            lines_span: None,
        });
    }
    for (i, levels) in head.level_sets.iter().enumerate() {
        if !levels.windows(2).all(|w| w[0] < w[1]) || levels.iter().any(|&l| !(1..=99).contains(&l))
        {
            return Err(invalid(
                &hk,
                format!("level set {levels:?} is not ascending in 1..=99"),
            ));
        }
        if state.level_set_of(levels, shared) as usize != i {
            return Err(invalid(&hk, format!("level set {levels:?} named twice")));
        }
    }

    let ids = Ids {
        channels: head.channels.len() as u32,
        campaigns: head.campaigns.len() as u32,
        sources: head.sources.len() as u32,
        plans: head.plans,
        level_sets: state
            .level_sets
            .iter()
            .map(|s| s.layout.levels.len())
            .collect(),
    };
    // A plan's lines record holds every line it has: its lines in records of earlier formats
    // beside it (a rewrite cut short, at-least-once) are older and ignored. Lines of dates
    // before the cutoff the head names were dropped with their dates.
    let expired_before = head.expired_before.map(IsoDate::day);
    let mut plan_lines: BTreeMap<NaiveDate, Vec<(u32, ChannelLines)>> = BTreeMap::new();
    for (&plan, bytes) in &records.plan_lines {
        let key = plan_lines_key(name, plan);
        let record: PlanLinesRecord = if version_of(&key, bytes)? == PLAIN_FLOATS_VERSION {
            let plain: PlanLinesRecord<PlainLineRecord> =
                parse(&key, bytes, &[PLAIN_FLOATS_VERSION])?;
            PlanLinesRecord {
                v: plain.v,
                days: (plain.days.into_iter())
                    .map(|(date, channels)| (date, from_plain_lines(channels)))
                    .collect(),
            }
        } else {
            parse(&key, bytes, &[FORMAT_VERSION])?
        };
        let mut kept = false;
        for (date, channels) in record.days {
            if expired_before.is_none_or(|cutoff| date.day() >= cutoff) {
                plan_lines.entry(date.0).or_default().push((plan, channels));
                kept = true;
            }
        }
        // All its dates expired (their tombstone lost to a batch cut short): it goes.
        if let Some(c) = state.changes.as_mut().filter(|_| !kept) {
            c.lines_removed.push(plan);
        }
    }
    let mut dates: BTreeSet<NaiveDate> = records.days.keys().copied().collect();
    dates.extend(records.plan_days.keys().map(|&(date, _)| date));
    dates.extend(plan_lines.keys().copied());
    for date in dates {
        let day = day_of(date);
        let key = day_key(name, day);
        // Lines by date of formats 4 and 5: read for the plans without a lines record, deleted
        // once the next commit has written every plan's lines in this format.
        let per_date = records.plan_days.range((date, 0)..=(date, u32::MAX));
        if let Some(c) = state.changes.as_mut() {
            c.plan_days_removed
                .extend(per_date.clone().map(|(&(_, plan), _)| (day, plan)));
        }
        // A date before the cutoff whose record outlived it (a batch cut short before the
        // tombstone) was dropped: its record goes with the next commit.
        if expired_before.is_some_and(|cutoff| day < cutoff) {
            if let Some(c) = state
                .changes
                .as_mut()
                .filter(|_| records.days.contains_key(&date))
            {
                c.removed.push(day);
            }
            continue;
        }
        let mut data = match records.days.get(&date) {
            // A whole-day record of an earlier format holds every line of the date as of the
            // last commit; the next commit writes them in their plans' records and the date's
            // record in this format. Lines by date beside it come from a rewrite cut short
            // (at-least-once) of work that is folded again from the committed offsets.
            Some(bytes) if !SPLIT_DAY.contains(&version_of(&key, bytes)?) => {
                let record: DayRecord = parse(&key, bytes, WHOLE_DAY)?;
                let mut data =
                    day_data(&record, &ids, shared).map_err(|reason| invalid(&key, reason))?;
                for cd in data.channels.values_mut() {
                    cd.lines
                        .retain(|l| !records.plan_lines.contains_key(&l.plan));
                }
                if let Some(c) = state.changes.as_mut() {
                    c.days.insert(day);
                    c.plan_lines.extend(plans_of(&data));
                }
                data
            }
            actuals => {
                let mut data = DayData::default();
                if let Some(bytes) = actuals {
                    if PLAIN_ACTUALS.contains(&version_of(&key, bytes)?) {
                        let record: ActualsRecord<PlainCellRecord> =
                            parse(&key, bytes, PLAIN_ACTUALS)?;
                        actuals_into(&mut data, &record, &ids)
                    } else {
                        let record: ActualsRecord = parse(&key, bytes, &[FORMAT_VERSION])?;
                        actuals_into(&mut data, &record, &ids)
                    }
                    .map_err(|reason| invalid(&key, reason))?;
                }
                for (&(_, plan), bytes) in per_date {
                    if records.plan_lines.contains_key(&plan) {
                        continue;
                    }
                    let key = plan_day_key(name, day, plan);
                    let record: PlanDayRecord = parse(&key, bytes, PLAN_DAY)?;
                    plan_lines_into(&mut data, plan, &record.channels, &ids, shared)
                        .map_err(|reason| invalid(&key, reason))?;
                    if let Some(c) = state.changes.as_mut() {
                        c.plan_lines.insert(plan);
                    }
                }
                data
            }
        };
        for (plan, channels) in plan_lines.remove(&date).unwrap_or_default() {
            plan_lines_into(&mut data, plan, &channels, &ids, shared)
                .map_err(|reason| invalid(&plan_lines_key(name, plan), reason))?;
        }
        for (channel, cd) in &mut data.channels {
            cd.lines.sort_unstable_by_key(|l| (l.campaign, l.plan));
            if !sorted_lines(&cd.lines) {
                return Err(invalid(
                    &key,
                    format!("channel {channel} has two lines of one (campaign, plan)"),
                ));
            }
            for line in &cd.lines {
                state.plan_meta[line.plan as usize].widen_span(day);
            }
        }
        state.days.insert(day, data);
        // Score the day's pairs into its sums; with as_of unset no running window is touched.
        let (mut scorer, days, ranks) = state.scorer();
        let data = days.get_mut(&day).expect("inserted above");
        let mut dirty = super::tenant::Dirty::default();
        let channels: Vec<u32> = data.channels.keys().copied().collect();
        for channel in channels {
            let lines = std::mem::take(&mut data.channels.get_mut(&channel).expect("listed").lines);
            for line in &lines {
                if let Some(a) = line_actual(ranks, data, channel, line.campaign) {
                    scorer.rescore(
                        &mut data.scores,
                        day,
                        channel,
                        line,
                        None,
                        Some(a.revenue),
                        &mut dirty,
                    );
                }
            }
            data.channels.get_mut(&channel).expect("listed").lines = lines;
        }
    }

    state.as_of = head.as_of.map(IsoDate::day);
    state.expired_before = expired_before;
    state.windows = state.rebuilt_windows();
    state.outcome_seq = head.outcome_seq;
    state.counters = Counters {
        feature_importances: head.feature_importances,
        rejected: head.rejected,
        expired: head.expired,
    };
    let r = head.rules;
    let rules = &mut state.rules;
    rules.perf_tenant = r.perf_tenant;
    for (i, f) in r
        .perf_channels
        .into_iter()
        .enumerate()
        .take(rules.perf_channels.len())
    {
        rules.perf_channels[i] = f;
    }
    rules.cal_tenant = r.cal_tenant;
    // A config with other horizon buckets starts their statuses afresh.
    if r.cal_horizons.len() == rules.cal_horizons.len() {
        rules.cal_horizons = r.cal_horizons;
    }
    rules.drift = r.drift;
    for (kind, scope, status, n) in r.occurrences {
        let status = STATUSES
            .iter()
            .copied()
            .find(|s| *s == status)
            .ok_or_else(|| invalid(&hk, format!("unknown alert status {status:?}")))?;
        rules.occurrences.insert((kind, scope, status), n);
    }

    if let Some(bytes) = &records.drift {
        let key = drift_key(name);
        let version = version_of(&key, bytes)?;
        // The history, its dates, and the event number of each entry where the record says.
        let (history, days, seqs) = if SPLIT_DRIFT.contains(&version) {
            let (seen, kept, history) = if SINCE_5.contains(&version) {
                let d: DriftHead = parse(&key, bytes, SINCE_5)?;
                (d.seen, d.kept, Ok(d.history))
            } else {
                let d: DriftHeadWithHistory = parse(&key, bytes, WHOLE_HISTORY)?;
                (d.seen, d.kept, Err((d.history, d.days)))
            };
            let first = seen
                .checked_sub(kept)
                .ok_or_else(|| invalid(&key, "keeps more events than it folded"))?;
            let mut baseline = Vec::with_capacity(kept.min(1000) as usize);
            for seq in first..seen {
                let event_key = drift_event_key(name, seq);
                let bytes = records
                    .drift_events
                    .get(&seq)
                    .ok_or_else(|| invalid(&event_key, "missing; the drift record names it"))?;
                let event = if PLAIN_DRIFT_EVENT.contains(&version_of(&event_key, bytes)?) {
                    parse::<DriftEventRecord<KeptEvent>>(&event_key, bytes, PLAIN_DRIFT_EVENT)?
                        .event
                } else {
                    let e: DriftEventRecord = parse(&event_key, bytes, &[FORMAT_VERSION])?;
                    let samples = e.event.order_statistics.into_iter();
                    KeptEvent::from_parts(e.event.shares, samples.map(|(f, v)| (f, v.0)).collect())
                };
                baseline.push(event);
            }
            state.drift = DriftState::from_kept(baseline, seen).expect("first <= seen");
            // Events older than the baseline (a batch cut short before their tombstones) are
            // deleted with the next commit.
            let oldest = records.drift_events.keys().next().copied();
            if let (Some(oldest), Some(c)) = (oldest, state.changes.as_mut()) {
                if oldest < first {
                    c.drift = true;
                    c.drift_from = Some(seen);
                    c.drift_first = Some(oldest);
                }
            }
            match history {
                Ok(named) => {
                    let mut entries = Vec::with_capacity(named.len());
                    let (mut days, mut seqs) = (Vec::new(), Vec::new());
                    for (seq, date) in named {
                        let entry_key = drift_history_key(name, seq);
                        if seq >= seen {
                            return Err(invalid(&entry_key, "names an event not folded yet"));
                        }
                        let bytes = records.drift_history.get(&seq).ok_or_else(|| {
                            invalid(&entry_key, "missing; the drift record names it")
                        })?;
                        let r: DriftHistoryRecord = parse(&entry_key, bytes, SINCE_5)?;
                        entries.push(r.entry);
                        days.push(date.0);
                        seqs.push(seq);
                    }
                    // Entries the drift record does not name (a batch cut short before their
                    // tombstones, or before the drift record that would have named them) are
                    // deleted with the next commit, unless folding an event again writes them.
                    let named: BTreeSet<u64> = seqs.iter().copied().collect();
                    let stale = records.drift_history.keys().filter(|s| !named.contains(s));
                    if let Some(c) = state.changes.as_mut() {
                        c.history_removed.extend(stale);
                        if !c.history_removed.is_empty() {
                            c.drift = true;
                            c.drift_from.get_or_insert(seen);
                            c.drift_first.get_or_insert(first);
                        }
                    }
                    (entries, days, Some(seqs))
                }
                Err((history, days)) => (history, days, None),
            }
        } else if [JSON_VERSION, WHOLE_DRIFT_VERSION].contains(&version) {
            let d: DriftRecord = parse(&key, bytes, &[JSON_VERSION, WHOLE_DRIFT_VERSION])?;
            if d.state.kept().1 as u64 > d.state.events_seen() {
                return Err(invalid(&key, "keeps more events than it folded"));
            }
            state.drift = d.state;
            (d.history, d.days, None)
        } else {
            return Err(unknown_version(&key, version));
        };
        if history.len() != days.len() {
            return Err(invalid(&key, "history and its dates differ in length"));
        }
        let seqs = match seqs {
            Some(seqs) => seqs,
            // Written by an earlier build, the history inside the drift record: its entries
            // are numbered as the last events folded, and the next commit writes the drift
            // records in this format, each entry apart.
            None => {
                let seen = state.drift.events_seen();
                let from = seen
                    .checked_sub(history.len() as u64)
                    .ok_or_else(|| invalid(&key, "more history entries than events folded"))?;
                if let Some(c) = state.changes.as_mut() {
                    c.drift = true;
                    c.drift_from = Some(0);
                    c.drift_first.get_or_insert(state.drift.kept().0);
                }
                (from..seen).collect()
            }
        };
        state.drift_history = history;
        state.drift_days = days.into_iter().map(day_of).collect();
        state.drift_seqs = seqs;
    }
    // A head of an earlier build, its plans inside: the next commit writes them apart.
    if let Some(c) = state.changes.as_mut().filter(|_| legacy_head) {
        c.head = true;
        c.plans.extend(0..state.plans.len() as u32);
    }
    Ok(Some(state))
}

/// How many ids the head names, to check day records against.
struct Ids {
    channels: u32,
    campaigns: u32,
    sources: u32,
    plans: u32,
    level_sets: Vec<usize>,
}

fn day_data(record: &DayRecord, ids: &Ids, shared: &Shared) -> Result<DayData, String> {
    let mut data = DayData::default();
    cells_into(&mut data, &record.cells, ids)?;
    for (channel, total, lines) in &record.channels {
        if *channel >= ids.channels {
            return Err(format!("lines of unknown channel id {channel}"));
        }
        let mut out = Vec::with_capacity(lines.len());
        for (campaign, plan, horizon, levels, records, spend, values) in lines {
            let line = (
                *campaign,
                *horizon,
                *levels,
                *records,
                *spend,
                values.clone(),
            );
            out.push(line_of(*plan, &line, ids, shared)?);
        }
        if !sorted_lines(&out) {
            return Err(format!(
                "lines of channel {channel} are not sorted by (campaign, plan)"
            ));
        }
        data.channels.insert(
            *channel,
            ChannelDay {
                total: total_of(total),
                lines: out,
            },
        );
    }
    Ok(data)
}

/// The outcome reports and channel totals of a date, into `data`.
fn actuals_into<F: Float>(
    data: &mut DayData,
    record: &ActualsRecord<CellOf<F>>,
    ids: &Ids,
) -> Result<(), String> {
    cells_into(data, &record.cells, ids)?;
    for (channel, total) in &record.totals {
        if *channel >= ids.channels {
            return Err(format!("total of unknown channel id {channel}"));
        }
        data.channels.entry(*channel).or_default().total = total_of(total);
    }
    Ok(())
}

/// One plan's lines of a date, into `data` (unsorted).
fn plan_lines_into<F: Float, V: AsRef<[f64]>>(
    data: &mut DayData,
    plan: u32,
    channels: &[(u32, Vec<LineOf<F, V>>)],
    ids: &Ids,
    shared: &Shared,
) -> Result<(), String> {
    for (channel, lines) in channels {
        if *channel >= ids.channels {
            return Err(format!("lines of unknown channel id {channel}"));
        }
        let cd = data.channels.entry(*channel).or_default();
        for line in lines {
            cd.lines.push(line_of(plan, line, ids, shared)?);
        }
    }
    Ok(())
}

fn cells_into<F: Float>(data: &mut DayData, cells: &[CellOf<F>], ids: &Ids) -> Result<(), String> {
    for (channel, campaign, reports) in cells {
        if *channel >= ids.channels || *campaign >= ids.campaigns {
            return Err(format!("cell ({channel}, {campaign}) names an unknown id"));
        }
        let mut cell = Cell::default();
        for &(source, records, seq, spend, revenue) in reports {
            if source >= ids.sources {
                return Err(format!("report names unknown source id {source}"));
            }
            cell.reports.push(Report {
                source,
                records,
                seq,
                spend: spend.get(),
                revenue: revenue.get(),
            });
        }
        data.cells.insert((*channel, *campaign), cell);
    }
    Ok(())
}

fn line_of<F: Float, V: AsRef<[f64]>>(
    plan: u32,
    line: &LineOf<F, V>,
    ids: &Ids,
    shared: &Shared,
) -> Result<Line, String> {
    let (campaign, horizon, levels, records, spend, values) = line;
    let values = values.as_ref();
    let arity = ids.level_sets.get(*levels as usize);
    if *campaign >= ids.campaigns || plan >= ids.plans || arity != Some(&values.len()) {
        return Err(format!(
            "line ({campaign}, {plan}) names an unknown id or has the wrong number of values"
        ));
    }
    Ok(Line {
        campaign: *campaign,
        plan,
        horizon: *horizon,
        levels: *levels,
        records: *records,
        bucket: shared.config.horizon_bucket(*horizon),
        spend: spend.map_or(f64::NAN, F::get),
        values: SmallVec::from_slice(values),
    })
}

fn total_of(&(rh, rl, sh, sl, cells): &TotalRecord) -> Total {
    Total {
        revenue: Sum { hi: rh, lo: rl },
        spend: Sum { hi: sh, lo: sl },
        cells,
    }
}

/// Whether lines are strictly ascending by (campaign, plan), as a channel keeps them.
fn sorted_lines(lines: &[Line]) -> bool {
    lines
        .windows(2)
        .all(|w| (w[0].campaign, w[0].plan) < (w[1].campaign, w[1].plan))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record's date is written as chrono writes it, in postcard and in JSON, for dates of
    /// four-digit years and past them (where it is chrono's own), and read back.
    #[test]
    fn iso_dates_are_written_as_chrono_writes_them() {
        let dates = [
            NaiveDate::from_ymd_opt(2026, 12, 6),
            NaiveDate::from_ymd_opt(1, 1, 1),
            NaiveDate::from_ymd_opt(0, 1, 1),
            NaiveDate::from_ymd_opt(9999, 12, 31),
            NaiveDate::from_ymd_opt(10000, 1, 1),
            NaiveDate::from_ymd_opt(-1, 3, 1),
            NaiveDate::from_ymd_opt(2024, 2, 29),
        ];
        let every_day = (0..800).map(|d| NaiveDate::from_num_days_from_ce_opt(739_000 + d));
        for date in dates.into_iter().chain(every_day).map(Option::unwrap) {
            let ours = postcard::to_allocvec(&IsoDate(date)).unwrap();
            assert_eq!(ours, postcard::to_allocvec(&date).unwrap(), "{date}");
            let back: IsoDate = postcard::from_bytes(&ours).unwrap();
            assert_eq!(back.0, date);
            let json = serde_json::to_string(&IsoDate(date)).unwrap();
            assert_eq!(json, serde_json::to_string(&date).unwrap());
        }
    }

    #[test]
    fn keys_read_as_the_changelog_table_writes_them() {
        for date in ["2026-11-05", "0001-01-01", "9999-12-31", "2024-02-29"] {
            let day = day_of(date.parse().unwrap());
            assert_eq!(day_key("acme", day), format!("acme/day/{date}"));
            assert_eq!(
                plan_day_key("acme", day, 4_000_000_000),
                format!("acme/day/{date}/4000000000")
            );
        }
        assert_eq!(drift_key("a/b"), "a/b/drift");
        assert_eq!(drift_event_key("acme", 0), "acme/drift/0");
        assert_eq!(
            drift_event_key("acme", u64::MAX),
            format!("acme/drift/{}", u64::MAX)
        );
        assert_eq!(
            drift_history_key("acme", u64::MAX),
            format!("acme/drift/history/{}", u64::MAX)
        );
        assert_eq!(plan_key("acme", 7), "acme/plan/7");
        assert_eq!(plan_lines_key("acme", 7), "acme/plan/7/lines");
        // Each parses back to what wrote it.
        assert_eq!(
            StateKey::parse(&plan_lines_key("acme", u32::MAX)),
            Some(StateKey::PlanLines {
                tenant: "acme",
                plan: u32::MAX
            })
        );
        for bad in ["acme/plan/7/line", "acme/plan//lines", "acme/plan/+7/lines"] {
            assert_eq!(StateKey::parse(bad), None, "{bad}");
        }
        assert_eq!(
            StateKey::parse(&drift_history_key("acme", 12)),
            Some(StateKey::DriftHistory {
                tenant: "acme",
                seq: 12
            })
        );
        assert_eq!(
            StateKey::parse(&plan_key("acme", u32::MAX)),
            Some(StateKey::Plan {
                tenant: "acme",
                plan: u32::MAX
            })
        );
    }
}
