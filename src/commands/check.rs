//! `feedback check-performance TENANT`: a tenant's forecast-error windows, worst channels, plan
//! ROAS and active tags, read from its performance document; degraded or not decides the exit code.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::{number, percent, read_document, DocumentError};
use crate::fold::report::{PerformanceDoc, PlanDoc, StatusDoc};
use crate::fold::stats::WindowDoc;
use crate::storage::{Document, Storage};

/// The tag whose presence makes the check fail (SPEC 5).
pub const DEGRADED_TAG: &str = "model.performance.degraded";

/// What `check-performance` found; `--json` prints it as it is.
#[derive(Debug, Clone, Serialize)]
pub struct PerformanceCheck {
    pub tenant: String,
    /// The latest outcome date folded; None before the first outcome.
    pub as_of: Option<String>,
    /// `model.performance.degraded` is among the active tags: the exit code is 1.
    pub degraded: bool,
    pub tags: Vec<String>,
    pub status: StatusDoc,
    /// The tenant-wide windows, shortest first.
    pub windows: Vec<NamedWindow>,
    /// Which window ranks the channels (the shortest, `7d` by default).
    pub rank_window: Option<String>,
    /// Every channel, worst first: by WAPE in `rank_window`, channels without one last.
    pub channels: Vec<ChannelRow>,
    /// Every plan, most recently issued first.
    pub plans: Vec<PlanRow>,
    /// How many channels and plans the text shows (`--top`); the JSON holds them all.
    #[serde(skip)]
    pub top: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct NamedWindow {
    pub window: String,
    #[serde(flatten)]
    pub figures: WindowDoc,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChannelRow {
    pub channel: String,
    /// The performance rule's status for `channel:{name}`: `firing` or `ok`.
    pub status: String,
    pub windows: Vec<NamedWindow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanRow {
    pub plan_id: String,
    #[serde(flatten)]
    pub plan: PlanDoc,
}

/// Reads the tenant's performance document from `storage` and summarises it.
pub fn check_performance(
    storage: &Storage,
    tenant: &str,
    top: usize,
) -> Result<PerformanceCheck, DocumentError> {
    let doc: PerformanceDoc = read_document(storage, tenant, Document::Performance)?;
    Ok(summarise(doc, top))
}

/// `7d` is 7 days; keys that are not `{n}d` sort last.
fn window_days(key: &str) -> u32 {
    key.strip_suffix('d')
        .and_then(|d| d.parse().ok())
        .unwrap_or(u32::MAX)
}

fn sorted_windows(windows: BTreeMap<String, WindowDoc>) -> Vec<NamedWindow> {
    let mut v: Vec<NamedWindow> = windows
        .into_iter()
        .map(|(window, figures)| NamedWindow { window, figures })
        .collect();
    v.sort_by_key(|w| (window_days(&w.window), w.window.clone()));
    v
}

pub fn summarise(doc: PerformanceDoc, top: usize) -> PerformanceCheck {
    let windows = sorted_windows(doc.windows);
    let rank_window = windows.first().map(|w| w.window.clone());
    let mut channels: Vec<ChannelRow> = doc
        .by_channel
        .into_iter()
        .map(|(channel, w)| ChannelRow {
            status: doc
                .status
                .performance
                .get(&format!("channel:{channel}"))
                .cloned()
                .unwrap_or_else(|| "ok".to_owned()),
            channel,
            windows: sorted_windows(w),
        })
        .collect();
    let wape = |c: &ChannelRow| {
        c.windows
            .iter()
            .find(|w| Some(&w.window) == rank_window.as_ref())
            .and_then(|w| w.figures.wape)
    };
    // Worst first; undefined WAPE (no pairs) last; ties by name.
    channels.sort_by(|a, b| match (wape(a), wape(b)) {
        (Some(x), Some(y)) => y.total_cmp(&x).then_with(|| a.channel.cmp(&b.channel)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.channel.cmp(&b.channel),
    });
    let mut plans: Vec<PlanRow> = doc
        .plans
        .into_iter()
        .map(|(plan_id, plan)| PlanRow { plan_id, plan })
        .collect();
    let issued = |p: &PlanRow| {
        p.plan
            .issued_at
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    plans.sort_by(|a, b| {
        issued(b)
            .cmp(&issued(a))
            .then_with(|| b.plan_id.cmp(&a.plan_id))
    });
    PerformanceCheck {
        degraded: doc.tags.iter().any(|t| t == DEGRADED_TAG),
        tenant: doc.tenant,
        as_of: doc.as_of,
        tags: doc.tags,
        status: doc.status,
        windows,
        rank_window,
        channels,
        plans,
        top,
    }
}

fn window_cells(w: &WindowDoc) -> String {
    format!(
        "{:>7} {:>12} {:>8} {:>8} {:>12}",
        w.n,
        number(w.mae, 2),
        percent(w.mape),
        percent(w.wape),
        number(w.bias, 2)
    )
}

impl fmt::Display for PerformanceCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let as_of = self.as_of.as_deref().unwrap_or("none (no outcome yet)");
        writeln!(f, "tenant    {}", self.tenant)?;
        writeln!(f, "as_of     {as_of}")?;
        if self.degraded {
            let scopes: Vec<&str> = self
                .status
                .performance
                .iter()
                .filter(|(_, s)| *s == "firing")
                .map(|(scope, _)| scope.as_str())
                .collect();
            writeln!(
                f,
                "status    DEGRADED: {DEGRADED_TAG} is active ({})",
                scopes.join(", ")
            )?;
        } else if self.windows.iter().all(|w| w.figures.n == 0) {
            // Not "healthy": nothing was measured (a tenant known only from refused records, or
            // whose pairs are all older than the longest window).
            writeln!(
                f,
                "status    no data: no forecast met an outcome within any window, so \
                 {DEGRADED_TAG} cannot fire"
            )?;
        } else {
            writeln!(f, "status    healthy: {DEGRADED_TAG} is not active")?;
        }
        let tags = if self.tags.is_empty() {
            "none".to_owned()
        } else {
            self.tags.join(", ")
        };
        writeln!(f, "tags      {tags}")?;

        writeln!(f)?;
        writeln!(
            f,
            "{:<30} {:>7} {:>12} {:>8} {:>8} {:>12}",
            "window", "n", "MAE", "MAPE", "WAPE", "bias"
        )?;
        for w in &self.windows {
            writeln!(f, "{:<30} {}", w.window, window_cells(&w.figures))?;
        }

        if let Some(rank) = &self.rank_window {
            writeln!(f)?;
            let shown = self.channels.len().min(self.top);
            let title = format!("worst channels ({rank}, by WAPE)");
            writeln!(
                f,
                "{title:<30} {:>7} {:>12} {:>8} {:>8} {:>12}  status",
                "n", "MAE", "MAPE", "WAPE", "bias"
            )?;
            for c in self.channels.iter().take(shown) {
                let cells = c
                    .windows
                    .iter()
                    .find(|w| &w.window == rank)
                    .map(|w| window_cells(&w.figures))
                    .unwrap_or_default();
                writeln!(f, "{:<30} {cells}  {}", c.channel, c.status)?;
            }
            if self.channels.is_empty() {
                writeln!(f, "(no channel yet)")?;
            } else if shown < self.channels.len() {
                writeln!(
                    f,
                    "({} more; --top or --json for all)",
                    self.channels.len() - shown
                )?;
            }
        }

        writeln!(f)?;
        let shown = self.plans.len().min(self.top);
        writeln!(
            f,
            "{:<30} {:<10} {:>11} {:>8} {:>8} {:>8} {:>8}",
            "plans (latest first)", "issued", "matched", "planned", "actual", "delta", "delta %"
        )?;
        for p in self.plans.iter().take(shown) {
            let issued = p
                .plan
                .issued_at
                .as_deref()
                .and_then(|t| t.get(..10))
                .unwrap_or("-");
            let matched = format!("{}/{}", p.plan.matched, p.plan.lines);
            writeln!(
                f,
                "{:<30} {:<10} {:>11} {:>8} {:>8} {:>8} {:>8}",
                p.plan_id,
                issued,
                matched,
                number(p.plan.planned_roas, 2),
                number(p.plan.actual_roas, 2),
                number(p.plan.roas_delta, 2),
                percent(p.plan.roas_delta_pct)
            )?;
        }
        if self.plans.is_empty() {
            writeln!(f, "(no plan yet)")?;
        } else if shown < self.plans.len() {
            writeln!(
                f,
                "({} more; --top or --json for all)",
                self.plans.len() - shown
            )?;
        }
        write!(f, "(ROAS: planned = p50 / planned spend, actual = revenue / spend, over the matched lines)")
    }
}
