//! Accumulators for the metrics of SPEC 4: sums that can take a value back out, and the
//! per-window statistics of scored pairs.

use std::cell::RefCell;
use std::collections::BTreeMap;

use compact_str::CompactString;
use serde::Serialize;
use smallvec::SmallVec;

/// A compensated sum (TwoSum): adding and later subtracting the same value leaves it where it was
/// to about 1e-30 relative, so incremental retraction does not drift away from a recomputation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sum {
    pub(crate) hi: f64,
    pub(crate) lo: f64,
}

impl Sum {
    #[inline]
    pub fn add(&mut self, x: f64) {
        let s = self.hi + x;
        let bp = s - self.hi;
        let err = (self.hi - (s - bp)) + (x - bp);
        self.hi = s;
        self.lo += err;
    }

    #[inline]
    pub fn sub(&mut self, x: f64) {
        self.add(-x);
    }

    #[inline]
    pub fn merge(&mut self, other: &Sum) {
        self.add(other.hi);
        self.add(other.lo);
    }

    #[inline]
    pub fn unmerge(&mut self, other: &Sum) {
        self.sub(other.hi);
        self.sub(other.lo);
    }

    #[inline]
    pub fn value(&self) -> f64 {
        self.hi + self.lo
    }
}

/// One scored prediction: the actual revenue `y` against the forecast quantiles of a line.
#[derive(Debug, Clone, Copy)]
pub struct Pair<'a> {
    pub y: f64,
    /// (level in percent, value), ascending by level; always holds p50.
    pub quantiles: &'a [(u8, f64)],
}

impl Pair<'_> {
    pub fn p50(&self) -> f64 {
        self.quantiles
            .iter()
            .find(|q| q.0 == 50)
            .map_or(f64::NAN, |q| q.1)
    }

    pub fn level(&self, level: u8) -> Option<f64> {
        self.quantiles.iter().find(|q| q.0 == level).map(|q| q.1)
    }
}

/// Pinball loss of quantile `q` (0..1) for value `v` against actual `y`.
pub fn pinball(q: f64, y: f64, v: f64) -> f64 {
    (q * (y - v)).max((q - 1.0) * (y - v))
}

/// Wilson score interval at 95% for `k` successes in `n` trials; None when n is 0.
pub fn wilson(k: u64, n: u64) -> Option<[f64; 2]> {
    if n == 0 {
        return None;
    }
    const Z: f64 = 1.959_963_984_540_054;
    let (none, all) = (k == 0, k == n);
    let n = n as f64;
    let p = k as f64 / n;
    let z2 = Z * Z;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denom;
    // With no hits the lower bound is 0 exactly, and with all of them the upper is 1; in floats
    // they can come out as 5.6e-17 and 0.9999999999999999 instead.
    let lo = if none { 0.0 } else { (centre - half).max(0.0) };
    let hi = if all { 1.0 } else { (centre + half).min(1.0) };
    Some([lo, hi])
}

/// Ratio that is None instead of NaN or infinite.
pub fn ratio(num: f64, den: f64) -> Option<f64> {
    let r = num / den;
    (den != 0.0 && r.is_finite()).then_some(r)
}

/// Everything SPEC 4 reports about a set of pairs, as sums that merge across days.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub n: u64,
    pub n_pos: u64,
    pub abs_err: Sum,
    pub bias: Sum,
    pub ape: Sum,
    pub y: Sum,
    /// Per quantile level, ascending: pairs that have it, pairs with y <= value, and the
    /// pinball sum. A sorted vector: a forecast carries a handful of levels, and the storage
    /// documents add every stored pair to three of these (tenant, channel, horizon).
    pub levels: SmallVec<[(u8, LevelStats); 3]>,
    /// Per symmetric interval (keyed by the lower level), ascending: pairs that have both ends,
    /// pairs inside.
    pub intervals: SmallVec<[(u8, Coverage); 1]>,
}

/// The entry of `key` in a sorted (key, value) vector, looked for first at index `hint`: the
/// pairs added to one set of sums mostly carry the same levels, so the i-th level of a pair is
/// mostly the i-th entry.
#[inline]
fn entry_at<V: Default, A: smallvec::Array<Item = (u8, V)>>(
    v: &mut SmallVec<A>,
    hint: usize,
    key: u8,
) -> &mut V {
    if v.get(hint).is_some_and(|e| e.0 == key) {
        return &mut v[hint].1;
    }
    entry(v, key)
}

/// The entry of `key` in a sorted (key, value) vector, inserted empty if missing.
fn entry<V: Default, A: smallvec::Array<Item = (u8, V)>>(v: &mut SmallVec<A>, key: u8) -> &mut V {
    let i = match v.binary_search_by_key(&key, |e| e.0) {
        Ok(i) => i,
        Err(i) => {
            v.insert(i, (key, V::default()));
            i
        }
    };
    &mut v[i].1
}

#[derive(Debug, Clone, Copy, Default)]
pub struct LevelStats {
    pub cover: Coverage,
    pub pinball: Sum,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Coverage {
    pub n: u64,
    pub hits: u64,
}

impl Coverage {
    /// Counts one pair in (`add`) or out, a hit or not.
    fn count(&mut self, add: bool, hit: bool) {
        if add {
            self.n += 1;
            self.hits += u64::from(hit);
        } else {
            self.n -= 1;
            self.hits -= u64::from(hit);
        }
    }

    pub fn share(&self) -> Option<f64> {
        (self.n > 0).then(|| self.hits as f64 / self.n as f64)
    }

    pub fn merge(&mut self, o: &Coverage) {
        self.n += o.n;
        self.hits += o.hits;
    }

    pub fn unmerge(&mut self, o: &Coverage) {
        self.n -= o.n;
        self.hits -= o.hits;
    }
}

impl Stats {
    pub fn add(&mut self, pair: &Pair) {
        let y = pair.y;
        let p = pair.p50();
        let err = (y - p).abs();
        self.n += 1;
        self.abs_err.add(err);
        self.bias.add(p - y);
        self.y.add(y);
        if y > 0.0 {
            self.n_pos += 1;
            self.ape.add(err / y);
        }
        for (i, &(level, v)) in pair.quantiles.iter().enumerate() {
            let l = entry_at(&mut self.levels, i, level);
            l.cover.n += 1;
            l.cover.hits += u64::from(y <= v);
            l.pinball.add(pinball(f64::from(level) / 100.0, y, v));
        }
        let mut j = 0;
        for &(lo, lo_v) in pair.quantiles.iter().take_while(|q| q.0 < 50) {
            if let Some(hi_v) = pair.level(100 - lo) {
                let c = entry_at(&mut self.intervals, j, lo);
                c.n += 1;
                c.hits += u64::from(lo_v <= y && y <= hi_v);
                j += 1;
            }
        }
    }

    pub fn merge(&mut self, o: &Stats) {
        self.n += o.n;
        self.n_pos += o.n_pos;
        self.abs_err.merge(&o.abs_err);
        self.bias.merge(&o.bias);
        self.ape.merge(&o.ape);
        self.y.merge(&o.y);
        for (level, s) in &o.levels {
            let l = entry(&mut self.levels, *level);
            l.cover.merge(&s.cover);
            l.pinball.merge(&s.pinball);
        }
        for (lo, c) in &o.intervals {
            entry(&mut self.intervals, *lo).merge(c);
        }
    }

    pub fn window(&self) -> WindowDoc {
        let n = self.n as f64;
        WindowDoc {
            n: self.n,
            mae: ratio(self.abs_err.value(), n),
            mape: ratio(self.ape.value(), self.n_pos as f64),
            wape: ratio(self.abs_err.value(), self.y.value()),
            bias: ratio(self.bias.value(), n),
            n_zero_actual: self.n - self.n_pos,
            pinball: self
                .levels
                .iter()
                .map(|(level, l)| {
                    (
                        crate::event::quantile_key(*level),
                        ratio(l.pinball.value(), l.cover.n as f64),
                    )
                })
                .collect(),
        }
    }

    /// The coverage counts only; the tests hold the incremental counts against these.
    #[cfg(test)]
    pub fn coverage(&self) -> CoverageCounts {
        CoverageCounts {
            n: self.n,
            levels: self.levels.iter().map(|(l, s)| (*l, s.cover)).collect(),
            intervals: self.intervals.iter().map(|(l, c)| (*l, *c)).collect(),
        }
    }
}

/// The window object of the performance document.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct WindowDoc {
    pub n: u64,
    pub mae: Option<f64>,
    pub mape: Option<f64>,
    pub wape: Option<f64>,
    pub bias: Option<f64>,
    pub n_zero_actual: u64,
    pub pinball: BTreeMap<String, Option<f64>>,
}

/// Coverage counts of a window, per quantile level and per symmetric interval, in integers so
/// that windows slide and retract exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct CoverageCounts {
    pub n: u64,
    /// (level, coverage), ascending by level.
    pub levels: SmallVec<[(u8, Coverage); 3]>,
    /// (lower level of a symmetric interval, coverage), ascending.
    pub intervals: SmallVec<[(u8, Coverage); 1]>,
}

/// Which quantiles a pair carries: its levels ascending, and its symmetric intervals as
/// (lower level, index of the lower value, index of the upper value). Worked out once per
/// distinct set of levels, so counting a pair needs no searching for partners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub levels: Box<[u8]>,
    pub intervals: SmallVec<[(u8, usize, usize); 1]>,
}

impl Layout {
    pub fn new(levels: &[u8]) -> Layout {
        let intervals = levels
            .iter()
            .enumerate()
            .filter(|&(_, &l)| l < 50)
            .filter_map(|(i, &l)| levels.iter().position(|&h| h == 100 - l).map(|j| (l, i, j)))
            .collect();
        Layout {
            levels: levels.into(),
            intervals,
        }
    }
}

/// Index of `level` in a sorted (level, coverage) list, inserting an empty entry if missing.
fn slot<A: smallvec::Array<Item = (u8, Coverage)>>(v: &mut SmallVec<A>, level: u8) -> usize {
    // A linear scan: a pair carries a handful of levels, and this runs for each of them on
    // every rescored pair (a binary search cost twice as many instructions).
    let mut i = 0;
    while i < v.len() {
        let l = v[i].0;
        if l == level {
            return i;
        }
        if l > level {
            break;
        }
        i += 1;
    }
    v.insert(i, (level, Coverage::default()));
    i
}

/// Counts one pair in (or out of) the entry of `level`; the caller drops entries that fall to
/// zero.
fn step<A: smallvec::Array<Item = (u8, Coverage)>>(
    v: &mut SmallVec<A>,
    level: u8,
    add: bool,
    hit: bool,
) {
    let i = slot(v, level);
    v[i].1.count(add, hit);
}

/// Whether the entries of `v` are exactly `levels`, in that order.
fn same_levels<A: smallvec::Array<Item = (u8, Coverage)>>(
    v: &SmallVec<A>,
    levels: impl ExactSizeIterator<Item = u8>,
) -> bool {
    v.len() == levels.len() && v.iter().zip(levels).all(|(e, l)| e.0 == l)
}

/// Moves one hit of the entry of `level` from `was` to `is`.
fn flip<A: smallvec::Array<Item = (u8, Coverage)>>(
    v: &mut SmallVec<A>,
    level: u8,
    was: bool,
    is: bool,
) {
    if was != is {
        let i = slot(v, level);
        if is {
            v[i].1.hits += 1;
        } else {
            v[i].1.hits -= 1;
        }
    }
}

/// A level (or an interval's lower level) and its counts.
type Entry = (u8, Coverage);

/// The entries as slices when they are exactly `layout`'s levels and intervals, in its order
/// (the usual case: every pair of a day or a window carries the same levels); borrowed once, so
/// that the loops over them need no look at whether a list is inline.
#[inline]
fn in_layout<'a>(
    levels: &'a mut SmallVec<[(u8, Coverage); 3]>,
    intervals: &'a mut SmallVec<[(u8, Coverage); 1]>,
    layout: &Layout,
) -> Option<(&'a mut [Entry], &'a mut [Entry])> {
    let (levels, intervals) = (levels.as_mut_slice(), intervals.as_mut_slice());
    let same = levels.len() == layout.levels.len()
        && intervals.len() == layout.intervals.len()
        && levels.iter().zip(&*layout.levels).all(|(e, &l)| e.0 == l)
        && intervals
            .iter()
            .zip(&layout.intervals)
            .all(|(e, x)| e.0 == x.0);
    same.then_some((levels, intervals))
}

/// Adds the entries of `from` to those of `into`, each to the entry of its level. Summing a
/// window's days mostly adds days of the same levels to a sum that has them, or to an empty one
/// (the daily report's 28 days): then the entries pair up in order, or are copied.
fn merge_entries<A: smallvec::Array<Item = (u8, Coverage)>>(
    into: &mut SmallVec<A>,
    from: &SmallVec<A>,
) {
    // Each list borrowed once as a slice: the loops then need no look at whether it is inline.
    let (a, b) = (into.as_mut_slice(), from.as_slice());
    if a.len() == b.len() && a.iter().zip(b).all(|(e, f)| e.0 == f.0) {
        for (e, f) in a.iter_mut().zip(b) {
            e.1.merge(&f.1);
        }
    } else if into.is_empty() {
        into.extend_from_slice(from);
    } else {
        for (l, c) in from {
            let i = slot(into, *l);
            into[i].1.merge(c);
        }
    }
}

impl CoverageCounts {
    /// Adds (`add` true) or removes one pair: quantile `values` laid out as `layout`, actual `y`.
    #[inline]
    pub fn apply(&mut self, layout: &Layout, values: &[f64], y: f64, add: bool) {
        if !self.apply_in_layout(layout, values, y, add) {
            self.apply_anywhere(layout, values, y, add);
        }
    }

    /// [`CoverageCounts::apply`] when the entries are exactly the layout's, in its order (the
    /// usual case: every pair of a day or a window carries the same levels), with each list
    /// borrowed once as a slice and each count moved without a branch; false, with nothing
    /// changed, otherwise.
    #[inline(always)]
    fn apply_in_layout(&mut self, layout: &Layout, values: &[f64], y: f64, add: bool) -> bool {
        let Some((levels, intervals)) = in_layout(&mut self.levels, &mut self.intervals, layout)
        else {
            return false;
        };
        // +1 or -1, in two's complement; a hit moves `hits` by the same.
        let step = if add { 1 } else { u64::MAX };
        let by = |c: &mut Coverage, hit: bool| {
            c.n = c.n.wrapping_add(step);
            c.hits = c.hits.wrapping_add(step & u64::from(hit).wrapping_neg());
        };
        self.n = self.n.wrapping_add(step);
        for ((_, c), &v) in levels.iter_mut().zip(values) {
            by(c, y <= v);
        }
        for ((_, c), &(_, i, j)) in intervals.iter_mut().zip(&layout.intervals) {
            by(c, values[i] <= y && y <= values[j]);
        }
        // An entry that falls to zero goes, as in `apply_anywhere`.
        if !add && (levels.iter().any(|e| e.1.n == 0) || intervals.iter().any(|e| e.1.n == 0)) {
            self.levels.retain(|e| e.1.n > 0);
            self.intervals.retain(|e| e.1.n > 0);
        }
        true
    }

    /// [`CoverageCounts::apply`] for any entries: each of the pair's levels found, or added.
    #[inline(never)]
    fn apply_anywhere(&mut self, layout: &Layout, values: &[f64], y: f64, add: bool) {
        if add {
            self.n += 1
        } else {
            self.n -= 1
        }
        // Usually every pair of the window has the same levels as this one: then the entries
        // are the layout's, in its order, and need no finding (a third of this function's
        // instructions went to finding them).
        if same_levels(&self.levels, layout.levels.iter().copied()) {
            for ((_, c), &v) in self.levels.iter_mut().zip(values) {
                c.count(add, y <= v);
            }
        } else {
            for (&level, &v) in layout.levels.iter().zip(values) {
                step(&mut self.levels, level, add, y <= v);
            }
        }
        let inside = |&(_, i, j): &(u8, usize, usize)| values[i] <= y && y <= values[j];
        if same_levels(&self.intervals, layout.intervals.iter().map(|x| x.0)) {
            for ((_, c), x) in self.intervals.iter_mut().zip(&layout.intervals) {
                c.count(add, inside(x));
            }
        } else {
            for x in &layout.intervals {
                step(&mut self.intervals, x.0, add, inside(x));
            }
        }
        // An entry that falls to zero goes (only a removal can do that; looked for first, as
        // a removal seldom empties one and `retain` costs more than the look).
        if !add {
            if self.levels.iter().any(|e| e.1.n == 0) {
                self.levels.retain(|e| e.1.n > 0);
            }
            if self.intervals.iter().any(|e| e.1.n == 0) {
                self.intervals.retain(|e| e.1.n > 0);
            }
        }
    }

    /// Moves one pair from actual `old` to `new` (None: not counted). When both are there only
    /// the hits that flipped change.
    #[inline]
    pub fn replace(&mut self, layout: &Layout, values: &[f64], old: Option<f64>, new: Option<f64>) {
        let (old, new) = match (old, new) {
            (Some(o), Some(n)) => (o, n),
            (Some(o), None) => return self.apply(layout, values, o, false),
            (None, Some(n)) => return self.apply(layout, values, n, true),
            (None, None) => return,
        };
        let moved = |c: &mut Coverage, was: bool, is: bool| {
            c.hits = c
                .hits
                .wrapping_add(u64::from(is))
                .wrapping_sub(u64::from(was));
        };
        if let Some((levels, intervals)) = in_layout(&mut self.levels, &mut self.intervals, layout)
        {
            for ((_, c), &v) in levels.iter_mut().zip(values) {
                moved(c, old <= v, new <= v);
            }
            for ((_, c), &(_, i, j)) in intervals.iter_mut().zip(&layout.intervals) {
                let inside = |y: f64| values[i] <= y && y <= values[j];
                moved(c, inside(old), inside(new));
            }
            return;
        }
        for (&level, &v) in layout.levels.iter().zip(values) {
            flip(&mut self.levels, level, old <= v, new <= v);
        }
        for &(lo, i, j) in &layout.intervals {
            let inside = |y: f64| values[i] <= y && y <= values[j];
            flip(&mut self.intervals, lo, inside(old), inside(new));
        }
    }

    pub fn merge(&mut self, o: &CoverageCounts) {
        self.n += o.n;
        merge_entries(&mut self.levels, &o.levels);
        merge_entries(&mut self.intervals, &o.intervals);
    }

    pub fn unmerge(&mut self, o: &CoverageCounts) {
        self.n -= o.n;
        for (l, c) in &o.levels {
            let i = slot(&mut self.levels, *l);
            self.levels[i].1.unmerge(c);
        }
        for (l, c) in &o.intervals {
            let i = slot(&mut self.intervals, *l);
            self.intervals[i].1.unmerge(c);
        }
        self.levels.retain(|e| e.1.n > 0);
        self.intervals.retain(|e| e.1.n > 0);
    }

    pub fn interval(&self, lo: u8) -> Coverage {
        self.intervals
            .iter()
            .find(|e| e.0 == lo)
            .map(|e| e.1)
            .unwrap_or_default()
    }

    /// `coverage` and `ci` maps keyed `p10`, `p10_p90`, ... (keys short enough to be stored
    /// inline: the calibration history holds about 40 of them a day).
    pub fn shares(
        &self,
    ) -> (
        BTreeMap<CompactString, f64>,
        BTreeMap<CompactString, [f64; 2]>,
    ) {
        let mut coverage = BTreeMap::new();
        let mut ci = BTreeMap::new();
        for (key, c) in self.named() {
            if let (Some(share), Some(interval)) = (c.share(), wilson(c.hits, c.n)) {
                coverage.insert(CompactString::from(key), share);
                ci.insert(CompactString::from(key), interval);
            }
        }
        (coverage, ci)
    }

    /// Every level and interval with its key: the levels ascending, then the intervals.
    pub fn named(&self) -> SmallVec<[(&'static str, Coverage); 8]> {
        let (levels, intervals) = static_keys();
        self.levels
            .iter()
            .map(|(l, c)| (levels[usize::from(*l)].as_str(), *c))
            .chain(
                self.intervals
                    .iter()
                    .map(|(lo, c)| (intervals[usize::from(*lo)].as_str(), *c)),
            )
            .collect()
    }

    /// [`CoverageCounts::named`] in the keys' order (`p10`, `p10_p90`, `p50`): the order of the
    /// maps of [`CoverageCounts::shares`].
    pub fn named_sorted(&self) -> SmallVec<[(&'static str, Coverage); 8]> {
        let mut named = self.named();
        named.sort_unstable_by_key(|e| e.0);
        named
    }
}

/// `p10_p90` for the lower level 10.
pub fn interval_key(lo: u8) -> String {
    let mut key = String::with_capacity(7);
    crate::event::push_quantile_key(&mut key, lo);
    key.push('_');
    crate::event::push_quantile_key(&mut key, 100 - lo);
    key
}

/// `p07` and `p07_p93` for every level, made once: alert data names them without allocating.
fn static_keys() -> &'static (Vec<String>, Vec<String>) {
    static KEYS: std::sync::OnceLock<(Vec<String>, Vec<String>)> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let levels = (0..=100).map(crate::event::quantile_key).collect();
        let intervals = (0..=100).map(interval_key).collect();
        (levels, intervals)
    })
}

/// Serializes the `coverage` map (or with `ci` the `ci` map) of [`CoverageCounts::shares`]
/// straight from the named counts, in their order, without building the map. The numbers are
/// written as serde_json's raw JSON text (`ShareTexts`), which is meant for serde_json's
/// compact writer: a pretty printer would keep an interval on one line, and a format other
/// than JSON would see strings.
pub struct Shares<'a> {
    pub named: &'a [(&'static str, Coverage)],
    pub ci: bool,
}

impl Serialize for Shares<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        for (key, c) in self.named {
            if c.n == 0 {
                continue;
            }
            SHARE_TEXT.with_borrow_mut(|texts| {
                let text = texts.of(*c);
                map.serialize_entry(key, if self.ci { &text.ci } else { &text.share })
            })?;
        }
        map.end()
    }
}

impl Shares<'_> {
    /// Appends the JSON serde_json makes of these shares (the map, as [`Serialize`] writes it).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        let mut first = true;
        SHARE_TEXT.with_borrow_mut(|texts| {
            for (key, c) in self.named.iter().filter(|(_, c)| c.n > 0) {
                if !first {
                    out.push(b',');
                }
                first = false;
                // The keys are quantile names (`p10`, `p10_p90`): nothing to escape.
                out.push(b'"');
                out.extend_from_slice(key.as_bytes());
                out.extend_from_slice(b"\":");
                let text = texts.of(*c);
                let text = if self.ci { &text.ci } else { &text.share };
                out.extend_from_slice(text.get().as_bytes());
            }
        });
        out.push(b'}');
    }
}

thread_local! {
    static SHARE_TEXT: RefCell<ShareTexts> = RefCell::new(ShareTexts::default());
}

/// The JSON of a share and of its Wilson interval, by (hits, n). A calibration document writes
/// the same few thousand pairs over and over (every day of every scope, each twice: coverage
/// and ci), and working out the interval and formatting its three numbers was most of writing
/// one; the text is the same JSON serde_json writes for the numbers.
#[derive(Default)]
struct ShareTexts {
    texts: rustc_hash::FxHashMap<(u64, u64), ShareText>,
}

struct ShareText {
    share: Box<serde_json::value::RawValue>,
    ci: Box<serde_json::value::RawValue>,
}

impl ShareTexts {
    /// Pairs kept per thread before the cache starts again (the table and the texts take about
    /// 3 MB then).
    const MAX: usize = 1 << 14;

    fn of(&mut self, c: Coverage) -> &ShareText {
        if self.texts.len() >= Self::MAX && !self.texts.contains_key(&(c.hits, c.n)) {
            self.texts.clear();
        }
        self.texts.entry((c.hits, c.n)).or_insert_with(|| {
            let share = serde_json::value::to_raw_value(&c.share());
            let ci = serde_json::value::to_raw_value(&wilson(c.hits, c.n));
            ShareText {
                share: share.expect("a number serializes"),
                ci: ci.expect("two numbers serialize"),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1.0)
    }

    #[test]
    fn sum_retracts_exactly() {
        let mut s = Sum::default();
        s.add(1e16);
        s.add(1.0);
        s.add(0.1);
        s.sub(1e16);
        assert!(close(s.value(), 1.1), "{}", s.value());
    }

    #[test]
    fn mape_skips_zero_actuals_and_wape_divides_sums() {
        // y = 100, p = 80 -> |e| = 20, ape 0.2; y = 0, p = 10 -> |e| = 10, no ape;
        // y = 50, p = 60 -> |e| = 10, ape 0.2.
        let q = |p: f64| vec![(50u8, p)];
        let mut s = Stats::default();
        for (y, p) in [(100.0, 80.0), (0.0, 10.0), (50.0, 60.0)] {
            let quantiles = q(p);
            s.add(&Pair {
                y,
                quantiles: &quantiles,
            });
        }
        let w = s.window();
        assert_eq!(w.n, 3);
        assert_eq!(w.n_zero_actual, 1);
        assert!(close(w.mae.unwrap(), 40.0 / 3.0));
        assert!(close(w.mape.unwrap(), 0.2));
        assert!(close(w.wape.unwrap(), 40.0 / 150.0));
        // bias = mean(p - y) = (-20 + 10 + 10) / 3 = 0
        assert!(close(w.bias.unwrap(), 0.0));
    }

    #[test]
    fn undefined_ratios_are_none() {
        let q = vec![(50u8, 5.0)];
        let mut s = Stats::default();
        s.add(&Pair {
            y: 0.0,
            quantiles: &q,
        });
        let w = s.window();
        assert_eq!(w.mape, None);
        assert_eq!(w.wape, None);
        assert_eq!(Stats::default().window().mae, None);
    }

    #[test]
    fn pinball_by_hand() {
        // q = 0.1, y = 100, v = 80: max(0.1 * 20, -0.9 * 20) = 2
        assert!(close(pinball(0.1, 100.0, 80.0), 2.0));
        // q = 0.1, y = 100, v = 120: max(0.1 * -20, -0.9 * -20) = 18
        assert!(close(pinball(0.1, 100.0, 120.0), 18.0));
        // q = 0.9, y = 100, v = 80: max(18, -2) = 18
        assert!(close(pinball(0.9, 100.0, 80.0), 18.0));
        assert_eq!(pinball(0.5, 3.0, 3.0), 0.0);
    }

    #[test]
    fn coverage_counts_levels_and_symmetric_intervals() {
        let q = vec![(10u8, 90.0), (50, 100.0), (90, 110.0)];
        let mut s = Stats::default();
        for y in [85.0, 90.0, 100.0, 110.0, 120.0] {
            s.add(&Pair { y, quantiles: &q });
        }
        let c = s.coverage();
        let level = |l: u8| c.levels.iter().find(|e| e.0 == l).map(|e| e.1);
        assert_eq!(level(10), Some(Coverage { n: 5, hits: 2 })); // 85, 90 (y <= v)
        assert_eq!(level(50), Some(Coverage { n: 5, hits: 3 }));
        assert_eq!(level(90), Some(Coverage { n: 5, hits: 4 }));
        assert_eq!(c.interval(10), Coverage { n: 5, hits: 3 }); // 90, 100, 110
        let layout = Layout::new(&[10, 50, 90]);
        let values = [90.0, 100.0, 110.0];
        let mut incremental = CoverageCounts::default();
        for y in [85.0, 90.0, 100.0, 110.0, 120.0, 130.0] {
            incremental.apply(&layout, &values, y, true);
        }
        incremental.apply(&layout, &values, 130.0, false);
        assert_eq!(incremental, c);
        // Moving one pair across quantiles changes only the hits that flip.
        incremental.replace(&layout, &values, Some(85.0), Some(100.0));
        incremental.replace(&layout, &values, Some(100.0), Some(85.0));
        assert_eq!(incremental, c);
        incremental.replace(&layout, &values, Some(120.0), Some(95.0));
        let mut fresh = CoverageCounts::default();
        for y in [85.0, 90.0, 100.0, 110.0, 95.0] {
            fresh.apply(&layout, &values, y, true);
        }
        assert_eq!(incremental, fresh);
        // Taking every pair out leaves nothing behind.
        for y in [85.0, 90.0, 100.0, 110.0, 95.0] {
            fresh.apply(&layout, &values, y, false);
        }
        assert_eq!(fresh, CoverageCounts::default());
        assert_eq!(
            Layout::new(&[5, 10, 50, 90]).intervals.as_slice(),
            &[(10, 1, 3)]
        );
        let (cov, ci) = c.shares();
        assert!(close(cov["p10_p90"], 0.6));
        assert!(ci["p10_p90"][0] < 0.6 && ci["p10_p90"][1] > 0.6);
    }

    /// Pairs of random level sets counted in groups (as days are), the groups' counts merged
    /// in turn into one sum: the same counts as all the pairs counted together, whichever
    /// levels the groups share; and unmerging a group leaves the other groups' counts.
    #[test]
    fn merged_groups_count_what_their_pairs_count() {
        use proptest::prelude::*;
        const LEVELS: [u8; 7] = [5, 10, 25, 50, 75, 90, 95];
        let level_set = proptest::sample::subsequence(LEVELS.to_vec(), 1..=LEVELS.len());
        let pair = (level_set, -2.0f64..2.0);
        let groups = proptest::collection::vec(proptest::collection::vec(pair, 0..6), 1..6);
        proptest!(|(groups in groups)| {
            let count = |pairs: &[&(Vec<u8>, f64)]| {
                let mut c = CoverageCounts::default();
                for (levels, y) in pairs {
                    let values: Vec<f64> =
                        levels.iter().map(|&l| f64::from(l) / 50.0 - 1.0).collect();
                    c.apply(&Layout::new(levels), &values, *y, true);
                }
                c
            };
            let all: Vec<_> = groups.iter().flatten().collect();
            let mut merged = CoverageCounts::default();
            for g in &groups {
                merged.merge(&count(&g.iter().collect::<Vec<_>>()));
            }
            prop_assert_eq!(&merged, &count(&all));
            let first = count(&groups[0].iter().collect::<Vec<_>>());
            merged.unmerge(&first);
            let rest: Vec<_> = groups[1..].iter().flatten().collect();
            prop_assert_eq!(&merged, &count(&rest));
        });
    }

    #[test]
    fn shares_write_the_numbers_serde_json_writes_also_past_the_cache_bound() {
        let direct = |c: Coverage, ci: bool| {
            let text = if ci {
                serde_json::to_string(&wilson(c.hits, c.n))
            } else {
                serde_json::to_string(&c.share())
            };
            format!("{{\"p50\":{}}}", text.unwrap())
        };
        // More pairs than the cache keeps, each asked for twice.
        let pairs: Vec<Coverage> = (1..300u64)
            .flat_map(|n| (0..=n).step_by(2).map(move |hits| Coverage { n, hits }))
            .collect();
        assert!(pairs.len() > ShareTexts::MAX);
        for c in pairs.iter().chain(&pairs) {
            for ci in [false, true] {
                let named = [("p50", *c)];
                let json = serde_json::to_string(&Shares { named: &named, ci }).unwrap();
                assert_eq!(json, direct(*c, ci), "{c:?}");
            }
        }
        let none = [("p50", Coverage { n: 0, hits: 0 })];
        let json = serde_json::to_string(&Shares {
            named: &none,
            ci: true,
        })
        .unwrap();
        assert_eq!(json, "{}");
    }

    #[test]
    fn wilson_by_hand() {
        // Reference values from the closed form evaluated in Python.
        let [lo, hi] = wilson(8, 10).unwrap();
        assert!((lo - 0.490_162).abs() < 1e-5, "{lo}");
        assert!((hi - 0.943_317).abs() < 1e-5, "{hi}");
        let [lo, hi] = wilson(0, 20).unwrap();
        assert_eq!(lo, 0.0);
        assert!((hi - 0.161_125).abs() < 1e-5, "{hi}");
        assert_eq!(wilson(0, 0), None);
    }

    #[test]
    fn wilson_bounds_are_exact_at_no_hits_and_all_hits() {
        // 0 of 7 gave a lower bound of 5.551115123125783e-17 and 10 of 10 an upper bound of
        // 0.9999999999999999 before the bounds were pinned.
        for n in 1..=2_000 {
            let [lo, hi] = wilson(0, n).unwrap();
            assert_eq!(lo, 0.0, "0 of {n}");
            assert!(hi > 0.0 && hi < 1.0, "0 of {n}: {hi}");
            let [lo, hi] = wilson(n, n).unwrap();
            assert_eq!(hi, 1.0, "{n} of {n}");
            assert!(lo > 0.0 && lo < 1.0, "{n} of {n}: {lo}");
        }
        for n in 2..=300 {
            for k in 1..n {
                let [lo, hi] = wilson(k, n).unwrap();
                assert!(0.0 < lo && lo < hi && hi < 1.0, "{k} of {n}: [{lo}, {hi}]");
            }
        }
    }
}
