//! Throughput of the fold, the way docs/PERFORMANCE.md reports it.
//!
//! - `fold/pre_decoded`: `Engine::apply_batch` over events decoded beforehand, in batches of
//!   65,536 as `feedback fold` takes them (the pure core).
//! - `fold/end_to_end`: `feedback fold` as a library call: read a JSONL file, decode, validate,
//!   fold, write the storage documents and the alerts.
//! - `drift/feature_importances`: the history's feature-importance events alone, pre-decoded
//!   (the drift figures and PSI of SPEC 4).
//! - `decode/json`: decoding and validating the JSON payloads of the history's first 500,000
//!   records on one thread, as the processor and `feedback fold` decode each record.
//!
//! The history comes from the seeded simulator: `BENCH_TENANTS` tenants (default 1000) over
//! `BENCH_DAYS` days (default 550, about 5 million records), 3 channels, 2 campaigns, mixed
//! scenarios. Run: `cargo bench --bench fold`.

use std::io::Write;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use feedback::config::TopicNames;
use feedback::event::Event;
use feedback::fold::{Engine, FoldConfig};
use feedback::offline::{fold_files, FoldJob};
use feedback::simulate::{generate, SimConfig, SimPayload};

/// The same allocator as the `feedback` binary (and its settings, first thing in `bench`).
#[global_allocator]
static GLOBAL: feedback::allocator::MiMalloc = feedback::allocator::MiMalloc;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Full size under `cargo bench`; a small history when `cargo test --benches` only checks that
/// the benchmark runs.
fn sim() -> SimConfig {
    let benching = std::env::args().any(|a| a == "--bench");
    let (tenants, days) = if benching { (1000, 550) } else { (5, 30) };
    SimConfig {
        tenants: env("BENCH_TENANTS", tenants),
        days: env("BENCH_DAYS", days) as u32,
        ..SimConfig::default()
    }
}

fn bench(c: &mut Criterion) {
    if let Err(e) = feedback::allocator::configure() {
        eprintln!("transparent huge pages stay on: {e}");
    }
    let records = generate(&sim());
    let events: Vec<Event> = records
        .iter()
        .filter_map(|r| match &r.payload {
            SimPayload::Event(e) => Some(e.clone()),
            SimPayload::Poison(_) => None,
        })
        .collect();
    let lines: usize = events
        .iter()
        .map(|e| {
            if let Event::Forecast(f) = e {
                f.lines.len()
            } else {
                0
            }
        })
        .sum();
    eprintln!(
        "{} records ({} forecast lines) from {} tenants",
        events.len(),
        lines,
        sim().tenants
    );

    // The drift of SPEC 4 alone: the history's feature-importance events, one tenant after
    // another as the fold takes a batch (a pooled baseline per key feature).
    let importances: Vec<Event> = (events.iter())
        .filter(|e| matches!(e, Event::FeatureImportance(_)))
        .cloned()
        .collect();
    let mut drift = c.benchmark_group("drift");
    drift.sample_size(10);
    drift.throughput(Throughput::Elements(importances.len() as u64));
    drift.bench_function("feature_importances", |b| {
        b.iter_batched(
            || Engine::new(FoldConfig::default()),
            |mut engine| {
                let mut alerts = Vec::new();
                engine.apply_batch(&importances, &mut alerts);
                engine
            },
            BatchSize::PerIteration,
        )
    });
    drift.finish();
    drop(importances);

    // Decoding alone: the payloads as a producer sends them, decoded one after another.
    let payloads: Vec<(feedback::event::Topic, Vec<u8>)> = (records.iter())
        .filter(|r| matches!(r.payload, SimPayload::Event(_)))
        .take(500_000)
        .map(|r| (r.topic, r.payload_json().into_bytes()))
        .collect();
    let bytes: usize = payloads.iter().map(|(_, p)| p.len()).sum();
    eprintln!("decode: {} payloads, {} bytes", payloads.len(), bytes);
    let schemas = feedback::codec::AvroSchemas::builtin();
    let mut decode = c.benchmark_group("decode");
    decode.sample_size(10);
    decode.throughput(Throughput::Elements(payloads.len() as u64));
    decode.bench_function("json", |b| {
        b.iter(|| {
            let mut decoded = 0usize;
            for (topic, payload) in &payloads {
                let event = feedback::codec::decode(*topic, payload, &schemas);
                decoded += usize::from(event.is_ok());
                drop(std::hint::black_box(event));
            }
            assert_eq!(decoded, payloads.len());
        })
    });
    decode.finish();
    drop(payloads);

    let mut group = c.benchmark_group("fold");
    group.sample_size(10);
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("pre_decoded", |b| {
        b.iter_batched(
            || Engine::new(FoldConfig::default()),
            |mut engine| {
                let mut alerts = Vec::new();
                for batch in events.chunks(65_536) {
                    engine.apply_batch(batch, &mut alerts);
                    alerts.clear();
                }
                engine
            },
            BatchSize::PerIteration,
        )
    });

    let dir = tempfile::tempdir().expect("temporary directory");
    let input = dir.path().join("history.jsonl");
    {
        let topics = TopicNames::default();
        let mut w = std::io::BufWriter::new(std::fs::File::create(&input).expect("create input"));
        for r in &records {
            writeln!(w, "{}", r.jsonl(topics.name(r.topic))).expect("write input");
        }
    }
    drop(records);
    drop(events);
    group.bench_function("end_to_end", |b| {
        b.iter(|| {
            let job = FoldJob {
                inputs: vec![input.clone()],
                storage_dir: dir.path().join("storage"),
                alerts_out: Some(dir.path().join("alerts.jsonl")),
                dlq_out: Some(dir.path().join("dlq.jsonl")),
                topics: TopicNames::default(),
                config: FoldConfig::default(),
                progress: false,
                stop: None,
            };
            fold_files(&job).expect("fold")
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
