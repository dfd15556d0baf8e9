//! `feedback produce` and `feedback simulate --brokers` on a real broker: what lands in the
//! topics, keyed by tenant, one tenant to one partition; a file with an invalid line produces
//! nothing. Without KAFKA_BOOTSTRAP skipped, except under CI=true, where they fail (tests/common).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use common::Cluster;

fn feedback(cluster: &Cluster, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_feedback"))
        .args(args)
        .args(["--brokers", &cluster.brokers])
        .arg("--config")
        .arg(&cluster.config)
        .output()
        .unwrap()
}

/// Tenant (key) to the partitions its records are on, for the records of `topic`, read back.
fn partitions_by_tenant(
    cluster: &Cluster,
    topic: &str,
) -> (usize, BTreeMap<String, BTreeSet<i32>>) {
    // read_all does not say which partition a record came from; read each partition alone.
    let mut by_tenant: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    let mut count = 0;
    for p in 0..cluster.partitions {
        for (key, value) in read_partition(cluster, topic, p) {
            let v: serde_json::Value = serde_json::from_slice(&value).unwrap();
            let key = String::from_utf8(key).unwrap();
            assert_eq!(v["tenant"], key.as_str(), "the key is the tenant");
            by_tenant.entry(key).or_default().insert(p);
            count += 1;
        }
    }
    (count, by_tenant)
}

fn read_partition(cluster: &Cluster, topic: &str, partition: i32) -> Vec<(Vec<u8>, Vec<u8>)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &cluster.brokers)
        .set("group.id", "kafka-produce-test")
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, rdkafka::Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let start = std::time::Instant::now();
    loop {
        assert!(
            start.elapsed().as_secs() < 60,
            "reading {topic} took too long"
        );
        match c.poll(std::time::Duration::from_millis(200)) {
            Some(Ok(m)) => out.push((
                m.key().unwrap_or_default().to_vec(),
                m.payload().unwrap_or_default().to_vec(),
            )),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return out,
            Some(Err(e)) => panic!("{e}"),
            None => {}
        }
    }
}

#[test]
fn produce_validates_the_whole_file_then_produces_it_keyed_by_tenant() {
    let Some(cluster) = Cluster::new("produce", 3) else {
        return;
    };
    let dir = cluster.dir.path();
    let history = dir.join("history.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_feedback"))
        .args(["simulate", "--days", "20", "--tenants", "6", "--out"])
        .arg(&history)
        .output()
        .unwrap();
    assert!(out.status.success());
    // The outcome payloads alone, one per line, as a connector would write them.
    let outcomes: Vec<String> = std::fs::read_to_string(&history)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["topic"] == "outcomes")
        .map(|r| r["payload"].to_string())
        .collect();
    let good = dir.join("outcomes.jsonl");
    std::fs::write(&good, outcomes.join("\n") + "\n").unwrap();
    let mut bad_lines = outcomes.clone();
    bad_lines.insert(3, r#"{"tenant": "healthy-000", "date": "2026-08-01", "channel": "meta", "spend": -1, "revenue": 2}"#.into());
    bad_lines.push("{not json".into());
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, bad_lines.join("\n") + "\n").unwrap();

    let out = feedback(
        &cluster,
        &[
            "produce",
            "--topic",
            &cluster.topics.outcomes,
            bad.to_str().unwrap(),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.jsonl:4: invalid_field"), "{stderr}");
    assert!(
        stderr.contains(&format!("bad.jsonl:{}: malformed", bad_lines.len())),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was produced"), "{stderr}");
    assert_eq!(
        partitions_by_tenant(&cluster, &cluster.topics.outcomes).0,
        0
    );

    let out = feedback(
        &cluster,
        &[
            "produce",
            "--topic",
            &cluster.topics.outcomes,
            good.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["produced"], outcomes.len());
    assert_eq!(report["tenants"], 6);
    let (count, by_tenant) = partitions_by_tenant(&cluster, &cluster.topics.outcomes);
    assert_eq!(count, outcomes.len());
    assert_eq!(by_tenant.len(), 6);
    assert!(
        by_tenant.values().all(|p| p.len() == 1),
        "one partition per tenant: {by_tenant:?}"
    );

    // simulate --brokers puts every tenant on the same partition as produce did, on every topic.
    let out = feedback(&cluster, &["simulate", "--days", "20", "--tenants", "6"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for topic in cluster.topics.inputs() {
        let (_, placed) = partitions_by_tenant(&cluster, topic);
        assert_eq!(placed, by_tenant, "{topic}");
    }
    // And the bytes are those of the JSONL file.
    let jsonl_payloads: BTreeSet<String> = std::fs::read_to_string(&history)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["topic"] == "forecasts")
        .map(|r| r["payload"].to_string())
        .collect();
    let produced: BTreeSet<String> = cluster
        .read_all(&cluster.topics.forecasts)
        .into_iter()
        .map(|(_, _, v)| {
            serde_json::from_slice::<serde_json::Value>(&v)
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(produced, jsonl_payloads);

    let out = feedback(
        &cluster,
        &[
            "produce",
            "--topic",
            &cluster.topics.alerts,
            good.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "alerts is not an input topic");
}
