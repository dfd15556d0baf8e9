//! Golden run: `feedback fold` over the committed examples writes exactly the committed
//! storage documents, alerts, refused records and summary. `UPDATE_GOLDEN=1` rewrites them after
//! an intended change; review the diff before committing it.
//!
//! The storage documents are written as compact JSON; they are committed and compared
//! pretty-printed (keys sorted, every number as written), so that a change reads as a diff of
//! lines. Everything else is compared byte for byte.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A storage document as the golden files hold it: parsed and pretty-printed; other files as
/// they are.
fn comparable(rel: &Path, text: String) -> String {
    if rel.starts_with("storage") && rel.extension().is_some_and(|e| e == "json") {
        let value: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", rel.display()));
        serde_json::to_string_pretty(&value).unwrap() + "\n"
    } else {
        text
    }
}

fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn fold_examples_matches_golden_files() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().unwrap();
    let result = Command::new(env!("CARGO_BIN_EXE_feedback"))
        .current_dir(manifest)
        .args([
            "fold",
            "examples/history.jsonl",
            "examples/poison.jsonl",
            "--json",
        ])
        .arg("--storage-dir")
        .arg(out.path().join("storage"))
        .arg("--alerts-out")
        .arg(out.path().join("alerts.jsonl"))
        .arg("--dlq-out")
        .arg(out.path().join("dlq.jsonl"))
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "fold failed: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    fs::write(out.path().join("summary.json"), &result.stdout).unwrap();

    let golden = manifest.join("tests/golden");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let _ = fs::remove_dir_all(&golden);
        for rel in files_under(out.path()) {
            let dest = golden.join(&rel);
            fs::create_dir_all(dest.parent().unwrap()).unwrap();
            let text = fs::read_to_string(out.path().join(&rel)).unwrap();
            fs::write(dest, comparable(&rel, text)).unwrap();
        }
    }
    let produced = files_under(out.path());
    assert_eq!(
        produced,
        files_under(&golden),
        "the set of files differs from tests/golden"
    );
    assert!(
        produced.len() >= 15,
        "expected documents for four tenants plus alerts, dlq, summary"
    );
    for rel in produced {
        let raw = fs::read_to_string(out.path().join(&rel)).unwrap();
        if rel.starts_with("storage") {
            assert_eq!(raw.lines().count(), 1, "{} is not compact", rel.display());
        }
        let got = comparable(&rel, raw);
        let want = comparable(&rel, fs::read_to_string(golden.join(&rel)).unwrap());
        if got != want {
            let line = got
                .lines()
                .zip(want.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            panic!(
                "{} differs from the golden file at line {}:\n  got:  {}\n  want: {}",
                rel.display(),
                line + 1,
                got.lines().nth(line).unwrap_or(""),
                want.lines().nth(line).unwrap_or("")
            );
        }
    }
}
