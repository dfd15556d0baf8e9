//! The /calibration dashboard in headless Chromium against the demo's data (issue 5): the page
//! loads without a console message or a page error, shows the meters, the trend chart and the
//! warning of the miscalibrated tenant, asks for the token when the API has one, and leaves
//! screenshots (desktop and a 390 px phone) under target/screenshots/.
//!
//! Chromium is Debian's `chromium` (`CHROMIUM` names another binary). Without it the test is
//! skipped, except under CI=true, where it fails: scripts/test.sh installs it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use feedback::http::{serve, ApiToken, HttpOptions};
use feedback::kafka::processor::Handles;

fn chromium() -> Option<PathBuf> {
    let candidates = std::env::var("CHROMIUM")
        .map(|c| vec![c])
        .unwrap_or_else(|_| {
            ["chromium", "chromium-browser", "google-chrome"]
                .map(String::from)
                .to_vec()
        });
    let found = candidates.iter().find_map(|name| {
        let ok = Command::new(name)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| PathBuf::from(name))
    });
    match found {
        Some(c) => Some(c),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => panic!(
            "CI=true but Chromium is not installed: the dashboard test must run \
             (scripts/test.sh installs Debian's chromium)"
        ),
        None => {
            eprintln!("skipped: Chromium is not installed (apt-get install chromium)");
            None
        }
    }
}

/// What one headless Chromium run gave: its output and the console messages it logged.
struct Run {
    stdout: String,
    console: Vec<String>,
}

/// Runs headless Chromium on `url` with `args` (a --dump-dom or --screenshot), letting the page
/// run for 10 s of virtual time: long enough for its fetches and two refreshes.
fn browse(chromium: &Path, url: &str, width: u32, height: u32, args: &[&str]) -> Run {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-extensions",
            "--no-first-run",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--window-size={width},{height}"))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chromium failed on {url}:\n{stderr}");
    // The page logs nothing itself: any console line is an error, a refused resource or a
    // policy violation.
    let console = stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_owned)
        .collect();
    Run {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        console,
    }
}

/// The element that opens with `open_tag_start` (e.g. `<div id="errors"`), its opening tag.
fn open_tag<'a>(dom: &'a str, open_tag_start: &str) -> &'a str {
    let at = dom
        .find(open_tag_start)
        .unwrap_or_else(|| panic!("{open_tag_start} not in the page:\n{dom}"));
    let end = dom[at..].find('>').unwrap();
    &dom[at..at + end + 1]
}

/// The demo binary, running until killed, with the dashboard address it printed.
struct Demo {
    child: Child,
    addr: String,
    storage: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_demo() -> Demo {
    let storage = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_feedback"))
        .args(["demo", "--duration", "180s", "--http", "127.0.0.1:0"])
        .arg("--storage-dir")
        .arg(storage.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut text = String::new();
    let mut addr = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        text.push_str(&line);
        text.push('\n');
        // The address comes first, then (once the history is folded and committed) the summary.
        if addr.is_none() {
            addr = line
                .trim()
                .strip_prefix("dashboard: http://")
                .and_then(|rest| rest.strip_suffix("/calibration"))
                .map(str::to_owned);
        }
        if line.starts_with("Ctrl-C to stop") {
            break;
        }
    }
    let addr = addr.unwrap_or_else(|| panic!("no dashboard address printed first:\n{text}"));
    assert!(
        text.contains(&format!("dashboard: http://{addr}/calibration   ")),
        "the dashboard address is printed again with the summary:\n{text}"
    );
    // Drain the rest so the demo never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Demo {
        child,
        addr,
        storage,
    }
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

fn screenshot_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is {target}/tmp: the screenshots go beside it, where CI keeps target/.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The width and height a PNG file says it has.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        path.display()
    );
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

#[test]
fn dashboard_shows_the_miscalibrated_tenant_in_chromium() {
    let Some(chromium) = chromium() else { return };
    let demo = start_demo();
    let url = format!("http://{}/calibration?tenant=miscal-002", demo.addr);
    // The documents follow the commits by up to a storage interval (1 s in the demo).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let list = http_get(&demo.addr, "/api/v1/tenants");
        if list.matches("{\"tenant\":").count() == 4 && list.contains("model.calibration.warn_low")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the demo's documents never appeared: {list}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    for (width, height) in [(1280, 2400), (390, 3400)] {
        let run = browse(&chromium, &url, width, height, &["--dump-dom"]);
        let dom = &run.stdout;
        assert!(
            run.console.is_empty(),
            "console messages at {width}px:\n{}",
            run.console.join("\n")
        );
        // The page's own collector of errors (window errors, refused resources, CSP) stayed hidden.
        let errors = open_tag(dom, "<div id=\"errors\"");
        assert!(
            errors.contains("hidden"),
            "the page reported errors: {errors}\n{dom}"
        );
        // The live indicator says the last poll succeeded.
        assert!(
            open_tag(dom, "<span id=\"live\"").contains("live ok"),
            "{dom}"
        );
        // A meter per quantile and one for the interval, the trend chart with its band.
        for key in ["p10", "p50", "p90", "p10_p90"] {
            assert!(
                dom.contains(&format!("data-key=\"{key}\"")),
                "no {key} meter:\n{dom}"
            );
        }
        assert_eq!(dom.matches("class=\"meter-svg\"").count(), 4);
        let trend = &dom[dom.find("id=\"trend-chart\"").expect("a trend chart")..];
        assert!(trend.contains("<svg class=\"chart\""), "{trend}");
        assert!(
            trend.contains("class=\"band\""),
            "the band is drawn: {trend}"
        );
        // The warning is visible, in words as well as in colour.
        assert!(dom.contains("class=\"meter interval bad\""), "{dom}");
        assert!(dom.contains("WARN LOW"), "{dom}");
        assert!(dom.contains("class=\"alert bad\""), "{dom}");
        assert!(dom.contains("Intervals too narrow."), "{dom}");
        // The picker lists every tenant, with the current one marked.
        for t in ["healthy-000", "degraded-001", "miscal-002", "drift-003"] {
            assert!(
                dom.contains(&format!("data-tenant=\"{t}\"")),
                "{t} not in the picker"
            );
        }
        assert!(
            dom.contains("aria-current=\"page\" data-tenant")
                || dom.contains("class=\"tenant current\"")
        );
        // The other sections.
        for id in ["horizons", "drift", "performance"] {
            assert!(
                dom.contains(&format!("<section class=\"card\" id=\"{id}\"")),
                "no {id}"
            );
        }
        // The trend chart is drawn at the width the page has, not wider.
        let chart = open_tag(trend, "<svg class=\"chart\"");
        let chart_width: u32 = chart
            .split("width=\"")
            .nth(1)
            .and_then(|w| w.split('"').next())
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("{chart}"));
        // Headless Chromium lays a --dump-dom page out at least 500 px wide whatever the
        // window size; the screenshot, taken at the real 390 px, is the narrow check.
        let laid_out = width.max(500);
        assert!(
            chart_width <= laid_out,
            "chart {chart_width}px wide on a {laid_out}px page"
        );
    }

    let dir = screenshot_dir();
    for (name, width, height) in [
        ("calibration.png", 1280, 2400),
        ("calibration-narrow.png", 390, 3400),
    ] {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let run = browse(
            &chromium,
            &url,
            width,
            height,
            &[&format!("--screenshot={}", path.display())],
        );
        assert!(run.console.is_empty(), "{}", run.console.join("\n"));
        assert_eq!(png_size(&path), (width, height), "{}", path.display());
        println!("screenshot: {}", path.display());
    }

    let rt = tokio::runtime::Runtime::new().unwrap();

    // A tenant whose partition moved to another instance is marked as such (same documents, a
    // server whose processor owns only healthy-000).
    let handles = Handles::new();
    *handles.owned.write().unwrap() = Some(["healthy-000".to_owned()].into_iter().collect());
    let moved = rt
        .block_on(serve(
            "127.0.0.1:0".parse().unwrap(),
            handles,
            HttpOptions {
                storage_dir: demo.storage.path().to_owned(),
                api_token: None,
            },
            std::future::pending(),
        ))
        .unwrap();
    let moved_url = format!("http://{}/calibration?tenant=miscal-002", moved.addr);
    let run = browse(&chromium, &moved_url, 1280, 900, &["--dump-dom"]);
    assert!(run.console.is_empty(), "{}", run.console.join("\n"));
    assert!(
        run.stdout.contains("Owned by another instance"),
        "{}",
        run.stdout
    );
    let path = dir.join("calibration-elsewhere.png");
    let run = browse(
        &chromium,
        &moved_url,
        1280,
        900,
        &[&format!("--screenshot={}", path.display())],
    );
    assert!(run.console.is_empty(), "{}", run.console.join("\n"));
    println!("screenshot: {}", path.display());
    let owner_url = format!("http://{}/calibration?tenant=healthy-000", moved.addr);
    let run = browse(&chromium, &owner_url, 1280, 900, &["--dump-dom"]);
    assert!(
        !run.stdout.contains("Owned by another instance"),
        "{}",
        run.stdout
    );

    // With a token, the page asks for it instead of showing data (same documents, a second
    // server in this process).
    let guarded = rt
        .block_on(serve(
            "127.0.0.1:0".parse().unwrap(),
            Handles::new(),
            HttpOptions {
                storage_dir: demo.storage.path().to_owned(),
                api_token: Some(ApiToken::new("dashboard-secret").unwrap()),
            },
            std::future::pending(),
        ))
        .unwrap();
    let run = browse(
        &chromium,
        &format!("http://{}/calibration", guarded.addr),
        1280,
        900,
        &["--dump-dom"],
    );
    let dom = &run.stdout;
    let form = open_tag(dom, "<form id=\"token-form\"");
    assert!(!form.contains("hidden"), "the token form is shown: {form}");
    assert!(
        !dom.contains("data-key=\"p10\""),
        "no data without the token"
    );
    assert!(open_tag(dom, "<span id=\"live\"").contains("locked"));
    assert!(
        open_tag(dom, "<div id=\"errors\"").contains("hidden"),
        "{dom}"
    );
    // The browser logs the refused fetch (401) as a console message; nothing else may appear.
    for line in &run.console {
        assert!(line.contains("401"), "unexpected console message: {line}");
    }
}
