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
use feedback::simulate::{generate_events, Scenario, SimConfig};
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

    let records: BTreeMap<String, TenantRecords> = state.remove(&0).unwrap();
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
