//! Feature drift (SPEC 4, "Drift"): how far a tenant's latest feature importances and feature
//! samples have moved from a rolling baseline of its previous events.
//!
//! The figures are a pure function of the tenant's FeatureImportance events in log order, so a
//! replay, or a restore of [`DriftState`] from the changelog, yields the same numbers. Every map
//! is walked in feature-name order and every float sum in a fixed order for the same reason.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};
use statrs::distribution::{ChiSquared, ContinuousCDF};

use crate::event::FeatureImportance;

/// The chi-squared quantile of `psi_critical`.
const PSI_CRITICAL_LEVEL: f64 = 0.999;

/// Shares of total absolute importance: |v_f| / sum |v|, all 0 when the sum is 0.
pub fn shares(importances: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    let sum: f64 = importances.values().map(|v| v.abs()).sum();
    if sum.is_finite() {
        return importances
            .iter()
            .map(|(f, v)| (f.clone(), if sum > 0.0 { v.abs() / sum } else { 0.0 }))
            .collect();
    }
    // The sum overflowed: scale by the largest magnitude first.
    let max = importances.values().fold(0.0_f64, |m, v| m.max(v.abs()));
    let scaled: f64 = importances.values().map(|v| v.abs() / max).sum();
    importances
        .iter()
        .map(|(f, v)| (f.clone(), v.abs() / max / scaled))
        .collect()
}

/// Every feature of either map with its two values, absent = 0, in name order.
fn union_pairs<'a>(
    a: &'a BTreeMap<String, f64>,
    b: &'a BTreeMap<String, f64>,
) -> Vec<(&'a str, f64, f64)> {
    let names: BTreeSet<&str> = a.keys().chain(b.keys()).map(String::as_str).collect();
    names
        .into_iter()
        .map(|f| {
            let x = a.get(f).copied().unwrap_or(0.0);
            let y = b.get(f).copied().unwrap_or(0.0);
            (f, x, y)
        })
        .collect()
}

/// Total variation between two share maps: 1/2 sum |s_f - b_f| over the union, absent = 0.
pub fn importance_shift(current: &BTreeMap<String, f64>, baseline: &BTreeMap<String, f64>) -> f64 {
    0.5 * union_pairs(current, baseline)
        .iter()
        .map(|&(_, s, b)| (s - b).abs())
        .sum::<f64>()
}

/// Spearman rank correlation over the union of features (absent = 0, ties get average ranks).
///
/// None with fewer than two features or when either side's ranks are all equal.
pub fn spearman(current: &BTreeMap<String, f64>, baseline: &BTreeMap<String, f64>) -> Option<f64> {
    let pairs = union_pairs(current, baseline);
    if pairs.len() < 2 {
        return None;
    }
    let x: Vec<f64> = pairs.iter().map(|&(_, s, _)| s).collect();
    let y: Vec<f64> = pairs.iter().map(|&(_, _, b)| b).collect();
    pearson(&average_ranks(&x), &average_ranks(&y))
}

/// 1-based ranks, tied values sharing the mean of their positions.
fn average_ranks(values: &[f64]) -> Vec<f64> {
    let n = values.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| values[i].total_cmp(&values[j]));
    let mut ranks = vec![0.0; n];
    let mut start = 0;
    while start < n {
        let mut end = start + 1;
        while end < n && values[order[end]] == values[order[start]] {
            end += 1;
        }
        // Positions start..end hold ranks start + 1 ..= end.
        let rank = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len().min(y.len());
    if n < 2 {
        return None;
    }
    let mx = x.iter().take(n).sum::<f64>() / n as f64;
    let my = y.iter().take(n).sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx > 0.0 && syy > 0.0 {
        Some((sxy / (sxx * syy).sqrt()).clamp(-1.0, 1.0))
    } else {
        None
    }
}

/// The `k` features with the largest positive shares, largest first, ties by name.
///
/// A feature with share 0 is in no top k.
pub fn top_k(shares: &BTreeMap<String, f64>, k: usize) -> Vec<String> {
    let mut ranked: Vec<(&String, f64)> = shares
        .iter()
        .filter(|(_, &s)| s > 0.0)
        .map(|(f, &s)| (f, s))
        .collect();
    let by_rank =
        |a: &(&String, f64), b: &(&String, f64)| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0));
    if k == 0 {
        return Vec::new();
    }
    if ranked.len() > k {
        ranked.select_nth_unstable_by(k - 1, by_rank);
        ranked.truncate(k);
    }
    ranked.sort_by(by_rank);
    ranked.into_iter().map(|(f, _)| f.clone()).collect()
}

/// Features in the current top `k` that are not in the baseline top `k`, in current rank order.
pub fn top_k_churn(
    current: &BTreeMap<String, f64>,
    baseline: &BTreeMap<String, f64>,
    k: usize,
) -> Vec<String> {
    let before: BTreeSet<String> = top_k(baseline, k).into_iter().collect();
    top_k(current, k)
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect()
}

/// Sorts `values` and keeps at most `max` order statistics: all of them when n <= max, else
/// x[round(i (n - 1) / (max - 1))] for i = 0..max-1, rounding halves up. `max` is at least 2.
pub fn thin_order_statistics(values: &[f64], max: usize) -> Vec<f64> {
    // Sorted as integers that order the way `f64::total_cmp` orders the floats: the same result,
    // for about a third fewer instructions than sorting with the comparison itself.
    let mut keys: Vec<u64> = values.iter().map(|&v| total_order_key(v)).collect();
    keys.sort_unstable();
    let sorted: Vec<f64> = keys.into_iter().map(from_total_order_key).collect();
    let max = max.max(2);
    let n = sorted.len();
    if n <= max {
        return sorted;
    }
    // Exact rational rounding: floor((2 i (n - 1) + (max - 1)) / (2 (max - 1))).
    let (n1, m1) = ((n - 1) as u128, (max - 1) as u128);
    (0..max as u128)
        .filter_map(|i| {
            let idx = (2 * i * n1 + m1) / (2 * m1);
            sorted.get(idx as usize).copied()
        })
        .collect()
}

/// An integer whose order is `f64::total_cmp`'s order of the floats (the transformation
/// `total_cmp` itself uses, shifted to unsigned).
#[inline]
fn total_order_key(v: f64) -> u64 {
    // All bits but the sign flipped for a negative value: written with a logical shift, which
    // the compiler can vectorise, where an arithmetic one of 64 bits needs AVX-512.
    let bits = v.to_bits();
    let negative = 0u64.wrapping_sub(bits >> 63) >> 1;
    (bits ^ negative) ^ (1 << 63)
}

#[inline]
fn from_total_order_key(k: u64) -> f64 {
    let key = (k ^ (1 << 63)) as i64;
    let bits = key ^ ((((key >> 63) as u64) >> 1) as i64);
    f64::from_bits(bits as u64)
}

/// The R type-7 (numpy default) quantile of sorted values; None when empty or p is not in [0, 1].
pub fn type7_quantile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() || !(0.0..=1.0).contains(&p) {
        return None;
    }
    let h = (sorted.len() - 1) as f64 * p;
    let lo = h.floor();
    type7_at(sorted, lo as usize, h - lo)
}

/// x[lo] + frac (x[lo + 1] - x[lo]), kept inside [x[lo], x[lo + 1]].
fn type7_at(sorted: &[f64], lo: usize, frac: f64) -> Option<f64> {
    type7(|i| sorted.get(i).copied(), lo, frac)
}

/// [`type7_at`] of the sorted values `at` gives by rank (None past the last).
fn type7(at: impl Fn(usize) -> Option<f64>, lo: usize, frac: f64) -> Option<f64> {
    let a = at(lo)?;
    match (frac > 0.0).then(|| at(lo + 1)).flatten() {
        Some(b) => {
            let d = b - a;
            let v = if d.is_finite() {
                a + frac * d
            } else {
                a * (1.0 - frac) + b * frac
            };
            Some(v.max(a).min(b))
        }
        None => Some(a),
    }
}

/// The inner PSI bin edges: type-7 deciles p = 0.1..0.9 of the sorted baseline, equal edges
/// merged. The outer edges are -inf and +inf, so there are `len() + 1` bins.
pub fn decile_edges(sorted_baseline: &[f64]) -> Vec<f64> {
    deciles(sorted_baseline.len(), |i| sorted_baseline.get(i).copied())
}

/// [`decile_edges`] of `n` sorted values that `at` gives by rank.
fn deciles(n: usize, at: impl Fn(usize) -> Option<f64>) -> Vec<f64> {
    let n1 = n.saturating_sub(1);
    let mut edges: Vec<f64> = (1..10)
        .filter_map(|tenths: usize| {
            // h = (n - 1) * tenths / 10, split exactly into its integer and fractional parts.
            let h10 = n1 * tenths;
            type7(&at, h10 / 10, (h10 % 10) as f64 / 10.0)
        })
        .collect();
    edges.dedup();
    edges
}

/// Share of `values` in each bin (-inf, e1], (e1, e2], ..., (ek, +inf); all 0 when empty.
pub fn bin_shares(values: &[f64], inner_edges: &[f64]) -> Vec<f64> {
    let mut counts = vec![0_usize; inner_edges.len() + 1];
    for &v in values {
        let bin = inner_edges.partition_point(|&e| e < v);
        if let Some(c) = counts.get_mut(bin) {
            *c += 1;
        }
    }
    let n = values.len();
    counts
        .into_iter()
        .map(|c| if n > 0 { c as f64 / n as f64 } else { 0.0 })
        .collect()
}

/// [`bin_shares`] for values already sorted ascending: the count of bin i is the number of
/// values <= its upper edge minus those <= the edge below, found by binary search per edge.
pub fn bin_shares_sorted(sorted: &[f64], inner_edges: &[f64]) -> Vec<f64> {
    shares_from_counts(sorted.len(), inner_edges, |e| {
        sorted.partition_point(|&v| v <= e)
    })
}

/// Bin shares of `n` values from `at_most(e)`, the number of them `<= e`.
fn shares_from_counts(n: usize, inner_edges: &[f64], at_most: impl Fn(f64) -> usize) -> Vec<f64> {
    let mut below = 0;
    let mut shares = Vec::with_capacity(inner_edges.len() + 1);
    for &e in inner_edges {
        let upto = at_most(e);
        shares.push(if n > 0 {
            (upto - below) as f64 / n as f64
        } else {
            0.0
        });
        below = upto;
    }
    shares.push(if n > 0 {
        (n - below) as f64 / n as f64
    } else {
        0.0
    });
    shares
}

/// Population stability index: sum (a_i - e_i) ln(a_i / e_i), each share floored at `floor`
/// (no renormalisation); a missing bin counts as share 0.
pub fn psi(actual_shares: &[f64], expected_shares: &[f64], floor: f64) -> f64 {
    let bins = actual_shares.len().max(expected_shares.len());
    (0..bins)
        .map(|i| {
            let a = actual_shares.get(i).copied().unwrap_or(0.0).max(floor);
            let e = expected_shares.get(i).copied().unwrap_or(0.0).max(floor);
            if a == e {
                0.0
            } else {
                (a - e) * (a / e).ln()
            }
        })
        .sum()
}

/// The chance level of PSI: chi2_{0.999, B-1} (1/N + 1/M) for B bins and sample sizes N and M.
///
/// 0 with fewer than two bins (PSI is then always 0); infinite when N or M is 0.
pub fn psi_critical(bins: usize, n: usize, m: usize) -> f64 {
    if bins < 2 {
        return 0.0;
    }
    let scale = 1.0 / n as f64 + 1.0 / m as f64;
    chi2_critical(bins - 1) * scale
}

/// chi2_{0.999, dof}. Decile bins give at most 9 degrees of freedom, and statrs finds the
/// quantile by iteration (about 100,000 instructions), so those are computed once per process.
fn chi2_critical(dof: usize) -> f64 {
    static TABLE: std::sync::OnceLock<[f64; 10]> = std::sync::OnceLock::new();
    let compute = |dof: usize| match ChiSquared::new(dof as f64) {
        Ok(chi2) => chi2.inverse_cdf(PSI_CRITICAL_LEVEL),
        Err(_) => f64::INFINITY,
    };
    match TABLE.get_or_init(|| std::array::from_fn(compute)).get(dof) {
        Some(&v) if dof > 0 => v,
        _ => compute(dof),
    }
}

/// Drift settings; `Default` gives SPEC 4's values.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftConfig {
    /// K, the number of previous events in the baseline (at least 1 is used).
    pub baseline_events: usize,
    /// Key features on top of the baseline's top `key_top`.
    pub key_features: Vec<String>,
    pub key_top: usize,
    pub churn_top: usize,
    pub max_order_statistics: usize,
    pub psi_floor: f64,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            baseline_events: 4,
            key_features: Vec::new(),
            key_top: 10,
            churn_top: 5,
            max_order_statistics: 1000,
            psi_floor: 1e-4,
        }
    }
}

/// The drift figures of one FeatureImportance event against its baseline.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DriftFigures {
    pub importance_shift: f64,
    pub spearman: Option<f64>,
    pub top_k_churn: Vec<String>,
    /// The key features and the current top `key_top`, so the size stays bounded.
    pub features: BTreeMap<String, FeatureDrift>,
    /// How many previous events the baseline holds.
    pub baseline_events: usize,
}

/// One feature's figures; the PSI fields are None where PSI was not computed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FeatureDrift {
    pub share: f64,
    pub baseline_share: f64,
    pub key: bool,
    pub psi: Option<f64>,
    pub psi_critical: Option<f64>,
    pub bins: Option<usize>,
}

/// One tenant's drift baseline: the previous K events, oldest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DriftState {
    baseline: VecDeque<KeptEvent>,
    seen: u64,
    #[serde(skip)]
    pairs: MergedPairs,
}

/// The samples of two consecutive kept events, an even-numbered one and the next, merged as one
/// sorted run of keys (bounds included), by feature name and the first event's number. Such a
/// pair is in K - 1 consecutive baselines, so merging it once halves the merging of a pooled
/// baseline of K >= 3 events (K = 2 pools two runs, which need no merge, and keeps none). At
/// most (K - 1) / 2 pairs are kept. Derived from the kept events: not stored, not compared,
/// rebuilt when needed.
#[derive(Debug, Clone, Default)]
struct MergedPairs(BTreeMap<u64, BTreeMap<String, Vec<u64>>>);

impl PartialEq for MergedPairs {
    fn eq(&self, _: &MergedPairs) -> bool {
        true
    }
}

/// What the baseline keeps of an event: all its shares and its thinned samples.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct KeptEvent {
    shares: BTreeMap<String, f64>,
    order_statistics: BTreeMap<String, Vec<f64>>,
}

impl KeptEvent {
    /// The event's importance shares, by feature.
    pub(crate) fn shares(&self) -> &BTreeMap<String, f64> {
        &self.shares
    }

    /// The event's kept samples (sorted, thinned), by feature.
    pub(crate) fn order_statistics(&self) -> &BTreeMap<String, Vec<f64>> {
        &self.order_statistics
    }

    /// The event that kept these shares and samples.
    pub(crate) fn from_parts(
        shares: BTreeMap<String, f64>,
        order_statistics: BTreeMap<String, Vec<f64>>,
    ) -> Self {
        KeptEvent {
            shares,
            order_statistics,
        }
    }

    fn new(event: &FeatureImportance, max_order_statistics: usize) -> Self {
        KeptEvent {
            shares: shares(&event.importances),
            order_statistics: event
                .samples
                .iter()
                .filter(|(_, values)| !values.is_empty())
                .map(|(f, values)| {
                    (
                        f.clone(),
                        thin_order_statistics(values, max_order_statistics),
                    )
                })
                .collect(),
        }
    }
}

impl DriftState {
    /// Folds one event in log order: the figures against the previous (up to K) events, None
    /// for the tenant's first event; then the event joins the baseline, evicting the oldest.
    pub fn observe(
        &mut self,
        event: &FeatureImportance,
        config: &DriftConfig,
    ) -> Option<DriftFigures> {
        let k = config.baseline_events.max(1);
        let current = KeptEvent::new(event, config.max_order_statistics);
        let skip = self.baseline.len().saturating_sub(k);
        let first = self.kept().0;
        let previous: Vec<(u64, &KeptEvent)> = (first..).zip(&self.baseline).skip(skip).collect();
        let figures =
            (!previous.is_empty()).then(|| figures(&current, &previous, config, &mut self.pairs));
        self.baseline.push_back(current);
        while self.baseline.len() > k {
            self.baseline.pop_front();
        }
        self.seen += 1;
        let first = self.kept().0;
        self.pairs.0.retain(|&seq, _| seq >= first);
        figures
    }

    /// How many events this state has folded.
    pub fn events_seen(&self) -> u64 {
        self.seen
    }

    /// The sequence number of the oldest kept event (events are numbered from 0 in the order
    /// they were folded), and how many are kept: the kept events are numbered
    /// `first..events_seen()`.
    pub(crate) fn kept(&self) -> (u64, usize) {
        (
            self.seen.saturating_sub(self.baseline.len() as u64),
            self.baseline.len(),
        )
    }

    /// The kept events with their sequence numbers, oldest first.
    pub(crate) fn kept_events(&self) -> impl Iterator<Item = (u64, &KeptEvent)> {
        let first = self.kept().0;
        (first..).zip(&self.baseline)
    }

    /// The state that kept `baseline` (oldest first) after folding `seen` events; `None` when
    /// it keeps more events than it folded.
    pub(crate) fn from_kept(baseline: Vec<KeptEvent>, seen: u64) -> Option<Self> {
        (baseline.len() as u64 <= seen).then(|| DriftState {
            baseline: baseline.into(),
            seen,
            pairs: MergedPairs::default(),
        })
    }
}

/// The figures of `current` against the `previous` events (with their numbers, oldest first).
fn figures(
    current: &KeptEvent,
    previous: &[(u64, &KeptEvent)],
    config: &DriftConfig,
    pairs: &mut MergedPairs,
) -> DriftFigures {
    let mut baseline: BTreeMap<String, f64> = BTreeMap::new();
    for (_, event) in previous {
        for (f, s) in &event.shares {
            *baseline.entry(f.clone()).or_insert(0.0) += s;
        }
    }
    let count = previous.len() as f64;
    for b in baseline.values_mut() {
        *b /= count;
    }

    let mut key: BTreeSet<String> = top_k(&baseline, config.key_top).into_iter().collect();
    key.extend(config.key_features.iter().cloned());
    let mut shown = key.clone();
    shown.extend(top_k(&current.shares, config.key_top));

    let features = shown
        .into_iter()
        .map(|name| {
            let is_key = key.contains(&name);
            let psi = if is_key {
                let pairs = (config.baseline_events >= 3).then_some(&mut *pairs);
                feature_psi(&name, current, previous, config.psi_floor, pairs)
            } else {
                None
            };
            let drift = FeatureDrift {
                share: current.shares.get(&name).copied().unwrap_or(0.0),
                baseline_share: baseline.get(&name).copied().unwrap_or(0.0),
                key: is_key,
                psi: psi.map(|p| p.psi),
                psi_critical: psi.map(|p| p.critical),
                bins: psi.map(|p| p.bins),
            };
            (name, drift)
        })
        .collect();

    DriftFigures {
        importance_shift: importance_shift(&current.shares, &baseline),
        spearman: spearman(&current.shares, &baseline),
        top_k_churn: top_k_churn(&current.shares, &baseline, config.churn_top),
        features,
        baseline_events: previous.len(),
    }
}

#[derive(Clone, Copy)]
struct FeaturePsi {
    psi: f64,
    critical: f64,
    bins: usize,
}

/// The pooled baseline of a key feature: the union of the sorted runs the previous events kept,
/// read as one sorted sequence without laying it out (sorting the pool was one of the largest
/// items of `feedback fold`'s wall time). The two shortest runs are merged until at most two
/// sorted halves remain (none to merge for one or two runs); an order statistic is found by a
/// binary search over how many values the first half gives, and a count below an edge is the
/// halves' counts. The values read are those of the sorted pool (values equal in the total
/// order have the same bits), so every edge and share is too. The samples are finite
/// (validation refuses others): a NaN would make `count_at_most`'s float comparison disagree
/// with the sorted pool.
struct Pool<'a> {
    /// The two sorted halves, as total-order keys each between [`START`] and [`END`].
    a: Cow<'a, [u64]>,
    b: Cow<'a, [u64]>,
}

impl<'a> Pool<'a> {
    #[cfg(test)]
    fn new(runs: &[&[f64]]) -> Pool<'a> {
        Pool::of_keys(
            runs.iter()
                .map(|run| Cow::Owned(bounded_keys(run)))
                .collect(),
        )
    }

    /// The pool of sorted runs of keys, each between its bounds: the two shortest are merged
    /// until two remain (pairs of equal runs, as a pairwise merge takes them).
    fn of_keys(mut runs: Vec<Cow<'a, [u64]>>) -> Pool<'a> {
        while runs.len() > 2 {
            // Longest first, so the two shortest are at the end.
            runs.sort_by_key(|r| std::cmp::Reverse(r.len()));
            let (b, a) = (runs.pop(), runs.pop());
            if let (Some(a), Some(b)) = (a, b) {
                runs.push(Cow::Owned(merge_two(&a, &b)));
            }
        }
        let b = runs.pop().unwrap_or_default();
        let a = runs.pop().unwrap_or_default();
        Pool { a, b }
    }

    /// The keys of the two halves, without their bounds.
    fn halves(&self) -> (&[u64], &[u64]) {
        (inner_keys(&self.a), inner_keys(&self.b))
    }

    fn len(&self) -> usize {
        let (a, b) = self.halves();
        a.len() + b.len()
    }

    /// The value of rank `r` (from 0) of the sorted pool; `r` is below `len()`.
    fn nth(&self, r: usize) -> f64 {
        let (a, b) = self.halves();
        // Of the r + 1 smallest values, i come from a and r + 1 - i from b: i is the least count
        // for which b's last one taken is at most a's first one left.
        let (mut lo, mut hi) = ((r + 1).saturating_sub(b.len()), (r + 1).min(a.len()));
        while lo < hi {
            let i = lo + (hi - lo) / 2;
            if b[r - i] <= a[i] {
                hi = i;
            } else {
                lo = i + 1;
            }
        }
        let last_a = lo.checked_sub(1).map(|i| a[i]);
        let last_b = (r + 1 - lo).checked_sub(1).map(|j| b[j]);
        from_total_order_key(last_a.max(last_b).unwrap_or(START))
    }

    /// How many values are `<= e` (compared as floats, as [`bin_shares_sorted`] does).
    fn count_at_most(&self, e: f64) -> usize {
        let (a, b) = self.halves();
        let at_most = |k: &u64| from_total_order_key(*k) <= e;
        a.partition_point(at_most) + b.partition_point(at_most)
    }

    /// [`decile_edges`] of the sorted pool.
    fn decile_edges(&self) -> Vec<f64> {
        let n = self.len();
        deciles(n, |i| (i < n).then(|| self.nth(i)))
    }

    /// [`bin_shares_sorted`] of the sorted pool.
    fn bin_shares(&self, inner_edges: &[f64]) -> Vec<f64> {
        shares_from_counts(self.len(), inner_edges, |e| self.count_at_most(e))
    }
}

/// A sorted run of samples as keys between [`START`] and [`END`].
fn bounded_keys(run: &[f64]) -> Vec<u64> {
    let mut keys = Vec::with_capacity(run.len() + 2);
    keys.push(START);
    keys.extend(run.iter().map(|&v| total_order_key(v)));
    keys.push(END);
    keys
}

fn inner_keys(bounded: &[u64]) -> &[u64] {
    bounded
        .get(1..bounded.len().saturating_sub(1))
        .unwrap_or(&[])
}

/// The least and the greatest key, which bound each run of a [`Pool`] being merged.
const START: u64 = 0;
const END: u64 = u64::MAX;

/// Two sorted runs of keys, each between [`START`] and [`END`], merged into one between them.
///
/// The smallest keys are taken from the front and the largest from the back in the same loop:
/// two independent chains of loads and compares that the processor overlaps. Neither branches
/// on which run a key comes from: that comparison would be mispredicted half the time. A run
/// that has run out stays on its bound, which no key of the other run passes; should a key
/// equal it (a NaN with every payload bit set), either one is the same key.
fn merge_two(a: &[u64], b: &[u64]) -> Vec<u64> {
    let n = a.len() + b.len() - 4;
    let mut out = vec![START; n + 2];
    out[n + 1] = END;
    let (front, back) = out[1..=n].split_at_mut(n / 2);
    let (last_a, last_b) = (a.len() - 1, b.len() - 1);
    let (mut i, mut j) = (1, 1);
    let (mut back_i, mut back_j) = (a.len() - 2, b.len() - 2);
    let mut back = back.iter_mut().rev();
    for slot in front {
        let (x, y) = (a[i], b[j]);
        let take_a = x <= y;
        i = (i + usize::from(take_a)).min(last_a);
        j = (j + usize::from(!take_a)).min(last_b);
        *slot = if take_a { x } else { y };

        let (x, y) = (a[back_i], b[back_j]);
        let take_a = x > y;
        back_i = back_i.saturating_sub(usize::from(take_a));
        back_j = back_j.saturating_sub(usize::from(!take_a));
        if let Some(slot) = back.next() {
            *slot = if take_a { x } else { y };
        }
    }
    // An odd count leaves the middle key: the larger of the two the back has not taken.
    if let Some(slot) = back.next() {
        *slot = a[back_i].max(b[back_j]);
    }
    out
}

/// PSI of the current event's kept samples of `name` against the pooled baseline samples, None
/// when either side has none.
fn feature_psi(
    name: &str,
    current: &KeptEvent,
    previous: &[(u64, &KeptEvent)],
    floor: f64,
    pairs: Option<&mut MergedPairs>,
) -> Option<FeaturePsi> {
    let actual = current
        .order_statistics
        .get(name)
        .filter(|v| !v.is_empty())?;
    let run = |i: usize| {
        let (seq, event): (u64, &KeptEvent) = *previous.get(i)?;
        Some((seq, event.order_statistics.get(name)?))
    };
    // Which of the runs pair up, when pairs are kept: an even-numbered event's and the next
    // one's, both in the baseline. Merged once, for the later baselines that hold them too.
    let paired = |i: usize| match (run(i), run(i + 1)) {
        (Some((seq, a)), Some((next, b))) if seq % 2 == 0 && next == seq + 1 => Some((seq, a, b)),
        _ => None,
    };
    let mut kept: Option<&MergedPairs> = None;
    if let Some(pairs) = pairs {
        for (seq, a, b) in (0..previous.len()).filter_map(paired) {
            let merged = pairs.0.entry(seq).or_default();
            if !merged.contains_key(name) {
                merged.insert(
                    name.to_owned(),
                    merge_two(&bounded_keys(a), &bounded_keys(b)),
                );
            }
        }
        kept = Some(pairs);
    }
    let mut runs: Vec<Cow<'_, [u64]>> = Vec::with_capacity(previous.len());
    let mut i = 0;
    while i < previous.len() {
        let merged = kept.and_then(|p| p.0.get(&paired(i)?.0)?.get(name));
        match (merged, run(i)) {
            (Some(merged), _) => {
                runs.push(Cow::Borrowed(merged));
                i += 2;
            }
            (None, Some((_, single))) => {
                runs.push(Cow::Owned(bounded_keys(single)));
                i += 1;
            }
            (None, None) => i += 1,
        }
    }
    let pool = Pool::of_keys(runs);
    if pool.len() == 0 {
        return None;
    }
    let edges = pool.decile_edges();
    let bins = edges.len() + 1;
    Some(FeaturePsi {
        psi: psi(
            &bin_shares_sorted(actual, &edges),
            &pool.bin_shares(&edges),
            floor,
        ),
        critical: psi_critical(bins, actual.len(), pool.len()),
        bins,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy;

    // Expected numbers below were computed by hand or in Python (mpmath for chi-squared), not
    // with this module.

    #[test]
    fn total_order_keys_order_as_total_cmp_and_round_trip() {
        let values = [
            f64::NEG_INFINITY,
            -1e300,
            -1.0,
            -f64::MIN_POSITIVE,
            -0.0,
            0.0,
            5e-324,
            1.0,
            2.5,
            1e300,
            f64::INFINITY,
            f64::NAN,
            -f64::NAN,
            f64::from_bits(0x7fff_ffff_ffff_ffff),
            f64::from_bits(0xffff_ffff_ffff_ffff),
        ];
        for &a in &values {
            assert_eq!(
                from_total_order_key(total_order_key(a)).to_bits(),
                a.to_bits()
            );
            for &b in &values {
                assert_eq!(
                    total_order_key(a).cmp(&total_order_key(b)),
                    a.total_cmp(&b),
                    "{a} {b}"
                );
            }
        }
    }

    /// Every rank, edge and share of a `Pool` of the runs against the pool sorted.
    fn check_pool(runs: &[Vec<f64>]) {
        let mut pooled: Vec<f64> = runs.concat();
        pooled.sort_by(f64::total_cmp);
        let slices: Vec<&[f64]> = runs.iter().map(Vec::as_slice).collect();
        let pool = Pool::new(&slices);
        assert_eq!(pool.len(), pooled.len());
        for (r, v) in pooled.iter().enumerate() {
            assert_eq!(pool.nth(r).to_bits(), v.to_bits(), "rank {r} of {runs:?}");
        }
        for &e in pooled
            .iter()
            .chain(&[f64::NEG_INFINITY, -0.0, 0.0, 0.5, f64::INFINITY])
        {
            assert_eq!(
                pool.count_at_most(e),
                pooled.partition_point(|&v| v <= e),
                "values <= {e} of {runs:?}"
            );
        }
        let edges = decile_edges(&pooled);
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&pool.decile_edges()), bits(&edges));
        assert_eq!(
            bits(&pool.bin_shares(&edges)),
            bits(&bin_shares_sorted(&pooled, &edges))
        );
    }

    #[test]
    fn a_pool_of_sorted_runs_reads_as_the_runs_sorted_together() {
        for k in 0..9 {
            let runs: Vec<Vec<f64>> = (0..k)
                .map(|r| {
                    let mut v: Vec<f64> = (0..(37 * r + 5) % 50)
                        .map(|i| (((i * 7919 + r * 31) % 97) as f64 - 40.0) / 3.0)
                        .chain([0.0, -0.0, f64::INFINITY, f64::NEG_INFINITY])
                        .collect();
                    v.sort_by(f64::total_cmp);
                    v
                })
                .collect();
            check_pool(&runs);
        }
        check_pool(&[vec![], vec![1.0]]);
        check_pool(&[vec![1.0], vec![], vec![], vec![0.5, 2.0]]);
        check_pool(&[vec![2.0; 7], vec![2.0; 3], vec![1.0, 2.0, 3.0]]);
    }

    /// Keys equal to the merge's bounds (NaNs with every payload bit set, which validation
    /// refuses, so only ranks and edges: the float comparison of a count means nothing for them).
    #[test]
    fn a_pool_reads_keys_equal_to_its_bounds_in_their_place() {
        let least = from_total_order_key(START);
        let greatest = from_total_order_key(END);
        let runs = [
            vec![least, least, -1.0, 2.0, greatest],
            vec![least, 0.5, greatest, greatest],
            vec![3.0, greatest],
            vec![least],
            vec![greatest],
        ];
        let slices: Vec<&[f64]> = runs.iter().map(Vec::as_slice).collect();
        let mut pooled: Vec<f64> = runs.concat();
        pooled.sort_by(f64::total_cmp);
        let pool = Pool::new(&slices);
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let ranks: Vec<f64> = (0..pool.len()).map(|r| pool.nth(r)).collect();
        assert_eq!(bits(&ranks), bits(&pooled));
        assert_eq!(bits(&pool.decile_edges()), bits(&decile_edges(&pooled)));
    }

    proptest::proptest! {
        #[test]
        fn a_pool_of_random_runs_reads_as_the_runs_sorted_together(
            runs in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::prop_oneof![
                        (-20i32..20).prop_map(|v| f64::from(v) / 4.0),
                        proptest::sample::select(vec![-0.0, 0.0, f64::INFINITY, f64::NEG_INFINITY]),
                    ],
                    0..40,
                ),
                0..7,
            )
        ) {
            let runs: Vec<Vec<f64>> = runs
                .into_iter()
                .map(|mut run| {
                    run.sort_by(f64::total_cmp);
                    run
                })
                .collect();
            check_pool(&runs);
        }

        /// The merged pairs a state keeps change no figure: each event's PSI is that of the
        /// previous K events' samples sorted together, and its figures equal those of a state
        /// restored from the same kept events just before it, which has no pairs merged yet.
        #[test]
        fn merged_pairs_give_the_figures_of_a_state_without_them(
            k in 1usize..7,
            events in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::option::of(proptest::collection::vec(
                        (-12i32..12).prop_map(|v| f64::from(v) / 4.0),
                        0..30,
                    )),
                    3,
                ),
                1..14,
            )
        ) {
            let config = DriftConfig { baseline_events: k, ..DriftConfig::default() };
            let mut kept = DriftState::default();
            for samples in &events {
                let samples: Vec<(&str, Vec<f64>)> = ["a", "b", "c"]
                    .into_iter()
                    .zip(samples)
                    .filter_map(|(f, v)| Some((f, v.clone()?)))
                    .collect();
                let fi = event(&[("a", 3.0), ("b", 2.0), ("c", 1.0)], &samples);
                let baseline: Vec<KeptEvent> = kept.baseline.iter().cloned().collect();
                let mut fresh = DriftState::from_kept(baseline.clone(), kept.seen).unwrap();
                let figures = kept.observe(&fi, &config);
                proptest::prop_assert_eq!(&figures, &fresh.observe(&fi, &config));
                // Bounded: at most (K - 1) / 2 pairs stay kept from one event to the next.
                proptest::prop_assert!(kept.pairs.0.len() <= (k.max(2) - 1) / 2);
                let Some(figures) = figures else { continue };
                let previous = &baseline[baseline.len().saturating_sub(k)..];
                for (name, drift) in &figures.features {
                    let mut pooled: Vec<f64> = (previous.iter())
                        .filter_map(|e| e.order_statistics.get(name))
                        .flatten()
                        .copied()
                        .collect();
                    pooled.sort_by(f64::total_cmp);
                    let actual = (fi.samples.get(name))
                        .map_or_else(Vec::new, |v| thin_order_statistics(v, 1000));
                    let expected = (!actual.is_empty() && !pooled.is_empty()).then(|| {
                        let edges = decile_edges(&pooled);
                        let shares = |v: &[f64]| bin_shares_sorted(v, &edges);
                        psi(&shares(&actual), &shares(&pooled), 1e-4)
                    });
                    let bits = |v: Option<f64>| v.map(f64::to_bits);
                    proptest::prop_assert_eq!(bits(drift.psi), bits(expected));
                }
            }
        }
    }

    #[test]
    fn sorted_binning_agrees_with_per_value_binning() {
        let mut values: Vec<f64> = (0..500).map(|i| ((i * 37) % 101) as f64 / 7.0).collect();
        let edges = [1.0, 3.0, 3.0 + 1e-12, 7.0, 14.0];
        let plain = bin_shares(&values, &edges);
        values.sort_by(f64::total_cmp);
        assert_eq!(bin_shares_sorted(&values, &edges), plain);
        assert_eq!(bin_shares_sorted(&[], &edges), bin_shares(&[], &edges));
    }

    fn map(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|&(f, v)| (f.to_owned(), v)).collect()
    }

    fn close(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() <= 1e-12,
            "{actual} is not {expected}"
        );
    }

    fn close_all(actual: &[f64], expected: &[f64]) {
        assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
        for (a, e) in actual.iter().zip(expected) {
            close(*a, *e);
        }
    }

    fn event(importances: &[(&str, f64)], samples: &[(&str, Vec<f64>)]) -> FeatureImportance {
        FeatureImportance {
            tenant: "acme".to_owned().into(),
            model_version: None,
            computed_at: "2026-11-15T00:00:00Z".parse().unwrap(),
            method: None,
            importances: map(importances),
            samples: samples
                .iter()
                .map(|(f, v)| ((*f).to_owned(), v.clone()))
                .collect(),
        }
    }

    #[test]
    fn shares_are_of_absolute_importance() {
        let s = shares(&map(&[("a", 2.0), ("b", -1.0), ("c", 1.0)]));
        assert_eq!(s, map(&[("a", 0.5), ("b", 0.25), ("c", 0.25)]));
        let zero = shares(&map(&[("a", 0.0), ("b", -0.0)]));
        assert_eq!(zero, map(&[("a", 0.0), ("b", 0.0)]));
        let huge = shares(&map(&[("a", f64::MAX), ("b", f64::MAX)]));
        assert_eq!(huge, map(&[("a", 0.5), ("b", 0.5)]));
    }

    #[test]
    fn importance_shift_is_total_variation_over_the_union() {
        let current = map(&[("a", 0.5), ("b", 0.25), ("c", 0.25)]);
        let baseline = map(&[("a", 0.25), ("b", 0.25), ("d", 0.5)]);
        // 1/2 (0.25 + 0 + 0.25 + 0.5)
        close(importance_shift(&current, &baseline), 0.5);
        close(importance_shift(&current, &current), 0.0);
        close(
            importance_shift(&map(&[("a", 1.0)]), &map(&[("b", 1.0)])),
            1.0,
        );
    }

    #[test]
    fn spearman_uses_average_ranks_over_the_union() {
        let reversed = spearman(
            &map(&[("a", 0.5), ("b", 0.3), ("c", 0.2)]),
            &map(&[("a", 0.2), ("b", 0.3), ("c", 0.5)]),
        );
        close(reversed.unwrap(), -1.0);
        // Union a, b, c, d; ranks (4, 2.5, 2.5, 1) against (2.5, 2.5, 1, 4): r = -2.25 / 4.5.
        let tied = spearman(
            &map(&[("a", 0.5), ("b", 0.25), ("c", 0.25)]),
            &map(&[("a", 0.25), ("b", 0.25), ("d", 0.5)]),
        );
        close(tied.unwrap(), -0.5);
        let same = map(&[("a", 0.1), ("b", 0.2), ("c", 0.7)]);
        close(spearman(&same, &same).unwrap(), 1.0);
    }

    #[test]
    fn spearman_is_none_without_rank_variance_or_two_features() {
        assert_eq!(spearman(&map(&[("a", 1.0)]), &map(&[("a", 1.0)])), None);
        assert_eq!(
            spearman(
                &map(&[("a", 0.5), ("b", 0.5)]),
                &map(&[("a", 0.9), ("b", 0.1)])
            ),
            None
        );
        assert_eq!(spearman(&BTreeMap::new(), &BTreeMap::new()), None);
    }

    #[test]
    fn top_k_breaks_ties_by_name_and_skips_zero_shares() {
        let s = map(&[("d", 0.2), ("c", 0.3), ("b", 0.3), ("a", 0.2), ("e", 0.0)]);
        assert_eq!(top_k(&s, 3), vec!["b", "c", "a"]);
        assert_eq!(top_k(&s, 10), vec!["b", "c", "a", "d"]);
        assert!(top_k(&s, 0).is_empty());
    }

    #[test]
    fn churn_lists_new_entrants_in_current_rank_order() {
        let current = map(&[("a", 0.4), ("b", 0.3), ("c", 0.2), ("d", 0.1)]);
        let baseline = map(&[("b", 0.5), ("e", 0.3), ("a", 0.2)]);
        assert_eq!(top_k_churn(&current, &baseline, 2), vec!["a"]);
        assert_eq!(top_k_churn(&current, &baseline, 5), vec!["c", "d"]);
        assert!(top_k_churn(&baseline, &baseline, 5).is_empty());
    }

    #[test]
    fn thinning_keeps_rounded_order_statistics() {
        let small = [3.0, -1.0, 2.0];
        assert_eq!(thin_order_statistics(&small, 1000), vec![-1.0, 2.0, 3.0]);

        // 0..2000 in reverse: index round(i * 1999 / 999).
        let values: Vec<f64> = (0..2000).rev().map(f64::from).collect();
        let kept = thin_order_statistics(&values, 1000);
        assert_eq!(kept.len(), 1000);
        assert_eq!(&kept[..3], &[0.0, 2.0, 4.0]);
        assert_eq!(kept[499], 998.0); // 998.4995 rounds down
        assert_eq!(kept[500], 1001.0); // 1000.5005 rounds up
        assert_eq!(kept[998], 1997.0);
        assert_eq!(kept[999], 1999.0);

        let big: Vec<f64> = (0..100_000).map(f64::from).collect();
        let kept = thin_order_statistics(&big, 1000);
        // 100.099, 200.198, 50049.55, 99898.90
        assert_eq!(
            (kept[1], kept[2], kept[500], kept[998]),
            (100.0, 200.0, 50050.0, 99899.0)
        );

        // An exact half (i (n - 1) / (max - 1) = 3 / 2) rounds up.
        assert_eq!(
            thin_order_statistics(&[0.0, 1.0, 2.0, 3.0], 3),
            vec![0.0, 2.0, 3.0]
        );
    }

    #[test]
    fn type7_interpolates_like_numpy() {
        let x = [1.0, 2.0, 3.0, 4.0];
        close(type7_quantile(&x, 0.5).unwrap(), 2.5);
        close(type7_quantile(&x, 0.1).unwrap(), 1.3);
        assert_eq!(type7_quantile(&x, 0.0), Some(1.0));
        assert_eq!(type7_quantile(&x, 1.0), Some(4.0));
        assert_eq!(type7_quantile(&[7.0], 0.3), Some(7.0));
        assert_eq!(type7_quantile(&[], 0.5), None);
        assert_eq!(type7_quantile(&x, 1.5), None);
    }

    #[test]
    fn decile_edges_of_distinct_values() {
        let x: Vec<f64> = (0..=10).map(f64::from).collect();
        close_all(
            &decile_edges(&x),
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
        );
        assert!(decile_edges(&[]).is_empty());
        assert_eq!(decile_edges(&[2.0, 2.0, 2.0]), vec![2.0]);
    }

    #[test]
    fn a_value_on_an_edge_goes_to_the_lower_bin() {
        let shares = bin_shares(&[1.0, 2.0, 2.5, 3.0], &[1.0, 2.0]);
        assert_eq!(shares, vec![0.25, 0.25, 0.5]);
        assert_eq!(bin_shares(&[], &[1.0]), vec![0.0, 0.0]);
    }

    #[test]
    fn psi_with_tied_baseline_merged_edges_and_an_empty_bin() {
        // n = 10, h = 9p: deciles 0, 0, 0, 0, 0, 0.4, 1.3, 2.2, 3.1; five zeros merge into one.
        let baseline = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0];
        let edges = decile_edges(&baseline);
        close_all(&edges, &[0.0, 0.4, 1.3, 2.2, 3.1]);
        let expected = bin_shares(&baseline, &edges);
        close_all(&expected, &[0.6, 0.0, 0.1, 0.1, 0.1, 0.1]);
        // 0.4 and 1.3 sit exactly on edges and go to the lower bin.
        let actual = bin_shares(&[1.3, 0.0, 0.2, 0.4, 5.0, 0.0], &edges);
        close_all(
            &actual,
            &[1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0, 0.0, 0.0, 1.0 / 6.0],
        );
        close(psi(&actual, &expected, 1e-4), 4.308120886844355);
    }

    #[test]
    fn psi_floors_empty_bins() {
        // (0.5 - 0.25) ln 2 + (1e-4 - 0.25) ln(1e-4 / 0.25)
        close(
            psi(&[0.5, 0.5, 0.0], &[0.5, 0.25, 0.25], 1e-4),
            2.1285158932529735,
        );
        close(psi(&[1.0, 0.0], &[1.0, 0.0], 1e-4), 0.0);
        close(psi(&[0.5, 0.5], &[0.5, 0.5], 0.0), 0.0);
    }

    #[test]
    fn psi_critical_is_the_chi2_quantile_times_the_sample_terms() {
        let chi2 = |b| psi_critical(b, 1, 1) / 2.0;
        assert!(
            (chi2(10) - 27.877_164_871_256_57).abs() < 1e-6,
            "{}",
            chi2(10)
        );
        assert!(
            (chi2(2) - 10.827_566_170_662_732).abs() < 1e-6,
            "{}",
            chi2(2)
        );
        assert!(
            (chi2(6) - 20.515_005_652_432_88).abs() < 1e-6,
            "{}",
            chi2(6)
        );
        assert!((psi_critical(6, 6, 10) - 5.470_668_173_982_101).abs() < 1e-6);
        assert_eq!(psi_critical(1, 10, 10), 0.0);
        assert_eq!(psi_critical(3, 0, 10), f64::INFINITY);
    }

    fn k2() -> DriftConfig {
        DriftConfig {
            baseline_events: 2,
            ..DriftConfig::default()
        }
    }

    fn tied_baseline() -> Vec<f64> {
        vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0]
    }

    #[test]
    fn observe_compares_with_the_previous_k_events_and_evicts() {
        let config = k2();
        let mut state = DriftState::default();

        let e1 = event(&[("a", 3.0), ("b", 1.0)], &[("a", tied_baseline())]);
        assert_eq!(state.observe(&e1, &config), None);

        // Against e1 alone: a 0.75, b 0.25.
        let e2 = event(
            &[("a", 1.0), ("b", 1.0)],
            &[("a", vec![0.0, 0.0, 0.2, 0.4, 1.3, 5.0])],
        );
        let f2 = state.observe(&e2, &config).unwrap();
        close(f2.importance_shift, 0.25);
        assert_eq!(f2.spearman, None);
        assert!(f2.top_k_churn.is_empty());
        assert_eq!(f2.baseline_events, 1);
        assert_eq!(f2.features.keys().collect::<Vec<_>>(), ["a", "b"]);
        let a = &f2.features["a"];
        assert!(a.key);
        close(a.share, 0.5);
        close(a.baseline_share, 0.75);
        assert_eq!(a.bins, Some(6));
        close(a.psi.unwrap(), 4.308120886844355);
        // chi2_{0.999, 5} (1/6 + 1/10)
        assert!((a.psi_critical.unwrap() - 5.470668173982101).abs() < 1e-6);
        assert_eq!(f2.features["b"].psi, None);

        // Against mean(e1, e2): a 0.625, b 0.375.
        let e3 = event(&[("a", 1.0), ("c", 3.0)], &[]);
        let f3 = state.observe(&e3, &config).unwrap();
        close(f3.importance_shift, 0.75);
        close(f3.spearman.unwrap(), -0.5);
        assert_eq!(f3.top_k_churn, vec!["c"]);
        assert_eq!(f3.baseline_events, 2);
        assert_eq!(f3.features["a"].psi, None);
        assert!(!f3.features["c"].key);

        // K = 2: e1 is gone, the baseline is mean(e2, e3) = a 0.375, b 0.25, c 0.375 and the
        // sample pool is e2's six values alone.
        let e4 = event(&[("b", 1.0)], &[("a", vec![10.0, 2.0, 0.25, -1.0])]);
        let f4 = state.observe(&e4, &config).unwrap();
        close(f4.importance_shift, 0.75);
        close(f4.spearman.unwrap(), -1.0);
        assert!(f4.top_k_churn.is_empty());
        assert_eq!(f4.baseline_events, 2);
        let baseline_shares: Vec<f64> = f4.features.values().map(|f| f.baseline_share).collect();
        close_all(&baseline_shares, &[0.375, 0.25, 0.375]);
        // Edges of e2's samples: 0, 0.1, 0.2, 0.3, 0.4, 0.85, 1.3, 3.15 (nine bins).
        let a = &f4.features["a"];
        assert_eq!(a.bins, Some(9));
        close(a.psi.unwrap(), 7.6752853383758755);
        // chi2_{0.999, 8} (1/4 + 1/6)
        assert!((a.psi_critical.unwrap() - 10.885200649323393).abs() < 1e-6);
        assert_eq!(state.events_seen(), 4);
    }

    #[test]
    fn key_features_are_the_baseline_top_plus_configured_ones() {
        let config = DriftConfig {
            key_top: 1,
            key_features: vec!["c".to_owned(), "z".to_owned()],
            ..DriftConfig::default()
        };
        let values: Vec<f64> = (0..20).map(f64::from).collect();
        let samples = [
            ("a", values.clone()),
            ("b", values.clone()),
            ("c", values.clone()),
        ];
        let mut state = DriftState::default();
        let e1 = event(&[("a", 3.0), ("b", 2.0), ("c", 1.0)], &samples);
        assert_eq!(state.observe(&e1, &config), None);
        let shifted: Vec<f64> = values.iter().map(|v| v + 5.0).collect();
        let e2 = event(
            &[("a", 1.0), ("b", 1.0), ("c", 1.0), ("d", 5.0)],
            &[("a", shifted), ("b", values.clone()), ("c", values)],
        );
        let f = state.observe(&e2, &config).unwrap();
        // a: baseline top 1; c, z: configured; d: current top 1; b: none of these.
        assert_eq!(f.features.keys().collect::<Vec<_>>(), ["a", "c", "d", "z"]);
        assert!(f.features["a"].psi.unwrap() > 0.0);
        assert_eq!(f.features["c"].psi, Some(0.0));
        assert!(f.features["c"].key);
        let d = &f.features["d"];
        assert!(!d.key);
        assert_eq!((d.psi, d.psi_critical, d.bins), (None, None, None));
        let z = &f.features["z"];
        assert!(z.key);
        assert_eq!((z.share, z.baseline_share, z.psi), (0.0, 0.0, None));
    }

    /// The same events built in other orders: importances inserted backwards, samples shuffled,
    /// and one event decoded from JSON with its keys out of order.
    #[test]
    fn figures_do_not_depend_on_key_or_sample_order() {
        let names = ["f3", "f1", "f4", "f0", "f2"];
        let values: Vec<f64> = (0..2500).map(|i| f64::from(i) * 0.37).collect();
        let shuffled: Vec<f64> = (0..2500).map(|i| values[(i * 7919) % 2500]).collect();
        let build = |forward: bool, step: usize| {
            let mut importances = BTreeMap::new();
            let mut samples = BTreeMap::new();
            let order: Vec<usize> = if forward {
                (0..names.len()).collect()
            } else {
                (0..names.len()).rev().collect()
            };
            for i in order {
                let w = ((i + step) % names.len()) as f64 + 0.5;
                importances.insert(names[i].to_owned(), w);
                let base = if forward { &values } else { &shuffled };
                samples.insert(
                    names[i].to_owned(),
                    base.iter().map(|v| v + step as f64).collect(),
                );
            }
            FeatureImportance {
                importances,
                samples,
                ..event(&[], &[])
            }
        };
        let json = r#"{"tenant": "acme", "computed_at": "2026-11-15T00:00:00Z",
            "importances": {"b": 1.0, "a": 2.0, "c": 0.5}}"#;
        let json_reordered = r#"{"importances": {"c": 0.5, "a": 2.0, "b": 1.0},
            "computed_at": "2026-11-15T00:00:00Z", "tenant": "acme"}"#;
        let run = |forward: bool, json: &str| {
            let config = DriftConfig::default();
            let mut state = DriftState::default();
            let mut out: Vec<Option<DriftFigures>> = (0..6)
                .map(|step| state.observe(&build(forward, step), &config))
                .collect();
            let decoded: FeatureImportance = serde_json::from_str(json).unwrap();
            out.push(state.observe(&decoded, &config));
            out
        };
        let forward = run(true, json);
        assert!(forward[1..].iter().all(Option::is_some));
        assert!(forward[1].as_ref().unwrap().features["f0"].psi.is_some());
        assert_eq!(forward, run(false, json_reordered));
    }

    #[test]
    fn state_survives_a_json_round_trip() {
        let config = k2();
        let events: Vec<FeatureImportance> = (0..5)
            .map(|i| {
                let w = f64::from(i);
                event(
                    &[("a", 1.0 + w), ("b", 2.0 / (1.0 + w)), ("c", 4.0 / 3.0)],
                    &[(
                        "a",
                        (0..1500).map(|j| f64::from(j).sqrt() / (3.0 + w)).collect(),
                    )],
                )
            })
            .collect();
        let mut straight = DriftState::default();
        let mut restored = DriftState::default();
        for (i, e) in events.iter().enumerate() {
            let expected = straight.observe(e, &config);
            let got = restored.observe(e, &config);
            assert_eq!(got, expected, "event {i}");
            let json = serde_json::to_string(&restored).unwrap();
            restored = serde_json::from_str(&json).unwrap();
            // serde_json needs its `float_roundtrip` feature for this to hold.
            assert!(
                restored == straight,
                "event {i}: the state changed in a JSON round trip"
            );
        }
    }
}
