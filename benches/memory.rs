//! Bytes of fold state per retained outcome record and per retained forecast line, measured with
//! a counting allocator: live heap bytes after folding, divided by what the state holds.
//!
//! Run: `cargo bench --bench memory` (BENCH_TENANTS, BENCH_DAYS as for the fold benchmark).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use feedback::event::Event;
use feedback::fold::{Engine, FoldConfig};
use feedback::simulate::{generate_events, SimConfig};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Folds the events `keep` selects and returns (live bytes of the engine, outcomes, lines).
fn measure(events: &[Event], keep: impl Fn(&Event) -> bool) -> (isize, u64, u64) {
    let before = LIVE.load(Ordering::Relaxed);
    let mut engine = Engine::new(FoldConfig::default());
    let mut alerts = Vec::new();
    for e in events.iter().filter(|e| keep(e)) {
        engine.apply(e, &mut alerts);
        alerts.clear();
    }
    drop(alerts);
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    let (mut outcomes, mut lines) = (0, 0);
    for name in engine.tenants() {
        let (o, l) = engine
            .tenant(name)
            .map(|t| t.stored_records())
            .unwrap_or_default();
        outcomes += o;
        lines += l;
    }
    (bytes, outcomes, lines)
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let (tenants, days) = if benching { (1000, 120) } else { (5, 30) };
    let sim = SimConfig {
        tenants: env("BENCH_TENANTS", tenants),
        days: env("BENCH_DAYS", days) as u32,
        ..SimConfig::default()
    };
    let events: Vec<Event> = generate_events(&sim);
    println!(
        "history: {} tenants, {} days, {} events",
        sim.tenants,
        sim.days,
        events.len()
    );
    let (bytes, outcomes, _) = measure(&events, |e| matches!(e, Event::Outcome(_)));
    println!(
        "outcomes only:  {bytes} bytes for {outcomes} outcome records = {:.1} bytes/record",
        bytes as f64 / outcomes as f64
    );
    let (bytes, _, lines) = measure(&events, |e| matches!(e, Event::Forecast(_)));
    println!(
        "forecasts only: {bytes} bytes for {lines} forecast lines = {:.1} bytes/line",
        bytes as f64 / lines as f64
    );
    let (bytes, outcomes, lines) = measure(&events, |e| !matches!(e, Event::FeatureImportance(_)));
    println!(
        "both, joined:   {bytes} bytes for {outcomes} outcomes + {lines} lines = {:.1} bytes/stored item",
        bytes as f64 / (outcomes + lines) as f64
    );
}
