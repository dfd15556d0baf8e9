//! How many bytes of state changelog the fold writes for the simulator's history, by kind of
//! record, and how long taking the changes takes (docs/PERFORMANCE.md, "State records").
//!
//! `TENANTS=1000 DAYS=120 TXN=23000 cargo run --release --example statebytes`: the history is
//! folded `TXN` events at a time, like one transaction of `feedback run` under a backlog, and
//! the changes are taken after each. Then the compacted log (the latest value of each key) is
//! restored into a new engine, as `feedback run` does on assignment, and timed.

use feedback::event::Event;
use feedback::fold::snapshot::{StateKey, TenantRecords};
use feedback::fold::{Engine, FoldConfig};
use feedback::simulate::{generate_events, SimConfig};

#[global_allocator]
static GLOBAL: feedback::allocator::MiMalloc = feedback::allocator::MiMalloc;

fn main() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let sim = SimConfig {
        tenants: env("TENANTS", 100),
        days: env("DAYS", 120) as u32,
        ..SimConfig::default()
    };
    let events: Vec<Event> = generate_events(&sim);
    let mut engine = Engine::new(FoldConfig::default()).with_changelog();
    let mut alerts = Vec::new();
    let kinds = [
        "head",
        "day",
        "plan lines",
        "drift",
        "drift event",
        "drift history entry",
        "plan",
    ];
    let (mut records, mut bytes, mut tombstones) = ([0u64; 7], [0u64; 7], 0u64);
    let mut taking = std::time::Duration::ZERO;
    let mut log = std::collections::BTreeMap::new();
    for chunk in events.chunks(env("TXN", 23_000)) {
        for e in chunk {
            engine.apply(e, &mut alerts);
        }
        let started = std::time::Instant::now();
        let changes = engine.take_changes();
        taking += started.elapsed();
        for r in changes.records {
            let kind = match StateKey::parse(&r.key) {
                Some(StateKey::Head { .. }) => 0,
                Some(StateKey::Day { .. }) => 1,
                Some(StateKey::PlanLines { .. }) => 2,
                Some(StateKey::PlanDay { .. }) => {
                    unreachable!("formats 6 and 7 write no plan days")
                }
                Some(StateKey::Drift { .. }) => 3,
                Some(StateKey::DriftEvent { .. }) => 4,
                Some(StateKey::DriftHistory { .. }) => 5,
                Some(StateKey::Plan { .. }) => 6,
                None => unreachable!("the fold writes state keys only"),
            };
            match &r.value {
                Some(v) => {
                    records[kind] += 1;
                    bytes[kind] += v.len() as u64;
                }
                None => tombstones += 1,
            }
            log.insert(r.key, r.value);
        }
    }
    println!(
        "{} events, take_changes {:.3} s",
        events.len(),
        taking.as_secs_f64()
    );
    for (i, kind) in kinds.iter().enumerate() {
        println!(
            "{kind}: {} records, {} bytes, {:.0} bytes each",
            records[i],
            bytes[i],
            bytes[i] as f64 / records[i].max(1) as f64
        );
    }
    println!(
        "all: {} bytes; {tombstones} tombstones",
        bytes.iter().sum::<u64>()
    );

    let live: Vec<_> = log.into_iter().filter(|(_, v)| v.is_some()).collect();
    let live_bytes: usize = live
        .iter()
        .map(|(_, v)| v.as_ref().map_or(0, Vec::len))
        .sum();
    let started = std::time::Instant::now();
    let mut tenants = std::collections::BTreeMap::new();
    for (key, value) in live.iter().cloned() {
        TenantRecords::apply(&mut tenants, &key, value).expect("a state key");
    }
    let mut restored = Engine::new(FoldConfig::default()).with_changelog();
    let n = restored.restore(&tenants).expect("the log restores");
    println!(
        "restore: {n} tenants from {} live records ({live_bytes} bytes) in {:.3} s",
        live.len(),
        started.elapsed().as_secs_f64()
    );
}
