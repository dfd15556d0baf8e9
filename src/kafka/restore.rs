//! Reading the state changelog back on assignment (SPEC 7): partition p of `feedback-state`
//! from its beginning to its end, read committed, into the latest record of every key.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{ClientHooks, HookContext, Settings};
use crate::fold::snapshot::{SnapshotError, TenantRecords};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("cannot create the changelog reader: {0}")]
    Client(KafkaError),
    #[error("changelog {topic} partition {partition} offset {offset}: {source}")]
    Record {
        topic: String,
        partition: i32,
        offset: i64,
        source: SnapshotError,
    },
    #[error("changelog {topic} partition {partition} offset {offset}: the key is not UTF-8")]
    Key {
        topic: String,
        partition: i32,
        offset: i64,
    },
    #[error("stopped before the restore finished")]
    Stopped,
    #[error(
        "the restore read nothing for {seconds} s ({records} records so far, partitions {pending:?} left)"
    )]
    Stalled {
        seconds: u64,
        records: u64,
        pending: BTreeSet<i32>,
    },
}

/// What each partition's changelog holds: tenant name to its latest records.
pub type PartitionState = BTreeMap<String, TenantRecords>;

/// The key of the record that says, in partition p of the state topic, up to where the state
/// beside it has read partition p of each input topic. It is written in the transaction that
/// writes the state, to the same partition, so a restore reads a state and its input positions
/// together: they cannot come from two different commits, whatever the group coordinator
/// answers for the group's offsets at that moment. No tenant name starts with `~` (SPEC 3).
pub const POSITIONS_KEY: &str = "~positions";

/// The value of a [`POSITIONS_KEY`] record: the next offset to read per input topic, and the
/// consumer group whose processor wrote it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Positions {
    pub v: u32,
    pub next: BTreeMap<String, i64>,
    /// Tells a group whose committed offsets expired (`offsets.retention.minutes`) from another
    /// group sharing the state topic: the first may resume from `next`, the second must not
    /// fold on top of this state. Absent in records of builds before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// A partition's state as the changelog holds it.
#[derive(Debug, Default)]
pub struct Restored {
    pub tenants: PartitionState,
    /// Where the state has read the inputs to; None for a changelog written before positions
    /// were kept (the group's committed offsets stand in).
    pub positions: Option<BTreeMap<String, i64>>,
    /// The consumer group that wrote the positions, when the record says.
    pub group: Option<String>,
    /// Records read (tombstones and positions included).
    pub records: u64,
    /// Read from an offset ([`read_state_from`]), what follows it could not be read as a
    /// whole: the partition ends before that offset (the topic was recreated or truncated
    /// since), or its end could not be had.
    pub tail_unknown: bool,
}

/// Reads partitions `partitions` of the state topic to their end. Read committed, the end is
/// the last stable offset: records of a transaction still open (a crashed instance's, until it
/// is fenced or times out) are not part of the state, and never will be.
pub fn read_state(
    settings: &Settings,
    hooks: &ClientHooks,
    partitions: &BTreeSet<i32>,
    stop: &AtomicBool,
) -> Result<BTreeMap<i32, Restored>, RestoreError> {
    let from = partitions.iter().map(|&p| (p, None)).collect();
    read_state_from(settings, hooks, &from, stop)
}

/// [`read_state`] of the partitions of `from`, each read from the offset given (None: its
/// beginning). Read from where a partition ended at some moment, it says whether anything was
/// written to it since (`records`), which is all a partition kept across a rebalance needs.
pub fn read_state_from(
    settings: &Settings,
    hooks: &ClientHooks,
    from: &BTreeMap<i32, Option<i64>>,
    stop: &AtomicBool,
) -> Result<BTreeMap<i32, Restored>, RestoreError> {
    let partitions: BTreeSet<i32> = from.keys().copied().collect();
    let partitions = &partitions;
    let mut out: BTreeMap<i32, Restored> = partitions
        .iter()
        .map(|&p| (p, Restored::default()))
        .collect();
    if partitions.is_empty() {
        return Ok(out);
    }
    if stop.load(Ordering::Relaxed) {
        return Err(RestoreError::Stopped);
    }
    let consumer: BaseConsumer<HookContext> = settings
        .restore_config()
        .create_with_context(HookContext(hooks.clone()))
        .map_err(RestoreError::Client)?;
    let topic = &settings.topics.state;
    let mut tpl = TopicPartitionList::new();
    let mut pending = BTreeSet::new();
    // The end each partition had when the restore began: its high watermark, which a client
    // reading committed cannot see (librdkafka answers such a client's watermark query with
    // the last stable offset). Reading committed, a partition "ends" at its last stable
    // offset, which trails the high watermark while a transaction is open or while the markers
    // of one that just committed are still being written (EndTxn returns before they are): the
    // restore goes on until the stable offset has reached the high watermark, so a transaction
    // whose offsets are already committed is never missed.
    let ends = high_watermarks(settings, hooks, partitions, stop)?;
    // Given up while asking (it can take seconds a partition): nothing more to do.
    if stop.load(Ordering::Relaxed) {
        return Err(RestoreError::Stopped);
    }
    // How long a partition read to its stable end waits for its high watermark: a transaction
    // open there (an instance that crashed or froze mid-commit) is committed or aborted within
    // the transaction timeout.
    let stable_wait =
        Duration::from_secs(30).max(settings.transaction_timeout() + Duration::from_secs(5));
    for &p in partitions {
        let start = from.get(&p).copied().flatten();
        // An empty partition, or one read from its end, has nothing to wait for (a fetch at
        // its end would wait first).
        let mut tail_unknown = |unknown: bool| {
            if let Some(r) = out.get_mut(&p) {
                r.tail_unknown = unknown;
            }
        };
        match (ends.get(&p), start) {
            (Some(End::Empty), None) => continue,
            (Some(End::At(high)), Some(start)) if start >= *high => {
                tail_unknown(start > *high);
                continue;
            }
            (Some(End::Empty), Some(start)) => {
                tail_unknown(start > 0);
                continue;
            }
            // Nothing to wait for: whoever asked for the tail reads the whole partition.
            (Some(End::Unknown) | None, Some(_)) => {
                tail_unknown(true);
                continue;
            }
            (Some(End::Unknown) | None, None) => {
                tracing::warn!(
                    partition = p,
                    seconds = stable_wait.as_secs(),
                    "the changelog's end is not known: the restore of this partition waits for \
                     a stable end"
                );
            }
            _ => {}
        }
        let offset = start.map_or(Offset::Beginning, Offset::Offset);
        tpl.add_partition_offset(topic, p, offset)
            .map_err(RestoreError::Client)?;
        pending.insert(p);
    }
    if pending.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl).map_err(RestoreError::Client)?;

    let started = Instant::now();
    let mut last_note = Instant::now();
    // Records read or partitions done: a restore without either for `restore_stall` is stuck.
    let mut last_progress = Instant::now();
    // Partitions that reached their stable end, since when.
    let mut at_end: BTreeMap<i32, Instant> = BTreeMap::new();
    let mut records = 0u64;
    while !pending.is_empty() {
        if stop.load(Ordering::Relaxed) {
            return Err(RestoreError::Stopped);
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.entry(p).or_insert_with(Instant::now);
            }
            Some(Err(e)) => {
                // Transport errors: librdkafka retries; say so now and then.
                tracing::warn!(error = %e, "reading the state changelog");
            }
            Some(Ok(m)) => {
                records += 1;
                last_progress = Instant::now();
                if let Some(r) = out.get_mut(&m.partition()) {
                    r.records += 1;
                }
                let Ok(key) = std::str::from_utf8(m.key().unwrap_or_default()) else {
                    return Err(RestoreError::Key {
                        topic: topic.clone(),
                        partition: m.partition(),
                        offset: m.offset(),
                    });
                };
                let restored = out.entry(m.partition()).or_default();
                if key == POSITIONS_KEY {
                    restored.group = None;
                    restored.positions = match m.payload().map(serde_json::from_slice::<Positions>)
                    {
                        Some(Ok(p)) if p.v == 1 => {
                            restored.group = p.group;
                            Some(p.next)
                        }
                        None => None,
                        // The group's committed offsets stand in, as for an earlier build's
                        // changelog.
                        Some(other) => {
                            let why = match other {
                                Ok(p) => format!("unknown version {}", p.v),
                                Err(e) => e.to_string(),
                            };
                            tracing::warn!(
                                partition = m.partition(),
                                offset = m.offset(),
                                "the changelog's input positions cannot be read ({why}): resuming from the group's committed offsets"
                            );
                            None
                        }
                    };
                } else if key.starts_with('~') {
                    // A record beside the state that a later build writes: not a tenant's.
                    tracing::debug!(key, "changelog record of a later build skipped");
                } else {
                    let value = m.payload().map(<[u8]>::to_vec);
                    TenantRecords::apply(&mut restored.tenants, key, value).map_err(|source| {
                        RestoreError::Record {
                            topic: topic.clone(),
                            partition: m.partition(),
                            offset: m.offset(),
                            source,
                        }
                    })?;
                }
            }
        }
        // A partition is restored once it reached its end (read committed) and that end is
        // past where the partition ended when the restore began.
        if !at_end.is_empty() {
            if let Ok(positions) = consumer.position() {
                at_end.retain(|&p, since| {
                    let position = positions.find_partition(topic, p).map(|e| e.offset());
                    let end = match ends.get(&p) {
                        Some(End::At(high)) => *high,
                        _ => i64::MAX,
                    };
                    let mut done = matches!(position, Some(Offset::Offset(o)) if o >= end);
                    // Any transaction open at the start is resolved within the transaction
                    // timeout (or fenced sooner); past that, stop waiting and say so.
                    if !done && since.elapsed() > stable_wait {
                        tracing::warn!(partition = p, ?position, end, "the changelog's stable end stayed short of its end; restoring what is committed");
                        done = true;
                    }
                    if done {
                        pending.remove(&p);
                        last_progress = Instant::now();
                    }
                    !done
                });
            }
        }
        // Waiting for stable ends has its own bound.
        if !at_end.is_empty() && at_end.len() == pending.len() {
            last_progress = Instant::now();
        }
        if last_progress.elapsed() > settings.restore_stall {
            return Err(RestoreError::Stalled {
                seconds: last_progress.elapsed().as_secs(),
                records,
                pending,
            });
        }
        if last_note.elapsed() > Duration::from_secs(5) {
            last_note = Instant::now();
            tracing::info!(
                records,
                partitions_left = pending.len(),
                seconds = started.elapsed().as_secs(),
                "restoring state"
            );
        }
    }
    Ok(out)
}

/// Where a partition of the state topic ended when its restore began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Nothing to read: never written, or compacted away to nothing.
    Empty,
    /// The high watermark.
    At(i64),
    /// The watermark could not be had: the restore waits its bound for a stable end.
    Unknown,
}

/// The high watermark of each of `partitions` of the state topic that has records, as far as
/// they can be had quickly: this runs inside a revocation, and a partition left out is only
/// restored again at its next assignment. The first that cannot be had ends the asking.
pub fn state_ends(
    settings: &Settings,
    hooks: &ClientHooks,
    partitions: &BTreeSet<i32>,
) -> BTreeMap<i32, i64> {
    let client: BaseConsumer<HookContext> = match settings
        .restore_config()
        .set("isolation.level", "read_uncommitted")
        .create_with_context(HookContext(hooks.clone()))
    {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "no client for the changelog's ends: partitions not kept");
            return BTreeMap::new();
        }
    };
    let mut ends = BTreeMap::new();
    for &p in partitions {
        match client.fetch_watermarks(&settings.topics.state, p, Duration::from_secs(2)) {
            Ok((low, high)) if low < high => {
                ends.insert(p, high);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, partition = p, "the changelog's end cannot be had: partitions from here on not kept");
                break;
            }
        }
    }
    ends
}

/// Where each of `partitions` of the state topic ends, asked by a client that reads
/// uncommitted so that the answer is the high watermark (see [`read_state`]).
fn high_watermarks(
    settings: &Settings,
    hooks: &ClientHooks,
    partitions: &BTreeSet<i32>,
    stop: &AtomicBool,
) -> Result<BTreeMap<i32, End>, RestoreError> {
    let client: BaseConsumer<HookContext> = settings
        .restore_config()
        .set("isolation.level", "read_uncommitted")
        .create_with_context(HookContext(hooks.clone()))
        .map_err(RestoreError::Client)?;
    let topic = &settings.topics.state;
    let mut ends = BTreeMap::new();
    for &p in partitions {
        // A restore given up (a new assignment, a rewind) while the broker does not answer
        // would otherwise hold its clients for ten seconds a partition: with assignments
        // coming and going, one such thread after another.
        if stop.load(Ordering::Relaxed) {
            return Err(RestoreError::Stopped);
        }
        let end = match client.fetch_watermarks(topic, p, Duration::from_secs(10)) {
            Ok((low, high)) if low >= high => End::Empty,
            Ok((_, high)) => End::At(high),
            Err(e) => {
                tracing::warn!(error = %e, partition = p, "cannot read the changelog's high watermark");
                End::Unknown
            }
        };
        ends.insert(p, end);
    }
    Ok(ends)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use std::sync::Arc;

    /// A mock cluster with a state topic `state` of `partitions` partitions, the processor's
    /// settings pointing at it, and client hooks.
    fn state_topic(
        partitions: i32,
    ) -> (
        rdkafka::mocking::MockCluster<'static, DefaultProducerContext>,
        Settings,
        ClientHooks,
    ) {
        let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
        mock.create_topic("state", partitions, 1).unwrap();
        let mut settings = Settings::new(mock.bootstrap_servers(), "g");
        settings.topics.state = "state".into();
        let hooks = ClientHooks::new(Arc::new(Metrics::new()));
        (mock, settings, hooks)
    }

    /// Read from where it ended, a partition says whether anything was written since: what
    /// decides whether a partition that comes back after a rebalance keeps its engine.
    #[test]
    fn a_read_from_an_earlier_end_counts_what_was_written_since() {
        let (mock, settings, hooks) = state_topic(2);
        let producer: ThreadedProducer<DefaultProducerContext> =
            Settings::plain_producer_config(&mock.bootstrap_servers())
                .create()
                .unwrap();
        // Keys of a later build: skipped by the restore, but read and counted.
        let write = || {
            let record = BaseRecord::to("state")
                .partition(0)
                .key("~later")
                .payload("{}");
            producer.send(record).map_err(|(e, _)| e).unwrap();
            producer.flush(Duration::from_secs(10)).unwrap();
        };
        write();
        write();
        let stop = AtomicBool::new(false);
        let both: BTreeSet<i32> = [0, 1].into();
        // Partition 1 was never written: no end to park at.
        let ends = state_ends(&settings, &hooks, &both);
        assert_eq!(ends, BTreeMap::from([(0, 2)]));
        let from = |offset| BTreeMap::from([(0, Some(offset))]);
        let tail = read_state_from(&settings, &hooks, &from(2), &stop).unwrap();
        assert_eq!((tail[&0].records, tail[&0].tail_unknown), (0, false));
        write();
        let tail = read_state_from(&settings, &hooks, &from(2), &stop).unwrap();
        assert_eq!((tail[&0].records, tail[&0].tail_unknown), (1, false));
        // An end past the partition's: the topic was recreated since.
        let tail = read_state_from(&settings, &hooks, &from(10), &stop).unwrap();
        assert!(tail[&0].tail_unknown);
        let all = read_state(&settings, &hooks, &both, &stop).unwrap();
        assert_eq!((all[&0].records, all[&1].records), (3, 0));
        assert!(all[&0].tenants.is_empty());
    }

    /// A restore given up while the broker does not answer lets go of its clients between
    /// partitions, instead of asking each partition's end for its ten seconds first: given up
    /// a second into six partitions' worth, it is done after the first one's call (the bound
    /// below is a quarter of the minute the six calls take).
    #[test]
    fn a_restore_given_up_stops_asking_for_the_changelog_ends() {
        let (mock, settings, hooks) = state_topic(6);
        let partitions: BTreeSet<i32> = (0..6).collect();
        let stop = AtomicBool::new(false);
        let ends = high_watermarks(&settings, &hooks, &partitions, &stop).unwrap();
        assert_eq!(ends.len(), 6);
        mock.broker_down(1).unwrap();
        let started = Instant::now();
        let given_up = std::thread::scope(|s| {
            let asking = s.spawn(|| high_watermarks(&settings, &hooks, &partitions, &stop));
            std::thread::sleep(Duration::from_secs(1));
            stop.store(true, Ordering::Relaxed);
            asking.join().unwrap()
        });
        assert!(
            matches!(given_up, Err(RestoreError::Stopped)),
            "{given_up:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{:?}",
            started.elapsed()
        );
    }
}
