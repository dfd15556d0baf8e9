//! Scale-out on a real broker (issue 3, "Scale-out"): two instances in one group share six
//! partitions; one is stopped mid-run (SIGTERM: it commits and leaves), the other takes its
//! partitions over, restores their tenants and finishes. The result is what `feedback fold`
//! computes, and the committed alerts keep the guarantees of SPEC 5.

mod common;

use std::time::{Duration, Instant};

use common::{field, Cluster};
use feedback::simulate::{generate, Scenario, SimConfig};

/// The partition sets an instance's log says it was assigned, in order.
fn assignments(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("partitions assigned"))
        .filter_map(|l| l.split("partitions=").nth(1).map(|s| s.trim().to_owned()))
        .collect()
}

#[test]
fn the_survivor_takes_over_the_stopped_instances_partitions() {
    let Some(cluster) = Cluster::new("scale", 6) else {
        return;
    };
    let sim = SimConfig {
        seed: 21,
        tenants: 48,
        days: 300,
        scenario: Scenario::Mixed,
        poison_rate: 0.001,
        ..SimConfig::default()
    };
    let records = generate(&sim);
    // Most of the history first; the rest only once `a` has stopped, so the stop is mid-run
    // however fast the two are.
    let split = records.len() * 3 / 5;
    cluster.produce(&records[..split]);
    let storage = cluster.dir.path().join("storage");

    let mut a = cluster.spawn("a", &storage, &[]);
    let mut b = cluster.spawn("b", &storage, &[]);
    // Both hold partitions and have made progress together before one goes.
    let start = Instant::now();
    loop {
        a.assert_running();
        b.assert_running();
        let (committed, end) = cluster.progress();
        let both = assignments(&a.log).last().is_some_and(|p| p != "{}")
            && assignments(&b.log).last().is_some_and(|p| p != "{}");
        if both && committed as f64 >= 0.3 * end as f64 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no shared progress: {committed} of {end}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Each tenant with documents is owned by exactly one of the two (their APIs say so), never
    // by both; during a rebalance an instance says nothing (`owned` absent), and for a moment
    // after it a tenant is owned by neither, until its new owner has restored it.
    let start = Instant::now();
    loop {
        let (in_a, in_b) = (a.tenants_owned(), b.tenants_owned());
        let mut settled = !in_a.is_empty();
        for (tenant, owned_a) in &in_a {
            let owned_b = in_b.get(tenant).copied().flatten();
            assert!(
                !(*owned_a == Some(true) && owned_b == Some(true)),
                "{tenant} owned by both"
            );
            settled &= owned_a.is_some() && owned_b.is_some();
            settled &= *owned_a == Some(true) || owned_b == Some(true);
        }
        if settled {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "tenants owned by neither: {in_a:?} {in_b:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (committed, _) = cluster.progress();
    let status = a.terminate(Duration::from_secs(60));
    assert!(status.success(), "a: exit {status}:\n{}", a.log_tail());
    eprintln!(
        "stopped a after {committed} of {} records were committed",
        records.len()
    );
    cluster.produce(&records[split..]);

    cluster.wait_caught_up(Duration::from_secs(600), &mut [&mut b]);
    let last = assignments(&b.log);
    assert_eq!(
        last.last().map(String::as_str),
        Some("{0, 1, 2, 3, 4, 5}"),
        "b should end up with every partition: {last:?}"
    );
    let in_b = b.tenants_owned();
    assert!(
        in_b.values().all(|o| *o == Some(true)),
        "b owns every tenant now: {in_b:?}"
    );
    let status = b.terminate(Duration::from_secs(60));
    assert!(status.success(), "b: exit {status}:\n{}", b.log_tail());

    cluster.assert_folded_once(&records, &storage);
}

/// The eager protocol revokes every partition at each rebalance, and most come straight back:
/// an instance keeps the state of those (nothing was written to them meanwhile) instead of
/// reading the changelog again, and the result is still what `feedback fold` computes.
#[test]
fn partitions_that_come_back_after_a_rebalance_keep_their_state() {
    let Some(cluster) = Cluster::new("kept", 6) else {
        return;
    };
    let records = generate(&SimConfig {
        seed: 23,
        tenants: 24,
        days: 120,
        scenario: Scenario::Mixed,
        ..SimConfig::default()
    });
    let split = records.len() / 2;
    cluster.produce(&records[..split]);
    let storage = cluster.dir.path().join("storage");
    let mut a = cluster.spawn("a", &storage, &[]);
    cluster.wait_caught_up(Duration::from_secs(300), &mut [&mut a]);

    // A second instance joins: `a` gives up every partition, gets half of them back, and keeps
    // those from before (a rewind in between would restore with nothing kept: the first restore
    // that kept anything is the one to look at).
    let mut b = cluster.spawn("b", &storage, &[]);
    let start = Instant::now();
    let restored = loop {
        a.assert_running();
        b.assert_running();
        let log = std::fs::read_to_string(&a.log).unwrap();
        let kept = (log.lines())
            .filter(|l| l.contains("restored state from the changelog"))
            .find(|l| field(l, "kept").is_some_and(|k| k != "{}"));
        let shared = assignments(&b.log).last().is_some_and(|p| p != "{}");
        if let Some(line) = kept.filter(|_| shared) {
            break line.to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no restore that kept partitions in a:\n{}",
            a.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let partitions = field(&restored, "partitions").unwrap();
    assert_ne!(partitions, "{}", "{restored}");
    assert_eq!(
        field(&restored, "kept"),
        Some(partitions.clone()),
        "every partition a got back was kept: {restored}"
    );
    let kept = partitions.matches(',').count() + 1;
    let metrics = a.http_get("/metrics");
    let counted = (metrics.lines())
        .find_map(|l| l.strip_prefix("feedback_partitions_restored_total{how=\"kept\"} "))
        .and_then(|n| n.trim().parse::<usize>().ok());
    assert!(counted >= Some(kept), "{kept} kept: {metrics}");

    cluster.produce(&records[split..]);
    cluster.wait_caught_up(Duration::from_secs(300), &mut [&mut a, &mut b]);
    for p in [&mut a, &mut b] {
        let status = p.terminate(Duration::from_secs(60));
        assert!(status.success(), "exit {status}:\n{}", p.log_tail());
    }
    cluster.assert_folded_once(&records, &storage);
}

/// A zombie: an instance frozen (SIGSTOP) with a transaction open, for longer than the session
/// timeout (the group gives its partitions to the other instance, which restores them and goes
/// on) but not its transaction timeout, then thawed. It finds its assignment lost and aborts
/// what it folded before the freeze instead of committing it (the broker would refuse the
/// offsets of the lost member too, but that is not counted on), and rejoins; at the end every
/// record is folded exactly once. The two share a storage directory: the documents a thawed
/// zombie still writes from before the freeze are written again by their owner (see
/// `documents_someone_else_changes_are_written_again`).
#[test]
fn a_frozen_instance_that_comes_back_commits_nothing_of_what_it_lost() {
    let Some(cluster) = Cluster::new("zombie", 4) else {
        return;
    };
    let records = generate(&SimConfig {
        seed: 31,
        tenants: 24,
        days: 300,
        scenario: Scenario::Mixed,
        ..SimConfig::default()
    });
    let split = records.len() / 3;
    cluster.produce(&records[..split]);
    let storage = cluster.dir.path().join("storage");
    // a commits seldom: whatever it folds before the freeze is in its open transaction.
    let mut a = cluster.spawn("a", &storage, &["--commit-interval", "30s"]);
    let mut b = cluster.spawn("b", &storage, &[]);
    let start = Instant::now();
    while !(assignments(&a.log).last().is_some_and(|p| p != "{}")
        && assignments(&b.log).last().is_some_and(|p| p != "{}"))
    {
        a.assert_running();
        b.assert_running();
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no shared assignment"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let held = assignments(&a.log);
    // The rest arrives as a steady stream, so that a is folding, a transaction open, when it
    // is frozen, and b goes on folding once it has taken a's partitions over.
    let rest = &records[split..];
    let frozen = std::thread::scope(|scope| {
        scope.spawn(|| {
            for chunk in rest.chunks(1000) {
                cluster.produce(chunk);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        std::thread::sleep(Duration::from_secs(2));
        a.signal(rustix::process::Signal::STOP);
        let frozen = Instant::now();
        // b is given every partition once a's session times out (6 s).
        while assignments(&b.log).last().map(String::as_str) != Some("{0, 1, 2, 3}") {
            b.assert_running();
            assert!(
                frozen.elapsed() < Duration::from_secs(60),
                "b was not given a's partitions:\n{}",
                b.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Thawed within the transaction timeout (90 s with a 30 s commit interval): its
        // transaction is still open at the broker.
        std::thread::sleep(Duration::from_secs(8).saturating_sub(frozen.elapsed()));
        a.signal(rustix::process::Signal::CONT);
        frozen.elapsed()
    });
    eprintln!("a, holding {:?}, frozen for {frozen:?}", held.last());

    // a finds its assignment lost, rejoins, and the two share the partitions again.
    let start = Instant::now();
    loop {
        a.assert_running();
        b.assert_running();
        let log = std::fs::read_to_string(&a.log).unwrap();
        let assigned = log.rfind("partitions assigned");
        let restored = log.rfind("restored state from the changelog");
        let again = assignments(&a.log).len() > held.len()
            && assignments(&a.log).last().is_some_and(|p| p != "{}");
        if again && restored > assigned {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "a did not rejoin:\n{}",
            a.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.wait_caught_up(Duration::from_secs(600), &mut [&mut a, &mut b]);
    let log = std::fs::read_to_string(&a.log).unwrap();
    for (name, p) in [("a", &mut a), ("b", &mut b)] {
        let status = p.terminate(Duration::from_secs(60));
        assert!(status.success(), "{name}: exit {status}:\n{}", p.log_tail());
    }

    cluster.assert_folded_once(&records, &storage);
    // What a folded before the freeze was in a transaction, aborted once thawed.
    let lost = (log.lines())
        .find(|l| l.contains("the assignment was lost"))
        .unwrap_or_else(|| panic!("a did not find its assignment lost:\n{log}"));
    assert!(lost.contains("transaction_open=true"), "{lost}");
}

/// Documents of a tenant this instance owns that someone else changes after it wrote them (an
/// instance that had lost the tenant writing late into a shared directory, as a thawed zombie
/// can; a hand edit) are written again within a storage interval or two, instead of standing
/// until the tenant next changes.
#[test]
fn documents_someone_else_changes_are_written_again() {
    let Some(cluster) = Cluster::new("rewritten", 1) else {
        return;
    };
    let records = generate(&SimConfig {
        seed: 41,
        tenants: 3,
        days: 40,
        ..SimConfig::default()
    });
    cluster.produce(&records);
    let storage = cluster.dir.path().join("storage");
    let mut a = cluster.spawn("a", &storage, &[]);
    cluster.wait_caught_up(Duration::from_secs(120), &mut [&mut a]);
    let dir = storage.join("metadata/performance");
    let tenant = &records[0].tenant;
    let files = [
        format!("{tenant}.json"),
        format!("{tenant}_calibration.json"),
        format!("{tenant}_drift.json"),
    ];
    let read_files = || -> Vec<Option<String>> {
        (files.iter())
            .map(|f| std::fs::read_to_string(dir.join(f)).ok())
            .collect()
    };
    // The documents as the processor keeps them, once a round has written what was committed.
    let start = Instant::now();
    let written = loop {
        let read = read_files();
        std::thread::sleep(Duration::from_secs(3));
        let again = read_files();
        if read == again && read.iter().all(Option::is_some) {
            break read;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no settled documents"
        );
    };
    // Someone else changes one document at a time (the check must look at each of the three),
    // then all three, as an instance writing a tenant's documents does; one is removed.
    let someone_else =
        |f: &String| std::fs::write(dir.join(f), "{\"written\": \"by someone else\"}\n").unwrap();
    let rounds: [(&str, &dyn Fn()); 4] = [
        ("the performance document overwritten", &|| {
            someone_else(&files[0])
        }),
        ("the drift document removed", &|| {
            std::fs::remove_file(dir.join(&files[2])).unwrap()
        }),
        ("the calibration document overwritten", &|| {
            someone_else(&files[1])
        }),
        ("all three overwritten", &|| {
            files.iter().for_each(someone_else)
        }),
    ];
    for (round, (what, change)) in rounds.iter().enumerate() {
        change();
        assert_ne!(read_files(), written, "{what}");
        let start = Instant::now();
        while read_files() != written {
            a.assert_running();
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{what}: the documents were not written again:\n{}",
                a.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // Counted once the writer has reported it (it writes again right after).
        let counted = format!("feedback_documents_rewritten_total {}", round + 1);
        let start = Instant::now();
        loop {
            let metrics = a.http_get("/metrics");
            if metrics.contains(&counted) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{what}: {counted} not found in\n{metrics}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert!(a.terminate(Duration::from_secs(60)).success());
}
