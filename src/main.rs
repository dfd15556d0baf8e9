//! The `feedback` binary: parses the command line and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use std::io::Write;

use clap::{Args, Parser, Subcommand};

use feedback::config::Config;
use feedback::offline::{fold_files, FoldJob};

/// model-feedback: tells, per tenant and continuously, whether a forecasting model still deserves trust.
///
/// Settings come from flags, then FEEDBACK_* environment variables, then the --config file,
/// then the defaults.
#[derive(Parser)]
#[command(name = "feedback", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fold JSONL records offline, exactly as the processor folds them from Kafka.
    ///
    /// Each input line is {"topic": ..., "payload": ...}, with the payload an object or a string
    /// (the shape `kcat -J` prints). Files are read in the order given, and folded in batches
    /// of 65,536 records, tenant by tenant: each tenant's records in their order, so its alerts
    /// come in order, grouped by tenant within a batch. Writes the storage documents of every
    /// tenant, the alerts and the refused records, then prints a summary.
    /// Exit code 0 on success (refused records included), 2 when an input cannot be read or an
    /// output cannot be written. SIGTERM or Ctrl-C stops it while it reads (no document
    /// written) or before the next slice of documents (the slices before written), with no
    /// temporary file left, and exit code 130; a second one exits at once (and can leave
    /// `.tmp*` files beside the documents).
    Fold(FoldArgs),
    /// Generate a seeded synthetic history of the three input topics: JSONL for `fold`, or
    /// records produced to Kafka (--brokers).
    ///
    /// Day by day: a plan every 7 days for the next 28 days, each day's outcomes the next
    /// morning (from the ad platform, and from Shopify for every other campaign), and weekly
    /// feature importances with samples. Scenarios change the last third of the history:
    /// `degraded` makes actuals fall below the forecasts, `miscalibrated` makes the p10..p90
    /// intervals far too narrow, `drift` rotates the importances, `mixed` gives tenants each
    /// scenario in turn; `healthy` stays calibrated and fires nothing. The same seed and flags
    /// give the same bytes. Exit code 0, or 2 on an error (unwritable output, missing topics,
    /// records not delivered).
    Simulate(SimulateArgs),
    /// Run the processor on Kafka: consume the three input topics, fold, publish alerts.
    ///
    /// Joins consumer group --group on the input topics (which must be co-partitioned: same
    /// partition count, keyed by tenant). Exactly once by default: one transaction carries the
    /// alerts, the DLQ records, the changed tenants' state (to the compacted state topic, same
    /// partition number as the input) and the consumer offsets, every --commit-interval. On
    /// assignment the partitions' tenants are restored from the state topic; /readyz answers
    /// 200 once that is done. Refused records go to the DLQ topic with their reason. SIGTERM
    /// or Ctrl-C commits, writes the documents, leaves the group and exits 0 (a second one
    /// exits at once). Exit code 2 on a configuration or topic problem (inputs not
    /// co-partitioned, a topic missing, a state topic that is not compacted, partitions added
    /// to the inputs while running, state written under another partition count, another
    /// group's state), 1 on a fatal Kafka error.
    Run(RunArgs),
    /// Everything on one machine, no broker to install: a demo of the processor.
    ///
    /// Starts librdkafka's in-process mock cluster, creates the topics, produces a synthetic
    /// history of four tenants (healthy, degrading, miscalibrated, drifting), runs the same
    /// processor as `run`, prints the alert transitions as they are committed and what is active
    /// at the end, and keeps serving HTTP until Ctrl-C or --duration: the /calibration dashboard
    /// (its address is printed first), the API under /api/v1, /metrics, /healthz, /readyz.
    Demo(DemoArgs),
    /// Create the six topics of the processor (inputs, alerts, DLQ, compacted state).
    ///
    /// Inputs, alerts, DLQ and state all get --partitions partitions. Topics that exist are
    /// left alone (check their partition counts yourself: `run` refuses mismatched inputs).
    CreateTopics(CreateTopicsArgs),
    /// Summarise a tenant's forecast performance from its storage documents.
    ///
    /// Reads {storage-dir}/metadata/performance/{TENANT}.json (written by `fold`, `run` or
    /// `replay`) and prints the tenant-wide windows (n, MAE, MAPE, WAPE, bias), the worst
    /// channels by WAPE in the shortest window, the plans' planned and actual ROAS, the active
    /// tags and as_of. Exit code 0 when healthy (or when nothing is scored yet, which it says),
    /// 1 when model.performance.degraded is active, 2 on an error (invalid or unknown tenant,
    /// which lists the tenants there; unreadable document).
    CheckPerformance(CheckArgs),
    /// Check a tenant's quantile coverage against nominal, per horizon bucket.
    ///
    /// Reads {storage-dir}/metadata/performance/{TENANT}_calibration.json and prints, for the
    /// tenant and each horizon bucket, the coverage of every quantile (share of actuals at or
    /// below it) and of every symmetric interval (share inside it), with its nominal value and
    /// Wilson 95% interval, for the window ending at as_of. A warning line is printed for each
    /// scope whose --interval coverage is below --threshold (scopes with fewer than --min-n
    /// pairs never warn). Exit code 0 when none is below, 1 when any is, 2 on an error.
    AlertForecast(ForecastArgs),
    /// Validate a file of JSONL payloads and produce them to an input topic, keyed by tenant.
    ///
    /// Each non-empty line of FILE is one record value for --topic: an Outcome, a Forecast or a
    /// FeatureImportance as JSON (SPEC 3), checked by the same decoding and validation as the
    /// processor. All or nothing: when any line is refused, every refused line is printed with
    /// its line number and reason, nothing is produced, and the exit code is 1. Otherwise every
    /// line is produced as it is, keyed by its tenant with Java's murmur2 partitioner (librdkafka
    /// partitioner=murmur2_random, so Java producers agree on where a tenant lives), and the
    /// command waits until all are delivered. Exit code 0 when all were produced, 1 when the
    /// file was refused, 2 on an error (unreadable file, unknown topic, broker unreachable,
    /// delivery not confirmed within --timeout).
    Produce(ProduceArgs),
    /// Rebuild the tenants' storage documents from the input topics, from their beginning.
    ///
    /// Reads every partition of outcomes, forecasts and feature-importances (names from
    /// --config) with a plain consumer of its own: assigned, not in any group, nothing
    /// committed, read_committed, up to the end each partition had when the replay began. The
    /// records go through the same decoding, validation and fold as `fold` and `run`, so the
    /// documents are those `fold` writes from the same records. The state topic is left alone
    /// (a running processor owns it), refused records are counted but not sent to the DLQ
    /// again, and alerts are only computed unless --publish. A progress bar (records, rate,
    /// ETA from the partitions' end offsets) goes to standard error; the summary of `fold`
    /// follows at the end. Exit code 0, or 2 on an error (topics missing, cluster unreachable
    /// for --stall-timeout, documents not written).
    Replay(ReplayArgs),
}

#[derive(Args)]
struct ReplayArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Where the documents go (metadata/performance/{tenant}.json and friends); a replayed
    /// tenant's documents are replaced, other files are left alone.
    #[arg(
        long,
        env = "FEEDBACK_STORAGE_DIR",
        default_value = "storage",
        value_name = "DIR"
    )]
    storage_dir: PathBuf,
    /// Start each partition at its first record with a Kafka timestamp (CreateTime, or
    /// LogAppendTime on topics set so) at or after midnight UTC of this date, instead of at the
    /// beginning. The documents then hold only what was produced since: event dates play no
    /// part in where the replay starts.
    #[arg(long, value_name = "YYYY-MM-DD")]
    from_date: Option<chrono::NaiveDate>,
    /// Replay only this tenant (repeatable); other tenants' documents are not touched. Every
    /// partition is read; records of the tenant on another partition than its own, or keyed
    /// otherwise, are refused as `run` refuses them (wrong_partition).
    #[arg(long = "tenant", value_name = "TENANT")]
    tenants: Vec<String>,
    /// Publish the alerts the fold raises to the alerts topic (CloudEvents JSON with ce_*
    /// headers, keyed by tenant). They carry the same ids as the first time, so consumers can
    /// deduplicate. Without it no alert leaves the process.
    #[arg(long)]
    publish: bool,
    /// Give up when no record arrives for this long while some partition has not reached its end.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    stall_timeout: std::time::Duration,
    /// A librdkafka property for every client, KEY=VALUE, repeatable (e.g.
    /// security.protocol=ssl). Applied over the defaults.
    #[arg(long = "kafka-config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    kafka_config: Vec<(String, String)>,
    /// Print the summary as JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Hide the progress bar.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args)]
struct ProduceArgs {
    /// The JSONL file of payloads, one record value per line.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The input topic to produce to; its role (outcomes, forecasts, feature-importances)
    /// decides how the lines are validated. Topic names come from --config.
    #[arg(long, value_name = "TOPIC")]
    topic: String,
    #[command(flatten)]
    kafka: KafkaArgs,
    /// How long to wait for the cluster to confirm every record.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
    /// A librdkafka property for the producer, KEY=VALUE, repeatable (e.g.
    /// security.protocol=ssl). Applied over the defaults.
    #[arg(long = "kafka-config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    kafka_config: Vec<(String, String)>,
    /// Print the result as JSON instead of text (same exit codes).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct StorageArgs {
    /// The storage directory the documents were written to (by `fold`, `run` or `replay`).
    #[arg(
        long,
        env = "FEEDBACK_STORAGE_DIR",
        default_value = "storage",
        value_name = "DIR"
    )]
    storage_dir: PathBuf,
    /// Print the result as JSON instead of text (same exit codes).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CheckArgs {
    /// The tenant, as named in its records (e.g. acme).
    tenant: String,
    #[command(flatten)]
    storage: StorageArgs,
    /// How many channels and plans the text lists (worst channels first, latest plans first);
    /// --json always lists them all.
    #[arg(long, default_value_t = 5, value_name = "N")]
    top: usize,
}

#[derive(Args)]
struct ForecastArgs {
    /// The tenant, as named in its records (e.g. acme).
    tenant: String,
    #[command(flatten)]
    storage: StorageArgs,
    /// A scope warns when its --interval coverage is below this share (0 to 1). The nominal
    /// coverage of p10_p90 is 0.80.
    #[arg(
        long,
        env = "FEEDBACK_THRESHOLD",
        default_value_t = 0.70,
        allow_negative_numbers = true
    )]
    threshold: f64,
    /// The window in days, ending at as_of. Default: the calibration document's own window
    /// (limits.calibration.window_days, 28 unless configured). Another window is derived
    /// exactly from the document's daily history, which is possible when every forecast line
    /// carries every quantile; otherwise the command says so and exits 2.
    #[arg(long, value_name = "DAYS", allow_negative_numbers = true)]
    window: Option<u32>,
    /// Scopes with fewer pairs than this in the window are insufficient_data and never warn
    /// (the calibration rule's default min_n).
    #[arg(
        long,
        default_value_t = 30,
        value_name = "N",
        allow_negative_numbers = true
    )]
    min_n: u64,
    /// The symmetric interval the threshold applies to.
    #[arg(long, default_value = "p10_p90", value_name = "pNN_pMM")]
    interval: String,
}

#[derive(Args)]
struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "FEEDBACK_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Configuration file (TOML): topic names, windows, retention, reconciliation, limits.
    #[arg(long, env = "FEEDBACK_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Consumer group; instances with the same group share the partitions.
    #[arg(long, env = "FEEDBACK_GROUP", default_value = "model-feedback")]
    group: String,
    /// Where the storage documents of the tenants this instance owns are kept current.
    #[arg(
        long,
        env = "FEEDBACK_STORAGE_DIR",
        default_value = "storage",
        value_name = "DIR"
    )]
    storage_dir: PathBuf,
    /// Address of the HTTP server (/metrics, /healthz, /readyz, the API under /api/v1 and the
    /// /calibration dashboard, which read the documents in --storage-dir).
    #[arg(long, env = "FEEDBACK_HTTP", default_value = "127.0.0.1:9464")]
    http: std::net::SocketAddr,
    /// Bearer token for the API under /api/v1 and the dashboard's data: when set, requests need
    /// `Authorization: Bearer <token>` (the dashboard asks for it once). /metrics, /healthz and
    /// /readyz stay open. Unset: no token.
    #[arg(
        long,
        env = "FEEDBACK_API_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    api_token: Option<feedback::http::ApiToken>,
    /// Delivery guarantee: exactly-once (alerts, state and input offsets in one transaction)
    /// or at-least-once (outputs flushed, then offsets committed; a crash can repeat alerts).
    #[arg(
        long,
        env = "FEEDBACK_GUARANTEE",
        value_enum,
        default_value = "exactly-once"
    )]
    guarantee: feedback::kafka::Guarantee,
    /// How often the transaction (or the offset commit) is closed: alerts become visible to
    /// read_committed consumers at this pace. 0s closes one as soon as the one before has
    /// committed (lowest latency, most transactions).
    #[arg(long, env = "FEEDBACK_COMMIT_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    commit_interval: std::time::Duration,
    /// A restore of partitions' state that reads nothing for this long (a broker that does not
    /// serve the state topic, a quota too small for its batches) is started again with new
    /// clients, with a warning. Its partitions stay paused meanwhile.
    #[arg(long, env = "FEEDBACK_RESTORE_STALL", default_value = "2m", value_parser = humantime::parse_duration)]
    restore_stall: std::time::Duration,
    /// How often the storage documents of changed tenants are rewritten.
    #[arg(long, env = "FEEDBACK_STORAGE_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    storage_interval: std::time::Duration,
    /// A stable name for this instance (default: random per process). Its transactional id is
    /// model-feedback-{group}-{instance-id}: restarting with the same id fences the previous
    /// process's open transaction at once instead of after transaction.timeout.ms (10 s, or
    /// three commit intervals when longer).
    /// Instances running at the same time need different ids.
    #[arg(long, env = "FEEDBACK_INSTANCE_ID")]
    instance_id: Option<String>,
    /// A librdkafka property for every client, KEY=VALUE, repeatable (e.g.
    /// session.timeout.ms=6000, security.protocol=ssl). Applied over the defaults.
    #[arg(long = "kafka-config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    kafka_config: Vec<(String, String)>,
}

#[derive(Args)]
struct DemoArgs {
    /// Where the storage documents go: a directory of the demo's own by default, so that its
    /// four tenants do not mix with documents of `fold` or `run`. Of the FEEDBACK_* settings
    /// the demo reads only FEEDBACK_API_TOKEN and FEEDBACK_LOG: it never writes where a
    /// deployment's FEEDBACK_STORAGE_DIR points, nor takes its FEEDBACK_HTTP address.
    #[arg(long, default_value = "storage/demo", value_name = "DIR")]
    storage_dir: PathBuf,
    /// Address of the HTTP server: the /calibration dashboard, the API, /metrics.
    #[arg(long, default_value = "127.0.0.1:9464")]
    http: std::net::SocketAddr,
    /// Bearer token for the API under /api/v1 and the dashboard's data: when set, requests need
    /// `Authorization: Bearer <token>` (the dashboard asks for it once). /metrics, /healthz and
    /// /readyz stay open. Unset: no token.
    #[arg(
        long,
        env = "FEEDBACK_API_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    api_token: Option<feedback::http::ApiToken>,
    /// Stop by itself after this long (e.g. 20s); default: run until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration, allow_hyphen_values = true)]
    duration: Option<std::time::Duration>,
    /// Days of synthetic history (at least 1).
    #[arg(long, default_value_t = 90, value_parser = at_least_one::<u32>)]
    days: u32,
    /// Seed of the synthetic history (see `simulate --seed`).
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(Args)]
struct CreateTopicsArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Partitions of every topic; the three inputs must keep the same count.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Replication factor of every topic (at most the number of brokers).
    #[arg(long, default_value_t = 1)]
    replication: i32,
    /// A librdkafka property for the admin client, KEY=VALUE, repeatable (security settings).
    #[arg(long = "kafka-config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    kafka_config: Vec<(String, String)>,
}

/// A count of at least 1 (`--tenants 0` would make an empty history, `--channels 0` was
/// taken as 1).
fn at_least_one<T: std::str::FromStr + PartialOrd + From<u8>>(text: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    let n: T = text.parse().map_err(|e| format!("{e}"))?;
    if n < T::from(1) {
        return Err("must be at least 1".into());
    }
    Ok(n)
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

#[derive(Args)]
struct SimulateArgs {
    /// Seed of the generator: the same seed and flags give the same records, byte for byte.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Number of tenants, named after their scenario ({scenario}-{index:03}, e.g. healthy-000).
    #[arg(long, default_value_t = 4, value_parser = at_least_one::<usize>)]
    tenants: usize,
    /// Channels per tenant (meta, google, tiktok, pinterest, snap, email, then channel6...).
    #[arg(long, default_value_t = 3, value_parser = at_least_one::<usize>)]
    channels: usize,
    /// Campaigns per channel (cmp-1, cmp-2, ...); every other one is also reported by Shopify.
    #[arg(long, default_value_t = 2, value_parser = at_least_one::<usize>)]
    campaigns: usize,
    /// Days of history.
    #[arg(long, default_value_t = 90, value_parser = at_least_one::<u32>)]
    days: u32,
    /// First day of the history.
    #[arg(long, default_value = "2026-08-01", value_name = "YYYY-MM-DD")]
    start: chrono::NaiveDate,
    /// What goes wrong in the last third of each tenant's history. Folded, healthy data fires
    /// no alert (no performance or drift alert, no calibration warning), degraded fires
    /// model.performance.degraded, miscalibrated model.calibration warn_low, drift
    /// model.drift_detected; mixed gives the tenants each of the four in turn.
    #[arg(long, value_enum, default_value = "mixed")]
    scenario: feedback::simulate::Scenario,
    /// Share of records replaced by poison records that validation must refuse (0 to 1): bad
    /// JSON, wrong types, negative spend, a tenant name that is a path, missing fields.
    #[arg(
        long,
        default_value_t = 0.0,
        value_name = "SHARE",
        allow_negative_numbers = true
    )]
    poison_rate: f64,
    /// Write the JSONL to this file instead of standard output.
    #[arg(long, short, value_name = "FILE", conflicts_with = "brokers")]
    out: Option<PathBuf>,
    /// Produce the records to the input topics of this Kafka cluster instead of writing JSONL:
    /// keyed by tenant, murmur2_random partitioner, poison records included (the processor
    /// sends them to its DLQ). The topics must exist (create-topics).
    #[arg(long, value_name = "HOST:PORT")]
    brokers: Option<String>,
    /// Configuration file (TOML): its topic names are the ones written or produced to.
    #[arg(long, env = "FEEDBACK_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// With --brokers: how long to wait for the cluster to confirm every record.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
    /// With --brokers: a librdkafka property for the producer, KEY=VALUE, repeatable.
    #[arg(long = "kafka-config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    kafka_config: Vec<(String, String)>,
}

#[derive(Args)]
struct FoldArgs {
    /// JSONL input files.
    #[arg(required = true, value_name = "FILE")]
    inputs: Vec<PathBuf>,
    /// Where the storage documents go (metadata/performance/{tenant}.json and friends).
    #[arg(
        long,
        env = "FEEDBACK_STORAGE_DIR",
        default_value = "storage",
        value_name = "DIR"
    )]
    storage_dir: PathBuf,
    /// Write the alerts (CloudEvents JSON, one per line) to this file.
    #[arg(long, value_name = "FILE")]
    alerts_out: Option<PathBuf>,
    /// Write the refused records, with their reasons, to this file (JSONL).
    #[arg(long, value_name = "FILE")]
    dlq_out: Option<PathBuf>,
    /// Configuration file (TOML): topic names, windows, retention, reconciliation, limits.
    #[arg(long, env = "FEEDBACK_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the summary as JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Hide the progress bar.
    #[arg(long, short)]
    quiet: bool,
}

/// glibc's allocator spent a fifth of the fold's time in malloc and free (docs/PERFORMANCE.md).
#[global_allocator]
static GLOBAL: feedback::allocator::MiMalloc = feedback::allocator::MiMalloc;

fn main() -> ExitCode {
    let memory = feedback::allocator::configure();
    feedback::name_worker_threads();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FEEDBACK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours for a terminal only: a log file or journald gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = memory {
        tracing::warn!(error = %e, "transparent huge pages could not be turned off; running with them");
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // Our error messages carry their cause already; `{:#}` would print it twice.
            print_stderr(&format!("error: {e}"));
            ExitCode::from(2)
        }
    }
}

/// Prints a line to standard output; a closed pipe (`| head`) is not an error.
fn print_stdout(text: &str) -> std::io::Result<()> {
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Prints a line to standard error; a closed pipe is not an error (`eprintln!` would panic).
fn print_stderr(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// A command's result as text or, with --json, as pretty JSON.
fn print_report<T: std::fmt::Display + serde::Serialize>(
    report: &T,
    json: bool,
) -> anyhow::Result<()> {
    let text = if json {
        serde_json::to_string_pretty(report)?
    } else {
        report.to_string()
    };
    Ok(print_stdout(&text)?)
}

/// 1 when the command found something to look at, 0 otherwise (2 is for errors).
fn exit_code(alerting: bool) -> ExitCode {
    if alerting {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Sets `stop` on SIGTERM or Ctrl-C; a second signal exits at once. The handlers are in place
/// when this returns, so a signal that comes during start-up stops cleanly too instead of
/// killing the process.
fn stop_on_signal(stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    stop_on_signal_saying(
        stop,
        "stopping: finishing the current transaction, then committing and leaving the group if one was joined (signal again to exit at once)",
    )
}

/// [`stop_on_signal`], logging `stopping` at the first signal.
fn stop_on_signal_saying(
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stopping: &'static str,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM and SIGINT");
            return;
        }
    };
    tokio::spawn(async move {
        for round in 0.. {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if round == 0 {
                tracing::info!("{stopping}");
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            } else {
                print_stderr("exiting at once");
                std::process::exit(130);
            }
        }
    });
}

/// Resolves once `stop` is set.
async fn stopped(stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => {
            let config = Config::load(args.kafka.config.as_deref())?;
            let mut settings = feedback::kafka::Settings::new(&args.kafka.brokers, &args.group);
            settings.topics = config.topics.clone();
            settings.fold = config.fold();
            settings.guarantee = args.guarantee;
            settings.commit_interval = args.commit_interval;
            settings.storage_interval = args.storage_interval;
            settings.restore_stall = args.restore_stall;
            settings.storage_dir = args.storage_dir;
            settings.client_overrides = args.kafka_config;
            if let Some(id) = args.instance_id {
                settings.instance_id = id;
            }
            let handles = feedback::kafka::processor::Handles::new();
            let rt = runtime()?;
            let result = rt.block_on(async {
                stop_on_signal(handles.stop.clone());
                let options = feedback::http::HttpOptions {
                    storage_dir: settings.storage_dir.clone(),
                    api_token: args.api_token,
                };
                let http = feedback::http::serve(
                    args.http,
                    handles.clone(),
                    options,
                    stopped(handles.stop.clone()),
                )
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.http))?;
                tracing::info!(
                    "HTTP on http://{addr}/metrics, dashboard on http://{addr}/calibration",
                    addr = http.addr
                );
                let h = handles.clone();
                let result = tokio::task::spawn_blocking(move || {
                    feedback::kafka::processor::run(settings, h)
                })
                .await?;
                handles
                    .stop
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                let _ = http.task.await;
                anyhow::Ok(result)
            })?;
            match result {
                Ok(_) => Ok(ExitCode::SUCCESS),
                Err(e @ feedback::kafka::processor::RunError::Topics(_)) => Err(e.into()),
                Err(e @ feedback::kafka::processor::RunError::Refused(_)) => Err(e.into()),
                Err(e) => {
                    print_stderr(&format!("error: {e}"));
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Demo(args) => {
            let handles = feedback::kafka::processor::Handles::new();
            let options = feedback::demo::DemoOptions {
                storage_dir: args.storage_dir,
                days: args.days,
                partitions: 3,
                seed: args.seed,
                poison_rate: 0.002,
            };
            let rt = runtime()?;
            let report = rt.block_on(async {
                stop_on_signal(handles.stop.clone());
                let http_options = feedback::http::HttpOptions {
                    storage_dir: options.storage_dir.clone(),
                    api_token: args.api_token,
                };
                let http = feedback::http::serve(args.http, handles.clone(), http_options, stopped(handles.stop.clone()))
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e} (choose another with --http)", args.http))?;
                if let Some(d) = args.duration {
                    let stop = handles.stop.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(d).await;
                        stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    });
                }
                println!("model-feedback demo: an in-process Kafka cluster, four tenants, {} days of history", options.days);
                let addr = http.addr;
                println!();
                println!("  dashboard: http://{addr}/calibration");
                println!();
                println!("tenant-wide alert statuses as they are committed, each time one changes (a tenant's first calibration report included; event time, type, tenant, scope, status):");
                let dir = options.storage_dir.display().to_string();
                let h = handles.clone();
                let duration = args.duration;
                let report = tokio::task::spawn_blocking(move || {
                    feedback::demo::run(&options, h, |r| {
                        println!();
                        println!("folded {} records ({} of them poison, refused to the DLQ); alerts so far: {}", r.produced, r.refused,
                            r.by_type.iter().map(|(t, n)| format!("{t} {n}")).collect::<Vec<_>>().join(", "));
                        println!("active at the end of the history, every scope:");
                        for ((tenant, kind, scope), status) in &r.last {
                            if status == "firing" || status.starts_with("warn") {
                                println!("  {tenant:<16} {kind:<28} {scope:<18} {status}");
                            }
                        }
                        println!("(the daily model.calibration reports are counted above, not listed)");
                        println!();
                        println!("dashboard: http://{addr}/calibration   (the miscalibrated tenant: http://{addr}/calibration?tenant=miscal-002)");
                        println!("metrics:  http://{addr}/metrics   ready: http://{addr}/readyz   API: http://{addr}/api/v1/tenants");
                        println!("documents: {}/metadata/performance/", dir);
                        match duration {
                            Some(d) => println!("Ctrl-C to stop (it stops by itself {} after its start, --duration).", humantime::format_duration(d)),
                            None => println!("Ctrl-C to stop."),
                        }
                    })
                })
                .await??;
                handles.stop.store(true, std::sync::atomic::Ordering::Relaxed);
                let _ = http.task.await;
                anyhow::Ok(report)
            })?;
            println!(
                "demo stopped: {} records consumed, {} refused to the DLQ, {} alerts, {} commits",
                report.summary.consumed,
                report.summary.rejected,
                report.summary.alerts,
                report.summary.commits
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::CreateTopics(args) => {
            let config = Config::load(args.kafka.config.as_deref())?;
            let rt = runtime()?;
            let created = rt.block_on(feedback::kafka::admin::create_topics(
                &args.kafka.brokers,
                &config.topics,
                args.partitions,
                args.replication,
                &args.kafka_config,
            ))?;
            if created.is_empty() {
                print_stdout("all topics exist already")?;
            } else {
                print_stdout(&format!("created: {}", created.join(", ")))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckPerformance(args) => {
            let storage = feedback::storage::Storage::new(&args.storage.storage_dir);
            let check =
                feedback::commands::check::check_performance(&storage, &args.tenant, args.top)?;
            print_report(&check, args.storage.json)?;
            Ok(exit_code(check.degraded))
        }
        Command::AlertForecast(args) => {
            let storage = feedback::storage::Storage::new(&args.storage.storage_dir);
            let options = feedback::commands::forecast::ForecastOptions {
                tenant: args.tenant,
                threshold: args.threshold,
                window: args.window,
                min_n: args.min_n,
                interval: args.interval,
            };
            let check = feedback::commands::forecast::alert_forecast(&storage, &options)?;
            print_report(&check, args.storage.json)?;
            Ok(exit_code(check.alerting))
        }
        Command::Produce(args) => {
            let config = Config::load(args.kafka.config.as_deref())?;
            let job = feedback::commands::produce::ProduceJob {
                file: args.file,
                topic: args.topic,
                brokers: args.kafka.brokers,
                topics: config.topics,
                kafka_config: args.kafka_config,
                timeout: args.timeout,
            };
            let report = feedback::commands::produce::produce(&job)?;
            if report.refused_any() && !args.json {
                // The refused lines are the problem: they go where errors go.
                print_stderr(&report.to_string());
            } else {
                print_report(&report, args.json)?;
            }
            Ok(exit_code(report.refused_any()))
        }
        Command::Replay(args) => {
            let config = Config::load(args.kafka.config.as_deref())?;
            let job = feedback::commands::replay::ReplayJob {
                brokers: args.kafka.brokers,
                topics: config.topics.clone(),
                config: config.fold(),
                storage_dir: args.storage_dir,
                from_date: args.from_date,
                tenants: args.tenants.into_iter().collect(),
                publish: args.publish,
                kafka_config: args.kafka_config,
                progress: !args.quiet && !args.json,
                stall_timeout: args.stall_timeout,
            };
            let summary = feedback::commands::replay::replay(&job)?;
            print_report(&summary, args.json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Fold(args) => {
            let config = Config::load(args.config.as_deref())?;
            // The signals are watched from a runtime of their own; the fold runs on this thread.
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let signals = runtime()?;
            signals.block_on(async {
                stop_on_signal_saying(
                    stop.clone(),
                    "stopping: the fold ends before its next chunk of records or slice of documents (signal again to exit at once, which can leave temporary files)",
                )
            });
            let job = FoldJob {
                inputs: args.inputs,
                storage_dir: args.storage_dir,
                alerts_out: args.alerts_out,
                dlq_out: args.dlq_out,
                topics: config.topics.clone(),
                config: config.fold(),
                progress: !args.quiet && !args.json,
                stop: Some(stop),
            };
            let summary = match fold_files(&job) {
                Err(e @ feedback::offline::OfflineError::Interrupted(_)) => {
                    print_stderr(&format!("{e}"));
                    return Ok(ExitCode::from(130));
                }
                summary => summary?,
            };
            let text = if args.json {
                serde_json::to_string_pretty(&summary)?
            } else {
                summary.to_string()
            };
            print_stdout(&text)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate(args) => {
            let config = Config::load(args.config.as_deref())?;
            let sim = feedback::simulate::SimConfig {
                seed: args.seed,
                tenants: args.tenants,
                channels: args.channels,
                campaigns: args.campaigns,
                days: args.days,
                start: args.start,
                scenario: args.scenario,
                poison_rate: args.poison_rate,
            };
            sim.check()
                .map_err(|e| anyhow::anyhow!("--start and --days: {e}"))?;
            use feedback::commands::simulate::{produce, write_jsonl};
            match (&args.brokers, &args.out) {
                (Some(brokers), _) => {
                    let started = std::time::Instant::now();
                    let report = produce(
                        &sim,
                        &config.topics,
                        brokers,
                        &args.kafka_config,
                        args.timeout,
                    )?;
                    print_stderr(&format!(
                        "produced {} records ({} poison) to {} on {brokers} in {:.1}s",
                        report.records,
                        report.poison,
                        config.topics.inputs().join(", "),
                        started.elapsed().as_secs_f64()
                    ));
                }
                (None, Some(path)) => {
                    // As fold does for its outputs, a directory named for the file is created.
                    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                        std::fs::create_dir_all(dir)
                            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
                    }
                    let file = std::fs::File::create(path)
                        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
                    write_jsonl(&sim, &config.topics, file)?;
                }
                (None, None) => {
                    write_jsonl(&sim, &config.topics, std::io::stdout().lock())?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_flag_of_every_command_is_explained() {
        let cli = super::Cli::command();
        let mut missing = Vec::new();
        for sub in cli.get_subcommands() {
            if sub.get_about().is_none() {
                missing.push(format!("{} (the command)", sub.get_name()));
            }
            for arg in sub.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{} {id}", sub.get_name()));
                }
            }
        }
        assert!(missing.is_empty(), "without help: {missing:?}");
    }
}
