//! One documents round of `feedback run` in steady state: every tenant's documents rewritten
//! after a day of new records, rendered whole or through a `CalibrationCache`.
//! `TENANTS=300 DAYS=400 cargo run --release --example docround`
use std::time::Instant;

use feedback::fold::{Engine, FoldConfig};
use feedback::simulate::{generate_events, SimConfig};
use feedback::storage::{CalibrationCache, Storage, SyncMode};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(11) + tick(12)) / 100.0
}

fn main() {
    let (tenants, days) = (env("TENANTS", 300), env("DAYS", 400));
    let events = generate_events(&SimConfig {
        tenants,
        days: days as u32,
        ..SimConfig::default()
    });
    let mut engine = Engine::new(FoldConfig::default());
    // The last day's records come after the first write, one batch a round.
    let rounds = 4;
    let per_day = events.len() / days;
    let (before, after) = events.split_at(events.len() - rounds * per_day);
    engine.apply_batch(before, &mut Vec::new());
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::new(dir.path()).with_sync(SyncMode::EachFile);
    let mut cache = CalibrationCache::default();
    let names: Vec<String> = engine.tenants().iter().map(|t| t.to_string()).collect();
    let docs = |engine: &Engine| {
        names
            .iter()
            .filter_map(|t| engine.documents(t))
            .collect::<Vec<_>>()
    };
    storage
        .write_tenants_cached(docs(&engine), &mut cache)
        .unwrap();
    for (round, day) in after.chunks(per_day).enumerate() {
        engine.apply_batch(day, &mut Vec::new());
        let d = docs(&engine);
        let (t, c) = (Instant::now(), cpu());
        if round % 2 == 0 {
            storage.write_tenants(d).unwrap();
            println!(
                "whole:  {:.2} s, CPU {:.2} s",
                t.elapsed().as_secs_f64(),
                cpu() - c
            );
            // The whole write replaced the files the cache knew.
            cache = CalibrationCache::default();
            storage
                .write_tenants_cached(docs(&engine), &mut cache)
                .unwrap();
        } else {
            let (copied, rendered) = (cache.copied, cache.rendered);
            storage.write_tenants_cached(d, &mut cache).unwrap();
            println!(
                "cached: {:.2} s, CPU {:.2} s ({} entries copied, {} rendered)",
                t.elapsed().as_secs_f64(),
                cpu() - c,
                cache.copied - copied,
                cache.rendered - rendered
            );
        }
    }
}
