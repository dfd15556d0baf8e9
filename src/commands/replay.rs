//! `feedback replay`: rebuilds the tenants' state and storage documents from the input topics,
//! from their beginning (or a date), with the same fold as `fold` and `run`.
//!
//! A plain consumer per input topic, assigned every partition (no group, nothing committed),
//! read committed, up to the end each partition had when the replay began: records that arrive
//! later are left for the processor. One consumer per topic because librdkafka reports the end of
//! a partition by partition number only. The state topic is neither read nor written: a running
//! processor owns it; replay only writes documents (and alerts with `--publish`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::alert::Alert;
use crate::codec::{decode, AvroSchemas};
use crate::config::TopicNames;
use crate::event::validate::valid_tenant;
use crate::event::{Event, RejectKind, Rejection, Topic};
use crate::fold::{Engine, FoldConfig};
use crate::kafka::produce::InputProducer;
use crate::kafka::routing;
use crate::kafka::ClientHooks;
use crate::offline::FoldSummary;
use crate::storage::{Storage, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("invalid tenant name {0:?}")]
    InvalidTenant(String),
    #[error("cannot create a Kafka client: {0}")]
    Client(KafkaError),
    #[error("cannot read the topics of {brokers}: {source}")]
    Metadata { brokers: String, source: KafkaError },
    #[error("topic {topic:?} does not exist on {brokers}")]
    NoSuchTopic { topic: String, brokers: String },
    #[error("cannot read the offsets of {topic} partition {partition}: {source}")]
    Offsets {
        topic: String,
        partition: i32,
        source: KafkaError,
    },
    #[error("cannot assign the partitions of {topic}: {source}")]
    Assign { topic: String, source: KafkaError },
    #[error("nothing arrived for {seconds} s with {left} partitions still short of their end (is the cluster reachable?)")]
    Stalled { seconds: u64, left: usize },
    #[error("publishing an alert to {topic}: {source}")]
    Publish { topic: String, source: KafkaError },
    #[error("not every alert was delivered to {topic} within {timeout:?}: {source}")]
    Deliver {
        topic: String,
        timeout: Duration,
        source: KafkaError,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What `replay` was asked to do.
#[derive(Debug, Clone)]
pub struct ReplayJob {
    pub brokers: String,
    pub topics: TopicNames,
    pub config: FoldConfig,
    pub storage_dir: PathBuf,
    /// Start at the first record whose Kafka timestamp is at or after midnight UTC of this
    /// date, instead of at the beginning.
    pub from_date: Option<NaiveDate>,
    /// Fold only these tenants' records (all of them when empty).
    pub tenants: BTreeSet<String>,
    /// Publish the alerts to the alerts topic.
    pub publish: bool,
    /// librdkafka properties over the defaults.
    pub kafka_config: Vec<(String, String)>,
    pub progress: bool,
    /// Give up when nothing arrives for this long while partitions are short of their end.
    pub stall_timeout: Duration,
}

/// What it did: the summary `fold` prints, and the replay's own figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplaySummary {
    #[serde(flatten)]
    pub fold: FoldSummary,
    /// Input topic-partitions that had records to replay.
    pub partitions: u64,
    /// Records of other tenants than `--tenant`, read and left out.
    pub skipped: u64,
    /// Alerts published (`--publish`); 0 otherwise.
    pub published: u64,
    /// Tenants named with `--tenant` of which no record was found.
    pub not_found: Vec<String>,
}

impl std::fmt::Display for ReplaySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.fold)?;
        write!(
            f,
            "\nreplayed  {} topic-partitions with records",
            self.partitions
        )?;
        if self.skipped > 0 {
            write!(f, ", {} records of other tenants left out", self.skipped)?;
        }
        if self.published > 0 {
            write!(f, "\npublished {} alerts", self.published)?;
        }
        if !self.not_found.is_empty() {
            write!(f, "\nnot found {}", self.not_found.join(", "))?;
        }
        Ok(())
    }
}

/// librdkafka's log goes to `tracing`; its transient errors are logged, librdkafka retries them.
struct ReplayContext;

impl ClientContext for ReplayContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        ClientHooks::log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // The end of a partition comes through here too; the replay handles it as a message.
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
            || matches!(error, KafkaError::PartitionEOF(_))
        {
            return;
        }
        tracing::warn!(target: "librdkafka", error = %error, "{reason}");
    }
}

impl ConsumerContext for ReplayContext {}

/// One input topic being read.
struct Reader {
    topic: Topic,
    name: String,
    consumer: BaseConsumer<ReplayContext>,
    /// Per partition: the end it had when the replay began, and the next offset to count.
    ends: BTreeMap<i32, (i64, i64)>,
    /// The topic's partition count: a record's tenant belongs on murmur2(tenant) modulo this.
    partitions: usize,
}

const BATCH: usize = 65_536;

/// Rebuilds the documents from the input topics; see the module documentation.
pub fn replay(job: &ReplayJob) -> Result<ReplaySummary, ReplayError> {
    let started = Instant::now();
    if let Some(t) = job.tenants.iter().find(|t| !valid_tenant(t)) {
        return Err(ReplayError::InvalidTenant(t.clone()));
    }
    let mut publisher = if job.publish {
        let p = InputProducer::with_overrides(&job.brokers, &job.kafka_config)
            .map_err(ReplayError::Client)?;
        ensure_topic(&p, &job.topics.alerts, &job.brokers)?;
        Some(p)
    } else {
        None
    };
    let start_ms = job.from_date.map(|d| {
        d.and_hms_opt(0, 0, 0)
            .unwrap_or_default()
            .and_utc()
            .timestamp_millis()
    });
    let mut readers = Vec::new();
    let mut total = 0u64;
    for topic in Topic::ALL {
        let reader = open_reader(job, topic, start_ms)?;
        total += reader
            .ends
            .values()
            .map(|&(end, next)| (end - next).max(0) as u64)
            .sum::<u64>();
        readers.push(reader);
    }
    let mut summary = ReplaySummary {
        partitions: readers.iter().map(|r| r.ends.len() as u64).sum(),
        ..ReplaySummary::default()
    };
    let progress = if job.progress {
        progress_bar(total)
    } else {
        indicatif::ProgressBar::hidden()
    };

    let schemas = AvroSchemas::builtin();
    let mut engine = Engine::new(job.config.clone());
    let mut batch: Vec<Event> = Vec::with_capacity(BATCH);
    let mut alerts: Vec<Alert> = Vec::new();
    let mut last_record = Instant::now();
    let keep = |tenant: Option<&str>| {
        job.tenants.is_empty() || tenant.is_some_and(|t| job.tenants.contains(t))
    };
    while readers.iter().any(|r| !r.ends.is_empty()) {
        let mut idle = true;
        for reader in readers.iter_mut().filter(|r| !r.ends.is_empty()) {
            // Drain what is there, then move on to the next topic.
            for _ in 0..4096 {
                let Some(polled) = reader.consumer.poll(Duration::from_millis(20)) else {
                    break;
                };
                idle = false;
                let m = match polled {
                    Ok(m) => m,
                    Err(KafkaError::PartitionEOF(p)) => {
                        if let Some((end, next)) = reader.ends.remove(&p) {
                            progress.inc((end - next).max(0) as u64);
                        }
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(topic = %reader.name, error = %e, "reading");
                        continue;
                    }
                };
                let p = m.partition();
                let Some(&(end, next)) = reader.ends.get(&p) else {
                    continue;
                };
                if m.offset() >= end {
                    // Arrived after the replay began: the processor's, not ours.
                    reader.ends.remove(&p);
                    progress.inc((end - next).max(0) as u64);
                    continue;
                }
                progress.inc((m.offset() + 1 - next).max(0) as u64);
                if m.offset() + 1 >= end {
                    reader.ends.remove(&p);
                } else {
                    reader.ends.insert(p, (end, m.offset() + 1));
                }
                // Refused as `run` refuses it, so that the documents are the ones `run` writes.
                let decoded = match m.payload() {
                    Some(bytes) => {
                        let n = reader.partitions;
                        decode(reader.topic, bytes, &schemas)
                            .and_then(|e| routing::check(e.tenant(), m.key(), p, n).map(|()| e))
                            .map_err(|r| routing::attribute(r, m.key(), p, n))
                    }
                    None => Err(Rejection::new(
                        RejectKind::Malformed,
                        "the record has no value (a tombstone); inputs carry one event per record",
                    )),
                };
                let key = m.key().and_then(|k| std::str::from_utf8(k).ok());
                match decoded {
                    Ok(event) => {
                        if !keep(Some(event.tenant())) {
                            summary.skipped += 1;
                            continue;
                        }
                        summary.fold.records += 1;
                        summary.fold.accepted += 1;
                        batch.push(event);
                    }
                    Err(rejection) => {
                        if !keep(rejection.tenant.as_deref().or(key)) {
                            summary.skipped += 1;
                            continue;
                        }
                        summary.fold.records += 1;
                        summary.fold.rejected += 1;
                        *summary
                            .fold
                            .rejected_by_kind
                            .entry(rejection.kind.to_string())
                            .or_default() += 1;
                        engine.record_rejection(&rejection);
                    }
                }
                if batch.len() >= BATCH {
                    fold_batch(
                        &mut engine,
                        &mut batch,
                        &mut alerts,
                        &mut summary,
                        job,
                        &mut publisher,
                    )?;
                }
            }
        }
        if idle {
            if last_record.elapsed() > job.stall_timeout {
                return Err(ReplayError::Stalled {
                    seconds: job.stall_timeout.as_secs(),
                    left: readers.iter().map(|r| r.ends.len()).sum(),
                });
            }
        } else {
            last_record = Instant::now();
        }
    }
    fold_batch(
        &mut engine,
        &mut batch,
        &mut alerts,
        &mut summary,
        job,
        &mut publisher,
    )?;
    progress.finish_and_clear();
    drop(readers);

    let storage = Storage::new(&job.storage_dir);
    let names = engine.tenants();
    // All or nothing, with one filesystem sync: a replay may run beside a live processor.
    storage.write_tenants(names.iter().filter_map(|name| engine.documents(name)))?;
    summary.fold.tenants = names.len() as u64;
    summary.not_found = job
        .tenants
        .iter()
        .filter(|t| engine.tenant(t).is_none())
        .cloned()
        .collect();
    if let Some(p) = &mut publisher {
        let timeout = Duration::from_secs(60);
        p.flush(timeout).map_err(|source| ReplayError::Deliver {
            topic: job.topics.alerts.clone(),
            timeout,
            source,
        })?;
    }
    summary.fold.elapsed = started.elapsed();
    Ok(summary)
}

fn ensure_topic(p: &InputProducer, topic: &str, brokers: &str) -> Result<usize, ReplayError> {
    match p.partitions(topic, Duration::from_secs(10)) {
        Err(source) => Err(ReplayError::Metadata {
            brokers: brokers.to_owned(),
            source,
        }),
        Ok(None) => Err(ReplayError::NoSuchTopic {
            topic: topic.to_owned(),
            brokers: brokers.to_owned(),
        }),
        Ok(Some(n)) => Ok(n),
    }
}

/// A consumer assigned every partition of one input topic at its start offset.
fn open_reader(
    job: &ReplayJob,
    topic: Topic,
    start_ms: Option<i64>,
) -> Result<Reader, ReplayError> {
    let name = job.topics.name(topic).to_owned();
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &job.brokers)
        // librdkafka wants a group id even to assign; it never joins or commits under it.
        .set("group.id", "model-feedback-replay")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set_log_level(RDKafkaLogLevel::Warning);
    for (k, v) in &job.kafka_config {
        config.set(k, v);
    }
    let consumer: BaseConsumer<ReplayContext> = config
        .create_with_context(ReplayContext)
        .map_err(ReplayError::Client)?;
    let timeout = Duration::from_secs(10);
    let metadata =
        consumer
            .fetch_metadata(None, timeout)
            .map_err(|source| ReplayError::Metadata {
                brokers: job.brokers.clone(),
                source,
            })?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .find(|t| t.name() == name && t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .filter(|p: &Vec<i32>| !p.is_empty())
        .ok_or_else(|| ReplayError::NoSuchTopic {
            topic: name.clone(),
            brokers: job.brokers.clone(),
        })?;
    let offsets_err = |partition, source| ReplayError::Offsets {
        topic: name.clone(),
        partition,
        source,
    };
    let mut starts: BTreeMap<i32, i64> = BTreeMap::new();
    if let Some(ms) = start_ms {
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            tpl.add_partition_offset(&name, p, Offset::Offset(ms))
                .map_err(|e| offsets_err(p, e))?;
        }
        let found = consumer
            .offsets_for_times(tpl, timeout)
            .map_err(|e| offsets_err(-1, e))?;
        for e in found.elements() {
            if let Offset::Offset(o) = e.offset() {
                starts.insert(e.partition(), o);
            }
        }
    }
    let mut ends = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(&name, p, timeout)
            .map_err(|e| offsets_err(p, e))?;
        // With --from-date, a partition with no record that recent has nothing to replay.
        let start = match start_ms {
            None => low,
            Some(_) => starts.get(&p).copied().unwrap_or(high).max(low),
        };
        if start >= high {
            continue;
        }
        ends.insert(p, (high, start));
        tpl.add_partition_offset(&name, p, Offset::Offset(start))
            .map_err(|e| offsets_err(p, e))?;
    }
    consumer
        .assign(&tpl)
        .map_err(|source| ReplayError::Assign {
            topic: name.clone(),
            source,
        })?;
    Ok(Reader {
        topic,
        name,
        consumer,
        ends,
        partitions: partitions.len(),
    })
}

/// Folds the batch; with `--publish` its alerts go to the alerts topic.
fn fold_batch(
    engine: &mut Engine,
    batch: &mut Vec<Event>,
    alerts: &mut Vec<Alert>,
    summary: &mut ReplaySummary,
    job: &ReplayJob,
    publisher: &mut Option<InputProducer>,
) -> Result<(), ReplayError> {
    alerts.clear();
    engine.apply_batch_parallel(batch, alerts);
    batch.clear();
    for alert in alerts.iter() {
        summary.fold.alerts += 1;
        *summary
            .fold
            .alerts_by_type
            .entry(alert.kind.to_string())
            .or_default() += 1;
        let Some(p) = publisher else { continue };
        let payload = serde_json::to_vec(alert).unwrap_or_default();
        let mut headers = OwnedHeaders::new_with_capacity(6);
        for (key, value) in alert.headers() {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        p.send_raw(
            BaseRecord::to(&job.topics.alerts)
                .key(alert.subject.as_bytes())
                .payload(&payload[..])
                .headers(headers),
        )
        .map_err(|source| ReplayError::Publish {
            topic: job.topics.alerts.clone(),
            source,
        })?;
        summary.published += 1;
    }
    Ok(())
}

fn progress_bar(total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} replaying [{bar:30}] {human_pos}/{human_len} records, {rate} records/s, eta {eta}",
    );
    if let Ok(style) = style {
        let rate = |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.0}", state.per_sec());
        };
        bar.set_style(style.with_key("rate", rate).progress_chars("=> "));
    }
    bar
}
