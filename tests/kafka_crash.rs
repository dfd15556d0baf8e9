//! Exactly-once on a real broker (issue 3, "Crash"): a seeded history of 200,000+ records over
//! 60 tenants, poison included, folded by `feedback run` while it is SIGKILLed three times at
//! random points and restarted. At the end the storage files hold what `feedback fold` computes
//! over the same records, and the committed alerts keep the guarantees of SPEC 5.

mod common;

use std::time::Duration;

use common::Cluster;
use feedback::simulate::{generate, Scenario, SimConfig, SimPayload};
use rand::{Rng, SeedableRng};

#[test]
fn sigkill_three_times_loses_and_repeats_nothing() {
    let Some(cluster) = Cluster::new("crash", 6) else {
        return;
    };
    let sim = SimConfig {
        seed: 7,
        tenants: 60,
        days: 360,
        scenario: Scenario::Mixed,
        poison_rate: 0.001,
        ..SimConfig::default()
    };
    let records = generate(&sim);
    let poison = records
        .iter()
        .filter(|r| matches!(r.payload, SimPayload::Poison(_)))
        .count();
    assert!(records.len() >= 200_000, "{} records", records.len());
    assert!(poison > 50);
    let produced = cluster.produce(&records);
    assert_eq!(produced as usize, records.len());

    let storage = cluster.dir.path().join("storage");
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(11);
    let (_, end) = cluster.progress();
    let mut last_kill_at = 0;
    for round in 0..3 {
        let mut p = cluster.spawn("crash", &storage, &[]);
        // Kill at a random point of the remaining work, once the process has committed some.
        let target = last_kill_at as f64 + rng.gen_range(0.1..0.3) * (end - last_kill_at) as f64;
        let start = std::time::Instant::now();
        loop {
            p.assert_running();
            let (committed, _) = cluster.progress();
            if committed as f64 >= target {
                last_kill_at = committed;
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(300),
                "round {round}: no progress past {committed}:\n{}",
                p.log_tail()
            );
            std::thread::sleep(Duration::from_millis(rng.gen_range(20..200)));
        }
        p.kill();
        eprintln!("round {round}: SIGKILL after {last_kill_at} of {end} input records committed");
    }
    let mut p = cluster.spawn("crash", &storage, &[]);
    p.wait_restored(Duration::from_secs(120));
    cluster.wait_caught_up(Duration::from_secs(600), &mut [&mut p]);
    let status = p.terminate(Duration::from_secs(60));
    assert!(status.success(), "exit {status}:\n{}", p.log_tail());

    cluster.assert_folded_once(&records, &storage);
    // Keyed by tenant, the CloudEvents envelope mirrored in the headers.
    for (key, headers, value) in cluster.read_all(&cluster.topics.alerts).iter().take(2000) {
        let a: feedback::alert::Alert = serde_json::from_slice(value).unwrap();
        assert_eq!(key, a.subject.as_bytes());
        for (name, want) in a.headers() {
            assert_eq!(headers.get(name).map(String::as_str), Some(want), "{name}");
        }
    }

    let dlq = cluster.read_all(&cluster.topics.dlq);
    assert_eq!(dlq.len(), poison, "every poison record once in the DLQ");
    for (_, headers, _) in &dlq {
        for h in [
            "error.kind",
            "error.message",
            "source.topic",
            "source.partition",
            "source.offset",
        ] {
            assert!(
                headers.contains_key(h),
                "DLQ record without {h}: {headers:?}"
            );
        }
    }
}
