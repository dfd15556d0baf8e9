//! `feedback demo`: everything on one machine, no broker to install (SPEC 8).
//!
//! librdkafka's in-process mock cluster stands in for Kafka. The demo creates the topics, runs
//! the very processor `feedback run` runs, produces a synthetic history in which one tenant
//! stays healthy, one degrades, one is miscalibrated and one drifts (a day at a time, as
//! connectors would deliver it), prints the alerts as they are committed, and serves HTTP
//! until stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::{Offset, TopicPartitionList};

use crate::alert::Alert;
use crate::config::TopicNames;
use crate::kafka::processor::{self, Handles, RunSummary};
use crate::kafka::produce::InputProducer;
use crate::kafka::{ClientHooks, HookContext, Settings};
use crate::simulate::{Scenario, SimConfig, Simulator};

/// What the demo is told on the command line.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub storage_dir: std::path::PathBuf,
    pub days: u32,
    pub partitions: i32,
    pub seed: u64,
    /// Poison records mixed in, to show the DLQ at work.
    pub poison_rate: f64,
}

/// What fired, gathered from the committed `alerts` topic.
#[derive(Debug, Default, Clone)]
pub struct DemoReport {
    pub produced: u64,
    /// Of those, the records refused to the DLQ (the history's poison records).
    pub refused: u64,
    /// Alerts by type.
    pub by_type: BTreeMap<String, u64>,
    /// The last status per (tenant, type, scope), daily reports excluded.
    pub last: BTreeMap<(String, String, String), String>,
    /// (tenant, as_of, status) of every tenant-wide daily calibration report.
    pub daily: BTreeSet<(String, String, String)>,
    pub summary: RunSummary,
}

/// Runs the demo until `handles.stop` is set. `on_ready` is called once the history has been
/// folded, with the report so far.
pub fn run(
    options: &DemoOptions,
    handles: Handles,
    mut on_ready: impl FnMut(&DemoReport),
) -> anyhow::Result<DemoReport> {
    let sim = SimConfig {
        seed: options.seed,
        tenants: 4,
        days: options.days,
        scenario: Scenario::Mixed,
        poison_rate: options.poison_rate,
        ..SimConfig::default()
    };
    sim.check().map_err(|e| anyhow::anyhow!("--days: {e}"))?;
    let cluster = MockCluster::new(1)?;
    let brokers = cluster.bootstrap_servers();
    let topics = TopicNames::default();
    for t in topics.all() {
        cluster.create_topic(t, options.partitions, 1)?;
    }
    tracing::info!(%brokers, partitions = options.partitions, "in-process mock cluster up");

    let mut settings = Settings::new(&brokers, "feedback-demo");
    settings.storage_dir = options.storage_dir.clone();
    settings.storage_interval = Duration::from_secs(1);
    settings.instance_id = "demo".into();
    // The mock cluster answers no DescribeConfigs; `create_topics` made the state topic compacted.
    settings.check_state_policy = false;
    settings.fetch_wait = Some(Duration::from_millis(10));
    let processor = {
        let handles = handles.clone();
        std::thread::spawn(move || processor::run(settings, handles))
    };

    // The synthetic history (`sim`): a healthy tenant, a degrading one, a miscalibrated one, a
    // drifting one.
    let mut producing = Some({
        let (brokers, topics, handles) = (brokers.clone(), topics.clone(), handles.clone());
        std::thread::spawn(move || produce_live(&brokers, &topics, &sim, &handles))
    });

    let watcher_stop = Arc::new(AtomicBool::new(false));
    let mut report = DemoReport::default();
    // The count of records produced, once the whole history is.
    let mut produced: Option<u64> = None;
    let consumer: BaseConsumer<HookContext> = Settings::new(&brokers, "feedback-demo-watch")
        .restore_config()
        .set("enable.partition.eof", "false")
        .create_with_context(HookContext(ClientHooks::new(handles.metrics.clone())))?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..options.partitions {
        tpl.add_partition_offset(&topics.alerts, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;

    let mut announced = false;
    let mut quiet_since = Instant::now();
    while !handles.stop.load(Ordering::Relaxed) && !watcher_stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                quiet_since = Instant::now();
                if let Some(alert) = m
                    .payload()
                    .and_then(|p| serde_json::from_slice::<Alert>(p).ok())
                {
                    note(&mut report, &alert);
                }
            }
            Some(Err(e)) => tracing::debug!(error = %e, "alert watcher"),
            None => {}
        }
        if producing.as_ref().is_some_and(|p| p.is_finished()) {
            let result = producing.take().map(|p| p.join());
            match result {
                Some(Ok(Ok(n))) => {
                    report.produced = n;
                    produced = Some(n);
                }
                Some(Ok(Err(e))) => {
                    handles.stop.store(true, Ordering::Relaxed);
                    let _ = processor.join();
                    return Err(e);
                }
                _ => {
                    handles.stop.store(true, Ordering::Relaxed);
                    let _ = processor.join();
                    anyhow::bail!("the producing thread panicked");
                }
            }
        }
        // Once the whole history is produced, the announcement waits for the commit of its
        // last records (their alerts are in that transaction), then for a second without
        // alerts, in which this watcher has read them.
        let committed = handles.committed.load(Ordering::Relaxed);
        let announce = !announced
            && !handles.stop.load(Ordering::Relaxed)
            && produced.is_some_and(|n| committed >= n)
            && quiet_since.elapsed() > Duration::from_secs(1);
        if announce {
            announced = true;
            report.refused = crate::event::validate::RejectKind::ALL
                .iter()
                .map(|k| {
                    handles
                        .metrics
                        .rejected
                        .with_label_values(&[k.as_str()])
                        .get()
                })
                .sum();
            on_ready(&report);
        }
        if processor.is_finished() {
            break;
        }
    }
    handles.stop.store(true, Ordering::Relaxed);
    if let Some(Ok(Ok(n))) = producing.map(|p| p.join()) {
        report.produced = n;
    }
    report.summary = processor
        .join()
        .map_err(|_| anyhow::anyhow!("the processor thread panicked"))??;
    drop(consumer);
    drop(cluster);
    Ok(report)
}

/// Records the processor has read from the input topics, poison records included.
fn consumed(handles: &Handles, topics: &TopicNames) -> u64 {
    topics
        .inputs()
        .iter()
        .map(|t| handles.metrics.consumed.with_label_values(&[t]).get())
        .sum()
}

/// Produces the history a day at a time once the processor is ready, each day after the
/// processor has read the day before, as the connectors would deliver it live. Produced all at
/// once, the history sat in the topics as three backlogs, and the processor read a partition's
/// outcomes of every day before the plans of most of them: the state at the end is the same
/// (SPEC 5, "Order"), but the daily reports on the way found no plan line to score and said
/// `insufficient_data` for most of the history. Returns the count of records produced.
fn produce_live(
    brokers: &str,
    topics: &TopicNames,
    sim: &SimConfig,
    handles: &Handles,
) -> anyhow::Result<u64> {
    while !handles.ready.load(Ordering::Relaxed) {
        if handles.stop.load(Ordering::Relaxed) {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Each day is sent at once and flushed: nothing to gain from lingering.
    let mut producer = InputProducer::with_overrides(brokers, &[("linger.ms".into(), "0".into())])?;
    let mut history = Simulator::new(sim);
    let mut sent = 0;
    while let Some(day) = history.next_day() {
        for r in &day {
            producer.send(
                topics.name(r.topic),
                r.tenant.as_bytes(),
                r.payload_json().as_bytes(),
            )?;
        }
        sent = producer.flush_unlingered(Duration::from_secs(30))?;
        // A processor that does not catch up within a few seconds (a rebalance) gets the next
        // day anyway: the demo goes on, only less in step.
        let deadline = Instant::now() + Duration::from_secs(5);
        while consumed(handles, topics) < sent && Instant::now() < deadline {
            if handles.stop.load(Ordering::Relaxed) {
                return Ok(sent);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    tracing::info!(
        records = sent,
        tenants = sim.tenants,
        days = sim.days,
        "history produced"
    );
    Ok(sent)
}

fn note(report: &mut DemoReport, alert: &Alert) {
    *report
        .by_type
        .entry(alert.kind.as_str().to_owned())
        .or_default() += 1;
    let data = alert.data_json();
    let status = data["status"].as_str().unwrap_or("").to_owned();
    let scope = data["scope"].as_str().unwrap_or("").to_owned();
    let key = (
        alert.subject.clone(),
        alert.kind.as_str().to_owned(),
        scope.clone(),
    );
    if alert.kind.as_str() == "model.calibration" && scope == "tenant" && data["trigger"] == "as_of"
    {
        let as_of = data["as_of"].as_str().unwrap_or("").to_owned();
        report
            .daily
            .insert((alert.subject.clone(), as_of, status.clone()));
    }
    // A daily calibration report can carry a change of status too (when it happens on an
    // as_of advance): a transition is a status that differs from the last one seen.
    let previous = report.last.insert(key, status.clone());
    if previous.as_deref() == Some(status.as_str()) {
        return;
    }
    // Tenant-wide transitions only: per-channel and per-horizon ones are in the summary.
    if scope != "tenant" {
        return;
    }
    println!(
        "  {}  {:<28} {:<16} {:<18} {}",
        alert.time.get(..10).unwrap_or(&alert.time),
        alert.kind.as_str(),
        alert.subject,
        scope,
        status
    );
}
