//! The state restore on a real broker (SPEC 7): a transaction whose offsets are committed is
//! part of the state even while its commit markers are not yet written.
//!
//! EndTxn returns before the broker has written the markers, so an instance that takes a
//! partition over right after its previous owner committed can find the last transaction still
//! open: the partition's stable end sits before it. The restore must wait for it. It once
//! stopped at the stable end (librdkafka answers a read-committed client's watermark query with
//! the last stable offset, not the high watermark), and a scale-out run lost what the previous
//! owner folded last while its offsets stayed committed. Here the open transaction is held open
//! on purpose and committed while the restore runs.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Cluster;
use feedback::fold::snapshot::{StateRecord, TenantRecords};
use feedback::fold::{Engine, FoldConfig};
use feedback::kafka::restore::read_state;
use feedback::kafka::{ClientHooks, Settings};
use feedback::metrics::Metrics;
use feedback::simulate::{generate, generate_events, Scenario, SimConfig};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

fn transactional_producer(
    brokers: &str,
    id: &str,
) -> ThreadedProducer<rdkafka::producer::DefaultProducerContext> {
    let p: ThreadedProducer<_> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("transactional.id", id)
        .create()
        .expect("create the producer");
    p.init_transactions(Duration::from_secs(30)).unwrap();
    p
}

fn send(
    p: &ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    topic: &str,
    records: &[StateRecord],
) {
    for r in records {
        let mut record = BaseRecord::to(topic).partition(0).key(r.key.as_bytes());
        if let Some(v) = &r.value {
            record = record.payload(&v[..]);
        }
        p.send(record).map_err(|(e, _)| e).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

#[test]
fn a_transaction_committed_during_the_restore_is_restored() {
    let Some(cluster) = Cluster::new("restore", 1) else {
        return;
    };
    let events = generate_events(&SimConfig {
        tenants: 3,
        days: 60,
        scenario: Scenario::Mixed,
        ..SimConfig::default()
    });
    let mut engine = Engine::new(FoldConfig::default()).with_changelog();
    let mut alerts = Vec::new();
    let half = events.len() / 2;
    engine.apply_batch(&events[..half], &mut alerts);
    let first = engine.take_changes().records;
    engine.apply_batch(&events[half..], &mut alerts);
    let second = engine.take_changes().records;
    assert!(!first.is_empty() && !second.is_empty());

    let topic = &cluster.topics.state;
    let producer = transactional_producer(&cluster.brokers, &format!("{}-writer", cluster.group));
    producer.begin_transaction().unwrap();
    send(&producer, topic, &first);
    producer
        .commit_transaction(Duration::from_secs(30))
        .unwrap();
    // The second transaction is written and left open: its markers are "not yet written".
    producer.begin_transaction().unwrap();
    send(&producer, topic, &second);

    let mut settings = Settings::new(cluster.brokers.clone(), cluster.group.clone());
    settings.topics = cluster.topics.clone();
    let hooks = ClientHooks::new(Arc::new(Metrics::new()));
    let started = Instant::now();
    let restore = std::thread::spawn(move || {
        let stop = AtomicBool::new(false);
        read_state(&settings, &hooks, &BTreeSet::from([0]), &stop)
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !restore.is_finished(),
        "the restore ended while a transaction on the partition was open"
    );
    producer
        .commit_transaction(Duration::from_secs(30))
        .unwrap();
    let mut state = restore.join().unwrap().expect("restore");
    eprintln!("restored in {:.1} s", started.elapsed().as_secs_f64());

    let records: BTreeMap<String, TenantRecords> = state.remove(&0).unwrap().tenants;
    let mut restored = Engine::new(FoldConfig::default()).with_changelog();
    assert_eq!(restored.restore(&records).unwrap(), engine.len());
    for tenant in engine.tenants() {
        assert_eq!(
            restored.documents(tenant),
            engine.documents(tenant),
            "{tenant} restored without the transaction committed during the restore"
        );
    }
}

/// The group's committed offsets and the state can disagree (a group coordinator that answers
/// before a transaction's offsets are in place, or offsets moved by hand): the state topic
/// carries, beside each partition's state, where that state has read the inputs to, and `run`
/// resumes there. Here the group's offsets are moved behind the state on one partition (on the
/// old code its records were folded twice) and past the end on another (skipped), and the
/// documents must still be `fold`'s.
#[test]
fn reading_resumes_where_the_restored_state_ends_whatever_the_group_offsets_say() {
    use feedback::simulate::generate;
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{Offset, TopicPartitionList};

    let Some(cluster) = Cluster::new("positions", 3) else {
        return;
    };
    let records = generate(&SimConfig {
        seed: 5,
        tenants: 12,
        days: 90,
        scenario: Scenario::Mixed,
        ..SimConfig::default()
    });
    let (first, second) = records.split_at(records.len() / 2);
    cluster.produce(first);
    let storage = cluster.dir.path().join("storage");
    let mut p = cluster.spawn("positions", &storage, &[]);
    cluster.wait_caught_up(Duration::from_secs(120), &mut [&mut p]);
    assert!(
        p.terminate(Duration::from_secs(60)).success(),
        "{}",
        p.log_tail()
    );

    cluster.produce(second);
    // Partition 0 back to the start, partition 1 to the end of everything, partition 2 left.
    let group: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cluster.brokers)
        .set("group.id", &cluster.group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut moved = TopicPartitionList::new();
    for topic in [
        &cluster.topics.outcomes,
        &cluster.topics.forecasts,
        &cluster.topics.feature_importances,
    ] {
        let (_, end) = group
            .fetch_watermarks(topic, 1, Duration::from_secs(10))
            .unwrap();
        moved
            .add_partition_offset(topic, 0, Offset::Offset(0))
            .unwrap();
        moved
            .add_partition_offset(topic, 1, Offset::Offset(end))
            .unwrap();
    }
    group.commit(&moved, CommitMode::Sync).unwrap();
    drop(group);

    let mut p = cluster.spawn("positions", &storage, &[]);
    p.wait_restored(Duration::from_secs(60));
    cluster.wait_caught_up(Duration::from_secs(120), &mut [&mut p]);
    assert!(
        p.terminate(Duration::from_secs(60)).success(),
        "{}",
        p.log_tail()
    );

    cluster.assert_folded_once(&records, &storage);
    let log = std::fs::read_to_string(&p.log).unwrap();
    assert!(
        log.contains("resuming where the state ends"),
        "the moved offsets went unnoticed:\n{}",
        p.log_tail()
    );
}

/// A `~` record a later build writes beside the state is skipped, and a positions record this
/// build cannot read leaves the group's offsets to stand in: neither stops the restore.
#[test]
fn records_beside_the_state_of_a_later_build_are_skipped() {
    let Some(cluster) = Cluster::new("later", 1) else {
        return;
    };
    let events = generate_events(&SimConfig {
        tenants: 2,
        days: 20,
        scenario: Scenario::Mixed,
        ..SimConfig::default()
    });
    let mut engine = Engine::new(FoldConfig::default()).with_changelog();
    engine.apply_batch(&events, &mut Vec::new());
    let mut records = engine.take_changes().records;
    for (key, value) in [
        ("~positions", r#"{"v":2,"next":{"x":1}}"#),
        ("~something-new", "{}"),
    ] {
        records.push(StateRecord {
            key: key.to_owned(),
            value: Some(value.as_bytes().to_vec()),
        });
    }
    let producer = transactional_producer(&cluster.brokers, &format!("{}-writer", cluster.group));
    producer.begin_transaction().unwrap();
    send(&producer, &cluster.topics.state, &records);
    producer
        .commit_transaction(Duration::from_secs(30))
        .unwrap();

    let mut settings = Settings::new(cluster.brokers.clone(), cluster.group.clone());
    settings.topics = cluster.topics.clone();
    let hooks = ClientHooks::new(Arc::new(Metrics::new()));
    let mut state = read_state(
        &settings,
        &hooks,
        &BTreeSet::from([0]),
        &AtomicBool::new(false),
    )
    .expect("restore");
    let restored = state.remove(&0).unwrap();
    assert_eq!(restored.positions, None);
    let mut engine2 = Engine::new(FoldConfig::default()).with_changelog();
    assert_eq!(engine2.restore(&restored.tenants).unwrap(), engine.len());
}

/// A restore that takes longer than `max.poll.interval.ms` (a big state, a slow or throttled
/// broker) keeps the instance in its group: the restore runs beside the loop, which goes on
/// polling with the partitions paused. It ran inside the rebalance callback, holding the poll:
/// when an instance stopped and a survivor restored its partitions for longer than that,
/// librdkafka took the survivor out of the group mid-restore; it rejoined, was assigned the
/// partitions again and restored them again, without end. (A process's first assignment is
/// spared: librdkafka starts checking the poll interval once it is assigned.) Here a quota on
/// the survivor's restore client (`model-feedback-{instance}-restore`) makes its restore of the
/// stopped instance's partition outlast a 6 s poll interval.
#[test]
fn a_restore_longer_than_the_poll_interval_keeps_the_instance_in_its_group() {
    let Some(cluster) = Cluster::new("slowrestore", 2) else {
        return;
    };
    let records = generate(&SimConfig {
        seed: 17,
        tenants: 8,
        days: 150,
        ..SimConfig::default()
    });
    let (first, rest) = records.split_at(records.len() * 3 / 4);
    cluster.produce(first);
    let storage = cluster.dir.path().join("storage");
    let mut a = cluster.spawn("a", &storage, &[]);
    cluster.wait_caught_up(Duration::from_secs(120), &mut [&mut a]);

    let instance = format!("slow-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let client = format!("model-feedback-{instance}-restore");
    quota(
        &cluster,
        &client,
        &["--add-config", "consumer_byte_rate=16384"],
    );
    let storage_b = cluster.dir.path().join("storage-b");
    let mut b = cluster.spawn(
        &instance,
        &storage_b,
        &[
            "--kafka-config",
            "max.poll.interval.ms=6000",
            // Small fetches, so that the quota spreads the restore over many of them.
            "--kafka-config",
            "max.partition.fetch.bytes=16384",
        ],
    );
    // b takes one partition (its first assignment), then a stops and b takes the other.
    b.wait_restored(Duration::from_secs(120));
    assert!(a.terminate(Duration::from_secs(60)).success());
    cluster.produce(rest);
    cluster.wait_caught_up(Duration::from_secs(180), &mut [&mut b]);
    quota(
        &cluster,
        &client,
        &["--delete-config", "consumer_byte_rate"],
    );
    assert!(b.terminate(Duration::from_secs(60)).success());

    let log = std::fs::read_to_string(&b.log).unwrap();
    assert!(!log.contains("maximum poll interval"), "{log}");
    assert_eq!(
        log.matches("partitions assigned").count(),
        2,
        "b left its group and was assigned again:\n{log}"
    );
    let restores: Vec<&str> = (log.lines())
        .filter(|l| l.contains("restored state from the changelog"))
        .collect();
    eprintln!("{}", restores.join("\n"));
    assert_eq!(restores.len(), 2, "{log}");
    // The partition b had before gets its engine back at once and resumes while the other is
    // read: a seek between the second assignment and the end of its restore.
    assert_ne!(
        common::field(restores[1], "kept").as_deref(),
        Some("{}"),
        "{log}"
    );
    let second = log.rfind("partitions assigned").unwrap();
    let restored = log.rfind("restored state from the changelog").unwrap();
    assert!(
        log[second..restored].contains("reading resumes where the restored state ends"),
        "the kept partition waited for the other's restore:\n{log}"
    );
    let seconds: f64 = common::field(restores[1], "seconds")
        .and_then(|s| s.trim_matches('"').parse().ok())
        .unwrap_or_else(|| panic!("no seconds in {}", restores[1]));
    assert!(
        seconds > 6.0,
        "the restore took {seconds} s, not longer than the poll interval: the test tests nothing \
         (a larger history, or a smaller quota)"
    );

    // Every record folded once: b's documents (it owns every tenant at the end) and the alerts
    // of both are `fold`'s.
    cluster.assert_folded_once(&records, &storage_b);
}

/// A restore that reads nothing (here a broker quota on the restore's client so small that the
/// state's first batch never fits it; in the field, a broker that does not serve the state
/// topic, or librdkafka cut off from its brokers) is started again with new clients after
/// `--restore-stall`, with a warning and a metric, instead of leaving the partitions paused for
/// good. Once the quota is lifted, the next attempt restores, and the result is `fold`'s.
#[test]
fn a_restore_that_reads_nothing_is_started_again() {
    let Some(cluster) = Cluster::new("stalled", 2) else {
        return;
    };
    let records = generate(&SimConfig {
        seed: 19,
        tenants: 8,
        days: 60,
        ..SimConfig::default()
    });
    let (first, rest) = records.split_at(records.len() / 2);
    cluster.produce(first);
    let storage = cluster.dir.path().join("storage");
    let mut a = cluster.spawn("a", &storage, &[]);
    cluster.wait_caught_up(Duration::from_secs(120), &mut [&mut a]);
    assert!(a.terminate(Duration::from_secs(60)).success());
    cluster.produce(rest);

    let instance = format!(
        "stalled-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let client = format!("model-feedback-{instance}-restore");
    quota(
        &cluster,
        &client,
        &["--add-config", "consumer_byte_rate=1024"],
    );
    let mut b = cluster.spawn(&instance, &storage, &["--restore-stall", "5s"]);
    b.wait_log(
        "the restore is stuck: starting it again",
        Duration::from_secs(60),
    );
    quota(
        &cluster,
        &client,
        &["--delete-config", "consumer_byte_rate"],
    );
    cluster.wait_caught_up(Duration::from_secs(180), &mut [&mut b]);
    let metrics = b.http_get("/metrics");
    let stalled: u64 = (metrics.lines())
        .find_map(|l| l.strip_prefix("feedback_restores_stalled_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no stalled restores in\n{metrics}"));
    assert!(stalled >= 1, "{metrics}");
    assert!(b.terminate(Duration::from_secs(60)).success());

    cluster.assert_folded_once(&records, &storage);
}

/// Changes the broker's quotas of one client id (`scripts/kafka.sh configs`).
fn quota(cluster: &Cluster, client: &str, change: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .args(["configs", "--alter", "--entity-type", "clients"])
        .args(["--entity-name", client])
        .args(change)
        .env("KAFKA_BOOTSTRAP", &cluster.brokers)
        .output()
        .expect("run scripts/kafka.sh configs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
