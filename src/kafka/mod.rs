//! The fold on Kafka (SPEC 2, 7): settings, clients, topic checks and the state restore.
//! [`processor`] is the consume-fold-produce loop itself.

pub mod admin;
mod documents;
pub mod processor;
pub mod produce;
pub mod restore;
pub mod routing;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;

use crate::config::TopicNames;
use crate::fold::FoldConfig;
use crate::metrics::Metrics;

/// Delivery guarantee of `feedback run` (SPEC 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Guarantee {
    /// One transaction carries the alerts, the state records and the input offsets.
    ExactlyOnce,
    /// Outputs are flushed, then the offsets committed: a crash can repeat alerts and re-fold
    /// records (feature-importance events and counters count twice).
    AtLeastOnce,
}

/// Everything the processor needs to run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub brokers: String,
    pub group: String,
    pub topics: TopicNames,
    pub guarantee: Guarantee,
    /// How often the current transaction (or offset commit) is closed.
    pub commit_interval: Duration,
    pub storage_dir: PathBuf,
    /// How often a round of rewriting the changed tenants' storage documents starts.
    pub storage_interval: Duration,
    /// Names this process: its transactional id is `model-feedback-{group}-{instance_id}`. A
    /// restarted process with the same id fences the old one's open transaction at once;
    /// with a fresh id it is aborted after `transaction.timeout.ms`.
    pub instance_id: String,
    pub fold: FoldConfig,
    /// librdkafka properties set last, over the defaults (`--kafka-config key=value`).
    pub client_overrides: Vec<(String, String)>,
    /// Whether start-up reads the state topic's `cleanup.policy` (refusing one that is not
    /// compacted) and the DLQ topic's `max.message.bytes` (Kafka's default when off). Off for
    /// librdkafka's mock cluster, which cannot describe configs.
    pub check_state_policy: bool,
    /// How long a fetch of the inputs waits at the broker for records (`fetch.wait.max.ms`);
    /// None: librdkafka's default, 500 ms. The demo, which produces a day at a time and waits
    /// until the processor has read it, sets it short.
    pub fetch_wait: Option<Duration>,
    /// How long a restore may read nothing before it is given up and started again
    /// ([`restore::RestoreError::Stalled`]).
    pub restore_stall: Duration,
}

impl Settings {
    pub fn new(brokers: impl Into<String>, group: impl Into<String>) -> Self {
        Settings {
            brokers: brokers.into(),
            group: group.into(),
            topics: TopicNames::default(),
            guarantee: Guarantee::ExactlyOnce,
            commit_interval: Duration::from_millis(100),
            storage_dir: PathBuf::from("storage"),
            storage_interval: Duration::from_secs(5),
            instance_id: uuid::Uuid::new_v4().simple().to_string(),
            fold: FoldConfig::default(),
            client_overrides: Vec::new(),
            check_state_policy: true,
            fetch_wait: None,
            restore_stall: Duration::from_secs(120),
        }
    }

    /// The producer's `transaction.timeout.ms`: Kafka Streams' exactly-once default, 10 s (an
    /// abandoned transaction blocks read_committed readers of its partitions for at most this
    /// long), or three commit intervals when that is longer (a transaction stays open for about
    /// one, and one older than this is aborted by the broker), at most the broker's default
    /// `transaction.max.timeout.ms`, 15 minutes; `--kafka-config` sets it (at least 1 s).
    pub fn transaction_timeout(&self) -> Duration {
        let set = (self.client_overrides.iter().rev())
            .find(|(k, _)| k == "transaction.timeout.ms")
            .and_then(|(_, v)| v.parse().ok())
            .map(Duration::from_millis);
        let derived =
            (self.commit_interval * 3).clamp(Duration::from_secs(10), Duration::from_secs(900));
        set.unwrap_or(derived).max(Duration::from_secs(1))
    }

    pub fn transactional_id(&self) -> String {
        format!("model-feedback-{}-{}", self.group, self.instance_id)
    }

    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", format!("model-feedback-{}", self.instance_id))
            .set_log_level(RDKafkaLogLevel::Warning);
        c
    }

    fn finish(&self, mut c: ClientConfig) -> ClientConfig {
        for (k, v) in &self.client_overrides {
            c.set(k, v);
        }
        c
    }

    /// The group consumer of the three input topics.
    pub fn consumer_config(&self) -> ClientConfig {
        let mut c = self.base();
        c.set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // Outputs of other transactional writers are read once committed only (SPEC 7).
            .set("isolation.level", "read_committed")
            // The range assignor gives partition p of every input topic to the same member,
            // which keeps a tenant's three topics together. librdkafka's only cooperative
            // assignor (cooperative-sticky) places each topic-partition on its own and can
            // split them, so the eager protocol is used (docs in ARCHITECTURE.md).
            .set("partition.assignment.strategy", "range")
            .set("enable.partition.eof", "false")
            // Once the prefetch queue is full librdkafka waits this long before fetching
            // again (default 1 s); a loop that drains the queue in about that time then found
            // it empty for 100 ms every second (measured: 10% of the throughput).
            .set("fetch.queue.backoff.ms", "100")
            // Read by the lag gauge and `BrokerWatch`.
            .set("statistics.interval.ms", "5000");
        if let Some(wait) = self.fetch_wait {
            c.set("fetch.wait.max.ms", wait.as_millis().to_string());
        }
        self.finish(c)
    }

    /// The producer of alerts, DLQ records and state records.
    pub fn producer_config(&self) -> ClientConfig {
        let mut c = self.base();
        c.set("enable.idempotence", "true")
            // Java's partitioner, so alerts land where a Java producer would put the tenant.
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5")
            // Alerts are JSON, and state records repeat their tenant and date in keys and
            // values: compressed, the broker appends, replicates and compacts fewer bytes.
            // Measured on a local broker (docs/PERFORMANCE.md): its CPU per record during a
            // run halved, and this process used no more.
            .set("compression.type", "lz4")
            // A DLQ record carries the refused bytes whole, which may exceed 1 MiB.
            .set("message.max.bytes", "16777216")
            // Read by `BrokerWatch`.
            .set("statistics.interval.ms", "5000");
        match self.guarantee {
            Guarantee::ExactlyOnce => {
                let timeout = self.transaction_timeout().as_millis() as u64;
                c.set("transactional.id", self.transactional_id())
                    .set("transaction.timeout.ms", timeout.to_string())
                    // librdkafka wants it within the transaction timeout.
                    .set(
                        "message.timeout.ms",
                        (timeout - 1000).max(timeout / 2).to_string(),
                    )
                    // Left unset, librdkafka makes it the transaction timeout less 100 ms: a
                    // request to a broker that does not answer would wait as long.
                    .set("socket.timeout.ms", (timeout - 100).min(10_000).to_string());
            }
            Guarantee::AtLeastOnce => {
                c.set("message.timeout.ms", "0");
            }
        }
        self.finish(c)
    }

    /// An admin client's (start-up checks of topic configs).
    pub fn admin_config(&self) -> ClientConfig {
        let c = self.base();
        self.finish(c)
    }

    /// The reader of the state changelog on assignment.
    pub fn restore_config(&self) -> ClientConfig {
        let mut c = self.base();
        // Its own client id, for a quota on restores or to tell its fetches apart.
        let id = format!("model-feedback-{}-restore", self.instance_id);
        c.set("client.id", id)
            .set("group.id", format!("{}-restore", self.group))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            // At the end of a partition, say so at once instead of waiting for more.
            .set("fetch.wait.max.ms", "10")
            .set("auto.offset.reset", "earliest");
        self.finish(c)
    }

    /// A plain producer (the demo's and `simulate --brokers`' input producer).
    pub fn plain_producer_config(brokers: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", brokers)
            .set("partitioner", "murmur2_random")
            .set("enable.idempotence", "true")
            .set("message.max.bytes", "16777216")
            .set("linger.ms", "20")
            .set_log_level(RDKafkaLogLevel::Warning);
        c
    }
}

/// Callbacks shared by every client: librdkafka's log and errors go to `tracing` and the
/// metrics, its statistics feed the consumer lag gauge.
#[derive(Clone)]
pub struct ClientHooks {
    pub metrics: Arc<Metrics>,
    /// Per error kind: when it was last logged, and how many since went unlogged. An outage
    /// makes every client report the same kind many times a second; each is counted in the
    /// metrics, and logged at most every [`ERROR_LOG_INTERVAL`].
    logged: Arc<std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, u64)>>>,
}

/// The least time between two log lines of one kind of client error.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl ClientHooks {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        ClientHooks {
            metrics,
            logged: Default::default(),
        }
    }

    pub fn log(level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", "{fac}: {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{fac}: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "{fac}: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{fac}: {message}"),
        }
    }

    pub fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        {
            return;
        }
        let kind = error
            .rdkafka_error_code()
            .map(|c| format!("{c:?}"))
            .unwrap_or_else(|| "other".to_owned());
        self.metrics.client_errors.with_label_values(&[&kind]).inc();
        let now = std::time::Instant::now();
        let suppressed = {
            let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
            match logged.get_mut(&kind) {
                Some((at, skipped)) if now.duration_since(*at) < ERROR_LOG_INTERVAL => {
                    *skipped += 1;
                    return;
                }
                Some((at, skipped)) => {
                    *at = now;
                    std::mem::take(skipped)
                }
                None => {
                    logged.insert(kind.clone(), (now, 0));
                    0
                }
            }
        };
        // librdkafka retries these by itself; they say the cluster is unreachable for now.
        if suppressed > 0 {
            tracing::warn!(target: "librdkafka", %kind, suppressed, "{reason} (and {suppressed} more of this kind since the last line)");
        } else {
            tracing::warn!(target: "librdkafka", %kind, "{reason}");
        }
    }

    /// librdkafka's own `consumer_lag` counts from the offsets the consumer committed, and
    /// this consumer never commits (the transaction does), so the lag is taken as the last
    /// stable offset minus the position of the next record to hand out.
    pub fn stats(&self, stats: &Statistics) {
        for (topic, t) in &stats.topics {
            for (p, part) in &t.partitions {
                let lag = match (part.app_offset, part.ls_offset) {
                    (_, end) if *p < 0 || end < 0 => continue,
                    (position, end) if position >= 0 => (end - position).max(0),
                    // Nothing handed out yet: known only for an empty partition.
                    (_, 0) => 0,
                    _ => continue,
                };
                self.metrics
                    .lag
                    .with_label_values(&[topic, &p.to_string()])
                    .set(lag);
            }
        }
    }
}

/// Notices a client that librdkafka has cut off from the cluster for good, so that its owner
/// can add the bootstrap servers again ([`BrokerWatch::reconnect`]).
///
/// Since 2.10, librdkafka forgets the brokers a Metadata response does not name; a response
/// that names none (with topics) makes it forget every broker, bootstrap servers included,
/// and nothing then connects again: the consumer never rejoins its group, the producer never
/// finds its coordinator (librdkafka issue 5301; the fix, PR 5303, is in no release up to
/// 2.12.1, which rdkafka 0.39 builds). A KRaft broker its controller has just fenced answers
/// so: here, a broker paused for longer than `broker.session.timeout.ms`, resumed, fenced and
/// unfenced within a second (`tests/kafka_pause.rs`); elsewhere, a rolling restart.
/// librdkafka's statistics show the state: no broker left but its internal and logical ones.
pub struct BrokerWatch {
    cut_off: std::sync::atomic::AtomicBool,
    /// `bootstrap.servers`.
    bootstrap: String,
    /// Which client: `consumer` or `producer` (the metric's label).
    client: &'static str,
}

impl BrokerWatch {
    pub fn new(bootstrap: &str, client: &'static str) -> Self {
        BrokerWatch {
            cut_off: Default::default(),
            bootstrap: bootstrap.to_owned(),
            client,
        }
    }

    /// Called with each of the client's statistics (`statistics.interval.ms`).
    pub fn observe(&self, stats: &Statistics) {
        if is_cut_off(stats) {
            self.cut_off
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// If the statistics showed `client` cut off since the last call, adds the bootstrap
    /// servers to it again: librdkafka connects to one, and the next Metadata response brings
    /// the cluster's brokers back. True when it did.
    pub fn reconnect<C: ClientContext>(
        &self,
        client: &rdkafka::client::Client<C>,
        metrics: &Metrics,
    ) -> bool {
        if !self
            .cut_off
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            return false;
        }
        tracing::warn!(
            client = self.client,
            bootstrap = self.bootstrap,
            "librdkafka has forgotten every broker (a Metadata response named none: a broker \
             fenced by its controller, librdkafka issue 5301) and would not connect again: \
             adding the bootstrap servers back"
        );
        let Ok(list) = std::ffi::CString::new(self.bootstrap.as_str()) else {
            return false;
        };
        // SAFETY: `client` owns a live handle for the duration of the call, and
        // rd_kafka_brokers_add may be called from any thread; it copies the list.
        let added =
            unsafe { rdkafka::bindings::rd_kafka_brokers_add(client.native_ptr(), list.as_ptr()) };
        metrics.rebootstraps.with_label_values(&[self.client]).inc();
        added > 0
    }
}

/// True when the statistics list no broker that can reach the cluster: none learned from
/// Metadata and none configured (bootstrap), only the internal and logical ones
/// (`GroupCoordinator`, `TxnCoordinator`), which follow the others.
fn is_cut_off(stats: &Statistics) -> bool {
    !stats
        .brokers
        .values()
        .any(|b| b.source == "learned" || b.source == "configured")
}

/// The context of the clients that need no more than the shared hooks.
#[derive(Clone)]
pub struct HookContext(pub ClientHooks);

impl ClientContext for HookContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        ClientHooks::log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.error(error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for HookContext {}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::consumer::Consumer;
    use rdkafka::types::RDKafkaErrorCode;

    fn broker(source: &str) -> rdkafka::statistics::Broker {
        rdkafka::statistics::Broker {
            source: source.to_owned(),
            ..Default::default()
        }
    }

    fn stats(sources: &[&str]) -> Statistics {
        let mut stats = Statistics::default();
        for (i, s) in sources.iter().enumerate() {
            stats.brokers.insert(format!("{s}-{i}"), broker(s));
        }
        stats
    }

    #[test]
    fn a_client_with_only_internal_and_logical_brokers_is_given_the_bootstrap_servers_again() {
        // At start: the bootstrap server; then the learned brokers, and the logical coordinator.
        assert!(!is_cut_off(&stats(&["internal", "configured"])));
        assert!(!is_cut_off(&stats(&["internal", "learned", "logical"])));
        // After a Metadata response that named no broker (librdkafka issue 5301).
        assert!(is_cut_off(&stats(&["internal", "logical"])));

        let metrics = Metrics::new();
        let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
        let watch = BrokerWatch::new(&mock.bootstrap_servers(), "consumer");
        let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .create()
            .unwrap();
        let readded = || metrics.rebootstraps.with_label_values(&["consumer"]).get();
        // Nothing seen: nothing done.
        watch.observe(&stats(&["internal", "learned"]));
        assert!(!watch.reconnect(consumer.client(), &metrics));
        assert_eq!(readded(), 0);
        // Seen cut off: the bootstrap servers are added once, and counted.
        watch.observe(&stats(&["internal", "logical"]));
        assert!(watch.reconnect(consumer.client(), &metrics));
        assert!(!watch.reconnect(consumer.client(), &metrics));
        assert_eq!(readded(), 1);
        // The client now reaches the cluster it was given.
        let md = consumer
            .client()
            .fetch_metadata(None, Duration::from_secs(10))
            .unwrap();
        assert_eq!(md.brokers().len(), 1);
    }

    #[test]
    fn the_transaction_timeout_outlasts_three_commit_intervals_unless_set() {
        let mut settings = Settings::new("127.0.0.1:9092", "g");
        assert_eq!(settings.transaction_timeout(), Duration::from_secs(10));
        settings.commit_interval = Duration::from_secs(30);
        assert_eq!(settings.transaction_timeout(), Duration::from_secs(90));
        let config = settings.producer_config();
        assert_eq!(config.get("transaction.timeout.ms"), Some("90000"));
        assert_eq!(config.get("message.timeout.ms"), Some("89000"));
        assert_eq!(config.get("socket.timeout.ms"), Some("10000"));
        settings.commit_interval = Duration::from_secs(600);
        assert_eq!(settings.transaction_timeout(), Duration::from_secs(900));
        settings.client_overrides = vec![("transaction.timeout.ms".into(), "60000".into())];
        assert_eq!(settings.transaction_timeout(), Duration::from_secs(60));
        let config = settings.producer_config();
        assert_eq!(config.get("transaction.timeout.ms"), Some("60000"));
        assert_eq!(config.get("message.timeout.ms"), Some("59000"));
    }

    #[test]
    fn a_burst_of_one_error_kind_is_counted_whole_and_logged_once() {
        let hooks = ClientHooks::new(Arc::new(Metrics::new()));
        for _ in 0..50 {
            hooks.error(
                KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
                "1/1 brokers are down",
            );
        }
        hooks.error(
            KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure),
            "disconnected",
        );
        let counted = |kind: &str| hooks.metrics.client_errors.with_label_values(&[kind]).get();
        assert_eq!(counted("AllBrokersDown"), 50);
        assert_eq!(counted("BrokerTransportFailure"), 1);
        let logged = hooks.logged.lock().unwrap();
        // The first of each kind was logged; the other 49 wait for the next line's count.
        assert_eq!(logged["AllBrokersDown"].1, 49);
        assert_eq!(logged["BrokerTransportFailure"].1, 0);
    }
}
