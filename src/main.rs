//! The `feedback` binary: parses the command line and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

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
    /// (the shape `kcat -J` prints). Files are read in the order given. Writes the storage
    /// documents of every tenant, the alerts and the refused records, then prints a summary.
    /// Exit code 0 on success (refused records included), 2 when an input cannot be read or an
    /// output cannot be written.
    Fold(FoldArgs),
}

#[derive(Args)]
struct FoldArgs {
    /// JSONL input files.
    #[arg(required = true, value_name = "FILE")]
    inputs: Vec<PathBuf>,
    /// Where the storage documents go (metadata/performance/{tenant}.json and friends).
    #[arg(long, env = "FEEDBACK_STORAGE_DIR", default_value = "storage", value_name = "DIR")]
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
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
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
            if args.json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!("{summary}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
