//! Start-up checks of `feedback run` on a real broker (SPEC 2): input topics that are not
//! co-partitioned, a topic that is missing, a state topic that is not compacted, or one that
//! holds another group's state stop it with exit code 2 and a message that says what is wrong.

mod common;

use std::process::Command;
use std::time::Duration;

use rdkafka::admin::{AdminOptions, AlterConfig, NewPartitions, ResourceSpecifier};

fn run_feedback(brokers: &str, config: &std::path::Path) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_feedback"))
        .args(["run", "--brokers", brokers, "--http", "127.0.0.1:0"])
        .arg("--config")
        .arg(config)
        .arg("--storage-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn mismatched_or_missing_topics_stop_run_with_a_clear_message() {
    let Some(cluster) = common::Cluster::new("start", 3) else {
        return;
    };
    // A fourth partition on forecasts breaks co-partitioning.
    let (admin, rt) = cluster.admin();
    let results = rt
        .block_on(admin.create_partitions(
            &[NewPartitions::new(&cluster.topics.forecasts, 4)],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        ))
        .unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    // The broker's metadata shows the new partition a moment after CreatePartitions returns:
    // until then `run` would see three and start.
    let start = std::time::Instant::now();
    while admin
        .inner()
        .fetch_metadata(Some(&cluster.topics.forecasts), Duration::from_secs(5))
        .map_or(0, |m| m.topics()[0].partitions().len())
        < 4
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no fourth partition in the metadata"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, stderr) = run_feedback(&cluster.brokers, &cluster.config);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("not co-partitioned"), "{stderr}");
    assert!(
        stderr.contains(&format!("{} has 4", cluster.topics.forecasts)),
        "{stderr}"
    );

    // A config naming a state topic that does not exist (on a fresh, co-partitioned set).
    let Some(fresh) = common::Cluster::new("start2", 3) else {
        return;
    };
    let text = std::fs::read_to_string(&fresh.config).unwrap();
    let other = format!("{}-nope", fresh.topics.state);
    let missing = fresh.dir.path().join("missing.toml");
    std::fs::write(
        &missing,
        text.replace(
            &format!("state = {:?}", fresh.topics.state),
            &format!("state = {other:?}"),
        ),
    )
    .unwrap();
    let (code, stderr) = run_feedback(&fresh.brokers, &missing);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!("topic {other:?} does not exist")),
        "{stderr}"
    );

    // A state topic that deletes old records instead of compacting them.
    let altered = rt
        .block_on(
            admin.alter_configs(
                &[
                    AlterConfig::new(ResourceSpecifier::Topic(&fresh.topics.state))
                        .set("cleanup.policy", "delete"),
                ],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            ),
        )
        .unwrap();
    assert!(altered.iter().all(Result::is_ok), "{altered:?}");
    let (code, stderr) = run_feedback(&fresh.brokers, &fresh.config);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "state topic {:?} has cleanup.policy=delete",
            fresh.topics.state
        )),
        "{stderr}"
    );
}

/// A second consumer group on the same topics would restore the first group's state and then
/// fold every input record again on top of it: refused, and nothing written.
#[test]
fn a_group_is_refused_the_state_another_group_wrote() {
    let Some(cluster) = common::Cluster::new("foreign", 2) else {
        return;
    };
    let records = feedback::simulate::generate(&feedback::simulate::SimConfig {
        seed: 9,
        tenants: 4,
        days: 20,
        ..feedback::simulate::SimConfig::default()
    });
    cluster.produce(&records);
    let storage = cluster.dir.path().join("storage");
    let mut first = cluster.spawn("first", &storage, &[]);
    cluster.wait_caught_up(Duration::from_secs(120), &mut [&mut first]);
    assert!(first.terminate(Duration::from_secs(60)).success());
    let alerts = cluster.alerts().len();
    assert!(alerts > 0);

    let other = cluster.dir.path().join("other");
    let mut second =
        cluster.spawn_in_group(&format!("{}-other", cluster.group), "second", &other, &[]);
    let status = second.wait_exit(Duration::from_secs(120));
    let log = second.log_tail();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("committed no offsets there"), "{log}");
    assert!(log.contains("another consumer group"), "{log}");
    assert_eq!(
        cluster.alerts().len(),
        alerts,
        "the refused group published nothing"
    );
    // The group the state belongs to still starts from it.
    let mut again = cluster.spawn("first", &storage, &[]);
    again.wait_restored(Duration::from_secs(60));
    assert!(again.terminate(Duration::from_secs(60)).success());
    assert_eq!(cluster.alerts().len(), alerts);
}

/// A seeded history of `tenants` x `days`, whose first half `run` folds and then stops: the
/// records, and the storage directory it wrote.
fn first_half_folded(
    cluster: &common::Cluster,
    seed: u64,
    tenants: usize,
    days: u32,
) -> (Vec<feedback::simulate::SimRecord>, std::path::PathBuf) {
    let records = feedback::simulate::generate(&feedback::simulate::SimConfig {
        seed,
        tenants,
        days,
        ..feedback::simulate::SimConfig::default()
    });
    cluster.produce(&records[..records.len() / 2]);
    let storage = cluster.dir.path().join("storage");
    let mut first = cluster.spawn("first", &storage, &[]);
    cluster.wait_caught_up(Duration::from_secs(120), &mut [&mut first]);
    assert!(first.terminate(Duration::from_secs(60)).success());
    (records, storage)
}

/// A group left without members longer than `offsets.retention.minutes` (a week by default)
/// loses its committed offsets, but not its state: the positions record beside the state names
/// the group, so `run` resumes from it instead of refusing it as another group's, and folds
/// what came meanwhile exactly once.
#[test]
fn a_group_whose_offsets_expired_resumes_from_its_state() {
    let Some(cluster) = common::Cluster::new("expired", 2) else {
        return;
    };
    let (records, storage) = first_half_folded(&cluster, 11, 4, 30);
    let after = &records[records.len() / 2..];

    // What expiry leaves: the group and its offsets gone, the state topic as it was.
    let (admin, rt) = cluster.admin();
    let deleted = rt
        .block_on(admin.delete_groups(
            &[&cluster.group],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        ))
        .unwrap();
    assert!(deleted.iter().all(Result::is_ok), "{deleted:?}");
    cluster.produce(after);

    let mut again = cluster.spawn("again", &storage, &[]);
    cluster.wait_caught_up(Duration::from_secs(120), &mut [&mut again]);
    let log = std::fs::read_to_string(&again.log).unwrap();
    assert!(
        log.contains("their state was written by this group"),
        "{log}"
    );
    assert!(again.terminate(Duration::from_secs(60)).success());

    // Every record folded once: the same documents and alert guarantees as `fold` over all.
    cluster.assert_folded_once(&records, &storage);
}

/// Records the input's retention deletes before `run` reads them (an instance down for longer
/// than the retention) are gone for good: the assignment says how many, where, instead of
/// letting librdkafka skip past them without a word.
#[test]
fn records_deleted_by_retention_before_they_were_read_are_named() {
    let Some(cluster) = common::Cluster::new("retention", 1) else {
        return;
    };
    let (records, storage) = first_half_folded(&cluster, 13, 3, 20);

    // While it is down, more outcomes come, and the first five of them are deleted.
    cluster.produce(&records[records.len() / 2..]);
    let (admin, rt) = cluster.admin();
    let start = (cluster.committed(&cluster.topics.outcomes, 0)).expect("a committed offset");
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(
        &cluster.topics.outcomes,
        0,
        rdkafka::Offset::Offset(start + 5),
    )
    .unwrap();
    let deleted = rt
        .block_on(admin.delete_records(
            &tpl,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        ))
        .unwrap();
    assert!(
        deleted.elements().iter().all(|e| e.error().is_ok()),
        "{deleted:?}"
    );

    let mut again = cluster.spawn("again", &storage, &[]);
    cluster.wait_caught_up(Duration::from_secs(120), &mut [&mut again]);
    let metrics = again.http_get("/metrics");
    assert!(
        metrics.contains("feedback_input_records_lost_total 5"),
        "{metrics}"
    );
    assert!(again.terminate(Duration::from_secs(60)).success());
    let log = std::fs::read_to_string(&again.log).unwrap();
    let line = (log.lines())
        .find(|l| l.contains("deleted by the topic's retention"))
        .unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert!(line.contains("missing=5"), "{line}");
    assert!(line.contains(&format!("resume={start}")), "{line}");
}

/// Partitions added to the inputs while `run` runs: once the group rebalances onto them,
/// tenants' records land on other partitions than their state (and here the state topic lacks
/// the new partition, where a restore would wait forever). Refused instead.
#[test]
fn partitions_added_while_running_stop_it_with_the_reason() {
    let Some(cluster) = common::Cluster::new("grown", 2) else {
        return;
    };
    let storage = cluster.dir.path().join("storage");
    let mut p = cluster.spawn(
        "grown",
        &storage,
        &["--kafka-config", "topic.metadata.refresh.interval.ms=1000"],
    );
    p.wait_restored(Duration::from_secs(60));
    let t = &cluster.topics;
    grow(
        &cluster,
        &[&t.outcomes, &t.forecasts, &t.feature_importances],
        3,
    );
    refused(&mut p, "partitions were added to them while it ran");
}

/// Gives `topics` `partitions` partitions.
fn grow(cluster: &common::Cluster, topics: &[&str], partitions: usize) {
    let (admin, rt) = cluster.admin();
    let grown: Vec<NewPartitions> = (topics.iter())
        .map(|t| NewPartitions::new(t, partitions))
        .collect();
    let results = rt
        .block_on(admin.create_partitions(&grown, &AdminOptions::new()))
        .unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
}

/// Waits for `p` to stop with exit code 2 and `reason` in its log; the log.
fn refused(p: &mut common::Process, reason: &str) -> String {
    let status = p.wait_exit(Duration::from_secs(120));
    let log = p.log_tail();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains(reason), "{log}");
    log
}

/// Partitions added to every topic, the state topic too, so that a restart passes the start-up
/// checks: the running instance stops when it is assigned the new partition, and a restart
/// refuses the state, whose tenants' records now go to other partitions, before folding
/// anything.
#[test]
fn state_written_with_another_partition_count_is_refused() {
    let Some(cluster) = common::Cluster::new("regrown", 2) else {
        return;
    };
    let records = feedback::simulate::generate(&feedback::simulate::SimConfig {
        seed: 5,
        tenants: 6,
        days: 10,
        ..feedback::simulate::SimConfig::default()
    });
    let tenants: std::collections::BTreeSet<&str> =
        records.iter().map(|r| r.tenant.as_str()).collect();
    let moved: Vec<&str> = (tenants.iter().copied())
        .filter(|t| {
            use feedback::kafka::routing::partition_of;
            partition_of(t.as_bytes(), 2) != partition_of(t.as_bytes(), 3)
        })
        .collect();
    assert!(
        !moved.is_empty(),
        "some tenant changes partition: {tenants:?}"
    );
    cluster.produce(&records);
    let storage = cluster.dir.path().join("storage");
    let refresh = ["--kafka-config", "topic.metadata.refresh.interval.ms=1000"];
    let mut p = cluster.spawn("regrown", &storage, &refresh);
    cluster.wait_caught_up(Duration::from_secs(120), &mut [&mut p]);
    let alerts = cluster.alerts().len();
    assert!(alerts > 0);
    let t = &cluster.topics;
    let every = [&t.outcomes, &t.forecasts, &t.feature_importances, &t.state];
    grow(&cluster, &every.map(String::as_str), 3);
    refused(
        &mut p,
        "assigned input partition 2, but the input topics had 2 partitions",
    );

    let mut again = cluster.spawn("regrown", &storage, &refresh);
    let log = refused(
        &mut again,
        "on another partition than their records go to among the 3 partitions",
    );
    assert!(
        log.contains("it was written while the inputs had another partition count"),
        "{log}"
    );
    assert!(
        moved
            .iter()
            .any(|t| log.contains(&format!("{t:?} in partition"))),
        "names a tenant that moved ({moved:?}):\n{log}"
    );
    assert!(!log.contains("restored state from the changelog"), "{log}");
    assert_eq!(cluster.alerts().len(), alerts, "nothing published");
}
