//! The `feedback` binary as a user meets it: exit codes and messages for bad inputs.

use std::process::Command;

fn feedback(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_feedback"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn missing_input_is_a_clear_error_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let out = feedback(&[
        "fold",
        "/nonexistent/history.jsonl",
        "--storage-dir",
        storage.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot open input /nonexistent/history.jsonl"),
        "{stderr}"
    );
    assert!(
        !storage.exists(),
        "nothing is written when an input is missing"
    );
    assert_eq!(
        stderr.matches("No such file").count(),
        1,
        "the cause is said once: {stderr}"
    );
}

#[test]
fn a_directory_as_input_is_refused_before_any_output_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let alerts = dir.path().join("alerts.jsonl");
    std::fs::write(&alerts, "keep me\n").unwrap();
    let out = feedback(&[
        "fold",
        dir.path().to_str().unwrap(),
        "--alerts-out",
        alerts.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("it is a directory"));
    assert_eq!(std::fs::read_to_string(&alerts).unwrap(), "keep me\n");
}

#[test]
fn output_files_may_name_directories_that_do_not_exist_yet() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "garbage\n").unwrap();
    let alerts = dir.path().join("out/alerts/alerts.jsonl");
    let dlq = dir.path().join("out/dlq.jsonl");
    let out = feedback(&[
        "fold",
        input.to_str().unwrap(),
        "--storage-dir",
        dir.path().join("out/storage").to_str().unwrap(),
        "--alerts-out",
        alerts.to_str().unwrap(),
        "--dlq-out",
        dlq.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&alerts).unwrap(), "");
    assert_eq!(std::fs::read_to_string(&dlq).unwrap().lines().count(), 1);

    // `simulate --out` too.
    let history = dir.path().join("sim/new/history.jsonl");
    let out = feedback(&[
        "simulate",
        "--days",
        "2",
        "--tenants",
        "1",
        "--out",
        history.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read_to_string(&history).unwrap().lines().count() > 5);
}

#[test]
fn counts_of_zero_and_negative_numbers_get_clear_errors() {
    for (args, said) in [
        (&["simulate", "--channels", "0"][..], "must be at least 1"),
        (&["simulate", "--days", "0"][..], "must be at least 1"),
        (
            &["simulate", "--start", "2999-12-20", "--days", "20"][..],
            "a history of 20 days from 2999-12-20 (its plans reach 28 days further) leaves the \
             years 1970 to 2999",
        ),
        (
            &["simulate", "--start", "1969-12-31"][..],
            "leaves the years 1970 to 2999",
        ),
        (
            &["demo", "--days", "400000", "--http", "127.0.0.1:0"][..],
            "--days: a history of 400000 days from 2026-08-01",
        ),
        (
            &["alert-forecast", "acme", "--threshold", "-0.1"][..],
            "--threshold must be between 0 and 1, got -0.1",
        ),
        (
            &["demo", "--duration", "-5s"][..],
            "invalid value '-5s' for '--duration",
        ),
    ] {
        let out = feedback(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(said), "{args:?}: {stderr}");
    }
}

#[test]
fn invalid_config_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "retention_dayz = 3\n").unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "").unwrap();
    let out = feedback(&[
        "fold",
        input.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("retention_dayz"));
}

#[test]
fn bad_records_do_not_stop_the_fold() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        concat!(
            "garbage\n",
            r#"{"topic": "outcomes", "payload": {"tenant": "acme", "date": "2026-11-20", "channel": "meta", "spend": 1, "revenue": 2}}"#,
            "\n",
            r#"{"topic": "outcomes", "payload": {"tenant": "acme", "date": "2026-11-20", "channel": "meta", "spend": -1, "revenue": 2}}"#,
            "\n",
            // As `kcat -J` prints a record: its bytes in a JSON string.
            r#"{"topic": "outcomes", "payload": "{\"tenant\": \"acme\", \"spend\": -1}"}"#,
            "\n",
            r#"{"topic": "clicks", "payload": "{\"tenant\": \"acme\"}"}"#,
            "\n"
        ),
    )
    .unwrap();
    let dlq = dir.path().join("dlq.jsonl");
    let storage = dir.path().join("s");
    let out = feedback(&[
        "fold",
        input.to_str().unwrap(),
        "--storage-dir",
        storage.to_str().unwrap(),
        "--dlq-out",
        dlq.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["records"], 5);
    assert_eq!(summary["accepted"], 1);
    assert_eq!(summary["rejected_by_kind"]["malformed"], 1);
    assert_eq!(summary["rejected_by_kind"]["invalid_field"], 1);
    assert_eq!(summary["rejected_by_kind"]["schema_mismatch"], 1);
    assert_eq!(summary["rejected_by_kind"]["unknown_topic"], 1);
    let dlq = std::fs::read_to_string(dlq).unwrap();
    assert_eq!(dlq.lines().count(), 4);
    // Each refused record's payload is its bytes: an object's text, a string's contents (not
    // the string as JSON, quotes and escapes and all).
    let payloads: Vec<String> = dlq
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["payload"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(payloads[0], "garbage");
    assert!(
        payloads[1].starts_with(r#"{"tenant": "acme", "date""#),
        "{}",
        payloads[1]
    );
    assert_eq!(payloads[2], r#"{"tenant": "acme", "spend": -1}"#);
    assert_eq!(payloads[3], r#"{"tenant": "acme"}"#);
    let doc: serde_json::Value = serde_json::from_slice(
        &std::fs::read(storage.join("metadata/performance/acme.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(doc["counts"]["outcomes"], 1);
    assert_eq!(
        doc["counts"]["rejected"], 2,
        "the refused records are counted against their tenant"
    );
}

#[test]
fn the_example_history_is_what_simulate_makes() {
    // README: "It was made with feedback simulate --days 70 --tenants 4 --channels 2 --campaigns 2".
    let out = feedback(&[
        "simulate",
        "--days",
        "70",
        "--tenants",
        "4",
        "--channels",
        "2",
        "--campaigns",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let committed = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/history.jsonl"
    ))
    .unwrap();
    assert!(
        out.stdout == committed,
        "simulate no longer reproduces examples/history.jsonl"
    );
}

/// Folds the committed examples into a fresh storage directory.
fn folded_examples() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let manifest = env!("CARGO_MANIFEST_DIR");
    let out = feedback(&[
        "fold",
        &format!("{manifest}/examples/history.jsonl"),
        &format!("{manifest}/examples/poison.jsonl"),
        "--storage-dir",
        dir.path().to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(out.status.code(), Some(0));
    dir
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn check_performance_text_json_and_exit_codes() {
    let storage = folded_examples();
    let s = storage.path().to_str().unwrap();

    let out = feedback(&["check-performance", "degraded-001", "--storage-dir", s]);
    assert_eq!(out.status.code(), Some(1), "degraded: exit code 1");
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "as_of     2026-10-08",
        "status    DEGRADED: model.performance.degraded is active",
        "worst channels (7d, by WAPE)",
        "plans (latest first)",
        "plan-2026-10-03",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from\n{text}");
    }
    assert!(text.lines().any(|l| l.starts_with("7d ")));

    let out = feedback(&[
        "check-performance",
        "healthy-000",
        "--storage-dir",
        s,
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "healthy: exit code 0");
    let v = json(&out);
    assert_eq!(v["tenant"], "healthy-000");
    assert_eq!(v["as_of"], "2026-10-08");
    assert_eq!(v["degraded"], false);
    assert_eq!(v["tags"], serde_json::json!([]));
    let windows: Vec<&str> = v["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["window"].as_str().unwrap())
        .collect();
    assert_eq!(windows, ["7d", "28d", "90d"]);
    for key in [
        "n",
        "mae",
        "mape",
        "wape",
        "bias",
        "n_zero_actual",
        "pinball",
    ] {
        assert!(v["windows"][0].get(key).is_some(), "window key {key}");
    }
    assert_eq!(v["rank_window"], "7d");
    let channels = v["channels"].as_array().unwrap();
    assert_eq!(channels.len(), 2);
    let wape = |c: &serde_json::Value| c["windows"][0]["wape"].as_f64().unwrap();
    assert!(wape(&channels[0]) >= wape(&channels[1]), "worst first");
    assert_eq!(channels[0]["status"], "ok");
    let plans = v["plans"].as_array().unwrap();
    assert_eq!(plans.len(), 10, "every plan, not just --top");
    for key in [
        "plan_id",
        "lines",
        "matched",
        "planned_roas",
        "actual_roas",
        "roas_delta",
        "roas_delta_pct",
    ] {
        assert!(plans[0].get(key).is_some(), "plan key {key}");
    }
    assert_eq!(plans[0]["plan_id"], "plan-2026-10-03");
    assert_eq!(v["status"]["performance"]["tenant"], "ok");

    let out = feedback(&[
        "check-performance",
        "degraded-001",
        "--storage-dir",
        s,
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "--json keeps the exit code");
    assert_eq!(json(&out)["degraded"], true);
}

#[test]
fn unknown_and_invalid_tenants_exit_2() {
    let storage = folded_examples();
    let s = storage.path().to_str().unwrap();
    for command in ["check-performance", "alert-forecast"] {
        let out = feedback(&[command, "acme", "--storage-dir", s]);
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("tenants there: degraded-001, drift-003, healthy-000, miscal-002"),
            "{stderr}"
        );
        // Refused before any file is looked at: the directory need not exist.
        let out = feedback(&[command, "../etc/passwd", "--storage-dir", "/nonexistent"]);
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("invalid tenant name"));
    }
    let out = feedback(&["check-performance", "acme", "--storage-dir", "/nonexistent"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("it holds no tenant"));
}

#[test]
fn alert_forecast_text_json_and_exit_codes() {
    let storage = folded_examples();
    let s = storage.path().to_str().unwrap();

    let out = feedback(&["alert-forecast", "miscal-002", "--storage-dir", s]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a horizon below the threshold: exit code 1"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("warning: miscal-002 horizon:0-7: p10_p90 coverage ")),
        "{text}"
    );
    assert!(
        text.contains("p10_p90 (0.80)"),
        "nominal beside each key:\n{text}"
    );

    let out = feedback(&[
        "alert-forecast",
        "healthy-000",
        "--storage-dir",
        s,
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v = json(&out);
    assert_eq!(v["window_days"], 28);
    assert_eq!(v["window_source"], "document");
    assert_eq!(v["threshold"], 0.7);
    assert_eq!(v["alerting"], false);
    assert_eq!(v["warnings"], serde_json::json!([]));
    let scopes: Vec<&str> = v["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["scope"].as_str().unwrap())
        .collect();
    assert_eq!(
        scopes,
        [
            "tenant",
            "horizon:0-7",
            "horizon:8-14",
            "horizon:15-28",
            "horizon:29+"
        ]
    );
    let tenant = &v["scopes"][0];
    assert_eq!(tenant["status"], "ok");
    let c = &tenant["coverage"]["p10_p90"];
    assert_eq!(c["nominal"], 0.8);
    let (lo, value, hi) = (
        c["ci"][0].as_f64().unwrap(),
        c["value"].as_f64().unwrap(),
        c["ci"][1].as_f64().unwrap(),
    );
    assert!(lo < value && value < hi && (0.7..=0.9).contains(&value));
    assert_eq!(tenant["coverage"]["p10"]["nominal"], 0.1);

    // A stricter threshold makes the healthy tenant warn too.
    let out = feedback(&[
        "alert-forecast",
        "healthy-000",
        "--storage-dir",
        s,
        "--threshold",
        "0.95",
    ]);
    assert_eq!(out.status.code(), Some(1));

    // Another window is derived from the history.
    let out = feedback(&[
        "alert-forecast",
        "healthy-000",
        "--storage-dir",
        s,
        "--window",
        "7",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v = json(&out);
    assert_eq!(
        (v["window_days"].as_u64(), v["window_source"].as_str()),
        (Some(7), Some("derived"))
    );

    for bad in [
        ["--threshold", "1.5"],
        ["--window", "0"],
        ["--interval", "p10_p80"],
    ] {
        let out = feedback(&[
            "alert-forecast",
            "healthy-000",
            "--storage-dir",
            s,
            bad[0],
            bad[1],
        ]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
}

/// `feedback run` with `storage` and `extra`, refused before the cluster is reached (no broker
/// needed, and none answers on port 1): exit code 2, and its stderr.
fn run_refused(storage: &std::path::Path, extra: &[&str]) -> String {
    let mut args = vec![
        "run",
        "--brokers",
        "127.0.0.1:1",
        "--http",
        "127.0.0.1:0",
        "--storage-dir",
        storage.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = feedback(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    stderr
}

#[test]
fn run_refuses_a_storage_directory_it_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let stderr = run_refused(&file.join("storage"), &[]);
    assert!(
        stderr.contains("the storage directory is not writable"),
        "{stderr}"
    );
}

#[test]
fn run_refuses_a_commit_interval_the_transaction_timeout_would_cut_short() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = run_refused(
        dir.path(),
        &[
            "--commit-interval",
            "30s",
            "--kafka-config",
            "transaction.timeout.ms=50000",
        ],
    );
    assert!(
        stderr.contains("is more than half the producer's transaction.timeout.ms (50000 ms)"),
        "{stderr}"
    );
}

#[test]
fn a_tenant_with_nothing_scored_is_not_called_healthy() {
    // Known only from a refused record: documents exist, every window is empty.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("refused.jsonl");
    std::fs::write(
        &input,
        r#"{"topic":"outcomes","payload":{"tenant":"acme","date":"2026-08-20","channel":"meta","spend":-1,"revenue":2}}"#,
    )
    .unwrap();
    let storage = dir.path().join("storage");
    let s = storage.to_str().unwrap();
    assert!(
        feedback(&["fold", input.to_str().unwrap(), "--storage-dir", s])
            .status
            .success()
    );
    let out = feedback(&["check-performance", "acme", "--storage-dir", s]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("status    no data: no forecast met an outcome within any window"),
        "{stdout}"
    );
    assert!(!stdout.contains("healthy"), "{stdout}");
}

#[test]
fn create_topics_passes_kafka_config_to_its_client() {
    // An unknown property is refused by librdkafka before any connection: the property
    // reached the admin client. Nothing listens on the port.
    let out = feedback(&[
        "create-topics",
        "--brokers",
        "127.0.0.1:1",
        "--kafka-config",
        "no.such.property=1",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no.such.property"), "{stderr}");
    // A cluster that does not answer is named, within the metadata timeout (10 s), not after
    // the creation's own.
    let out = feedback(&["create-topics", "--brokers", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach the Kafka cluster at 127.0.0.1:1 (waited up to 10 s)"),
        "{stderr}"
    );
    let out = feedback(&["create-topics", "--kafka-config", "nothing"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected KEY=VALUE"));
}

#[test]
fn run_stops_at_once_while_the_cluster_is_unreachable() {
    // Nothing listens on port 1: `run` waits for the cluster at start, and a SIGTERM then
    // stops it within a second or so (it waited out a 10 s metadata call before).
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_feedback"))
        .args(["run", "--brokers", "127.0.0.1:1", "--http", "127.0.0.1:0"])
        .arg("--storage-dir")
        .arg(dir.path().join("storage"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let signalled = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if signalled.elapsed() > std::time::Duration::from_secs(4) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("feedback run did not stop within 4 s of SIGTERM");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn fold_stops_on_sigint_with_exit_code_130_and_no_document_written() {
    // The input is a named pipe whose writer stays open, so the fold is waiting for more when
    // the signal comes: it stops at once all the same (it does not wait for the reader), writes
    // no document and leaves no temporary file.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.jsonl");
    let made = Command::new("mkfifo").arg(&input).status().unwrap();
    assert!(made.success());
    let storage = dir.path().join("storage");
    let mut child = Command::new(env!("CARGO_BIN_EXE_feedback"))
        .arg("fold")
        .arg(&input)
        .arg("--storage-dir")
        .arg(&storage)
        .arg("--quiet")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Opened once the fold opened it, which it does after its signal handlers are in place.
    let mut pipe = std::fs::OpenOptions::new()
        .write(true)
        .open(&input)
        .unwrap();
    // A hundred lines: less than a chunk, so the fold waits for more.
    let history = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/history.jsonl"
    ))
    .unwrap();
    for line in history.lines().take(100) {
        std::io::Write::write_all(&mut pipe, format!("{line}\n").as_bytes()).unwrap();
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let signalled = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if signalled.elapsed() > std::time::Duration::from_secs(10) {
            child.kill().unwrap();
            panic!("feedback fold did not stop within 10 s of SIGINT");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    drop(pipe);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted after 0 records: the storage documents were not written"),
        "{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(storage.join("metadata/performance"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}
