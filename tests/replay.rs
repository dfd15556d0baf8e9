//! `feedback replay` on a real broker: what it rebuilds from the input topics equals what
//! `feedback fold` computes over the same records, all of them or from a date and for one
//! tenant; with --publish the alerts keep the guarantees of SPEC 5. Without KAFKA_BOOTSTRAP
//! these tests are skipped, except under CI=true, where they fail (tests/common).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{assert_alert_guarantees, assert_same_documents, Cluster};
use feedback::kafka::produce::InputProducer;
use feedback::simulate::{generate, SimConfig, SimRecord};
use rdkafka::producer::BaseRecord;
use serde_json::Value;

/// Runs `feedback replay` against the cluster's topics; returns its --json summary.
fn replay(cluster: &Cluster, storage: &Path, extra: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_feedback"))
        .args(["replay", "--brokers", &cluster.brokers, "--json"])
        .arg("--config")
        .arg(&cluster.config)
        .arg("--storage-dir")
        .arg(storage)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "replay failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `feedback fold --json` over `input`, into `storage`.
fn fold_summary(cluster: &Cluster, input: &Path, storage: &Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_feedback"))
        .arg("fold")
        .arg(input)
        .arg("--config")
        .arg(&cluster.config)
        .arg("--storage-dir")
        .arg(storage)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn history(days: u32) -> Vec<SimRecord> {
    generate(&SimConfig {
        seed: 11,
        tenants: 6,
        days,
        poison_rate: 0.01,
        ..SimConfig::default()
    })
}

#[test]
fn replay_rebuilds_what_fold_computes_and_publishes_on_request() {
    let Some(cluster) = Cluster::new("replay-all", 3) else {
        return;
    };
    let records = history(90);
    assert_eq!(cluster.produce(&records), records.len() as u64);
    let input = cluster.write_jsonl(&records);

    let replayed = cluster.dir.path().join("replay-storage");
    let summary = replay(&cluster, &replayed, &["--publish"]);
    let fold_storage = cluster.dir.path().join("fold-storage");
    let folded = fold_summary(&cluster, &input, &fold_storage);
    for key in [
        "records",
        "accepted",
        "rejected",
        "rejected_by_kind",
        "tenants",
    ] {
        assert_eq!(summary[key], folded[key], "{key}");
    }
    assert_eq!(summary["records"], records.len());
    assert!(
        summary["rejected"].as_u64().unwrap() > 0,
        "the poison records are counted"
    );
    assert_eq!(summary["published"], summary["alerts"]);
    assert_same_documents(&replayed, &fold_storage);

    // The published alerts: no id twice, one daily report per tenant and as_of, the same as
    // fold's, statuses alternating and ending with the tags.
    let (_, fold_alerts) = cluster.fold(vec![input]);
    let alerts = cluster.alerts();
    assert_eq!(alerts.len() as u64, summary["published"].as_u64().unwrap());
    assert_alert_guarantees(&alerts, &fold_alerts, &replayed);

    // Records produced after a replay are the next replay's: a second one sees them all.
    let more = generate(&SimConfig {
        seed: 12,
        tenants: 2,
        days: 10,
        ..SimConfig::default()
    });
    cluster.produce(&more);
    let again = replay(&cluster, &cluster.dir.path().join("again"), &[]);
    assert_eq!(again["records"], records.len() + more.len());
    assert_eq!(again["published"], 0, "no alert leaves without --publish");
}

/// Produces records with a given Kafka timestamp.
fn produce_at(cluster: &Cluster, records: &[SimRecord], timestamp_ms: i64) {
    let mut p = InputProducer::new(&cluster.brokers).unwrap();
    for r in records {
        let payload = r.payload_json();
        p.send_raw(
            BaseRecord::to(cluster.topic_of(r))
                .key(r.tenant.as_bytes())
                .payload(payload.as_bytes())
                .timestamp(timestamp_ms),
        )
        .unwrap();
    }
    p.flush(Duration::from_secs(60)).unwrap();
}

fn write_jsonl(cluster: &Cluster, name: &str, records: &[SimRecord]) -> PathBuf {
    let path = cluster.dir.path().join(name);
    let text: String = records
        .iter()
        .map(|r| r.jsonl(cluster.topic_of(r)) + "\n")
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn replay_from_a_date_for_one_tenant_equals_fold_over_those_records() {
    let Some(cluster) = Cluster::new("replay-from", 3) else {
        return;
    };
    let records = history(60);
    let split = records.len() / 2;
    // 2020-01-01 and 2020-06-01, midnight UTC.
    produce_at(&cluster, &records[..split], 1_577_836_800_000);
    produce_at(&cluster, &records[split..], 1_590_969_600_000);

    let tenant = "degraded-001";
    let wanted: Vec<SimRecord> = records[split..]
        .iter()
        .filter(|r| r.tenant == tenant)
        .cloned()
        .collect();
    assert!(!wanted.is_empty());
    let input = write_jsonl(&cluster, "from.jsonl", &wanted);

    let replayed = cluster.dir.path().join("replay-storage");
    let summary = replay(
        &cluster,
        &replayed,
        &[
            "--from-date",
            "2020-03-01",
            "--tenant",
            tenant,
            "--tenant",
            "nobody",
        ],
    );
    let fold_storage = cluster.dir.path().join("fold-storage");
    let folded = fold_summary(&cluster, &input, &fold_storage);
    for key in [
        "records",
        "accepted",
        "rejected",
        "rejected_by_kind",
        "tenants",
    ] {
        assert_eq!(summary[key], folded[key], "{key}");
    }
    assert_eq!(summary["tenants"], 1);
    assert_eq!(summary["not_found"], serde_json::json!(["nobody"]));
    assert!(summary["skipped"].as_u64().unwrap() > 0);
    assert_same_documents(&replayed, &fold_storage);
}
