//! The processor on a real broker (issue 3): `feedback run`'s exactly-once throughput over a
//! pre-filled input of 2 million records, beside a bare rdkafka consumer reading the same
//! records in the same run; then the latency from a record's produce time to the alert it
//! causes being committed, at a steady 10,000 records per second.
//!
//! `KAFKA_BOOTSTRAP=127.0.0.1:9092 cargo bench --bench kafka` (start the broker with
//! `scripts/kafka.sh start`). Run as a test (`cargo test --all-targets`) it does the same on a
//! small history, to keep the benchmark working. Figures go in docs/PERFORMANCE.md.
//! `BENCH_TENANTS` and `BENCH_DAYS` size the history, `BENCH_LATENCY_SECONDS` the latency run,
//! `BENCH_STORAGE_INTERVAL` (seconds) and `BENCH_COMMIT_INTERVAL_MS` the processor's intervals,
//! `BENCH_BROKER_PID` the broker whose CPU is reported (default: the one local `kafka.Kafka`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use feedback::alert::Alert;
use feedback::config::TopicNames;
use feedback::kafka::processor::{self, Handles};
use feedback::kafka::produce::InputProducer;
use feedback::kafka::Settings;
use feedback::simulate::{generate, Scenario, SimConfig, SimPayload};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

#[global_allocator]
static GLOBAL: feedback::allocator::MiMalloc = feedback::allocator::MiMalloc;

const PARTITIONS: i32 = 6;

fn topics(prefix: &str) -> TopicNames {
    TopicNames {
        outcomes: format!("{prefix}.outcomes"),
        forecasts: format!("{prefix}.forecasts"),
        feature_importances: format!("{prefix}.feature-importances"),
        alerts: format!("{prefix}.alerts"),
        dlq: format!("{prefix}.dlq"),
        state: format!("{prefix}.state"),
    }
}

fn create(brokers: &str, t: &TopicNames) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(feedback::kafka::admin::create_topics(
            brokers,
            t,
            PARTITIONS,
            1,
            &[],
        ))
        .unwrap();
}

/// How far `group` has committed over the inputs, read with one client. The inputs are filled
/// before the run, so their end offsets are read once.
struct Progress {
    client: BaseConsumer,
    partitions: TopicPartitionList,
    /// The inputs' end offsets, summed.
    end: i64,
}

impl Progress {
    fn new(brokers: &str, group: &str, t: &TopicNames) -> Self {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .create()
            .unwrap();
        let mut partitions = TopicPartitionList::new();
        let mut end = 0;
        for topic in t.inputs() {
            for p in 0..PARTITIONS {
                partitions.add_partition(topic, p);
                end += client
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .unwrap()
                    .1;
            }
        }
        Progress {
            client,
            partitions,
            end,
        }
    }

    /// The group's committed offsets, summed (0 for a partition with none).
    fn committed(&self) -> i64 {
        self.client
            .committed_offsets(self.partitions.clone(), Duration::from_secs(10))
            .unwrap()
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            })
            .sum()
    }
}

/// A bare consumer reading the inputs to their end: records and seconds.
fn bare_consumer(brokers: &str, t: &TopicNames) -> (u64, f64) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-bare")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for topic in t.inputs() {
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
    }
    c.assign(&tpl).unwrap();
    // One end-of-partition event per (topic, partition); the event names the partition only.
    let mut left = 3 * PARTITIONS as usize;
    let mut n = 0u64;
    let start = Instant::now();
    while left > 0 {
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                n += 1;
                std::hint::black_box(m.payload());
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => left -= 1,
            _ => {}
        }
    }
    (n, start.elapsed().as_secs_f64())
}

fn settings(brokers: &str, t: &TopicNames, group: &str, dir: &std::path::Path) -> Settings {
    let mut s = Settings::new(brokers, group);
    s.topics = t.clone();
    s.storage_dir = dir.to_owned();
    s.instance_id = group.to_owned();
    if let Some(secs) = std::env::var("BENCH_STORAGE_INTERVAL")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        s.storage_interval = Duration::from_secs(secs);
    }
    if let Some(ms) = std::env::var("BENCH_COMMIT_INTERVAL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        s.commit_interval = Duration::from_millis(ms);
    }
    s
}

/// The fields of a /proc stat file after the command name (which is in parentheses and may
/// hold spaces), and the command name.
fn stat_fields(path: &str) -> Option<(String, Vec<String>)> {
    let stat = std::fs::read_to_string(path).ok()?;
    let name = stat.get(stat.find('(')? + 1..stat.rfind(')')?)?.to_owned();
    let fields = stat.get(stat.rfind(')')? + 2..)?;
    Some((name, fields.split(' ').map(str::to_owned).collect()))
}

/// CPU seconds (user and system) in a /proc stat file: utime and stime, in clock ticks.
fn stat_cpu(fields: &[String]) -> Option<f64> {
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    Some((ticks(11)? + ticks(12)?) / rustix::param::clock_ticks_per_second() as f64)
}

/// CPU seconds a process has used so far, all threads; None off Linux or once it is gone.
fn cpu_seconds(pid: &str) -> Option<f64> {
    stat_cpu(&stat_fields(&format!("/proc/{pid}/stat"))?.1)
}

/// CPU seconds of this process's live threads, summed by thread name with digits dropped
/// (`rdk:broker3` and `rdk:broker4` are one line).
fn thread_cpu() -> HashMap<String, f64> {
    let mut by_name = HashMap::new();
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = format!("{}/stat", task.path().display());
        if let Some((name, fields)) = stat_fields(&path) {
            let name: String = name.chars().filter(|c| !c.is_ascii_digit()).collect();
            *by_name.entry(name).or_insert(0.0) += stat_cpu(&fields).unwrap_or(0.0);
        }
    }
    by_name
}

/// The pid of the local Apache Kafka broker, to count what a phase costs it too:
/// `BENCH_BROKER_PID` when set, else the one process running `kafka.Kafka` (as
/// `scripts/kafka.sh` starts it). None when there is none or more than one (another broker, a
/// CI run beside this one): the figure would be somebody else's.
fn local_broker_pid() -> Option<String> {
    if let Ok(pid) = std::env::var("BENCH_BROKER_PID") {
        return Some(pid);
    }
    let brokers: Vec<String> = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().into_string().ok()?;
            pid.bytes().all(|b| b.is_ascii_digit()).then_some(())?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            cmdline
                .split(|&b| b == 0)
                .any(|arg| arg == b"kafka.Kafka")
                .then_some(pid)
        })
        .collect();
    match <[String; 1]>::try_from(brokers) {
        Ok([pid]) => Some(pid),
        Err(brokers) => {
            if brokers.len() > 1 {
                eprintln!(
                    "{} kafka.Kafka processes: the broker's CPU is not reported (BENCH_BROKER_PID picks one)",
                    brokers.len()
                );
            }
            None
        }
    }
}

/// The CPU a phase used, in this process (by thread) and in the local broker. Wall-clock
/// throughput on a small shared machine moves by a quarter from run to run; the CPU a phase
/// costs per record moves far less, and says where a record's cost goes.
struct CpuMeter {
    broker: Option<String>,
    own: Option<f64>,
    threads: HashMap<String, f64>,
    broker_start: Option<f64>,
}

impl CpuMeter {
    fn start(broker: Option<String>) -> Self {
        CpuMeter {
            own: cpu_seconds("self"),
            threads: thread_cpu(),
            broker_start: broker.as_deref().and_then(cpu_seconds),
            broker,
        }
    }

    /// The CPU used since `start`, per record of `records`: this process, its threads that
    /// used at least 2% of it (threads that ended are left in the total only), the broker.
    fn report(&self, records: u64) -> String {
        let per_record =
            |s: f64| format!("{s:.1} s, {:.1} us/record", s * 1e6 / records.max(1) as f64);
        let Some(own) = cpu_seconds("self")
            .zip(self.own)
            .map(|(now, start)| now - start)
        else {
            return "CPU: n/a (no /proc)".to_owned();
        };
        let mut threads: Vec<(String, f64)> = thread_cpu()
            .into_iter()
            .map(|(name, now)| {
                let used = now - self.threads.get(&name).copied().unwrap_or(0.0);
                (name, used)
            })
            .filter(|(_, used)| *used >= 0.02 * own)
            .collect();
        threads.sort_by(|a, b| b.1.total_cmp(&a.1));
        let threads: Vec<String> = threads
            .iter()
            .map(|(name, used)| format!("{name} {used:.1} s"))
            .collect();
        let broker = self
            .broker
            .as_deref()
            .and_then(cpu_seconds)
            .zip(self.broker_start)
            .map(|(now, start)| per_record(now - start));
        format!(
            "CPU: this process {} ({}); broker {}",
            per_record(own),
            threads.join(", "),
            broker
                .as_deref()
                .unwrap_or("n/a (not one local kafka.Kafka process; see BENCH_BROKER_PID)")
        )
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    if let Err(e) = feedback::allocator::configure() {
        eprintln!("transparent huge pages stay on: {e}");
    }
    feedback::name_worker_threads();
    let full = std::env::args().any(|a| a == "--bench");
    let Some(brokers) = std::env::var("KAFKA_BOOTSTRAP")
        .ok()
        .filter(|b| !b.is_empty())
    else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but KAFKA_BOOTSTRAP is not set");
        }
        eprintln!("kafka bench skipped: KAFKA_BOOTSTRAP is not set (scripts/kafka.sh start)");
        return;
    };
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let env = |k: &str, d: u32| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (tenants, days) = if full {
        (env("BENCH_TENANTS", 1000) as usize, env("BENCH_DAYS", 218))
    } else {
        (10, 30)
    };
    let dir = tempfile::tempdir().unwrap();

    // 1. Throughput over a pre-filled input.
    let t = topics(&format!("bench-{run}"));
    create(&brokers, &t);
    let sim = SimConfig {
        seed: 1,
        tenants,
        days,
        scenario: Scenario::Mixed,
        ..SimConfig::default()
    };
    let records = generate(&sim);
    let mut producer = InputProducer::new(&brokers).unwrap();
    let start = Instant::now();
    for r in &records {
        producer
            .send(
                t.name(r.topic),
                r.tenant.as_bytes(),
                r.payload_json().as_bytes(),
            )
            .unwrap();
    }
    let produced = producer.flush(Duration::from_secs(300)).unwrap();
    println!(
        "produced {produced} records ({tenants} tenants x {days} days) in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    drop(records);

    let broker_pid = local_broker_pid();
    let cpu = CpuMeter::start(broker_pid.clone());
    let (bare_n, bare_s) = bare_consumer(&brokers, &t);
    println!(
        "bare consumer:           {bare_n} records in {bare_s:.2} s = {:.0} records/s; {}",
        bare_n as f64 / bare_s,
        cpu.report(bare_n)
    );

    let group = format!("bench-{run}-run");
    let handles = Handles::new();
    let s = settings(&brokers, &t, &group, &dir.path().join("run"));
    let h = handles.clone();
    let progress = Progress::new(&brokers, &group, &t);
    let cpu = CpuMeter::start(broker_pid);
    let start = Instant::now();
    // Named, so a profile can tell the processor's loop from the rest.
    let worker = std::thread::Builder::new()
        .name("processor".into())
        .spawn(move || processor::run(s, h))
        .expect("processor thread");
    // The processor's start (clients, the co-partitioning check, joining the group, restoring
    // its partitions) is timed apart: the bare consumer's clock starts after its `assign`, so
    // the two rates compare from the moment each can read (`/readyz`) to its end. Until then
    // only the flag is looked at, every millisecond; then the commits, every 50 ms.
    while !handles.ready.load(Ordering::Relaxed) {
        assert!(
            !worker.is_finished(),
            "the processor stopped before it was ready"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let startup_s = start.elapsed().as_secs_f64();
    while progress.committed() < progress.end {
        assert!(!worker.is_finished(), "the processor stopped early");
        std::thread::sleep(Duration::from_millis(50));
    }
    let total_s = start.elapsed().as_secs_f64();
    let run_s = total_s - startup_s;
    let cpu_run = cpu.report(progress.end as u64);
    handles.stop.store(true, Ordering::Relaxed);
    let summary = worker.join().unwrap().unwrap();
    let commit = handles.metrics.commit_seconds.get_sample_sum()
        / handles.metrics.commit_seconds.get_sample_count().max(1) as f64;
    println!(
        "feedback run (exactly-once): {} records in {run_s:.2} s from ready = {:.0} records/s ({:.0}% of the bare consumer); ready after {startup_s:.2} s, {:.0} records/s counting it ({:.0}%); {} commits, mean commit {:.1} ms, {} alerts",
        summary.consumed,
        summary.consumed as f64 / run_s,
        100.0 * (summary.consumed as f64 / run_s) / (bare_n as f64 / bare_s),
        summary.consumed as f64 / total_s,
        100.0 * (summary.consumed as f64 / total_s) / (bare_n as f64 / bare_s),
        summary.commits,
        commit * 1e3,
        summary.alerts,
    );
    // Read before the stop's final documents round, which is not part of the run's time.
    println!("feedback run: {}", cpu_run);

    // 2. Latency at a steady rate: produce time of the first outcome of (tenant, date) to the
    //    moment the daily calibration report it causes is readable (committed).
    let t = topics(&format!("bench-{run}-lat"));
    create(&brokers, &t);
    let group = format!("bench-{run}-lat");
    let handles = Handles::new();
    let s = settings(&brokers, &t, &group, &dir.path().join("lat"));
    let h = handles.clone();
    // Named, so a profile can tell the processor's loop from the rest.
    let worker = std::thread::Builder::new()
        .name("processor".into())
        .spawn(move || processor::run(s, h))
        .expect("processor thread");
    while !handles.ready.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen: Arc<Mutex<HashMap<(String, String), Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (seen, stop, brokers, alerts) = (
            seen.clone(),
            stop.clone(),
            brokers.clone(),
            t.alerts.clone(),
        );
        std::thread::spawn(move || {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", "bench-watch")
                .set("isolation.level", "read_committed")
                .set("fetch.wait.max.ms", "5")
                .create()
                .unwrap();
            let mut tpl = TopicPartitionList::new();
            for p in 0..PARTITIONS {
                tpl.add_partition_offset(&alerts, p, Offset::Beginning)
                    .unwrap();
            }
            c.assign(&tpl).unwrap();
            while !stop.load(Ordering::Relaxed) {
                if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
                    let now = Instant::now();
                    if let Some(a) = m
                        .payload()
                        .and_then(|p| serde_json::from_slice::<Alert>(p).ok())
                    {
                        let d = a.data_json();
                        if d["trigger"] == "as_of" {
                            let key = (
                                a.subject.clone(),
                                d["as_of"].as_str().unwrap_or("").to_owned(),
                            );
                            seen.lock().unwrap().entry(key).or_insert(now);
                        }
                    }
                }
            }
        })
    };
    let rate = 10_000.0;
    let seconds = if full {
        f64::from(env("BENCH_LATENCY_SECONDS", 30))
    } else {
        3.0
    };
    let sim = SimConfig {
        seed: 2,
        tenants: if full { 1000 } else { 10 },
        days: if full { 60 } else { 30 },
        scenario: Scenario::Mixed,
        ..SimConfig::default()
    };
    let records = generate(&sim);
    let mut sent: HashMap<(String, String), Instant> = HashMap::new();
    let mut producer = InputProducer::new(&brokers).unwrap();
    let start = Instant::now();
    let mut n = 0usize;
    for r in &records {
        if start.elapsed().as_secs_f64() > seconds {
            break;
        }
        // Pace: record n goes out at n / rate seconds.
        let due = Duration::from_secs_f64(n as f64 / rate);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        producer
            .send(
                t.name(r.topic),
                r.tenant.as_bytes(),
                r.payload_json().as_bytes(),
            )
            .unwrap();
        if let SimPayload::Event(feedback::event::Event::Outcome(o)) = &r.payload {
            sent.entry((o.tenant.to_string(), o.date.to_string()))
                .or_insert_with(Instant::now);
        }
        n += 1;
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    let produced_s = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    handles.stop.store(true, Ordering::Relaxed);
    worker.join().unwrap().unwrap();

    let seen = seen.lock().unwrap();
    let mut latencies: Vec<f64> = sent
        .iter()
        .filter_map(|(k, t0)| {
            seen.get(k)
                .map(|t1| t1.saturating_duration_since(*t0).as_secs_f64() * 1e3)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let missing = sent.len() - latencies.len();
    println!(
        "latency at {:.0} records/s ({n} records in {produced_s:.1} s): produce -> daily report committed: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} reports ({missing} not seen)",
        n as f64 / produced_s,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN),
        latencies.len(),
    );
}
