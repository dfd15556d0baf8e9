//! `feedback run`: the consume-fold-produce loop with exactly-once commits (SPEC 7).
//!
//! One thread owns the group consumer and one [`Engine`] per assigned partition number, and
//! drives the transactional producer. A record is decoded, folded into its partition's engine,
//! and its alerts (or its DLQ copy) are produced inside the open transaction. Every
//! `commit_interval` the transaction gets the changed tenants' state records (to the same
//! partition number of `feedback-state`) and the consumer offsets, and commits: outputs, state
//! and progress become visible together or not at all.
//!
//! The commit itself (`send_offsets_to_transaction`, `commit_transaction`) waits on the broker
//! for about as long as a commit interval, so it runs on a thread of its own while this one
//! folds the next records; their outputs wait in memory until the commit is done and the next
//! transaction opens. A commit that fails aborts and rewinds those too. The storage documents
//! are computed on this thread, a slice at a time, and written by a writer thread.
//!
//! Rebalances arrive as librdkafka callbacks inside `poll`, on the same thread: on revocation
//! the open transaction is committed and the partitions' engines parked or dropped; on
//! assignment the partitions are paused and their tenants restored from the changelog on a
//! thread of its own while the loop polls on, and their reading resumes where the restored
//! state ends. An abortable transaction error aborts, restores the engines the same way and
//! seeks back to the committed offsets, so nothing half-done survives.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, DeliveryResult, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use smallvec::SmallVec;

use super::documents::DocumentWriter;
use super::restore::{
    read_state, read_state_from, state_ends, Positions, RestoreError, Restored, POSITIONS_KEY,
};
use super::{admin, routing, BrokerWatch, ClientHooks, Guarantee, Settings};
use crate::alert::{Alert, AlertType};
use crate::codec::{self, AvroSchemas};
use crate::event::validate::{RejectKind, Rejection};
use crate::event::Event;
use crate::fold::{self, Engine};
use crate::metrics::Metrics;
use crate::storage::{Storage, SyncMode};

/// Bound on each blocking call to the cluster; a call that times out is retried.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on each call while waiting for an unreachable cluster at start, so that a stop does
/// not wait out a whole CALL_TIMEOUT.
const WAIT_CALL: Duration = Duration::from_secs(1);
/// How long the loop folds on while a commit is in flight before it waits for the commit.
const MAX_IN_FLIGHT: Duration = Duration::from_secs(2);
/// How many outputs may wait for the next transaction before the loop waits for the commit.
const MAX_BACKLOG: usize = 50_000;
/// How long a commit may take before its producer is taken to hang inside librdkafka. Calls
/// that need a coordinator can wait without end, whatever their timeout:
/// `send_offsets_to_transaction` does when the group coordinator it has cached is a broker it
/// has since forgotten (librdkafka issues 5456 and 5511, open; seen here after a broker pause).
/// Past it the commit thread is left to itself and the producer replaced, as after a fence.
/// That is safe whatever the hung commit does later: the new producer's `init_transactions`
/// returns only once the coordinator has completed or aborted the old transaction and fenced
/// its epoch, and the rewind after it reads the state topic as committed by then.
const COMMIT_HANG: Duration = Duration::from_secs(30);
/// The most of a core's time the documents (computed by the loop on rayon's workers, written on
/// the writer thread) may take while the loop is behind the inputs.
const DOCUMENTS_SHARE: f64 = 0.1;

/// The most records polled and folded together: enough that a tenant's records fold together
/// and decoding them is worth spreading over the cores, few enough that a batch folds in
/// milliseconds.
const MAX_BATCH: usize = 1024;

/// The bound on the next metadata call at start after one failed with `error`: WAIT_CALL while
/// no broker can be reached (nothing to wait for), twice the last one, up to CALL_TIMEOUT, after
/// a call that timed out (a broker may be answering slowly).
fn next_wait_call(last: Duration, error: &KafkaError) -> Duration {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown) => {
            WAIT_CALL
        }
        _ => (last * 2).min(CALL_TIMEOUT),
    }
}

/// Batches at least this large are decoded, and a partition's events at least this many folded, on
/// every core.
const PARALLEL_BATCH: usize = 64;

/// The fewest alerts of a batch whose JSON is made on every core.
const PARALLEL_ALERTS: usize = 32;

/// What an operator does about input topics whose partition count changed under their state.
const REPARTITION: &str = "A tenant's records go to partition murmur2(tenant) modulo the \
    partition count, so with another count most tenants' records land on another partition \
    than the state that holds their history, and Kafka cannot move the records already \
    written. Stopping rather than splitting tenants' state. To change the partition count, \
    create new input topics and an empty state topic with the new count, produce the inputs \
    into them again keyed by tenant (`feedback produce`, or any producer with Java's murmur2 \
    partitioner), and run on those";

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Topics(#[from] admin::TopicError),
    #[error("cannot create a Kafka client: {0}")]
    Client(KafkaError),
    #[error("cannot subscribe to the input topics: {0}")]
    Subscribe(KafkaError),
    #[error("fatal Kafka error, the producer cannot go on: {0}")]
    Fatal(KafkaError),
    #[error("cannot restore state: {0}")]
    Restore(#[from] super::restore::RestoreError),
    #[error("cannot restore state: {0}")]
    Snapshot(#[from] crate::fold::snapshot::SnapshotError),
    #[error("gave up committing while stopping: {0}")]
    StopCommit(KafkaError),
    /// A setup the processor refuses to work on (another group's state, an assignment that
    /// splits a tenant's topics): the message says what to change.
    #[error("{0}")]
    Refused(String),
}

/// What a run did, for the log line at the end (and the tests).
#[derive(Debug, Default, Clone)]
pub struct RunSummary {
    pub consumed: u64,
    pub rejected: u64,
    pub alerts: u64,
    pub commits: u64,
    pub aborts: u64,
    /// Producers replaced after a fatal error or a hung commit ([`Pipeline::recover`]).
    pub producers_replaced: u64,
}

/// Shared with the HTTP server and the signal handler.
#[derive(Clone)]
pub struct Handles {
    pub metrics: Arc<Metrics>,
    /// Set to stop: the loop commits, leaves the group and returns.
    pub stop: Arc<AtomicBool>,
    /// Ready once the assigned partitions are restored (`/readyz`).
    pub ready: Arc<AtomicBool>,
    /// How many records had been consumed when the last successful commit started: their
    /// outputs and offsets are committed. After an abort it runs ahead (a rewound record
    /// counts again when it is read again).
    pub committed: Arc<AtomicU64>,
    /// The tenants this instance owns (those of its assigned partitions), once a processor
    /// runs: the API marks the documents of the others, which the instance no longer keeps
    /// current, as not owned.
    pub owned: Arc<RwLock<Option<BTreeSet<String>>>>,
}

impl Handles {
    pub fn new() -> Self {
        Handles {
            metrics: Arc::new(Metrics::new()),
            stop: Arc::new(AtomicBool::new(false)),
            ready: Arc::new(AtomicBool::new(false)),
            committed: Arc::new(AtomicU64::new(0)),
            owned: Arc::new(RwLock::new(None)),
        }
    }

    /// Whether this instance owns `tenant`; None when no processor says (nothing runs yet).
    pub fn owns(&self, tenant: &str) -> Option<bool> {
        let owned = self.owned.read().unwrap_or_else(|p| p.into_inner());
        owned.as_ref().map(|set| set.contains(tenant))
    }

    fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
        self.metrics.ready.set(i64::from(ready));
    }
}

impl Default for Handles {
    fn default() -> Self {
        Handles::new()
    }
}

/// The producer's context: counts deliveries that failed (at-least-once checks them before
/// committing offsets; exactly-once learns of them from the commit).
struct ProducerHooks {
    hooks: ClientHooks,
    failed: AtomicU64,
    brokers: BrokerWatch,
}

impl ClientContext for ProducerHooks {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        ClientHooks::log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.hooks.error(error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        self.brokers.observe(&statistics);
    }
}

impl ProducerContext for ProducerHooks {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            // One line for the first failure of a batch; the commit reports the count.
            if self.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!(topic = m.topic(), error = %e, "a record was not delivered");
            }
        }
    }
}

/// The consumer's context: rebalances go to the pipeline, statistics to the lag gauge.
struct ConsumerHooks {
    hooks: ClientHooks,
    pipeline: Arc<Mutex<Option<Pipeline>>>,
    /// Counts rebalances: records polled before one are not folded (see [`run`]).
    rebalances: Arc<AtomicU64>,
    brokers: BrokerWatch,
}

impl ClientContext for ConsumerHooks {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        ClientHooks::log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.hooks.error(error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        self.hooks.stats(&statistics);
        self.brokers.observe(&statistics);
    }
}

impl ConsumerContext for ConsumerHooks {
    /// The eager protocol's rebalance (see `consumer_config`), with the pipeline's part: on a
    /// revocation, commit and drop the partitions' tenants before they go; on an assignment,
    /// start restoring their state on a thread of its own and pause them until it is done.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::consumer::RebalanceProtocol;
        use rdkafka::types::RDKafkaRespErr;
        self.rebalances.fetch_add(1, Ordering::Relaxed);
        // rdkafka calls this for assignments and revocations only.
        let assign = err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS;
        let mut guard = self.pipeline.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pipeline) = guard.as_mut() {
            if assign {
                pipeline.on_assign(consumer, tpl);
            } else {
                pipeline.on_revoke(consumer, tpl);
            }
        }
        // As rdkafka's own: incremental with a cooperative assignor (which `--kafka-config` can
        // set, though a tenant's topics may then be split: `on_assign` refuses that).
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let done = match (assign, cooperative) {
            (true, true) => consumer.incremental_assign(tpl),
            (true, false) => consumer.assign(tpl),
            (false, true) => consumer.incremental_unassign(tpl),
            (false, false) => consumer.unassign(),
        };
        if let Some(pipeline) = guard.as_mut() {
            let stopping = pipeline.handles.stop.load(Ordering::Relaxed);
            match done {
                // Ready once the partitions are restored and their reading resumed
                // (`finish_restore`), at once for an empty assignment.
                Ok(()) if assign && pipeline.fatal.is_none() && !stopping => {
                    pipeline.pause_restoring(consumer);
                    if pipeline.restoring.is_none() {
                        pipeline.handles.set_ready(true);
                    }
                }
                Ok(()) => {}
                // Nothing would be read while /readyz said ready: stop instead.
                Err(e) => {
                    tracing::error!(error = %e, assign, "librdkafka refused the (un)assignment");
                    pipeline.fatal = Some(e);
                }
            }
        }
        drop(guard);
        self.rebalances.fetch_add(1, Ordering::Relaxed);
    }
}

/// Bytes a dead letter's payload may have: the DLQ topic's `max.message.bytes` less the key, the
/// headers (with room for the one a cut adds) and a record batch's framing.
fn dead_letter_room(max_bytes: usize, key: Option<&[u8]>, headers: &OwnedHeaders) -> usize {
    const FRAMING: usize = 1024;
    let headers: usize = headers
        .iter()
        .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len) + 16)
        .sum();
    let truncation_header = 64;
    max_bytes.saturating_sub(FRAMING + key.map_or(0, <[u8]>::len) + headers + truncation_header)
}

/// How long an assignment waits for an input partition's low watermark, to say whether
/// retention deleted records before they were read: a check, not worth holding the loop.
const RETENTION_CHECK: Duration = Duration::from_secs(2);

/// How a transactional call failed, per KAFKA_NOTES: retry it, abort the transaction, or stop.
enum Failure {
    Retry,
    Abort,
    Fatal,
}

fn classify(e: &KafkaError) -> Failure {
    match e {
        KafkaError::Transaction(r) if r.is_fatal() => Failure::Fatal,
        KafkaError::Transaction(r) if r.txn_requires_abort() => Failure::Abort,
        KafkaError::Transaction(r) if r.is_retriable() => Failure::Retry,
        // A send refused because the transaction already failed (a timed-out record, the
        // coordinator aborting it): abort, and the abort says whether the producer survives.
        KafkaError::MessageProduction(RDKafkaErrorCode::State) => Failure::Abort,
        // A timeout outside a transaction error is worth another try.
        e if e.rdkafka_error_code() == Some(RDKafkaErrorCode::OperationTimedOut) => Failure::Retry,
        _ => Failure::Fatal,
    }
}

/// A revoked partition's engine, kept for the assignment that follows: the eager protocol
/// revokes every partition at each rebalance, and most come straight back. It is taken back
/// only if its state partition still ends where it ended right after the revocation's commit
/// (nothing written to it since, by this instance or another): then a restore would read back
/// exactly this state.
struct Parked {
    engine: Engine,
    positions: Option<BTreeMap<String, i64>>,
    group: Option<String>,
    /// The state partition's high watermark after the revocation's commit.
    end: i64,
}

/// A restore running on a thread of its own while the loop goes on polling. Its partitions are
/// paused until it is done; their reading then resumes where the restored state ends. Inside
/// the rebalance callback a restore would hold the loop's poll for as long as the changelog
/// takes to read, and past `max.poll.interval.ms` librdkafka takes the instance out of the
/// group: the group rebalances, and the instance restores again, without end.
struct Restoring {
    /// The partitions still paused: those read from the changelog, until the thread is done.
    partitions: BTreeSet<i32>,
    /// The group's committed offsets of the assigned input partitions, read in the rebalance
    /// callback; None for a rewind, or when they could not be read then.
    committed: Option<TopicPartitionList>,
    cancel: Arc<AtomicBool>,
    /// The parked engines the thread keeps, sent as soon as it has read their tails: their
    /// partitions resume at once, while the others are read.
    kept: std::sync::mpsc::Receiver<Engines>,
    /// The engines it read from the changelog.
    thread: std::thread::JoinHandle<Result<Engines, RunError>>,
    /// The partitions kept so far, and the tenants installed so far.
    kept_partitions: BTreeSet<i32>,
    tenants: usize,
    started: Instant,
}

/// The elements of `tpl` whose partition number is one of `partitions`.
fn only(tpl: &TopicPartitionList, partitions: &BTreeSet<i32>) -> TopicPartitionList {
    let mut out = TopicPartitionList::new();
    for e in tpl.elements() {
        if partitions.contains(&e.partition()) {
            let _ = out.add_partition_offset(e.topic(), e.partition(), e.offset());
        }
    }
    out
}

/// The group's offsets of two assignments whose restores are merged into one.
fn merged(
    a: Option<TopicPartitionList>,
    b: Option<TopicPartitionList>,
) -> Option<TopicPartitionList> {
    match (a, b) {
        (Some(mut a), Some(b)) => {
            for e in b.elements() {
                if a.find_partition(e.topic(), e.partition()).is_none() {
                    let _ = a.add_partition_offset(e.topic(), e.partition(), e.offset());
                }
            }
            Some(a)
        }
        (a, b) => a.or(b),
    }
}

/// Engines by partition, each with the positions and group its changelog holds beside it (the
/// tenants' records taken out).
type Engines = BTreeMap<i32, (Engine, Restored)>;

/// The restore's thread: a partition parked at the last revocation takes its engine back if
/// nothing was written to its state partition since (sent on `kept` at once); the others are
/// read from the changelog whole.
fn rebuild(
    settings: &Settings,
    hooks: &ClientHooks,
    mut parked: BTreeMap<i32, Parked>,
    partitions: &BTreeSet<i32>,
    kept_tx: std::sync::mpsc::Sender<Engines>,
    cancel: &AtomicBool,
) -> Result<Engines, RunError> {
    let tails: BTreeMap<i32, Option<i64>> =
        (parked.iter()).map(|(&p, k)| (p, Some(k.end))).collect();
    // A tail that cannot be read keeps nothing: the partitions are read whole instead.
    let tails = match read_state_from(settings, hooks, &tails, cancel) {
        Ok(tails) => tails,
        Err(e @ RestoreError::Stopped) => return Err(e.into()),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read what was written since the revocation: restoring from the changelog");
            BTreeMap::new()
        }
    };
    let kept: BTreeSet<i32> = (tails.iter())
        .filter(|(_, tail)| tail.records == 0 && !tail.tail_unknown)
        .map(|(&p, _)| p)
        .collect();
    // The others go before their partitions are read again, not after.
    parked.retain(|p, _| kept.contains(p));
    let kept_engines: Engines = (parked.into_iter())
        .map(|(p, k)| {
            let beside = Restored {
                positions: k.positions,
                group: k.group,
                ..Restored::default()
            };
            (p, (k.engine, beside))
        })
        .collect();
    if !kept_engines.is_empty() {
        let _ = kept_tx.send(kept_engines);
    }
    let rest: BTreeSet<i32> = partitions.difference(&kept).copied().collect();
    let states = read_state(settings, hooks, &rest, cancel)?;
    let mut restored = BTreeMap::new();
    for (partition, mut state) in states {
        if cancel.load(Ordering::Relaxed) {
            return Err(RestoreError::Stopped.into());
        }
        let mut engine = Engine::new(settings.fold.clone()).with_changelog();
        engine.restore(&std::mem::take(&mut state.tenants))?;
        restored.insert(partition, (engine, state));
    }
    Ok(restored)
}

struct Pipeline {
    settings: Settings,
    handles: Handles,
    hooks: ClientHooks,
    /// Threaded: its own thread serves delivery reports, which the transactional calls wait
    /// for (an abort with undelivered records in flight would otherwise never finish).
    producer: Arc<ThreadedProducer<ProducerHooks>>,
    avro: AvroSchemas,
    /// The largest record the DLQ topic takes (its `max.message.bytes`): a refused record's
    /// copy is cut to fit, or its transaction would fail and be redone without end.
    dlq_max_bytes: usize,
    /// The input topics' partition count when the processor started: a record's tenant
    /// belongs on murmur2(tenant) modulo this ([`routing`]).
    input_partitions: usize,
    documents: DocumentWriter,
    engines: BTreeMap<i32, Engine>,
    /// Next offset to commit per (topic, partition).
    offsets: BTreeMap<(String, i32), i64>,
    /// Per assigned partition, the next offset of each input topic that the engine's state has
    /// folded up to: written beside the state in every transaction (see [`POSITIONS_KEY`]) and
    /// read back with it, so that a restore resumes where its state ends.
    positions: BTreeMap<i32, BTreeMap<String, i64>>,
    /// Per restored partition, the consumer group its positions record names (records of
    /// earlier builds name none): whether the state is this group's own when the group has no
    /// committed offsets there ([`Pipeline::check_state_is_ours`]).
    position_groups: BTreeMap<i32, String>,
    /// Assigned partitions whose restored state was checked to be this group's
    /// ([`Pipeline::check_state_is_ours`]) since their assignment: a rewind of them resumes
    /// where their state ends without asking the group coordinator again.
    checked: BTreeSet<i32>,
    /// How many tenants [`Pipeline::publish_owned`] last published.
    owned_published: usize,
    /// Engines of revoked partitions, until the next assignment: kept there when nothing was
    /// written to their state partition meanwhile, instead of restored again.
    parked: BTreeMap<i32, Parked>,
    /// The restore running, if any: its partitions are paused, and records of them dropped.
    restoring: Option<Restoring>,
    in_transaction: bool,
    /// Whether librdkafka holds a transaction that is neither committed nor aborted (open, in
    /// flight, or whose commit failed): what an abort has to end.
    txn_open: bool,
    /// The transaction being committed on its own thread (exactly-once), while the loop goes on
    /// folding: their outputs wait in `backlog` for the next transaction.
    in_flight: Option<InFlight>,
    /// Alerts and DLQ copies of records folded while a commit was in flight.
    backlog: Vec<Output>,
    /// Buffers of [`Pipeline::handle`]: a batch's records decoded, its events by partition.
    decoded: Vec<Option<Result<crate::event::Event, Rejection>>>,
    events: BTreeMap<i32, Vec<crate::event::Event>>,
    /// Tenants whose documents changed since the last round, per partition.
    stale_documents: BTreeMap<i32, BTreeSet<String>>,
    /// The round being written: (partition, tenant).
    documents_due: std::collections::VecDeque<(i32, String)>,
    /// When the last commit started (exactly-once, on the commit thread) or ended (at-least-once,
    /// on this one); the next commit waits for `commit_interval` from then.
    last_commit: Instant,
    last_documents: Instant,
    /// When the writer was last asked to check its documents ([`DocumentWriter::verify`]).
    last_verify: Instant,
    /// How long this loop spent computing the documents of the current round so far.
    round_busy: Duration,
    /// The writer thread's busy time when the current round started.
    writer_busy_at_start: Duration,
    /// How long the loop waited for records (polls that came back empty) since the current
    /// round started: time the documents took from nobody.
    idle: Duration,
    /// Whether the last round started later than `storage_interval` after the one before (the
    /// loop was behind the inputs), for a log line when that changes.
    stretched: bool,
    summary: RunSummary,
    /// Set on an error the pipeline cannot recover from (a fatal producer error, a restore
    /// that failed). Sticky, unless [`Pipeline::recover`] replaces a fenced producer: from
    /// then on nothing is committed (an open transaction is
    /// aborted, so no half-done work becomes visible) and no document is written; the loop
    /// stops and returns it.
    fatal: Option<KafkaError>,
    /// Why the processor refuses to go on when it is not a Kafka error (state in the state
    /// topic that this group did not write, a split assignment); `fatal` is set too, so
    /// nothing is committed.
    refusal: Option<String>,
    /// When the producer was last replaced after a fatal error ([`Pipeline::recover`]).
    recoveries: Vec<Instant>,
    /// When the open transaction began (exactly-once): a fence of a transaction older than the
    /// transaction timeout is the broker's abort of it, one of a younger one another producer's.
    txn_began: Option<Instant>,
    /// Set when a commit hung past [`COMMIT_HANG`]: [`Pipeline::recover`] replaces the
    /// producer, as after a fatal error of its own.
    producer_hung: bool,
}

/// A commit running on its own thread: `send_offsets_to_transaction` and `commit_transaction`
/// wait for the broker (about as long as the commit interval on a loaded machine), and folding
/// the next records meanwhile roughly doubles what one instance keeps up with.
struct InFlight {
    thread: std::thread::JoinHandle<Result<(), KafkaError>>,
    /// Set when the loop stops waiting for it (see [`COMMIT_HANG`]): its retries stop.
    abandoned: Arc<AtomicBool>,
    started: Instant,
    /// When the transaction it commits began.
    began: Option<Instant>,
    /// Records consumed when it started: what it commits.
    consumed: u64,
}

/// An output produced while no transaction could take it (a commit was in flight).
enum Output {
    Alert(ReadyAlert),
    DeadLetter {
        key: Option<Vec<u8>>,
        payload: Option<Vec<u8>>,
        headers: OwnedHeaders,
    },
}

/// An alert as it goes to the alerts topic: keyed by tenant, its CloudEvent as JSON, the
/// CloudEvents attributes as headers.
struct ReadyAlert {
    kind: AlertType,
    subject: String,
    payload: Vec<u8>,
    headers: OwnedHeaders,
}

impl ReadyAlert {
    fn new(alert: Alert) -> Self {
        let mut payload = Vec::with_capacity(768);
        alert.write_json(&mut payload);
        let mut headers = OwnedHeaders::new_with_capacity(6);
        for (key, value) in alert.headers() {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        ReadyAlert {
            kind: alert.kind,
            subject: alert.subject,
            payload,
            headers,
        }
    }
}

/// Waits until every record sent is delivered, its report served by the producer's polling
/// thread, looking every millisecond; an `OperationTimedOut` flush error after `timeout`.
///
/// rdkafka's `flush`, which its `commit_transaction` calls first, waits in polls that always
/// run a whole 100 ms: with a record in flight, every commit took 100 ms more than the broker
/// needed, and a record's alert became readable a commit later than it could. With nothing in
/// flight, that flush returns at once.
fn await_deliveries(
    producer: &ThreadedProducer<ProducerHooks>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let deadline = Instant::now() + timeout;
    while producer.in_flight_count() > 0 {
        if Instant::now() >= deadline {
            return Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Gives the producer the bootstrap servers again if librdkafka has cut it off (see
/// [`BrokerWatch`]).
fn reconnect_producer(producer: &ThreadedProducer<ProducerHooks>, metrics: &Metrics) {
    (producer.context().brokers).reconnect(producer.client(), metrics);
}

/// The same for the consumer.
fn reconnect_consumer(consumer: &BaseConsumer<ConsumerHooks>, metrics: &Metrics) {
    (consumer.context().brokers).reconnect(consumer.client(), metrics);
}

/// Calls a transactional producer call until it succeeds, retrying with `backoff` what
/// `classify` calls retriable (each retry counted as a `retried` commit).
fn retry(
    producer: &ThreadedProducer<ProducerHooks>,
    metrics: &Metrics,
    what: &str,
    backoff: &mut Backoff,
    mut call: impl FnMut(&ThreadedProducer<ProducerHooks>) -> Result<(), KafkaError>,
) -> Result<(), KafkaError> {
    loop {
        match call(producer) {
            Ok(()) => return Ok(()),
            Err(e) if matches!(classify(&e), Failure::Retry) => {
                metrics.commits.with_label_values(&["retried"]).inc();
                if !backoff.wait(what, &e) {
                    return Err(e);
                }
                reconnect_producer(producer, metrics);
            }
            Err(e) => return Err(e),
        }
    }
}

impl Pipeline {
    fn exactly_once(&self) -> bool {
        self.settings.guarantee == Guarantee::ExactlyOnce
    }

    fn tenants_owned(&self) -> usize {
        self.engines.values().map(Engine::len).sum()
    }

    /// Publishes the tenants owned (the metric and [`Handles::owned`]): after a restore or a
    /// revocation, and after a commit that brought new tenants. A revocation that leaves
    /// nothing (the eager protocol's, at every rebalance) publishes "unknown" until the
    /// assignment that follows is restored, rather than "owned by none" for that moment.
    fn publish_owned(&mut self, revoked: bool) {
        let owned: BTreeSet<String> = (self.engines.values())
            .flat_map(|e| e.tenants().into_iter().map(str::to_owned))
            .collect();
        self.owned_published = owned.len();
        self.handles.metrics.tenants.set(owned.len() as i64);
        let known = !(revoked && self.engines.is_empty());
        *self
            .handles
            .owned
            .write()
            .unwrap_or_else(|p| p.into_inner()) = known.then_some(owned);
    }

    /// Opens a transaction if none is open (exactly-once only).
    fn begin(&mut self) -> Result<(), KafkaError> {
        if self.in_transaction || !self.exactly_once() {
            self.in_transaction = true;
            return Ok(());
        }
        let mut backoff = Backoff::new(&self.handles.stop);
        self.retry("begin transaction", &mut backoff, |p| p.begin_transaction())?;
        self.in_transaction = true;
        self.txn_open = true;
        self.txn_began = Some(Instant::now());
        Ok(())
    }

    fn retry(
        &self,
        what: &str,
        backoff: &mut Backoff,
        call: impl FnMut(&ThreadedProducer<ProducerHooks>) -> Result<(), KafkaError>,
    ) -> Result<(), KafkaError> {
        retry(&self.producer, &self.handles.metrics, what, backoff, call)
    }

    /// Produces one record, waiting for room in the queue instead of failing on QueueFull.
    fn send(&self, mut record: BaseRecord<'_, [u8], [u8]>) -> Result<(), KafkaError> {
        let started = Instant::now();
        let mut said = started;
        loop {
            // The queue drains as the broker takes records or they time out: say so if it is
            // slow to, rather than wait in silence.
            if said.elapsed() > Duration::from_secs(10) {
                said = Instant::now();
                tracing::warn!(
                    waited_s = started.elapsed().as_secs(),
                    "the producer's queue is full: waiting for the broker to take records"
                );
            }
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((e @ KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if self.handles.stop.load(Ordering::Relaxed)
                        && started.elapsed() > Duration::from_secs(30) =>
                {
                    return Err(e);
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Folds records polled together, in the order polled: each partition's events go to its
    /// engine as one batch (a tenant's events in order, see [`Engine::apply_batch`]), refused
    /// records to the DLQ. The records are decoded first, and the partition's tenants folded,
    /// on every core when there are enough.
    fn handle(&mut self, msgs: &[BorrowedMessage<'_>]) -> Result<(), KafkaError> {
        if self.in_flight.is_none() {
            self.begin()?;
        }
        let decode = |msg: &BorrowedMessage<'_>| {
            let topic = self.settings.topics.input(msg.topic())?;
            Some(match msg.payload() {
                Some(bytes) => {
                    let (key, partition) = (msg.key(), msg.partition());
                    let n = self.input_partitions;
                    codec::decode(topic, bytes, &self.avro)
                        .and_then(|e| routing::check(e.tenant(), key, partition, n).map(|()| e))
                        .map_err(|r| routing::attribute(r, key, partition, n))
                }
                None => Err(Rejection::new(
                    RejectKind::Malformed,
                    "the record has no value (a tombstone); inputs carry one event per record",
                )),
            })
        };
        // The buffers are kept from batch to batch: growing them anew costs page faults.
        let mut decoded = std::mem::take(&mut self.decoded);
        if msgs.len() >= PARALLEL_BATCH {
            msgs.par_iter().map(decode).collect_into_vec(&mut decoded);
        } else {
            decoded.clear();
            decoded.extend(msgs.iter().map(decode));
        }
        let mut events = std::mem::take(&mut self.events);
        // The next offset per (topic, partition) and the records per topic, gathered over the
        // batch and written once: per record, the map insert allocated the topic's name and the
        // metric hashed its label.
        let mut next: SmallVec<[(&str, i32, i64); 18]> = SmallVec::new();
        let mut consumed: SmallVec<[(&str, u64); 3]> = SmallVec::new();
        for (msg, decoded) in msgs.iter().zip(decoded.drain(..)) {
            let Some(decoded) = decoded else {
                tracing::warn!(
                    topic = msg.topic(),
                    "a record of a topic that is not an input"
                );
                continue;
            };
            let partition = msg.partition();
            match consumed.iter_mut().find(|c| c.0 == msg.topic()) {
                Some(c) => c.1 += 1,
                None => consumed.push((msg.topic(), 1)),
            }
            self.summary.consumed += 1;
            // Every assigned partition is restored before its records are read; one without an
            // engine had its restore fail or stopped, and folding it from nothing would commit
            // an empty state over the real one.
            let Some(engine) = self.engines.get_mut(&partition) else {
                if !self.handles.stop.load(Ordering::Relaxed) {
                    tracing::error!(
                        partition,
                        "a record of a partition whose state was not restored"
                    );
                    self.fatal = Some(KafkaError::Canceled);
                }
                self.note_consumed(&next, &consumed);
                return Ok(());
            };
            match decoded {
                Ok(event) => events.entry(partition).or_default().push(event),
                Err(rejection) => {
                    engine.record_rejection(&rejection);
                    if let Err(e) = self.dead_letter(msg, &rejection) {
                        // The caller aborts (clearing the offsets) or stops; the consumed
                        // counts still tell what was read.
                        self.note_consumed(&next, &consumed);
                        return Err(e);
                    }
                }
            }
            match next
                .iter_mut()
                .find(|n| n.1 == partition && n.0 == msg.topic())
            {
                Some(n) => n.2 = msg.offset() + 1,
                None => next.push((msg.topic(), partition, msg.offset() + 1)),
            }
        }
        self.note_consumed(&next, &consumed);
        self.decoded = decoded;
        // The partitions' events folded together, in partition order; their tenants on every
        // core when there are enough events.
        let total: usize = events.values().map(Vec::len).sum();
        let mut batches: Vec<(&mut Engine, &[Event])> = (self.engines.iter_mut())
            .filter_map(|(partition, engine)| {
                let events = events.get(partition).filter(|e| !e.is_empty())?;
                Some((engine, events.as_slice()))
            })
            .collect();
        let folded: Vec<Vec<Alert>> = if total >= PARALLEL_BATCH {
            fold::apply_batches_parallel(&mut batches)
        } else {
            (batches.iter_mut())
                .map(|(engine, events)| {
                    let mut alerts = Vec::new();
                    engine.apply_batch(events, &mut alerts);
                    alerts
                })
                .collect()
        };
        drop(batches);
        for events in events.values_mut() {
            events.clear();
        }
        self.events = events;
        // The alerts' JSON and headers are made on every core when there are enough: on the
        // loop they were most of sending the alerts, a fifth of its samples, while rayon's
        // workers waited.
        let alerts: Vec<Alert> = folded.into_iter().flatten().collect();
        let ready: Vec<ReadyAlert> = if alerts.len() >= PARALLEL_ALERTS {
            alerts.into_par_iter().map(ReadyAlert::new).collect()
        } else {
            alerts.into_iter().map(ReadyAlert::new).collect()
        };
        for alert in ready {
            self.publish(alert)?;
        }
        Ok(())
    }

    /// Records what a batch consumed: the next offset per (topic, partition), the count per topic.
    fn note_consumed(&mut self, next: &[(&str, i32, i64)], consumed: &[(&str, u64)]) {
        for &(topic, partition, offset) in next {
            self.offsets.insert((topic.to_owned(), partition), offset);
            let at = self.positions.entry(partition).or_default();
            match at.get_mut(topic) {
                Some(o) => *o = offset,
                None => {
                    at.insert(topic.to_owned(), offset);
                }
            }
        }
        for &(topic, n) in consumed {
            self.handles
                .metrics
                .consumed
                .with_label_values(&[topic])
                .inc_by(n);
        }
    }

    fn publish(&mut self, alert: ReadyAlert) -> Result<(), KafkaError> {
        self.handles
            .metrics
            .alerts
            .with_label_values(&[alert.kind.as_str()])
            .inc();
        self.summary.alerts += 1;
        if self.in_flight.is_some() {
            self.backlog.push(Output::Alert(alert));
        } else {
            self.send_alert(alert)?;
        }
        Ok(())
    }

    fn send_alert(&self, alert: ReadyAlert) -> Result<(), KafkaError> {
        self.send(
            BaseRecord::to(&self.settings.topics.alerts)
                .key(alert.subject.as_bytes())
                .payload(&alert.payload[..])
                .headers(alert.headers),
        )
    }

    fn dead_letter(&mut self, msg: &BorrowedMessage<'_>, r: &Rejection) -> Result<(), KafkaError> {
        let partition = msg.partition().to_string();
        let offset = msg.offset().to_string();
        let mut headers = OwnedHeaders::new_with_capacity(5);
        for (key, value) in [
            ("error.kind", r.kind.as_str()),
            ("error.message", r.message.as_str()),
            ("source.topic", msg.topic()),
            ("source.partition", partition.as_str()),
            ("source.offset", offset.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        // The original headers follow, so nothing the producer attached is lost.
        if let Some(original) = msg.headers() {
            for h in original.iter() {
                headers = headers.insert(h);
            }
        }
        // A copy larger than the DLQ topic takes would fail its transaction, which would be
        // redone, fail again, and stop every partition: it goes cut to fit, saying so. The
        // whole record stays in its topic at source.offset.
        let mut payload = msg.payload();
        let original_size;
        if let Some(p) = payload {
            let room = dead_letter_room(self.dlq_max_bytes, msg.key(), &headers);
            if p.len() > room {
                original_size = p.len().to_string();
                headers = headers.insert(Header {
                    key: "error.payload.truncated_from",
                    value: Some(original_size.as_str()),
                });
                payload = Some(&p[..room]);
                tracing::warn!(
                    topic = msg.topic(),
                    partition = msg.partition(),
                    offset = msg.offset(),
                    bytes = p.len(),
                    dlq_max_bytes = self.dlq_max_bytes,
                    "a refused record is larger than the DLQ topic takes: its first {room} bytes go to the DLQ"
                );
            }
        }
        if self.in_flight.is_some() {
            self.backlog.push(Output::DeadLetter {
                key: msg.key().map(<[u8]>::to_vec),
                payload: payload.map(<[u8]>::to_vec),
                headers,
            });
        } else {
            self.send_dead_letter(msg.key(), payload, headers)?;
        }
        self.handles
            .metrics
            .rejected
            .with_label_values(&[r.kind.as_str()])
            .inc();
        self.summary.rejected += 1;
        tracing::debug!(
            topic = msg.topic(),
            partition = msg.partition(),
            offset = msg.offset(),
            kind = r.kind.as_str(),
            "refused: {}",
            r.message
        );
        Ok(())
    }

    fn send_dead_letter(
        &self,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: OwnedHeaders,
    ) -> Result<(), KafkaError> {
        let mut record = BaseRecord::to(&self.settings.topics.dlq).headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = payload {
            record = record.payload(p);
        }
        self.send(record)
    }

    /// Writes the changed tenants' state records into the open transaction.
    fn write_state(&mut self) -> Result<(), KafkaError> {
        let mut changed = Vec::new();
        for (&partition, engine) in &mut self.engines {
            let changes = engine.take_changes();
            if !changes.records.is_empty() {
                changed.push((partition, changes));
            }
        }
        for (partition, changes) in changed {
            for r in &changes.records {
                let mut record = BaseRecord::to(&self.settings.topics.state)
                    .partition(partition)
                    .key(r.key.as_bytes());
                if let Some(v) = &r.value {
                    record = record.payload(&v[..]);
                }
                self.send(record)?;
            }
            self.handles
                .metrics
                .state_records
                .inc_by(changes.records.len() as u64);
            self.stale_documents
                .entry(partition)
                .or_default()
                .extend(changes.tenants);
        }
        Ok(())
    }

    /// For each partition read since the last commit, where its state now stands in the inputs
    /// (a [`POSITIONS_KEY`] record). Exactly-once: in the transaction with the state. At-least-
    /// once: only once the state records and the outputs are delivered, so that a crash before
    /// the offsets are committed resumes after outputs that did reach the broker, never after
    /// ones that did not.
    fn write_positions(&mut self) -> Result<(), KafkaError> {
        let advanced: BTreeSet<i32> = self.offsets.keys().map(|(_, p)| *p).collect();
        for partition in advanced {
            let Some(next) = self.positions.get(&partition) else {
                continue;
            };
            let value = serde_json::to_vec(&Positions {
                v: 1,
                next: next.clone(),
                group: Some(self.settings.group.clone()),
            })
            .expect("positions serialize");
            self.send(
                BaseRecord::to(&self.settings.topics.state)
                    .partition(partition)
                    .key(POSITIONS_KEY.as_bytes())
                    .payload(&value[..]),
            )?;
            // As a restore would read it back (an abort restores what was committed instead).
            (self.position_groups).insert(partition, self.settings.group.clone());
        }
        Ok(())
    }

    fn offsets_list(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in &self.offsets {
            // Offsets come from records this consumer read; adding them cannot fail.
            let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
        }
        tpl
    }

    /// Closes the open transaction: state records, offsets, commit. On an abortable error
    /// the transaction is aborted and everything rewound to the last commit.
    fn commit(&mut self, consumer: &BaseConsumer<ConsumerHooks>) {
        self.settle(consumer, true);
        // Exactly-once commits on the commit thread here too, and `settle` waits for it: that
        // wait is bounded (a call inside librdkafka can hang, see COMMIT_HANG), a call on this
        // thread would not be. What `settle` collected meanwhile opens one more transaction.
        while self.exactly_once() && self.fatal.is_none() && self.in_transaction {
            if !self.start_commit(consumer) {
                break;
            }
            self.settle(consumer, true);
        }
        if self.fatal.is_some() {
            self.abandon();
            return;
        }
        if !self.in_transaction {
            self.last_commit = Instant::now();
            return;
        }
        self.commit_here(consumer);
    }

    /// Commits on this thread: at-least-once, or exactly-once when no commit thread could be
    /// had.
    fn commit_here(&mut self, consumer: &BaseConsumer<ConsumerHooks>) {
        let started = Instant::now();
        let result = match self.settings.guarantee {
            Guarantee::ExactlyOnce => self.commit_transaction(consumer),
            Guarantee::AtLeastOnce => self.commit_offsets(consumer),
        };
        match result {
            Ok(()) => {
                self.in_transaction = false;
                self.txn_open = false;
                self.offsets.clear();
                self.committed(started, self.summary.consumed);
            }
            Err(e) => self.commit_failed(consumer, e),
        }
        // Here (at-least-once, or a commit that must finish now) the interval runs from the end
        // of the commit: a commit slower than the interval must not leave the next transaction
        // with a single record.
        self.last_commit = Instant::now();
    }

    /// Starts committing the open transaction on its own thread (exactly-once), unless a
    /// commit is in flight already; the loop folds on, and [`Pipeline::settle`] collects the
    /// outcome. Returns false only while a commit is in flight (nothing started).
    fn commit_in_background(&mut self, consumer: &BaseConsumer<ConsumerHooks>) -> bool {
        if !self.exactly_once() || self.fatal.is_some() {
            self.commit(consumer);
            return true;
        }
        if self.in_flight.is_some() {
            return false;
        }
        if !self.in_transaction {
            self.last_commit = Instant::now();
            return true;
        }
        if !self.start_commit(consumer) {
            // No thread to be had: commit on this one.
            self.commit_here(consumer);
        }
        true
    }

    /// Starts committing the open transaction on the commit thread. False when no thread
    /// could be had (nothing started).
    fn start_commit(&mut self, consumer: &BaseConsumer<ConsumerHooks>) -> bool {
        let prepared = self
            .write_state()
            .and_then(|()| self.write_positions())
            .and_then(|()| {
                consumer
                    .group_metadata()
                    .ok_or(KafkaError::MessageProduction(RDKafkaErrorCode::State))
            });
        let metadata = match prepared {
            Ok(m) => m,
            Err(e) => {
                self.commit_failed(consumer, e);
                return true;
            }
        };
        let offsets = self.offsets_list();
        let producer = self.producer.clone();
        let handles = self.handles.clone();
        let abandoned = Arc::new(AtomicBool::new(false));
        let given_up = abandoned.clone();
        let thread = std::thread::Builder::new()
            .name("feedback-commit".into())
            .spawn(move || {
                let mut backoff = Backoff::new(&handles.stop).unless(given_up);
                if offsets.count() > 0 {
                    retry(
                        &producer,
                        &handles.metrics,
                        "send offsets to the transaction",
                        &mut backoff,
                        |p| p.send_offsets_to_transaction(&offsets, &metadata, CALL_TIMEOUT),
                    )?;
                }
                retry(
                    &producer,
                    &handles.metrics,
                    "commit transaction",
                    &mut backoff,
                    |p| {
                        await_deliveries(p, CALL_TIMEOUT)?;
                        p.commit_transaction(CALL_TIMEOUT)
                    },
                )
            });
        match thread {
            Ok(thread) => {
                self.in_transaction = false;
                self.offsets.clear();
                self.last_commit = Instant::now();
                self.in_flight = Some(InFlight {
                    thread,
                    abandoned,
                    started: self.last_commit,
                    began: self.txn_began.take(),
                    consumed: self.summary.consumed,
                });
                true
            }
            Err(_) => false,
        }
    }

    /// Collects the commit in flight once it has finished (`wait`: waits for it), then opens
    /// the next transaction with what the loop folded meanwhile.
    fn settle(&mut self, consumer: &BaseConsumer<ConsumerHooks>, wait: bool) {
        let Some(in_flight) = self.in_flight.take() else {
            return;
        };
        // A commit that hangs (the coordinator away) would let the loop fold on without limit,
        // all of it to be rewound if the transaction then aborts: past a bound, wait for it.
        let stuck = in_flight.started.elapsed() > MAX_IN_FLIGHT || self.backlog.len() > MAX_BACKLOG;
        if !wait && !stuck && !in_flight.thread.is_finished() {
            self.in_flight = Some(in_flight);
            return;
        }
        let (started, began, consumed) = (in_flight.started, in_flight.began, in_flight.consumed);
        let result = match self.join_commit(in_flight) {
            Ok(result) => result,
            Err(hung) => {
                self.commit_hung(hung);
                return;
            }
        };
        match result {
            Ok(()) => {
                self.txn_open = false;
                self.committed(started, consumed);
                let mut backlog = std::mem::take(&mut self.backlog);
                // After a fatal error nothing more is committed: `commit` abandons the rest.
                if self.fatal.is_some() || (self.offsets.is_empty() && backlog.is_empty()) {
                    return;
                }
                let sent = self.begin().and_then(|()| {
                    backlog.drain(..).try_for_each(|output| match output {
                        Output::Alert(alert) => self.send_alert(alert),
                        Output::DeadLetter {
                            key,
                            payload,
                            headers,
                        } => self.send_dead_letter(key.as_deref(), payload.as_deref(), headers),
                    })
                });
                // The buffer is kept: growing one anew per transaction costs page faults.
                backlog.clear();
                if self.backlog.is_empty() {
                    self.backlog = backlog;
                }
                if let Err(e) = sent {
                    self.commit_failed(consumer, e);
                }
            }
            Err(e) => {
                // The failed transaction is older than the open one: its age tells `recover`
                // whether the broker may have timed it out.
                self.txn_began = began.or(self.txn_began);
                self.commit_failed(consumer, e);
            }
        }
    }

    /// Waits for the commit thread until [`COMMIT_HANG`] after the commit started: its result,
    /// or the commit back if it still runs. A producer cut off from every broker meanwhile is
    /// given the bootstrap servers again (see [`BrokerWatch`]).
    fn join_commit(&self, in_flight: InFlight) -> Result<Result<(), KafkaError>, InFlight> {
        let deadline = in_flight.started + COMMIT_HANG;
        while !in_flight.thread.is_finished() {
            if Instant::now() >= deadline {
                return Err(in_flight);
            }
            reconnect_producer(&self.producer, &self.handles.metrics);
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(in_flight.thread.join().unwrap_or(Err(KafkaError::Canceled)))
    }

    /// A commit that has not returned within [`COMMIT_HANG`]: it is left to itself (its
    /// thread holds the producer it was given, and stops retrying), and the producer is to be
    /// replaced ([`Pipeline::recover`]), as after a fence.
    fn commit_hung(&mut self, hung: InFlight) {
        tracing::error!(
            waited = ?hung.started.elapsed(),
            "the commit has not returned: librdkafka can wait without end for a coordinator \
             (librdkafka issues 5456, 5511); replacing the producer"
        );
        hung.abandoned.store(true, Ordering::Relaxed);
        self.producer_hung = true;
        self.txn_began = hung.began.or(self.txn_began);
        self.fatal = Some(KafkaError::MessageProduction(
            RDKafkaErrorCode::OperationTimedOut,
        ));
    }

    /// Bookkeeping of a successful commit that started at `started`, when `consumed` records
    /// had been consumed.
    fn committed(&mut self, started: Instant, consumed: u64) {
        self.summary.commits += 1;
        self.handles.committed.store(consumed, Ordering::Relaxed);
        self.handles
            .metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        self.handles
            .metrics
            .commits
            .with_label_values(&["committed"])
            .inc();
        // Not while partitions are being restored: their tenants are not installed yet.
        if self.tenants_owned() != self.owned_published && self.restoring.is_none() {
            self.publish_owned(false);
        }
        self.report_undelivered();
    }

    /// Logs (once per transaction) how many of its records were not delivered.
    fn report_undelivered(&self) {
        let failed = self.producer.context().failed.swap(0, Ordering::Relaxed);
        if failed > 0 {
            tracing::warn!(
                records = failed,
                "records not delivered in this transaction (it was redone)"
            );
        }
    }

    /// A commit (or the sends of the transaction) failed: stop on a fatal error, otherwise
    /// abort and rewind to the last commit.
    fn commit_failed(&mut self, consumer: &BaseConsumer<ConsumerHooks>, e: KafkaError) {
        match classify(&e) {
            Failure::Fatal => {
                tracing::error!(error = %e, "fatal error while committing");
                self.fatal = Some(e);
            }
            _ => {
                tracing::warn!(error = %e, "commit failed: aborting and rewinding to the last commit");
                self.abort_and_rewind(consumer);
            }
        }
        self.report_undelivered();
    }

    fn commit_transaction(
        &mut self,
        consumer: &BaseConsumer<ConsumerHooks>,
    ) -> Result<(), KafkaError> {
        self.write_state()?;
        self.write_positions()?;
        let offsets = self.offsets_list();
        // Present once the consumer has joined the group, which it has when it holds offsets.
        let Some(metadata) = consumer.group_metadata() else {
            return Err(KafkaError::MessageProduction(RDKafkaErrorCode::State));
        };
        let mut backoff = Backoff::new(&self.handles.stop);
        if offsets.count() > 0 {
            self.retry("send offsets to the transaction", &mut backoff, |p| {
                p.send_offsets_to_transaction(&offsets, &metadata, CALL_TIMEOUT)
            })?;
        }
        self.retry("commit transaction", &mut backoff, |p| {
            await_deliveries(p, CALL_TIMEOUT)?;
            p.commit_transaction(CALL_TIMEOUT)
        })
    }

    fn commit_offsets(&mut self, consumer: &BaseConsumer<ConsumerHooks>) -> Result<(), KafkaError> {
        self.write_state()?;
        let mut backoff = Backoff::new(&self.handles.stop);
        // Everything delivered before the positions, and the positions before the offsets.
        self.delivered(&mut backoff)?;
        self.write_positions()?;
        self.delivered(&mut backoff)?;
        let offsets = self.offsets_list();
        if offsets.count() > 0 {
            // A commit that keeps failing (the assignment was lost, say) is redone from the
            // last commit rather than retried forever without polling.
            while let Err(e) = consumer.commit(&offsets, CommitMode::Sync) {
                if backoff.tries >= 5 || !backoff.wait("commit offsets", &e) {
                    return Err(KafkaError::MessageProduction(RDKafkaErrorCode::State));
                }
            }
        }
        Ok(())
    }

    /// At-least-once: waits until everything produced is delivered; an error if something was
    /// not (the batch is then redone rather than committed past).
    fn delivered(&mut self, backoff: &mut Backoff) -> Result<(), KafkaError> {
        while let Err(e) = await_deliveries(&self.producer, CALL_TIMEOUT) {
            if !backoff.wait("flush", &e) {
                return Err(e);
            }
        }
        let failed = self.producer.context().failed.swap(0, Ordering::Relaxed);
        if failed > 0 {
            return Err(KafkaError::MessageProduction(RDKafkaErrorCode::State));
        }
        Ok(())
    }

    /// After a fatal error: abort the open transaction if the producer still can, once, and
    /// forget what it held. Nothing of it was or will be committed.
    fn abandon(&mut self) {
        if self.exactly_once() && self.txn_open {
            if let Err(e) = self.producer.abort_transaction(CALL_TIMEOUT) {
                tracing::warn!(error = %e, "could not abort the open transaction; the broker will time it out");
            }
        }
        self.in_transaction = false;
        self.txn_open = false;
        self.offsets.clear();
        self.backlog.clear();
        self.documents.discard();
    }

    /// After a fatal producer error: a new producer in place of the old one, and back to the
    /// last commit, as after an abort. A broker away for longer than the transaction timeout
    /// aborts the open transaction and fences its producer (`_FENCED`, or `INVALID_TXN_STATE`
    /// on the commit); the new producer's `init_transactions` takes the next epoch. False when
    /// this cannot be done or keeps happening (another instance with the same `--instance-id`
    /// fences this one each time): then the processor stops.
    fn recover(&mut self, consumer: &BaseConsumer<ConsumerHooks>) -> bool {
        let Some(error) = self.fatal.clone() else {
            return true;
        };
        let from_producer = matches!(error, KafkaError::Transaction(_))
            || self.producer.client().fatal_error().is_some()
            || self.producer_hung;
        if self.refusal.is_some() || !from_producer || self.handles.stop.load(Ordering::Relaxed) {
            return false;
        }
        // Only a transaction the broker may have timed out: a younger one was fenced by another
        // producer with this transactional id (a second instance with the same --instance-id),
        // which replacing ours would fence back in turn.
        let began = (self.in_flight.as_ref())
            .and_then(|f| f.began)
            .or(self.txn_began);
        let age = began.map(|b| b.elapsed());
        // A hung producer is replaced whatever the age (its transaction may be younger than a
        // long transaction timeout); a fence is another producer's only within the timeout.
        if !self.producer_hung && age.is_none_or(|a| a < self.settings.transaction_timeout()) {
            tracing::error!(
                error = %error,
                transaction_age = ?age,
                "the producer failed fatally within the transaction timeout: another instance \
                 with the same --instance-id? Stopping"
            );
            return false;
        }
        let now = Instant::now();
        self.recoveries
            .retain(|t| now.duration_since(*t) < RECOVERY_WINDOW);
        if self.recoveries.len() >= MAX_RECOVERIES {
            tracing::error!(
                error = %error,
                replaced = MAX_RECOVERIES,
                window = ?RECOVERY_WINDOW,
                "the producer failed fatally again after being replaced as often as allowed \
                 in the window: stopping"
            );
            return false;
        }
        let was_ready = self.handles.ready.load(Ordering::Relaxed);
        self.handles.set_ready(false);
        self.recoveries.push(now);
        tracing::warn!(
            error = %error,
            "the producer failed fatally (a broker away for longer than the transaction \
             timeout aborts the transaction and fences its producer): replacing it and \
             rewinding to the last commit"
        );
        self.drop_uncommitted();
        self.forget_transaction();
        self.report_undelivered();
        match new_producer(&self.settings, &self.hooks, &self.handles.stop) {
            Ok(producer) => {
                self.producer = Arc::new(producer);
                self.producer_hung = false;
                self.summary.producers_replaced += 1;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot replace the producer");
                self.fatal = Some(e);
                return false;
            }
        }
        self.fatal = None;
        self.rewind(consumer);
        // With partitions to restore, ready again once they are (`finish_restore`).
        if self.fatal.is_none() && self.restoring.is_none() {
            self.handles.set_ready(was_ready);
        }
        self.fatal.is_none()
    }

    /// Before a rewind: waits for a commit in flight (counting it if it succeeded; the rewind
    /// goes back to the last commit whatever it did), and drops what waits for the next
    /// transaction. Documents computed from what is rewound are not written; the restore marks
    /// every restored tenant's documents for rewriting.
    fn drop_uncommitted(&mut self) {
        if let Some(in_flight) = self.in_flight.take() {
            let (started, consumed) = (in_flight.started, in_flight.consumed);
            match self.join_commit(in_flight) {
                Ok(Ok(())) => {
                    self.txn_open = self.in_transaction;
                    self.committed(started, consumed);
                }
                Ok(Err(_)) => {}
                Err(hung) => self.commit_hung(hung),
            }
        }
        self.backlog.clear();
        self.documents.discard();
        self.summary.aborts += 1;
        self.handles
            .metrics
            .commits
            .with_label_values(&["aborted"])
            .inc();
    }

    /// No transaction open any more, and no offsets waiting for one.
    fn forget_transaction(&mut self) {
        self.in_transaction = false;
        self.txn_open = false;
        self.txn_began = None;
        self.offsets.clear();
    }

    fn abort_and_rewind(&mut self, consumer: &BaseConsumer<ConsumerHooks>) {
        if self.abort() {
            self.rewind(consumer);
        }
    }

    /// Drops what waits for the next transaction and aborts the open one: true when done, false
    /// when the producer is hung or failed (`fatal` set; the loop replaces it and rewinds).
    fn abort(&mut self) -> bool {
        self.drop_uncommitted();
        if self.producer_hung {
            // The loop replaces the producer and rewinds (`recover`).
            return false;
        }
        if self.exactly_once() && self.txn_open {
            let mut backoff = Backoff::new(&self.handles.stop);
            let started = Instant::now();
            loop {
                match self.producer.abort_transaction(CALL_TIMEOUT) {
                    Ok(()) => break,
                    Err(e) => match classify(&e) {
                        Failure::Fatal => {
                            self.fatal = Some(e);
                            return false;
                        }
                        // An abort that keeps failing is a producer stuck like a hung commit.
                        _ if started.elapsed() > COMMIT_HANG => {
                            tracing::error!(error = %e, "the abort keeps failing: replacing the producer");
                            self.producer_hung = true;
                            self.fatal = Some(e);
                            return false;
                        }
                        _ if backoff.wait("abort transaction", &e) => {
                            reconnect_producer(&self.producer, &self.handles.metrics);
                        }
                        _ => {
                            self.fatal = Some(e);
                            return false;
                        }
                    },
                }
            }
        }
        self.forget_transaction();
        true
    }

    /// Back to the last commit: the assigned partitions' engines, which hold what was folded
    /// since, are dropped and restored from the changelog, and their reading resumes where the
    /// restored state ends (the committed offsets), once the restore is done.
    fn rewind(&mut self, consumer: &BaseConsumer<ConsumerHooks>) {
        // A restore running goes on in the new one (`start_restore`).
        let partitions: BTreeSet<i32> = self.engines.keys().copied().collect();
        for p in &partitions {
            self.engines.remove(p);
            self.positions.remove(p);
            self.position_groups.remove(p);
            self.stale_documents.remove(p);
        }
        tracing::info!(partitions = ?partitions, "rewinding to the last commit: restoring the partitions' state");
        self.start_restore(partitions, None);
        self.pause_restoring(consumer);
    }

    /// The input topics' partitions numbered `partitions`.
    fn input_list(&self, partitions: &BTreeSet<i32>) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for topic in self.settings.topics.inputs() {
            for &p in partitions {
                tpl.add_partition(topic, p);
            }
        }
        tpl
    }

    /// Starts restoring `partitions` on a thread of its own ([`Restoring`]); the caller pauses
    /// their reading ([`Pipeline::pause_restoring`]) once they are assigned. A restore still
    /// running is given up, and its partitions are restored again with these.
    fn start_restore(
        &mut self,
        mut partitions: BTreeSet<i32>,
        mut committed: Option<TopicPartitionList>,
    ) {
        if let Some((given_up, offsets)) = self.cancel_restore() {
            partitions.extend(given_up);
            committed = merged(committed, offsets);
        }
        if partitions.is_empty() {
            return;
        }
        self.handles.set_ready(false);
        let mut parked = std::mem::take(&mut self.parked);
        parked.retain(|p, _| partitions.contains(p));
        let cancel = Arc::new(AtomicBool::new(false));
        let (settings, hooks) = (self.settings.clone(), self.hooks.clone());
        let (flag, set) = (cancel.clone(), partitions.clone());
        let (kept_tx, kept) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("feedback-restore".into())
            .spawn(move || rebuild(&settings, &hooks, parked, &set, kept_tx, &flag));
        match thread {
            Ok(thread) => {
                self.restoring = Some(Restoring {
                    partitions,
                    committed,
                    cancel,
                    kept,
                    thread,
                    kept_partitions: BTreeSet::new(),
                    tenants: 0,
                    started: Instant::now(),
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start the restore's thread");
                self.fatal = Some(KafkaError::Canceled);
            }
        }
    }

    /// Stops fetching the partitions being restored. What was fetched of them before is dropped
    /// by the loop, and their reading resumes where their restored state ends.
    fn pause_restoring(&self, consumer: &BaseConsumer<ConsumerHooks>) {
        if let Some(r) = &self.restoring {
            if let Err(e) = consumer.pause(&self.input_list(&r.partitions)) {
                // Their records are dropped until the restore is done all the same.
                tracing::warn!(error = %e, "cannot pause the partitions being restored");
            }
        }
    }

    /// Whether a record of `partition` is to be dropped unfolded: its partition is being
    /// restored, and its reading resumes where the restored state ends.
    fn restoring(&self, partition: i32) -> bool {
        (self.restoring.as_ref()).is_some_and(|r| r.partitions.contains(&partition))
    }

    /// Gives up the restore running, if any: the partitions it was still restoring, and the
    /// group's offsets read at their assignment (only theirs: the partitions whose engines it
    /// already sent fold on, and a rewind of those resumes them where their state ends, not at
    /// offsets that their commits since have left behind). Its thread is not waited for (it
    /// can be inside a broker call for seconds, and this runs in the rebalance callback too):
    /// it stops at its next look at the flag, and what it read is dropped with it.
    fn cancel_restore(&mut self) -> Option<(BTreeSet<i32>, Option<TopicPartitionList>)> {
        let r = self.restoring.take()?;
        r.cancel.store(true, Ordering::Relaxed);
        let committed = r.committed.map(|c| only(&c, &r.partitions));
        Some((r.partitions, committed))
    }

    /// Installs the engines the restore's thread kept, as soon as it sends them, and those it
    /// read once it is done, and resumes the reading of their partitions where their state
    /// ends: the partitions a revocation gave back resume while the others are read.
    fn finish_restore(&mut self, consumer: &BaseConsumer<ConsumerHooks>) {
        let Some(mut r) = self.restoring.take() else {
            return;
        };
        // Before taking the kept engines: what the thread sent before it finished is there.
        let finished = r.thread.is_finished();
        if let Ok(kept) = r.kept.try_recv() {
            r.partitions.retain(|p| !kept.contains_key(p));
            r.kept_partitions.extend(kept.keys());
            r.tenants += self.resume_restored(consumer, r.committed.as_ref(), kept);
        }
        if !finished || self.fatal.is_some() {
            self.restoring = Some(r);
            return;
        }
        let restored = match r.thread.join() {
            Ok(Ok(restored)) => restored,
            // Started again with new clients, for the partitions still paused.
            Ok(Err(e @ RunError::Restore(RestoreError::Stalled { .. }))) => {
                tracing::warn!(error = %e, "the restore is stuck: starting it again");
                self.handles.metrics.restores_stalled.inc();
                self.start_restore(r.partitions, r.committed);
                self.pause_restoring(consumer);
                return;
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "restore failed");
                self.fatal = Some(KafkaError::Canceled);
                return;
            }
            Err(_) => {
                tracing::error!("the restore's thread panicked");
                self.fatal = Some(KafkaError::Canceled);
                return;
            }
        };
        // What the thread sent after the look above (`is_finished` orders nothing).
        let mut tenants = r.tenants;
        if let Ok(kept) = r.kept.try_recv() {
            r.kept_partitions.extend(kept.keys());
            tenants += self.resume_restored(consumer, r.committed.as_ref(), kept);
        }
        let read = restored.len();
        let tenants = tenants + self.resume_restored(consumer, r.committed.as_ref(), restored);
        if self.fatal.is_some() {
            return;
        }
        // Published once every partition is: until then which tenants are not owned is unknown.
        self.publish_owned(false);
        let seconds = r.started.elapsed().as_secs_f64();
        self.handles.metrics.restore_seconds.observe(seconds);
        let metric = &self.handles.metrics.partitions_restored;
        metric
            .with_label_values(&["kept"])
            .inc_by(r.kept_partitions.len() as u64);
        metric.with_label_values(&["changelog"]).inc_by(read as u64);
        tracing::info!(
            partitions = ?r.partitions.union(&r.kept_partitions).collect::<BTreeSet<_>>(),
            kept = ?r.kept_partitions,
            tenants,
            seconds = format!("{seconds:.2}"),
            "restored state from the changelog (kept: partitions whose engine was kept from their last revocation, nothing having been written to them since)"
        );
        let stopping = self.handles.stop.load(Ordering::Relaxed);
        if self.fatal.is_none() && !stopping {
            self.handles.set_ready(true);
        }
    }

    /// Makes `engines` their partitions', and resumes the reading of those partitions where
    /// their state ends: the tenants installed. `committed` is the group's offsets read at the
    /// assignment (None: a rewind, or none could be read then).
    fn resume_restored(
        &mut self,
        consumer: &BaseConsumer<ConsumerHooks>,
        committed: Option<&TopicPartitionList>,
        engines: Engines,
    ) -> usize {
        let partitions: BTreeSet<i32> = engines.keys().copied().collect();
        if !self.state_belongs_here(&engines) {
            return 0;
        }
        let mut tenants = 0;
        for (partition, (engine, beside)) in engines {
            tenants += engine.len();
            self.install(partition, engine, beside.positions, beside.group);
        }
        if partitions.is_empty() {
            return tenants;
        }
        // Partitions of an assignment: checked, and resumed where their state ends (or the
        // group's offsets, for a changelog without positions). Those of a rewind, or of an
        // assignment whose offsets could not be read: where their state ends.
        let these = committed.map(|c| only(c, &partitions));
        let checked: BTreeSet<i32> = (these.iter())
            .flat_map(|c| c.elements().into_iter().map(|e| e.partition()))
            .collect();
        let mut seek = TopicPartitionList::new();
        if let Some(these) = these.filter(|c| c.count() > 0) {
            self.check_state_is_ours(&these);
            if self.fatal.is_some() {
                return tenants;
            }
            self.checked.extend(&checked);
            seek = self.resume_offsets(consumer, &these);
        }
        let rest: BTreeSet<i32> = partitions.difference(&checked).copied().collect();
        if !rest.is_empty() {
            let Some(after) = self.offsets_after_rewind(consumer, &rest) else {
                return tenants;
            };
            for e in after.elements() {
                let _ = seek.add_partition_offset(e.topic(), e.partition(), e.offset());
            }
        }
        if self.seek(consumer, seek) {
            if let Err(e) = consumer.resume(&self.input_list(&partitions)) {
                tracing::error!(error = %e, "cannot resume the restored partitions");
                self.fatal = Some(e);
            }
        }
        tenants
    }

    /// Whether every tenant restored for a partition belongs on it, as the inputs are routed
    /// now (murmur2 of the tenant modulo their partition count): since the routing check
    /// (c185219), the state of partition p only ever holds tenants whose records were on p.
    /// Folding on top of state that does not would make a second, partial state of each
    /// misplaced tenant, whose documents replace the real ones. Refused (false, `fatal` set),
    /// with the likely cause: when a quarter or more of the tenants moved, the state was
    /// written while the inputs had another partition count (any change of count moves half
    /// of them or more: doubling it half, other changes more); when fewer did, a build before
    /// the routing check folded records that a producer sent to the wrong partition.
    fn state_belongs_here(&mut self, engines: &Engines) -> bool {
        let n = self.input_partitions;
        let tenants: usize = engines.values().map(|(engine, _)| engine.len()).sum();
        let misplaced: Vec<String> = (engines.iter())
            .flat_map(|(&p, (engine, _))| {
                (engine.tenants().into_iter())
                    .map(move |t| (p, t, routing::partition_of(t.as_bytes(), n)))
            })
            .filter(|&(p, _, belongs)| belongs != p)
            .map(|(p, t, belongs)| format!("{t:?} in partition {p} belongs on {belongs}"))
            .collect();
        if misplaced.is_empty() {
            return true;
        }
        let shown = misplaced.len().min(5);
        let cause = if repartitioned(misplaced.len(), tenants) {
            format!(
                "it was written while the inputs had another partition count (or by another \
                 group sharing this state topic, whose inputs have another count). {REPARTITION}"
            )
        } else {
            "it holds state a build before the routing check folded from records a producer \
             sent to the wrong partition (another partitioner than Java's murmur2): a second, \
             partial state of each of these tenants. Rebuild the state from the inputs: stop \
             every instance of the group, delete and recreate the state topic (compacted), reset \
             the group's offsets to the earliest (kafka-consumer-groups.sh --reset-offsets \
             --to-earliest), and start again; records on the wrong partition then go to the DLQ \
             as wrong_partition"
                .to_owned()
        };
        let why = format!(
            "state topic {:?} holds the state of {} of {tenants} tenant(s) on another partition \
             than their records go to among the {n} partitions the input topics have now \
             ({}{}): {cause}",
            self.settings.topics.state,
            misplaced.len(),
            misplaced[..shown].join("; "),
            if misplaced.len() > shown { "; ..." } else { "" },
        );
        tracing::error!("{why}");
        self.refusal = Some(why);
        self.fatal = Some(KafkaError::Canceled);
        false
    }

    /// Where the reading of `partitions` resumes after a rewind, or after an assignment whose
    /// committed offsets could not be read: where their restored state ends. The group
    /// coordinator is not asked for a partition whose state's positions name every input topic
    /// (they do once this build has committed once: the offsets chosen at assignment join
    /// them) and whose state needs no check: checked since its assignment, written by this
    /// group (the positions name it), or without tenants. It may be the very thing that was
    /// away: after a broker outage librdkafka's group client was seen waiting on it for
    /// minutes. For the others the committed offsets are read, and the state is checked to be
    /// this group's ([`Pipeline::check_state_is_ours`]) as at an assignment: a coordinator that
    /// did not answer then must not let another group's state through. None, with `fatal` set,
    /// when the committed offsets cannot be read or the state is refused.
    fn offsets_after_rewind(
        &mut self,
        consumer: &BaseConsumer<ConsumerHooks>,
        partitions: &BTreeSet<i32>,
    ) -> Option<TopicPartitionList> {
        let group = &self.settings.group;
        let topics = self.settings.topics.inputs();
        let ask: BTreeSet<i32> = (partitions.iter().copied())
            .filter(|&p| {
                let known = topics.iter().all(|t| self.position(t, p).is_some());
                let restored = (self.engines.get(&p)).is_some_and(|e| !e.tenants().is_empty());
                let unchecked = restored
                    && !self.checked.contains(&p)
                    && self.position_groups.get(&p) != Some(group);
                !known || unchecked
            })
            .collect();
        let mut seek = TopicPartitionList::new();
        for &p in partitions.difference(&ask) {
            for t in topics {
                let offset = Offset::Offset(self.position(t, p).unwrap_or_default());
                let _ = seek.add_partition_offset(t, p, offset);
            }
        }
        if ask.is_empty() {
            return Some(seek);
        }
        let inputs = self.input_list(&ask);
        let mut backoff = Backoff::new(&self.handles.stop);
        let committed = loop {
            match consumer.committed_offsets(inputs.clone(), CALL_TIMEOUT) {
                Ok(c) => break c,
                // Not forever: a restart gets a new group client.
                Err(e) if backoff.tries >= 8 => {
                    tracing::error!(error = %e, tries = backoff.tries, "the group's committed offsets cannot be read: stopping");
                    self.fatal = Some(e);
                    return None;
                }
                Err(e) if backoff.wait("read committed offsets", &e) => {
                    reconnect_consumer(consumer, &self.handles.metrics);
                }
                Err(e) => {
                    self.fatal = Some(e);
                    return None;
                }
            }
        };
        self.check_state_is_ours(&committed);
        if self.fatal.is_some() {
            return None;
        }
        self.checked.extend(&ask);
        for e in self.resume_offsets(consumer, &committed).elements() {
            let _ = seek.add_partition_offset(e.topic(), e.partition(), e.offset());
        }
        Some(seek)
    }

    /// Moves the reading of `seek`'s partitions to its offsets; false, with `fatal` set, when
    /// it cannot. A partition whose fetching has not started yet (its assignment still being
    /// set up) refuses a seek for a moment: tried again, for up to two seconds.
    fn seek(&mut self, consumer: &BaseConsumer<ConsumerHooks>, seek: TopicPartitionList) -> bool {
        let to: Vec<String> = (seek.elements().iter())
            .map(|e| format!("{}/{}@{:?}", e.topic(), e.partition(), e.offset()))
            .collect();
        let mut tries = 0;
        loop {
            tries += 1;
            match consumer.seek_partitions(seek.clone(), CALL_TIMEOUT) {
                // Each partition's seek can fail on its own: reading it on from where it was
                // would fold its records twice or never.
                Ok(result) if result.elements().iter().any(|e| e.error().is_err()) => {
                    if tries < 20 {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                    for e in result.elements() {
                        if let Err(error) = e.error() {
                            let (topic, partition) = (e.topic(), e.partition());
                            tracing::error!(topic, partition, %error, "cannot seek to where the state ends");
                            self.fatal = Some(error);
                        }
                    }
                    return false;
                }
                Ok(_) => {
                    tracing::info!(offsets = %to.join(" "), "reading resumes where the restored state ends");
                    return true;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot seek to where the state ends");
                    self.fatal = Some(e);
                    return false;
                }
            }
        }
    }

    /// Makes `engine` partition `partition`'s, with the positions and group its changelog (or
    /// its revocation) left. Every tenant's documents are rewritten: they may lag the state (a
    /// predecessor can stop between its commit and its next document write, and a write that
    /// failed at a revocation is not retried).
    fn install(
        &mut self,
        partition: i32,
        engine: Engine,
        positions: Option<BTreeMap<String, i64>>,
        group: Option<String>,
    ) {
        match positions {
            Some(next) => self.positions.insert(partition, next),
            None => self.positions.remove(&partition),
        };
        match group {
            Some(group) => self.position_groups.insert(partition, group),
            None => self.position_groups.remove(&partition),
        };
        let tenants = engine.tenants().into_iter().map(str::to_owned).collect();
        self.stale_documents.insert(partition, tenants);
        self.engines.insert(partition, engine);
    }

    /// The error the loop stops with, once something it cannot go on from happened.
    fn stop_error(&self) -> Option<RunError> {
        match (&self.refusal, &self.fatal) {
            (Some(why), _) => Some(RunError::Refused(why.clone())),
            (None, Some(e)) => Some(RunError::Fatal(e.clone())),
            (None, None) => None,
        }
    }

    /// State restored for a partition on which this group has committed no offsets was written
    /// by another group sharing the state topic, or this group's offsets expired
    /// (`offsets.retention.minutes`, a week by default, counted from when the group last had a
    /// member). The positions record beside the state names the group that wrote it:
    /// - this group: its offsets expired, and the positions say where the state ends, so the
    ///   reading resumes there ([`Pipeline::resume_offsets`]), with a warning;
    /// - another group, or none (a changelog of a build before the record named its group):
    ///   reading the inputs from the start on top of it would count every record twice.
    ///   Refused with exactly-once, where a state record is committed only with its partition's
    ///   offsets; a warning with at-least-once, where a first commit may have stopped between
    ///   the two.
    fn check_state_is_ours(&mut self, committed: &TopicPartitionList) {
        // The partitions being assigned: with a cooperative assignor, those assigned before
        // are not in `committed`.
        let assigned: BTreeSet<i32> = (committed.elements().iter())
            .map(|e| e.partition())
            .collect();
        let restored: BTreeSet<i32> = (self.engines.iter())
            .filter(|(p, e)| assigned.contains(p) && !e.tenants().is_empty())
            .map(|(&p, _)| p)
            .collect();
        if restored.is_empty() {
            return;
        }
        let with_offsets: BTreeSet<i32> = (committed.elements().iter())
            .filter(|e| matches!(e.offset(), Offset::Offset(_)))
            .map(|e| e.partition())
            .collect();
        let group = &self.settings.group;
        let (expired, foreign): (Vec<i32>, Vec<i32>) =
            restored.difference(&with_offsets).partition(|p| {
                self.positions.contains_key(p) && self.position_groups.get(p) == Some(group)
            });
        if !expired.is_empty() {
            tracing::warn!(
                partitions = ?expired,
                group = %group,
                "the group has committed no offsets on these partitions (they expired: \
                 offsets.retention.minutes), but their state was written by this group: \
                 resuming from the input positions stored beside it"
            );
        }
        if foreign.is_empty() {
            return;
        }
        let writers: BTreeSet<&str> = (foreign.iter())
            .filter_map(|p| self.position_groups.get(p))
            .map(String::as_str)
            .collect();
        let written_by = match writers.is_empty() {
            true => String::new(),
            false => format!(" written by group(s) {writers:?}"),
        };
        let why = format!(
            "state topic {:?} holds state for partition(s) {foreign:?}{written_by}, but group \
             {group:?} has committed no offsets there: the state was written by another consumer \
             group sharing the state topic, or this group's offsets expired and the state is of \
             a build that did not record its group. Folding the inputs from the start on top of \
             it would count every record twice. Give each group a state topic of its own \
             ([topics] state in --config), or delete and recreate this one to start from nothing",
            self.settings.topics.state,
        );
        if self.exactly_once() {
            tracing::error!("{why}");
            self.refusal = Some(why);
            self.fatal = Some(KafkaError::Canceled);
        } else {
            tracing::warn!("{why} (with at-least-once, a first commit cut short leaves this too)");
        }
    }

    /// The next offset of `topic` that the state of `partition` has folded up to, if known.
    fn position(&self, topic: &str, partition: i32) -> Option<i64> {
        self.positions.get(&partition)?.get(topic).copied()
    }

    /// Where the reading of `committed`'s partitions resumes: where the restored state says it
    /// has read to (its positions record), else the group's committed offset, else the
    /// beginning. Under exactly-once both are written in one transaction and agree; a
    /// difference (the group coordinator answering before the offsets of a transaction that
    /// committed were in place, say) is logged, and the state's positions win: they were read
    /// from the same log as the state.
    /// The offsets chosen become the partitions' positions, so that the next positions record
    /// names every input topic even when the state had none for some (a changelog of an
    /// earlier build, a topic not read yet).
    fn resume_offsets(
        &mut self,
        consumer: &BaseConsumer<ConsumerHooks>,
        committed: &TopicPartitionList,
    ) -> TopicPartitionList {
        let mut out = TopicPartitionList::new();
        let mut differ = Vec::new();
        let mut check_retention = true;
        for e in committed.elements() {
            let group = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            let state = self.position(e.topic(), e.partition());
            let offset = match (state, group) {
                (Some(s), g) => {
                    if g != Some(s) {
                        differ.push(format!(
                            "{}/{}: state {s}, group {g:?}",
                            e.topic(),
                            e.partition()
                        ));
                    }
                    Offset::Offset(s)
                }
                (None, Some(g)) => Offset::Offset(g),
                // The beginning, as an offset, so that the positions name the topic.
                (None, None) => consumer
                    .fetch_watermarks(e.topic(), e.partition(), CALL_TIMEOUT)
                    .map(|(low, _)| Offset::Offset(low))
                    .unwrap_or(Offset::Beginning),
            };
            let mut offset = offset;
            if let (Offset::Offset(o), true) = (offset, check_retention) {
                // Records the input's retention deleted before they were read (an instance
                // down for longer than it): librdkafka would skip to the first one left
                // (auto.offset.reset) without a word. Said once: the reading, and the
                // positions, resume at the first one left. A broker that does not answer
                // ends the checking: the loop waits meanwhile.
                let low = consumer.fetch_watermarks(e.topic(), e.partition(), RETENTION_CHECK);
                check_retention = low.is_ok();
                if let Some(low) = low.ok().map(|(low, _)| low).filter(|&low| low > o) {
                    (self.handles.metrics.input_records_lost).inc_by((low - o) as u64);
                    tracing::warn!(
                        topic = e.topic(),
                        partition = e.partition(),
                        resume = o,
                        first_left = low,
                        missing = low - o,
                        "records were deleted by the topic's retention before they were folded: \
                         the state goes on without them (feedback replay cannot bring them back)"
                    );
                    offset = Offset::Offset(low);
                }
            }
            if let Offset::Offset(o) = offset {
                (self.positions.entry(e.partition()).or_default()).insert(e.topic().to_owned(), o);
            }
            let _ = out.add_partition_offset(e.topic(), e.partition(), offset);
        }
        if !differ.is_empty() {
            tracing::warn!(
                positions = %differ.join(", "),
                "the group's committed offsets differ from where the restored state has read \
                 to: resuming where the state ends"
            );
        }
        out
    }

    /// Checks the assignment, sets in `tpl` the group's committed offsets (so that fetching
    /// starts at once) and starts restoring the partitions' state; the rebalance callback pauses
    /// them once assigned (called before the assignment takes effect).
    fn on_assign(&mut self, consumer: &BaseConsumer<ConsumerHooks>, tpl: &mut TopicPartitionList) {
        let mut by_topic: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
        for e in tpl.elements() {
            by_topic
                .entry(e.topic().to_owned())
                .or_default()
                .insert(e.partition());
        }
        let partitions: BTreeSet<i32> = by_topic.values().flatten().copied().collect();
        if by_topic.values().any(|p| *p != partitions) {
            let why = format!(
                "the assignment splits partition numbers across instances: {by_topic:?}; a \
                 tenant's topics must be assigned together (range assignor, equal partition \
                 counts: were partitions added to one input topic?)"
            );
            tracing::error!("{why}");
            self.refusal = Some(why);
            self.fatal = Some(KafkaError::Canceled);
            return;
        }
        tracing::info!(partitions = ?partitions, "partitions assigned");
        // Partitions added to the inputs while running: the start-up check did not see them.
        // A tenant's partition is murmur2(tenant) modulo the count, so from now on most
        // tenants' records land on another partition than the state holding their history.
        let had = self.input_partitions;
        if let Some(&p) = partitions.iter().find(|&&p| p as usize >= had) {
            let why = format!(
                "assigned input partition {p}, but the input topics had {had} partitions when \
                 this instance started: partitions were added to them while it ran. {}",
                REPARTITION
            );
            tracing::error!("{why}");
            self.refusal = Some(why);
            self.fatal = Some(KafkaError::Canceled);
            return;
        }
        // A state topic recreated with fewer partitions: a partition it lacks can never be
        // restored.
        let state = &self.settings.topics.state;
        let has = consumer
            .fetch_metadata(Some(state), CALL_TIMEOUT)
            .ok()
            .and_then(|m| m.topics().first().map(|t| t.partitions().len()));
        if let Some(has) = has.filter(|&n| partitions.iter().any(|&p| p as usize >= n)) {
            let why = format!(
                "assigned input partitions {partitions:?}, but state topic {state:?} has {has}: \
                 were partitions added to the input topics? Partition p keeps its state in \
                 partition p of the state topic, and a tenant's records now land on another \
                 partition than its state's: see `run`'s start-up check"
            );
            tracing::error!("{why}");
            self.refusal = Some(why);
            self.fatal = Some(KafkaError::Canceled);
            return;
        }
        // The restore runs on a thread of its own while the loop polls on, the partitions
        // paused. They are assigned at the group's offsets, so that their fetching starts at
        // once and the seek to where the restored state ends can follow; when the coordinator
        // does not answer here, librdkafka reads those offsets itself.
        let committed = match consumer.committed_offsets(tpl.clone(), CALL_TIMEOUT) {
            Ok(committed) => {
                for e in committed.elements() {
                    let offset = match e.offset() {
                        Offset::Offset(o) => Offset::Offset(o),
                        _ => Offset::Beginning,
                    };
                    let _ = tpl.set_partition_offset(e.topic(), e.partition(), offset);
                }
                Some(committed)
            }
            // Assigned at the beginning all the same, so that fetching starts without the
            // group coordinator; the seek after the restore moves them.
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the group's committed offsets: read again once the state is restored");
                for e in tpl.clone().elements() {
                    let _ = tpl.set_partition_offset(e.topic(), e.partition(), Offset::Beginning);
                }
                None
            }
        };
        self.start_restore(partitions, committed);
    }

    fn on_revoke(&mut self, consumer: &BaseConsumer<ConsumerHooks>, tpl: &TopicPartitionList) {
        let partitions: BTreeSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        if !consumer.assignment_lost() {
            tracing::info!(partitions = ?partitions, "partitions revoked: committing");
        }
        self.handles.set_ready(false);
        // Before the commit: one that fails rewinds, dropping the engines.
        let gone = (partitions.iter())
            .filter_map(|p| self.engines.get(p))
            .flat_map(|e| e.tenants().into_iter().map(str::to_owned))
            .collect();
        let aborts = self.summary.aborts;
        // A lost assignment (the group went on without this instance: a session timeout, a
        // poll interval exceeded) may be another instance's already, folding the same records:
        // what was folded here since the last commit is aborted, not committed. The group's
        // fencing of the lost generation would refuse the offsets too, but librdkafka has
        // forgotten its member id by now, and Kafka Streams does not count on it either.
        if consumer.assignment_lost() {
            let open = self.in_transaction || self.in_flight.is_some() || !self.backlog.is_empty();
            tracing::warn!(
                partitions = ?partitions,
                transaction_open = open,
                "the assignment was lost (the group went on without this instance): aborting \
                 what was folded since the last commit instead of committing it"
            );
            // The engines go below, unparked: the abort counts.
            if open {
                self.abort();
            }
        } else {
            self.commit(consumer);
            // Not after a lost assignment: the engines hold what was just aborted.
            self.write_documents(true);
        }
        self.documents.forget(gone);
        // A restore still running (or started by a rewind just now) is given up; partitions of
        // it that stay (a cooperative assignor's revocation) are restored again. The others
        // stay paused: librdkafka keeps an application's pause across assignments, and the next
        // assignment restores, pauses and resumes them again.
        if let Some((restoring, committed)) = self.cancel_restore() {
            let stay: BTreeSet<i32> = restoring.difference(&partitions).copied().collect();
            let committed = committed.map(|c| only(&c, &stay));
            self.start_restore(stay, committed);
        }
        // The engines are parked for the assignment that follows only when they hold exactly
        // what was committed; not when stopping, which has no assignment to follow.
        // A lost assignment (the group went on without this instance: a session timeout, a
        // poll interval exceeded) may already be another instance's, with its writes below the
        // watermark read now: never parked.
        let committed = self.fatal.is_none()
            && !self.in_transaction
            && self.in_flight.is_none()
            && self.backlog.is_empty()
            && self.summary.aborts == aborts
            && !consumer.assignment_lost();
        let mut ends = match committed && !self.handles.stop.load(Ordering::Relaxed) {
            true => state_ends(&self.settings, &self.hooks, &partitions),
            false => BTreeMap::new(),
        };
        if consumer.assignment_lost() {
            ends.clear();
        }
        self.parked.clear();
        for p in &partitions {
            let engine = self.engines.remove(p);
            let positions = self.positions.remove(p);
            let group = self.position_groups.remove(p);
            self.checked.remove(p);
            self.stale_documents.remove(p);
            if let (Some(engine), Some(&end)) = (engine, ends.get(p)) {
                let parked = Parked {
                    engine,
                    positions,
                    group,
                    end,
                };
                self.parked.insert(*p, parked);
            }
        }
        // Lag series of partitions no longer held would keep their last value; the next
        // statistics refill those still held.
        self.handles.metrics.lag.reset();
        self.publish_owned(true);
    }

    /// The least time from the start of the current round to the start of the next: see
    /// [`round_gap`]. The round's cost is what it took this loop to compute it and the writer
    /// thread to encode, write and sync it (so far: a round still being written only grows).
    fn next_round_gap(&self) -> Duration {
        let written = self
            .documents
            .busy()
            .saturating_sub(self.writer_busy_at_start);
        round_gap(
            self.settings.storage_interval,
            self.round_busy + written,
            self.idle,
        )
    }

    /// Rewrites the documents of the tenants whose state records went into a transaction (the
    /// state they are computed from can be ahead of the last commit by the transaction in flight
    /// and what was folded since: an abort discards queued slices and rewrites every restored
    /// tenant's documents; a fatal error discards them and writes no more): a round starts
    /// at most every `storage_interval`, and is computed a slice at a time (about 50 ms of work
    /// per loop turn) so a thousand tenants' documents do not stall the records behind them;
    /// the writer thread writes them. Under a backlog the documents of every tenant change in
    /// every round, and a round is O(history) per tenant; so while the loop is behind the
    /// inputs, a round that cost T (this loop's computing and the writer's writing) delays the
    /// next one to at least T / DOCUMENTS_SHARE after its start, and the documents never take
    /// more than that share of a core from the fold. `now` takes everything that is due at once
    /// and waits until it is written (revocation, stop).
    fn write_documents(&mut self, now: bool) {
        // After a fatal error the engines may hold uncommitted work: leave the files as they are.
        if self.fatal.is_some() {
            return;
        }
        self.documents.ensure_running();
        // Documents someone else changed since this instance wrote them come back as failed.
        if self.last_verify.elapsed() >= self.settings.storage_interval {
            self.last_verify = Instant::now();
            self.documents.verify();
        }
        while let Ok((p, t)) = self.documents.failed.try_recv() {
            // Not for a partition given up meanwhile.
            if self.engines.contains_key(&p) {
                self.stale_documents.entry(p).or_default().insert(t);
            }
        }
        // A new round starts when the last one is done and the interval has passed; `now`
        // takes in everything at once.
        let gap = self.next_round_gap();
        let round_due = self.documents_due.is_empty() && self.last_documents.elapsed() >= gap;
        if !self.stale_documents.is_empty() && (now || round_due) {
            let interval = self.settings.storage_interval;
            if !now && (gap > interval) != self.stretched {
                self.stretched = gap > interval;
                if self.stretched {
                    tracing::info!(
                        round_cost_ms = (gap.as_secs_f64() * DOCUMENTS_SHARE * 1e3) as u64,
                        gap_s = gap.as_secs_f64(),
                        "behind the inputs: document rounds are spaced out while the backlog lasts"
                    );
                } else {
                    tracing::info!("caught up: documents written every storage interval again");
                }
            }
            self.last_documents = Instant::now();
            self.round_busy = Duration::ZERO;
            self.writer_busy_at_start = self.documents.busy();
            self.idle = Duration::ZERO;
            for (partition, tenants) in std::mem::take(&mut self.stale_documents) {
                self.documents_due
                    .extend(tenants.into_iter().map(|t| (partition, t)));
            }
        }
        let started = Instant::now();
        while !self.documents_due.is_empty() {
            if !now && (started.elapsed() > Duration::from_millis(50) || !self.documents.has_room())
            {
                return;
            }
            let slice_started = Instant::now();
            let take = self.documents_due.len().min(16);
            let slice: Vec<(i32, String)> = self.documents_due.drain(..take).collect();
            // Computed on every core: on the loop alone, rayon's workers waited (they fold
            // what the loop hands them), and the documents were a third of the loop's time.
            let engines = &self.engines;
            let docs: Vec<_> = slice
                .par_iter()
                .filter_map(|(p, t)| {
                    let docs = engines.get(p).and_then(|e| e.documents(t))?;
                    Some((*p, docs))
                })
                .collect();
            // A round written at once (a stop, a revocation) is synced with one filesystem
            // sync; slices in the background an fsync per file (see `SyncMode`).
            let sync = if now {
                SyncMode::Filesystem
            } else {
                SyncMode::EachFile
            };
            if !self.documents.write(docs, sync) {
                tracing::error!("no storage writer; documents are not written");
                self.documents_due.clear();
                return;
            }
            // The slice's cores' time, not its wall time: the budget is of a core.
            let cores = take.min(rayon::current_num_threads()).max(1) as u32;
            self.round_busy += slice_started.elapsed() * cores;
        }
        if now {
            self.documents.flush();
            while let Ok((p, t)) = self.documents.failed.try_recv() {
                self.stale_documents.entry(p).or_default().insert(t);
            }
        }
    }
}

/// The least time from the start of a documents round to the start of the next: `interval`,
/// unless the loop was behind the inputs (it waited less for records than the round took) and
/// the round's `busy` time would then be more than `DOCUMENTS_SHARE` of the time.
fn round_gap(interval: Duration, busy: Duration, idle: Duration) -> Duration {
    if idle >= busy {
        interval
    } else {
        busy.div_f64(DOCUMENTS_SHARE).max(interval)
    }
}

/// Exponential backoff for retried calls: 100 ms doubling to 5 s, logged. Once a stop is
/// asked for, a call gets five more tries and then gives up, so SIGTERM ends in bounded time
/// even with the broker gone.
struct Backoff {
    delay: Duration,
    tries: u32,
    stop: Arc<AtomicBool>,
    /// Set when whoever waits for these tries has given up on them.
    abandoned: Option<Arc<AtomicBool>>,
}

impl Backoff {
    fn new(stop: &Arc<AtomicBool>) -> Self {
        Backoff {
            delay: Duration::from_millis(100),
            tries: 0,
            stop: stop.clone(),
            abandoned: None,
        }
    }

    /// Gives up at once, too, when `abandoned` is set.
    fn unless(self, abandoned: Arc<AtomicBool>) -> Self {
        Backoff {
            abandoned: Some(abandoned),
            ..self
        }
    }

    /// Waits before the next try; false when it is time to give up instead.
    #[must_use]
    fn wait(&mut self, what: &str, e: &KafkaError) -> bool {
        if (self.abandoned.as_ref()).is_some_and(|a| a.load(Ordering::Relaxed)) {
            return false;
        }
        if self.stop.load(Ordering::Relaxed) && self.tries >= 5 {
            tracing::error!(error = %e, "{what} failed; stopping, so no more tries");
            return false;
        }
        self.tries += 1;
        tracing::warn!(error = %e, tries = self.tries, "{what} failed; retrying in {:?}", self.delay);
        std::thread::sleep(self.delay);
        self.delay = (self.delay * 2).min(Duration::from_secs(5));
        true
    }
}

/// At most this many fatal producer errors are recovered from within [`RECOVERY_WINDOW`].
const MAX_RECOVERIES: usize = 5;
const RECOVERY_WINDOW: Duration = Duration::from_secs(600);

/// The processor's producer, with its transactions initialised under exactly-once (retried
/// while the cluster is away).
fn new_producer(
    settings: &Settings,
    hooks: &ClientHooks,
    stop: &Arc<AtomicBool>,
) -> Result<ThreadedProducer<ProducerHooks>, KafkaError> {
    let producer: ThreadedProducer<ProducerHooks> = settings
        .producer_config()
        .create_with_context(ProducerHooks {
            hooks: hooks.clone(),
            failed: AtomicU64::new(0),
            brokers: BrokerWatch::new(&settings.brokers, "producer"),
        })?;
    if settings.guarantee == Guarantee::ExactlyOnce {
        let mut backoff = Backoff::new(stop);
        loop {
            match producer.init_transactions(CALL_TIMEOUT) {
                Ok(()) => break,
                Err(e) => match classify(&e) {
                    Failure::Retry if backoff.wait("init transactions", &e) => {
                        reconnect_producer(&producer, &hooks.metrics);
                    }
                    _ => return Err(e),
                },
            }
        }
    }
    Ok(producer)
}

/// Runs the processor until `handles.stop` is set or a fatal error; returns what it did.
pub fn run(settings: Settings, handles: Handles) -> Result<RunSummary, RunError> {
    let timeout = settings.transaction_timeout();
    if settings.guarantee == Guarantee::ExactlyOnce && settings.commit_interval * 2 > timeout {
        return Err(RunError::Refused(format!(
            "--commit-interval {:?} is more than half the producer's transaction.timeout.ms \
             ({} ms): the broker would abort transactions before their commit. Lower \
             --commit-interval, or raise transaction.timeout.ms (--kafka-config) above twice it",
            settings.commit_interval,
            timeout.as_millis()
        )));
    }
    let hooks = ClientHooks::new(handles.metrics.clone());
    let slot: Arc<Mutex<Option<Pipeline>>> = Arc::new(Mutex::new(None));
    let rebalances = Arc::new(AtomicU64::new(0));
    let consumer: BaseConsumer<ConsumerHooks> = settings
        .consumer_config()
        .create_with_context(ConsumerHooks {
            hooks: hooks.clone(),
            pipeline: slot.clone(),
            rebalances: rebalances.clone(),
            brokers: BrokerWatch::new(&settings.brokers, "consumer"),
        })
        .map_err(RunError::Client)?;

    Storage::new(&settings.storage_dir)
        .check_writable()
        .map_err(|e| RunError::Refused(format!("the storage directory is not writable: {e}")))?;

    // The cluster may still be coming up: wait for it, as for any broker outage, with a warning
    // every CALL_TIMEOUT. While no broker answers at all, each call is short, so that a stop is
    // seen within a second; a call that timed out against a broker that answers slowly (a long
    // handshake, a large cluster's metadata) is given twice as long the next time.
    let mut unreachable_since: Option<Instant> = None;
    let mut warned: Option<Instant> = None;
    let mut call = WAIT_CALL;
    let partitions = loop {
        if handles.stop.load(Ordering::Relaxed) {
            return Ok(RunSummary::default());
        }
        let asked = Instant::now();
        match admin::check_topics(consumer.client(), &settings.brokers, &settings.topics, call) {
            Ok(n) => break n,
            Err(admin::TopicError::Metadata { source, .. })
                if !handles.stop.load(Ordering::Relaxed) =>
            {
                call = next_wait_call(call, &source);
                let since = *unreachable_since.get_or_insert(asked);
                if since.elapsed() >= CALL_TIMEOUT
                    && warned.is_none_or(|w| w.elapsed() >= CALL_TIMEOUT)
                {
                    tracing::warn!(error = %source, brokers = %settings.brokers, "cannot reach the cluster; retrying");
                    warned = Some(Instant::now());
                }
                // A call refused at once is not repeated at once.
                std::thread::sleep(WAIT_CALL.saturating_sub(asked.elapsed()));
            }
            // Stopped while waiting for the cluster: nothing was started, a clean stop.
            Err(_) if handles.stop.load(Ordering::Relaxed) => return Ok(RunSummary::default()),
            Err(e) => return Err(e.into()),
        }
    };

    // The changelog is the state: on a topic that deletes old records a restore would come
    // back with tenants missing their old days, and nothing would say so.
    let state = &settings.topics.state;
    let outputs = settings.check_state_policy.then(|| {
        admin::output_settings(
            &settings.admin_config(),
            state,
            &settings.topics.dlq,
            CALL_TIMEOUT,
        )
    });
    let policy = outputs.as_ref().map(|o| o.state_cleanup_policy.clone());
    match policy.map(|p| p.map(|p| (admin::Compaction::of(&p), p))) {
        None => {}
        Some(Some((admin::Compaction::Compacted, _))) => {}
        Some(Some((admin::Compaction::CompactedAndDeleted, policy))) => tracing::warn!(
            topic = %state,
            %policy,
            "the state topic deletes segments past retention: tenants that do not change for \
             that long lose their state on the next restore"
        ),
        Some(Some((admin::Compaction::Not(policy), _))) => {
            return Err(admin::TopicError::StateNotCompacted {
                topic: state.clone(),
                policy,
            }
            .into())
        }
        Some(None) => tracing::warn!(
            topic = %state,
            "cannot read the state topic's cleanup.policy (DescribeConfigs); it must be compact"
        ),
    }

    let dlq_max_bytes = outputs
        .and_then(|o| o.dlq_max_message_bytes)
        .unwrap_or(admin::KAFKA_DEFAULT_MAX_MESSAGE_BYTES);

    let producer = match new_producer(&settings, &hooks, &handles.stop) {
        Ok(p) => p,
        Err(_) if handles.stop.load(Ordering::Relaxed) => return Ok(RunSummary::default()),
        Err(e @ KafkaError::ClientCreation(_)) => return Err(RunError::Client(e)),
        Err(e) => return Err(RunError::Fatal(e)),
    };

    tracing::info!(
        brokers = %settings.brokers,
        group = %settings.group,
        guarantee = ?settings.guarantee,
        partitions,
        transactional_id = %settings.transactional_id(),
        "processor starting"
    );
    consumer
        .subscribe(&settings.topics.inputs())
        .map_err(RunError::Subscribe)?;

    let interval = settings.commit_interval;
    let now = Instant::now();
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(Pipeline {
        documents: DocumentWriter::new(
            Storage::new(&settings.storage_dir),
            handles.metrics.clone(),
        ),
        settings,
        handles: handles.clone(),
        hooks,
        producer: Arc::new(producer),
        avro: AvroSchemas::builtin(),
        dlq_max_bytes,
        input_partitions: partitions,
        engines: BTreeMap::new(),
        offsets: BTreeMap::new(),
        positions: BTreeMap::new(),
        position_groups: BTreeMap::new(),
        checked: BTreeSet::new(),
        owned_published: 0,
        parked: BTreeMap::new(),
        restoring: None,
        in_transaction: false,
        txn_open: false,
        in_flight: None,
        backlog: Vec::new(),
        decoded: Vec::new(),
        events: BTreeMap::new(),
        stale_documents: BTreeMap::new(),
        documents_due: Default::default(),
        last_commit: now,
        last_documents: now,
        last_verify: now,
        round_busy: Duration::ZERO,
        writer_busy_at_start: Duration::ZERO,
        idle: Duration::ZERO,
        stretched: false,
        summary: RunSummary::default(),
        fatal: None,
        refusal: None,
        recoveries: Vec::new(),
        txn_began: None,
        producer_hung: false,
    });

    let mut last_poll_error: Option<Instant> = None;
    let result = loop {
        if handles.stop.load(Ordering::Relaxed) {
            break Ok(());
        }
        let waited = Instant::now();
        // At most 100 ms, so a stop is seen soon; at least 10 ms, so that an idle processor
        // with a commit interval of 0 does not spin.
        let wait = interval.clamp(Duration::from_millis(10), Duration::from_millis(100));
        let mut polled = consumer.poll(wait);
        // Whatever else is ready joins the first record, up to MAX_BATCH. The pipeline is not
        // locked while polling (a rebalance callback locks it). A rebalance revokes and
        // reassigns every partition (eager), and their reading resumes from the committed
        // offsets: records polled before it are dropped unfolded, to be read again.
        let mut batch = Vec::new();
        if let Some(Ok(_)) = &polled {
            let mut epoch = rebalances.load(Ordering::Relaxed);
            while let Some(Ok(msg)) = polled {
                batch.push(msg);
                if batch.len() >= MAX_BATCH {
                    polled = None;
                    break;
                }
                polled = consumer.poll(Duration::ZERO);
                let now = rebalances.load(Ordering::Relaxed);
                if now != epoch {
                    epoch = now;
                    batch.clear();
                }
            }
        }
        let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
        let p = guard.as_mut().expect("pipeline set before polling");
        if polled.is_none() && batch.is_empty() {
            p.idle += waited.elapsed();
        }
        reconnect_consumer(&consumer, &handles.metrics);
        reconnect_producer(&p.producer, &handles.metrics);
        // A rebalance inside poll may have failed, or a signal come: then the record polled
        // is left for whoever reads the partition next.
        if p.fatal.is_some() {
            if !p.recover(&consumer) {
                break Err(p.stop_error().expect("a fatal error is set"));
            }
            // Rewound: what was polled before is read again from the committed offsets.
            continue;
        }
        if handles.stop.load(Ordering::Relaxed) {
            break Ok(());
        }
        // Records of partitions being restored were fetched before their pause: their reading
        // resumes where the restored state ends. Dropped before a restore that is done moves
        // the reading there.
        if p.restoring.is_some() {
            batch.retain(|m| !p.restoring(m.partition()));
        }
        p.finish_restore(&consumer);
        if p.fatal.is_some() {
            if !p.recover(&consumer) {
                break Err(p.stop_error().expect("a fatal error is set"));
            }
            // Rewound: the batch is of the engines dropped.
            continue;
        }
        if !batch.is_empty() {
            if let Err(e) = p.handle(&batch) {
                match classify(&e) {
                    Failure::Fatal
                        if p.exactly_once() || p.producer.client().fatal_error().is_some() =>
                    {
                        p.fatal = Some(e)
                    }
                    _ => {
                        tracing::warn!(error = %e, "producing failed: aborting and rewinding");
                        drop(batch);
                        p.abort_and_rewind(&consumer);
                    }
                }
            }
        }
        match polled {
            None | Some(Ok(_)) => {}
            // Transport and broker errors: librdkafka reconnects by itself.
            Some(Err(e))
                if last_poll_error.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) =>
            {
                tracing::warn!(error = %e, "consumer error; librdkafka keeps retrying");
                last_poll_error = Some(Instant::now());
            }
            Some(Err(_)) => {}
        }
        if p.fatal.is_some() && !p.recover(&consumer) {
            break Err(p.stop_error().expect("a fatal error is set"));
        }
        p.settle(&consumer, false);
        if p.last_commit.elapsed() >= interval && p.commit_in_background(&consumer) {
            p.write_documents(false);
        }
        if p.fatal.is_some() && !p.recover(&consumer) {
            break Err(p.stop_error().expect("a fatal error is set"));
        }
    };

    // Drain: commit what was folded, write the documents, leave the group.
    let summary = {
        let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
        let p = guard.as_mut().expect("pipeline set before polling");
        p.cancel_restore();
        // commit() aborts instead when a fatal error is set.
        p.commit(&consumer);
        p.write_documents(true);
        p.summary.clone()
    };
    let result = match (result, slot_fatal(&slot)) {
        (Ok(()), Some(e)) => Err(RunError::StopCommit(e)),
        (r, _) => r,
    };
    tracing::info!(
        consumed = summary.consumed,
        rejected = summary.rejected,
        alerts = summary.alerts,
        commits = summary.commits,
        aborts = summary.aborts,
        producers_replaced = summary.producers_replaced,
        "processor stopping: leaving the group"
    );
    handles.set_ready(false);
    consumer.unsubscribe();
    close_with_bound(consumer, slot);
    result.map(|()| summary)
}

/// Whether `misplaced` of `tenants` restored tenants routed to another partition than their
/// state's tells of a changed partition count (a quarter or more of them) rather than of a
/// few records folded on the wrong partition by a build before the routing check.
fn repartitioned(misplaced: usize, tenants: usize) -> bool {
    misplaced * 4 >= tenants
}

fn slot_fatal(slot: &Arc<Mutex<Option<Pipeline>>>) -> Option<KafkaError> {
    slot.lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|p| p.fatal.clone())
}

/// Closing a consumer can block for the session timeout when the broker is gone
/// (KAFKA_NOTES); close on a helper thread and give up waiting after a bound.
fn close_with_bound(consumer: BaseConsumer<ConsumerHooks>, slot: Arc<Mutex<Option<Pipeline>>>) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(consumer);
        drop(slot);
        let _ = tx.send(());
    });
    if rx.recv_timeout(Duration::from_secs(15)).is_err() {
        tracing::warn!("the consumer did not close within 15 s; exiting anyway");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At start, calls stay short while no broker answers, and grow after a timeout (a broker
    /// that answers slowly) up to the usual bound.
    #[test]
    fn metadata_calls_at_start_grow_only_after_a_timeout() {
        let failed = |code| KafkaError::MetadataFetch(code);
        let down = failed(RDKafkaErrorCode::BrokerTransportFailure);
        let timed_out = failed(RDKafkaErrorCode::OperationTimedOut);
        assert_eq!(next_wait_call(WAIT_CALL, &down), WAIT_CALL);
        assert_eq!(
            next_wait_call(WAIT_CALL, &failed(RDKafkaErrorCode::AllBrokersDown)),
            WAIT_CALL
        );
        let mut call = WAIT_CALL;
        let mut seen = vec![];
        for _ in 0..6 {
            call = next_wait_call(call, &timed_out);
            seen.push(call.as_secs());
        }
        assert_eq!(seen, [2, 4, 8, 10, 10, 10]);
        assert_eq!(next_wait_call(CALL_TIMEOUT, &down), WAIT_CALL);
    }

    /// Any change of the inputs' partition count moves half of a thousand tenants or more to
    /// another partition (half when it doubles or halves), so a quarter tells it from a few
    /// records folded on the wrong partition long ago.
    #[test]
    fn a_changed_partition_count_moves_a_quarter_of_the_tenants_or_more() {
        let tenants: Vec<String> = (0..1000).map(|i| format!("tenant-{i:04}")).collect();
        for (from, to) in [
            (2, 3),
            (3, 2),
            (6, 12),
            (12, 6),
            (6, 8),
            (8, 6),
            (4, 5),
            (1, 2),
        ] {
            let moved = (tenants.iter())
                .filter(|t| {
                    routing::partition_of(t.as_bytes(), from)
                        != routing::partition_of(t.as_bytes(), to)
                })
                .count();
            assert!(moved >= 400, "{from} -> {to}: {moved} moved");
            assert!(repartitioned(moved, tenants.len()), "{from} -> {to}");
        }
        assert!(!repartitioned(3, 1000));
        assert!(!repartitioned(0, 5));
        assert!(repartitioned(1, 4));
    }

    #[test]
    fn documents_rounds_stretch_only_behind_the_inputs() {
        let ms = Duration::from_millis;
        let interval = ms(5_000);
        // Caught up: the loop waited for records longer than the round took.
        assert_eq!(round_gap(interval, ms(1_300), ms(3_000)), interval);
        // Behind: the round's 1.3 s are at most a tenth of the loop.
        assert_eq!(round_gap(interval, ms(1_300), ms(100)), ms(13_000));
        // Behind, but a short round: never sooner than the interval.
        assert_eq!(round_gap(interval, ms(200), Duration::ZERO), interval);
    }
}
