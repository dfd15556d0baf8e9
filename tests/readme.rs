//! The README walkthrough, run exactly as written: every `console` block of README.md is a
//! session of `$ command` lines, each followed by what it prints. A command may end in
//! `# exit code N` (0 otherwise). In the expected output `[..]` matches any text within a line
//! and a line `...` any number of lines. The session runs in a directory of its own that holds
//! `examples/` and an empty `storage/`, with the `feedback` under test first on the PATH.

use std::path::Path;
use std::process::Command;

/// One command of a session and what it should print.
#[derive(Debug)]
struct Step {
    command: String,
    exit_code: i32,
    expected: Vec<String>,
}

/// The ```console blocks of a Markdown text, as steps.
fn sessions(markdown: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut in_block = false;
    let mut continued = false;
    for line in markdown.lines() {
        if !in_block {
            in_block = line.trim() == "```console";
            continue;
        }
        if line.trim() == "```" {
            in_block = false;
            continue;
        }
        if continued {
            let step = steps.last_mut().expect("a continuation follows a command");
            step.command.push('\n');
            step.command.push_str(line);
            continued = line.ends_with('\\');
            continue;
        }
        if let Some(command) = line.strip_prefix("$ ") {
            let exit_code = command
                .split_once("# exit code ")
                .map_or(0, |(_, n)| n.trim().parse().expect("an exit code"));
            steps.push(Step {
                command: command.to_owned(),
                exit_code,
                expected: Vec::new(),
            });
            continued = command.ends_with('\\');
        } else {
            steps
                .last_mut()
                .expect("output follows a command")
                .expected
                .push(line.trim_end().to_owned());
        }
    }
    steps
}

/// A line matches when its text between the `[..]` holes appears in order, anchored at both ends.
fn line_matches(expected: &str, actual: &str) -> bool {
    let parts: Vec<&str> = expected.split("[..]").collect();
    if parts.len() == 1 {
        return expected == actual;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !actual.starts_with(first) || !actual[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &actual[first.len()..actual.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// Expected lines against actual ones; a `...` line matches any number of lines.
fn lines_match(expected: &[String], actual: &[&str]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((e, rest)) if e == "..." => {
            (0..=actual.len()).any(|skip| lines_match(rest, &actual[skip..]))
        }
        Some((e, rest)) => actual
            .split_first()
            .is_some_and(|(a, more)| line_matches(e, a) && lines_match(rest, more)),
    }
}

#[test]
fn matcher() {
    assert!(line_matches("a [..] c", "a b b c"));
    assert!(!line_matches("a [..] c", "a b b d"));
    assert!(line_matches("x", "x"));
    let expected: Vec<String> = ["a", "...", "d"].iter().map(|s| s.to_string()).collect();
    assert!(lines_match(&expected, &["a", "b", "c", "d"]));
    assert!(lines_match(&expected, &["a", "d"]));
    assert!(!lines_match(&expected, &["a", "b"]));
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let steps = sessions(&readme);
    let commands: Vec<&str> = steps.iter().map(|s| s.command.as_str()).collect();
    for needed in ["simulate", "fold", "check-performance", "alert-forecast"] {
        assert!(
            commands
                .iter()
                .any(|c| c.starts_with(&format!("feedback {needed}"))),
            "the walkthrough runs feedback {needed}: {commands:?}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(root.join("examples"), dir.path().join("examples")).unwrap();
    std::fs::create_dir(dir.path().join("storage")).unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_feedback")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for step in &steps {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(&step.command)
            .current_dir(dir.path())
            .env("PATH", &path);
        // The walkthrough assumes none of the settings' environment variables.
        for (key, _) in std::env::vars() {
            if key.starts_with("FEEDBACK_") {
                command.env_remove(key);
            }
        }
        let out = command.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let actual: Vec<&str> = stdout.lines().map(str::trim_end).collect();
        assert_eq!(
            out.status.code(),
            Some(step.exit_code),
            "`{}` exited {}; stderr:\n{}",
            step.command,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            lines_match(&step.expected, &actual),
            "`{}` printed\n{stdout}\nwhere README.md says\n{}",
            step.command,
            step.expected.join("\n")
        );
    }
}
