//! Accumulators for the metrics of SPEC 4: sums that can take a value back out, and the
//! per-window statistics of scored pairs.

use std::collections::BTreeMap;

use serde::Serialize;
use smallvec::SmallVec;

/// A compensated sum (TwoSum): adding and later subtracting the same value leaves it where it was
/// to about 1e-30 relative, so incremental retraction does not drift away from a recomputation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sum {
    hi: f64,
    lo: f64,
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
    let n = n as f64;
    let p = k as f64 / n;
    let z2 = Z * Z;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denom;
    Some([(centre - half).max(0.0), (centre + half).min(1.0)])
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
    /// Per quantile level: pairs that have it, pairs with y <= value, and the pinball sum.
    pub levels: BTreeMap<u8, LevelStats>,
    /// Per symmetric interval (keyed by the lower level): pairs that have both ends, pairs inside.
    pub intervals: BTreeMap<u8, Coverage>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct LevelStats {
    pub cover: Coverage,
    pub pinball: Sum,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Coverage {
    pub n: u64,
    pub hits: u64,
}

impl Coverage {
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
        for &(level, v) in pair.quantiles {
            let l = self.levels.entry(level).or_default();
            l.cover.n += 1;
            l.cover.hits += u64::from(y <= v);
            l.pinball.add(pinball(f64::from(level) / 100.0, y, v));
        }
        for &(lo, lo_v) in pair.quantiles.iter().take_while(|q| q.0 < 50) {
            if let Some(hi_v) = pair.level(100 - lo) {
                let c = self.intervals.entry(lo).or_default();
                c.n += 1;
                c.hits += u64::from(lo_v <= y && y <= hi_v);
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
            let l = self.levels.entry(*level).or_default();
            l.cover.merge(&s.cover);
            l.pinball.merge(&s.pinball);
        }
        for (lo, c) in &o.intervals {
            self.intervals.entry(*lo).or_default().merge(c);
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

    /// The coverage counts only: what calibration needs.
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoverageCounts {
    pub n: u64,
    /// (level, coverage), ascending by level.
    pub levels: SmallVec<[(u8, Coverage); 3]>,
    /// (lower level of a symmetric interval, coverage), ascending.
    pub intervals: SmallVec<[(u8, Coverage); 1]>,
}

fn slot(v: &mut SmallVec<[(u8, Coverage); 3]>, level: u8) -> &mut Coverage {
    let i = match v.binary_search_by_key(&level, |e| e.0) {
        Ok(i) => i,
        Err(i) => {
            v.insert(i, (level, Coverage::default()));
            i
        }
    };
    &mut v[i].1
}

fn slot1(v: &mut SmallVec<[(u8, Coverage); 1]>, level: u8) -> &mut Coverage {
    let i = match v.binary_search_by_key(&level, |e| e.0) {
        Ok(i) => i,
        Err(i) => {
            v.insert(i, (level, Coverage::default()));
            i
        }
    };
    &mut v[i].1
}

impl CoverageCounts {
    /// Adds (`add` true) or removes one pair given as ascending (level, value) quantiles.
    pub fn apply(&mut self, quantiles: impl Iterator<Item = (u8, f64)> + Clone, y: f64, add: bool) {
        let step = |c: &mut Coverage, hit: bool| {
            if add {
                c.n += 1;
                c.hits += u64::from(hit);
            } else {
                c.n -= 1;
                c.hits -= u64::from(hit);
            }
        };
        if add {
            self.n += 1
        } else {
            self.n -= 1
        }
        for (level, v) in quantiles.clone() {
            step(slot(&mut self.levels, level), y <= v);
            if level < 50 {
                if let Some((_, hi)) = quantiles.clone().find(|q| q.0 == 100 - level) {
                    step(slot1(&mut self.intervals, level), v <= y && y <= hi);
                }
            }
        }
        if !add {
            self.levels.retain(|e| e.1.n > 0);
            self.intervals.retain(|e| e.1.n > 0);
        }
    }

    /// Moves one pair from actual `old` to `new` (None: not counted). When both are there only
    /// the hits that flipped change.
    pub fn replace(
        &mut self,
        quantiles: impl Iterator<Item = (u8, f64)> + Clone,
        old: Option<f64>,
        new: Option<f64>,
    ) {
        let (old, new) = match (old, new) {
            (Some(o), Some(n)) => (o, n),
            (Some(o), None) => return self.apply(quantiles, o, false),
            (None, Some(n)) => return self.apply(quantiles, n, true),
            (None, None) => return,
        };
        let flip = |c: &mut Coverage, was: bool, is: bool| match (was, is) {
            (false, true) => c.hits += 1,
            (true, false) => c.hits -= 1,
            _ => {}
        };
        for (level, v) in quantiles.clone() {
            if (old <= v) != (new <= v) {
                flip(slot(&mut self.levels, level), old <= v, new <= v);
            }
            if level < 50 {
                if let Some((_, hi)) = quantiles.clone().find(|q| q.0 == 100 - level) {
                    let inside = |y: f64| v <= y && y <= hi;
                    if inside(old) != inside(new) {
                        flip(slot1(&mut self.intervals, level), inside(old), inside(new));
                    }
                }
            }
        }
    }

    pub fn merge(&mut self, o: &CoverageCounts) {
        self.n += o.n;
        for (l, c) in &o.levels {
            slot(&mut self.levels, *l).merge(c);
        }
        for (l, c) in &o.intervals {
            slot1(&mut self.intervals, *l).merge(c);
        }
    }

    pub fn unmerge(&mut self, o: &CoverageCounts) {
        self.n -= o.n;
        for (l, c) in &o.levels {
            slot(&mut self.levels, *l).unmerge(c);
        }
        for (l, c) in &o.intervals {
            slot1(&mut self.intervals, *l).unmerge(c);
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

    /// `coverage` and `ci` maps keyed `p10`, `p10_p90`, ...
    pub fn shares(&self) -> (BTreeMap<String, f64>, BTreeMap<String, [f64; 2]>) {
        let mut coverage = BTreeMap::new();
        let mut ci = BTreeMap::new();
        let named = self
            .levels
            .iter()
            .map(|(l, c)| (crate::event::quantile_key(*l), c))
            .chain(self.intervals.iter().map(|(lo, c)| (interval_key(*lo), c)));
        for (key, c) in named {
            if let (Some(share), Some(interval)) = (c.share(), wilson(c.hits, c.n)) {
                coverage.insert(key.clone(), share);
                ci.insert(key, interval);
            }
        }
        (coverage, ci)
    }
}

/// `p10_p90` for the lower level 10.
pub fn interval_key(lo: u8) -> String {
    format!(
        "{}_{}",
        crate::event::quantile_key(lo),
        crate::event::quantile_key(100 - lo)
    )
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
        let mut incremental = CoverageCounts::default();
        for y in [85.0, 90.0, 100.0, 110.0, 120.0, 130.0] {
            incremental.apply(q.iter().copied(), y, true);
        }
        incremental.apply(q.iter().copied(), 130.0, false);
        assert_eq!(incremental, c);
        // Moving one pair across quantiles changes only the hits that flip.
        incremental.replace(q.iter().copied(), Some(85.0), Some(100.0));
        incremental.replace(q.iter().copied(), Some(100.0), Some(85.0));
        assert_eq!(incremental, c);
        incremental.replace(q.iter().copied(), Some(120.0), Some(95.0));
        let mut fresh = CoverageCounts::default();
        for y in [85.0, 90.0, 100.0, 110.0, 95.0] {
            fresh.apply(q.iter().copied(), y, true);
        }
        assert_eq!(incremental, fresh);
        let (cov, ci) = c.shares();
        assert!(close(cov["p10_p90"], 0.6));
        assert!(ci["p10_p90"][0] < 0.6 && ci["p10_p90"][1] > 0.6);
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
}
