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
    assert_eq!(summary["records"], 3);
    assert_eq!(summary["accepted"], 1);
    assert_eq!(summary["rejected_by_kind"]["malformed"], 1);
    assert_eq!(summary["rejected_by_kind"]["invalid_field"], 1);
    let dlq = std::fs::read_to_string(dlq).unwrap();
    assert_eq!(dlq.lines().count(), 2);
    let doc: serde_json::Value = serde_json::from_slice(
        &std::fs::read(storage.join("metadata/performance/acme.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(doc["counts"]["outcomes"], 1);
    assert_eq!(
        doc["counts"]["rejected"], 1,
        "the refused record is counted against its tenant"
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
