//! Helpers of the tests that run the processor on a real Kafka broker (`KAFKA_BOOTSTRAP`, which
//! `scripts/test.sh` starts with `scripts/kafka.sh`): topics of their own per test, producing a
//! seeded history, running `feedback run` as a child process, reading back what it committed,
//! and the checks of SPEC 5 and 7 against `feedback fold` over the same records.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use feedback::alert::{Alert, AlertType};
use feedback::config::TopicNames;
use feedback::kafka::produce::InputProducer;
use feedback::offline::{fold_files, FoldJob};
use feedback::simulate::SimRecord;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

/// The broker the tests use. Without one they are skipped, except under CI=true, where a
/// missing broker is a failure: CI must run them.
pub fn broker() -> Option<String> {
    match std::env::var("KAFKA_BOOTSTRAP") {
        Ok(b) if !b.trim().is_empty() => Some(b),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but KAFKA_BOOTSTRAP is not set: the broker tests must run (scripts/test.sh starts a broker)")
        }
        _ => {
            eprintln!("skipped: KAFKA_BOOTSTRAP is not set (scripts/test.sh starts a broker)");
            None
        }
    }
}

/// One test's topics, group and files on the shared broker.
pub struct Cluster {
    pub brokers: String,
    pub topics: TopicNames,
    pub group: String,
    pub partitions: i32,
    pub dir: Dir,
    pub config: PathBuf,
}

/// A temporary directory that is kept, and named, when the test fails.
pub struct Dir(PathBuf);

impl Dir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Cluster {
    /// Creates this test's six topics, named after the test and a random suffix.
    pub fn new(name: &str, partitions: i32) -> Option<Cluster> {
        let brokers = broker()?;
        let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let p = format!("{name}-{run}");
        let topics = TopicNames {
            outcomes: format!("{p}.outcomes"),
            forecasts: format!("{p}.forecasts"),
            feature_importances: format!("{p}.feature-importances"),
            alerts: format!("{p}.alerts"),
            dlq: format!("{p}.dlq"),
            state: format!("{p}.state"),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(feedback::kafka::admin::create_topics(
            &brokers,
            &topics,
            partitions,
            1,
            &[],
        ))
        .expect("create the test topics");
        let dir = Dir(tempfile::Builder::new()
            .prefix(&format!("feedback-{name}-"))
            .tempdir()
            .unwrap()
            .keep());
        let config = dir.path().join("feedback.toml");
        let mut f = std::fs::File::create(&config).unwrap();
        writeln!(
            f,
            "[topics]\noutcomes = {:?}\nforecasts = {:?}\nfeature_importances = {:?}\nalerts = {:?}\ndlq = {:?}\nstate = {:?}",
            topics.outcomes, topics.forecasts, topics.feature_importances, topics.alerts, topics.dlq, topics.state
        )
        .unwrap();
        Some(Cluster {
            brokers,
            group: format!("{p}.group"),
            topics,
            partitions,
            dir,
            config,
        })
    }

    /// An admin client of the broker, and a runtime to wait on its calls.
    pub fn admin(
        &self,
    ) -> (
        rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
        tokio::runtime::Runtime,
    ) {
        let admin = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        (admin, rt)
    }

    /// Sets one configuration value of a topic (AlterConfigs, which replaces the topic's other
    /// settings by the broker's defaults).
    pub fn set_topic_config(&self, topic: &str, key: &str, value: &str) {
        use rdkafka::admin::{AdminOptions, AlterConfig, ResourceSpecifier};
        let (admin, rt) = self.admin();
        let change = AlterConfig::new(ResourceSpecifier::Topic(topic)).set(key, value);
        let results = rt
            .block_on(admin.alter_configs([&change], &AdminOptions::new()))
            .expect("alter the topic's config");
        for r in results {
            r.unwrap_or_else(|e| panic!("alter {topic} {key}={value}: {e:?}"));
        }
    }

    pub fn topic_of(&self, r: &SimRecord) -> &str {
        self.topics.name(r.topic)
    }

    /// Produces the records keyed by tenant, in order; returns how many.
    pub fn produce(&self, records: &[SimRecord]) -> u64 {
        let mut p = InputProducer::new(&self.brokers).unwrap();
        for r in records {
            p.send(
                self.topic_of(r),
                r.tenant.as_bytes(),
                r.payload_json().as_bytes(),
            )
            .unwrap();
        }
        p.flush(Duration::from_secs(60)).unwrap()
    }

    /// Writes the records as `feedback fold` input.
    pub fn write_jsonl(&self, records: &[SimRecord]) -> PathBuf {
        let path = self.dir.path().join("history.jsonl");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        for r in records {
            writeln!(f, "{}", r.jsonl(self.topic_of(r))).unwrap();
        }
        f.flush().unwrap();
        path
    }

    /// `feedback fold` over `inputs`: its storage directory and its alerts.
    pub fn fold(&self, inputs: Vec<PathBuf>) -> (PathBuf, Vec<Alert>) {
        let storage = self.dir.path().join("fold-storage");
        let alerts = self.dir.path().join("fold-alerts.jsonl");
        fold_files(&FoldJob {
            inputs,
            storage_dir: storage.clone(),
            alerts_out: Some(alerts.clone()),
            dlq_out: None,
            topics: self.topics.clone(),
            config: feedback::fold::FoldConfig::default(),
            progress: false,
            stop: None,
        })
        .unwrap();
        let alerts = std::fs::read_to_string(&alerts)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (storage, alerts)
    }

    /// Every record of `records` folded exactly once into `storage` and the alerts topic: the
    /// documents `feedback fold` writes over them, no alert id committed twice, and the alert
    /// guarantees against `fold`'s alerts.
    pub fn assert_folded_once(&self, records: &[SimRecord], storage: &Path) {
        let (fold_storage, fold_alerts) = self.fold(vec![self.write_jsonl(records)]);
        assert_same_documents(storage, &fold_storage);
        self.assert_no_alert_twice();
        assert_alert_guarantees(&self.alerts(), &fold_alerts, storage);
    }

    /// Starts `feedback run` as a child process; its log goes to `{dir}/{instance}-{n}.log`.
    pub fn spawn(&self, instance: &str, storage: &Path, extra: &[&str]) -> Process {
        self.spawn_in_group(&self.group, instance, storage, extra)
    }

    /// [`Cluster::spawn`] with another consumer group than the cluster's.
    pub fn spawn_in_group(
        &self,
        group: &str,
        instance: &str,
        storage: &Path,
        extra: &[&str],
    ) -> Process {
        let n = std::fs::read_dir(self.dir.path()).unwrap().count();
        let log = self.dir.path().join(format!("{instance}-{n}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_feedback"))
            .args(["run", "--brokers", &self.brokers, "--group", group])
            .arg("--config")
            .arg(&self.config)
            .arg("--storage-dir")
            .arg(storage)
            .args(["--http", "127.0.0.1:0", "--instance-id", instance])
            .args(["--storage-interval", "1s"])
            // A killed member leaves the group after the session timeout: keep it short.
            .args(["--kafka-config", "session.timeout.ms=6000"])
            .args(["--kafka-config", "heartbeat.interval.ms=1000"])
            .args(extra)
            .args(
                std::env::var("FEEDBACK_TEST_RUN_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .env(
                "FEEDBACK_LOG",
                std::env::var("FEEDBACK_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start feedback run");
        Process { child, log }
    }

    /// A consumer with the processor's group id, for reading its committed offsets.
    fn offsets_reader(&self) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap()
    }

    /// The group's committed offset on one partition, if it has one.
    pub fn committed(&self, topic: &str, partition: i32) -> Option<i64> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        let committed = self
            .offsets_reader()
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap();
        match committed.elements()[0].offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        }
    }

    /// (committed, end) summed over the input partitions.
    pub fn progress(&self) -> (i64, i64) {
        let c = self.offsets_reader();
        let mut tpl = TopicPartitionList::new();
        let mut end = 0;
        for t in [
            &self.topics.outcomes,
            &self.topics.forecasts,
            &self.topics.feature_importances,
        ] {
            for p in 0..self.partitions {
                tpl.add_partition(t, p);
                // Just after the broker comes back (kafka_pause) a partition may answer
                // NotLeaderForPartition for a moment.
                let mut tries = 0;
                end += loop {
                    match c.fetch_watermarks(t, p, Duration::from_secs(10)) {
                        Ok((_, high)) => break high,
                        Err(e) if tries < 50 => {
                            tries += 1;
                            eprintln!("watermarks of {t} [{p}]: {e}; asking again");
                            std::thread::sleep(Duration::from_millis(200));
                        }
                        Err(e) => panic!("watermarks of {t} [{p}]: {e}"),
                    }
                };
            }
        }
        let committed = c
            .committed_offsets(tpl, Duration::from_secs(10))
            .map(|tpl| {
                tpl.elements()
                    .iter()
                    .map(|e| match e.offset() {
                        Offset::Offset(o) => o,
                        _ => 0,
                    })
                    .sum()
            })
            .unwrap_or(0);
        (committed, end)
    }

    /// Waits until the group has committed every input record.
    pub fn wait_caught_up(&self, timeout: Duration, processes: &mut [&mut Process]) {
        let start = Instant::now();
        loop {
            let (committed, end) = self.progress();
            if committed >= end {
                return;
            }
            for p in processes.iter_mut() {
                p.assert_running();
            }
            assert!(
                start.elapsed() < timeout,
                "not caught up after {timeout:?}: {committed} of {end} committed"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Every record of `topic`, read committed, to its end: (key, headers, value).
    pub fn read_all(&self, topic: &str) -> Vec<Record> {
        (self.read_all_at(topic).into_iter())
            .map(|(_, _, r)| r)
            .collect()
    }

    /// [`Cluster::read_all`] with each record's partition and offset.
    pub fn read_all_at(&self, topic: &str) -> Vec<(i32, i64, Record)> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", format!("{}.reader", self.group))
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        c.assign(&tpl).unwrap();
        let mut pending: BTreeSet<i32> = (0..self.partitions).collect();
        let mut out = Vec::new();
        let start = Instant::now();
        while !pending.is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "reading {topic} took too long"
            );
            match c.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    (
                                        h.key.to_owned(),
                                        String::from_utf8_lossy(h.value.unwrap_or_default())
                                            .into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push((
                        m.partition(),
                        m.offset(),
                        (
                            m.key().unwrap_or_default().to_vec(),
                            headers,
                            m.payload().unwrap_or_default().to_vec(),
                        ),
                    ));
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    pending.remove(&p);
                }
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                None => {}
            }
        }
        out
    }

    /// Fails, saying where each copy sits, if an alert id was committed twice: the partition
    /// and offsets tell whether the copies came from one transaction or two, and where to look
    /// with `kafka-dump-log` for the producer epochs.
    pub fn assert_no_alert_twice(&self) {
        let mut seen: BTreeMap<String, (i32, i64)> = BTreeMap::new();
        let mut twice = Vec::new();
        for (partition, offset, (_, _, value)) in self.read_all_at(&self.topics.alerts) {
            let alert: Alert =
                serde_json::from_slice(&value).expect("an alert is CloudEvents JSON");
            if let Some(first) = seen.insert(alert.id.clone(), (partition, offset)) {
                twice.push(format!(
                    "{} at {first:?} and ({partition}, {offset}): {}",
                    alert.id,
                    String::from_utf8_lossy(&value)
                ));
            }
        }
        assert!(
            twice.is_empty(),
            "{} alert id(s) committed twice in {} (partition, offset):\n{}",
            twice.len(),
            self.topics.alerts,
            twice.join("\n")
        );
    }

    pub fn alerts(&self) -> Vec<Alert> {
        self.read_all(&self.topics.alerts)
            .into_iter()
            .map(|(_, _, v)| serde_json::from_slice(&v).expect("an alert is CloudEvents JSON"))
            .collect()
    }
}

/// A record read back: (key, headers, value).
pub type Record = (Vec<u8>, BTreeMap<String, String>, Vec<u8>);

/// A `feedback run` child process.
pub struct Process {
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits until the process has restored its partitions' state (and so rewritten their
    /// documents): documents lag the state under load, and a process stopped before its
    /// assignment would leave a killed predecessor's lagging documents in place.
    pub fn wait_restored(&mut self, timeout: Duration) {
        self.wait_log("restored state from the changelog", timeout);
    }

    /// Waits until the process's log says `needle`, while it runs.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while !std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .contains(needle)
        {
            self.assert_running();
            assert!(
                start.elapsed() < timeout,
                "no {needle:?} in the log within {timeout:?}:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The address `--http 127.0.0.1:0` bound, from the log once it says.
    pub fn http_addr(&mut self, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let addr = (log.lines())
                .find_map(|l| l.split("HTTP on http://").nth(1))
                .and_then(|rest| rest.split("/metrics").next());
            if let Some(addr) = addr {
                return addr.to_owned();
            }
            self.assert_running();
            assert!(start.elapsed() < timeout, "no HTTP address in the log");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The body of this instance's answer to `GET path`.
    pub fn http_get(&mut self, path: &str) -> String {
        use std::io::Read;
        let addr = self.http_addr(Duration::from_secs(30));
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default()
    }

    /// `/api/v1/tenants` of this instance: each tenant with the `owned` it reports.
    pub fn tenants_owned(&mut self) -> BTreeMap<String, Option<bool>> {
        let body = self.http_get("/api/v1/tenants");
        let list: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        (list["tenants"].as_array().unwrap().iter())
            .map(|t| {
                (
                    t["tenant"].as_str().unwrap().to_owned(),
                    t["owned"].as_bool(),
                )
            })
            .collect()
    }

    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("feedback run exited early ({status}):\n{}", self.log_tail());
        }
    }

    /// The exit status once the process ends by itself within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < timeout,
                "feedback run still runs after {timeout:?}:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends `signal` (SIGSTOP and SIGCONT freeze and thaw the process: a zombie instance).
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }

    /// SIGTERM, then the exit status within `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if start.elapsed() > timeout {
                self.child.kill().ok();
                panic!(
                    "feedback run did not stop within {timeout:?} of SIGTERM:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Numbers equal within `rel` relative; everything else equal. Keys in `skip` are not compared.
/// The value of `name=` in a log line: a Debug set such as `{0, 1, 2}`, or a word.
pub fn field(line: &str, name: &str) -> Option<String> {
    let rest = line.split(&format!(" {name}=")).nth(1)?;
    let end = match rest.starts_with('{') {
        true => rest.find('}').map_or(rest.len(), |i| i + 1),
        false => rest.find(' ').unwrap_or(rest.len()),
    };
    Some(rest[..end].to_owned())
}

pub fn assert_same_json(a: &Value, b: &Value, path: &str, skip: &[&str]) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let kx: BTreeSet<&String> = x.keys().filter(|k| !skip.contains(&k.as_str())).collect();
            let ky: BTreeSet<&String> = y.keys().filter(|k| !skip.contains(&k.as_str())).collect();
            assert_eq!(kx, ky, "keys differ at {path}");
            for k in kx {
                assert_same_json(&x[k], &y[k], &format!("{path}.{k}"), skip);
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "lengths differ at {path}");
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                assert_same_json(p, q, &format!("{path}[{i}]"), skip);
            }
        }
        (Value::Number(x), Value::Number(y)) => {
            let (p, q) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            let scale = p.abs().max(q.abs()).max(1e-300);
            assert!(
                p == q || (p - q).abs() / scale <= 1e-9,
                "{path}: {p} vs {q}"
            );
        }
        _ => assert_eq!(a, b, "at {path}"),
    }
}

/// Every storage document under `a` equals the one under `b` (figures within 1e-9 relative),
/// except the rule status and tags, which depend on the path the hysteresis took (SPEC 5).
pub fn assert_same_documents(processor: &Path, fold: &Path) {
    let dir = |root: &Path| root.join("metadata").join("performance");
    let names = |root: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir(root))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json"))
            .collect()
    };
    let (pa, pb) = (names(processor), names(fold));
    assert_eq!(
        pa, pb,
        "the two storage directories hold different documents"
    );
    assert!(!pa.is_empty());
    for name in pa {
        let read = |root: &Path| -> Value {
            serde_json::from_str(&std::fs::read_to_string(dir(root).join(&name)).unwrap()).unwrap()
        };
        let skip: &[&str] = if name.ends_with("_calibration.json") || name.ends_with("_drift.json")
        {
            &[]
        } else {
            &["status", "tags"]
        };
        assert_same_json(&read(processor), &read(fold), &name, skip);
    }
}

/// The as_of values of each tenant's daily calibration reports.
pub fn daily_reports(alerts: &[Alert]) -> Vec<(String, String)> {
    alerts
        .iter()
        .filter(|a| a.kind == AlertType::Calibration)
        .filter_map(|a| {
            let d = a.data_json();
            (d["trigger"] == "as_of").then(|| {
                (
                    a.subject.clone(),
                    d["as_of"].as_str().unwrap_or("").to_owned(),
                )
            })
        })
        .collect()
}

/// The guarantees of SPEC 5 that hold whatever the interleaving, checked on the processor's
/// committed alerts against `feedback fold`'s: no id twice; exactly one daily calibration
/// report per tenant per as_of advance, the same set as fold's; performance and drift
/// statuses alternating per (tenant, scope) and ending in agreement with the final tags.
pub fn assert_alert_guarantees(alerts: &[Alert], fold_alerts: &[Alert], storage: &Path) {
    let mut ids = BTreeSet::new();
    for a in alerts {
        assert!(
            ids.insert(&a.id),
            "alert id {} published twice: {a:?}",
            a.id
        );
    }

    let reports = daily_reports(alerts);
    let set: BTreeSet<_> = reports.iter().cloned().collect();
    assert_eq!(
        set.len(),
        reports.len(),
        "a daily calibration report published twice"
    );
    let fold_set: BTreeSet<_> = daily_reports(fold_alerts).into_iter().collect();
    assert_eq!(
        set, fold_set,
        "daily calibration reports differ from fold's"
    );

    let mut last: BTreeMap<(String, AlertType, String), String> = BTreeMap::new();
    for a in alerts {
        if !matches!(
            a.kind,
            AlertType::PerformanceDegraded | AlertType::DriftDetected
        ) {
            continue;
        }
        let status = a.status().unwrap();
        let key = (a.subject.clone(), a.kind, a.scope().unwrap());
        if let Some(prev) = last.get(&key) {
            assert_ne!(prev, &status, "{key:?}: {status} twice in a row");
        } else {
            assert_eq!(status, "firing", "{key:?}: first transition is {status}");
        }
        last.insert(key, status);
    }
    let tags_of = |tenant: &str| -> Vec<String> {
        let path = storage
            .join("metadata/performance")
            .join(format!("{tenant}.json"));
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        doc["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect()
    };
    let mut firing: BTreeMap<(String, AlertType), bool> = BTreeMap::new();
    for ((tenant, kind, _), status) in &last {
        *firing.entry((tenant.clone(), *kind)).or_default() |= status == "firing";
    }
    for ((tenant, kind), any) in firing {
        let tags = tags_of(&tenant);
        assert_eq!(
            tags.iter().any(|t| t == kind.as_str()),
            any,
            "{tenant}: last {kind} statuses disagree with tags {tags:?}"
        );
    }
}
