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
    /// output cannot be written.
    Fold(FoldArgs),
    /// Generate a seeded synthetic history of the three input topics as JSONL for `fold`.
    ///
    /// Day by day: a plan every 7 days for the next 28 days, each day's outcomes the next
    /// morning (from the ad platform, and from Shopify for every other campaign), and weekly
    /// feature importances with samples. Scenarios change the last third of the history:
    /// `degraded` makes actuals fall below the forecasts, `miscalibrated` makes the p10..p90
    /// intervals far too narrow, `drift` rotates the importances, `mixed` gives tenants each
    /// scenario in turn. The same seed and flags give the same bytes.
    Simulate(SimulateArgs),
}

#[derive(Args)]
struct SimulateArgs {
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, default_value_t = 4)]
    tenants: usize,
    /// Channels per tenant (meta, google, tiktok, pinterest, snap, email, then channel6...).
    #[arg(long, default_value_t = 3)]
    channels: usize,
    /// Campaigns per channel.
    #[arg(long, default_value_t = 2)]
    campaigns: usize,
    /// Days of history.
    #[arg(long, default_value_t = 90)]
    days: u32,
    /// First day of the history.
    #[arg(long, default_value = "2026-08-01")]
    start: chrono::NaiveDate,
    #[arg(long, value_enum, default_value = "mixed")]
    scenario: feedback::simulate::Scenario,
    /// Share of records replaced by poison records that validation must refuse (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    poison_rate: f64,
    /// Write to this file instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    out: Option<PathBuf>,
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
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FEEDBACK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // Our error messages carry their cause already; `{:#}` would print it twice.
            eprintln!("error: {e}");
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

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Fold(args) => {
            let config = Config::load(args.config.as_deref())?;
            let job = FoldJob {
                inputs: args.inputs,
                storage_dir: args.storage_dir,
                alerts_out: args.alerts_out,
                dlq_out: args.dlq_out,
                topics: config.topics.clone(),
                config: config.fold(),
                progress: !args.quiet && !args.json,
            };
            let summary = fold_files(&job)?;
            let text = if args.json {
                serde_json::to_string_pretty(&summary)?
            } else {
                summary.to_string()
            };
            print_stdout(&text)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate(args) => {
            anyhow::ensure!(
                (0.0..=1.0).contains(&args.poison_rate),
                "--poison-rate must be between 0 and 1"
            );
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
            let topics = feedback::config::TopicNames::default();
            let out: Box<dyn std::io::Write> = match &args.out {
                Some(path) => Box::new(
                    std::fs::File::create(path)
                        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?,
                ),
                None => Box::new(std::io::stdout().lock()),
            };
            let mut out = std::io::BufWriter::new(out);
            for record in feedback::simulate::generate(&sim) {
                let name = match record.topic {
                    feedback::event::Topic::Outcomes => &topics.outcomes,
                    feedback::event::Topic::Forecasts => &topics.forecasts,
                    feedback::event::Topic::FeatureImportances => &topics.feature_importances,
                };
                if let Err(e) = writeln!(out, "{}", record.jsonl(name)) {
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        return Ok(ExitCode::SUCCESS);
                    }
                    return Err(e.into());
                }
            }
            match out.flush() {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => other?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
