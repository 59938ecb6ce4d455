//! The command line: every command and flag, documented where it is declared (that text is
//! what `retrylog --help` shows).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use uuid::Uuid;

use crate::event::RetryReason;
use crate::output::Format;

/// Event-sourced retry history for job pipelines on PostgreSQL.
///
/// Every retry of a job or variant is an immutable event in `retry_history`; the
/// `retry_count` columns of `jobs` and `jobs_variants` are kept in step with it and can be
/// rebuilt (`replay`) and audited (`verify`) at any time. Migrations run automatically before
/// every command.
///
/// The database: --database-url / DATABASE_URL, else the libpq variables (PGHOST, PGPORT,
/// PGUSER, PGDATABASE, ...) and the local socket, else a private PostgreSQL cluster that
/// retrylog starts from the installed binaries. Without a database name it uses `retrylog`,
/// created if missing.
///
/// Exit codes: 0 success; 1 verify found a mismatch; 2 a mistake in the input (bad id,
/// unknown reason or target, invalid JSON, a refused retry); 3 `report alerts` listed
/// something; 69 no database reachable; 70 any other failure.
#[derive(Debug, Parser)]
#[command(name = "retrylog", version, max_term_width = 100)]
pub struct Cli {
    /// PostgreSQL URL, e.g. postgres://user@host:5432/db. Never falls back when set.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// Where the private cluster lives when no server is reachable
    /// [default: /var/lib/retrylog for root, else $XDG_DATA_HOME/retrylog or ~/.local/share/retrylog].
    #[arg(long, env = "RETRYLOG_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the migrations and install the projections (every command does this first).
    Migrate,
    /// Record one retry and print the stored event.
    Record(RecordArgs),
    /// Show a target's retry events in order, with the watchdog's notes where the retry limit
    /// stopped it; a job's history includes its variants'.
    History(HistoryArgs),
    /// Audit and trend reports: top-jobs, top-variants, stats, alerts, trend.
    Report(crate::cmd::report::ReportArgs),
    /// Rebuild projections from the log: the retry_count columns and the trend rollup.
    Replay(ReplayArgs),
    /// Recompute every projection and hash chain from the log; exit 1 on any mismatch.
    Verify(VerifyArgs),
    /// Bring the trend rollup up to date once and exit (for cron); waits for no one.
    Project(ProjectArgs),
    /// Show each projection's checkpoint, lag and runner.
    Status(FormatArg),
    /// Run the service: the recovery watchdog and the asynchronous projector, until SIGINT or
    /// SIGTERM.
    Serve(ServeArgs),
    /// Run a live sample pipeline that goes wrong on purpose, with the recovery watchdog
    /// recovering it, in a scratch database; then the retries, the targets at the limit and a
    /// verify.
    ///
    /// Runs in its own database, retrylog_demo, created on the configured server and dropped
    /// at the end unless --keep; the configured database is never touched. Variants fail, the
    /// pipeline misses notifications and job completions on purpose, and a few flaky variants
    /// fail until they reach the retry limit; the watchdog of `serve` (stuck after 2s, sweeps
    /// every 1s, limit 3) recovers what it can. Each miss, retry and limit is shown as it
    /// happens. Exit 1 if verify is not clean. Ctrl-C ends the run early and still prints the
    /// summary.
    Demo(crate::cmd::demo::DemoArgs),
}

/// `--format`, for every command that prints data.
#[derive(Debug, Args)]
pub struct FormatArg {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `retrylog record`.
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// The job retried, or the job the retried variant belongs to.
    #[arg(long, value_name = "UUID")]
    pub job_id: Uuid,

    /// The variant retried; omit for a job-level retry.
    #[arg(long, value_name = "UUID")]
    pub variant_id: Option<Uuid>,

    /// Why: stuck, failed or manual_recovery.
    #[arg(long, value_parser = RetryReason::parse)]
    pub reason: RetryReason,

    /// The step retried [default: the target's current_step].
    #[arg(long)]
    pub step: Option<String>,

    /// Who retried [default: cli:$USER].
    #[arg(long)]
    pub actor: Option<String>,

    /// A JSON object with anything worth keeping (scenario, error text, ticket, ...).
    #[arg(long, value_name = "JSON", value_parser = parse_detail)]
    pub detail: Option<serde_json::Value>,

    /// Idempotency key: recording the same event id again prints the original event.
    #[arg(long, value_name = "UUID")]
    pub event_id: Option<Uuid>,

    /// Refuse the retry when the target's retry_count has already reached this number (the
    /// database's own limit, set by `serve --max-retries`, applies too; the lower one wins).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(0..))]
    pub max_retries: Option<i32>,

    /// Record an operator's recovery of a target past the retry limit. Only with
    /// --reason manual_recovery; the event's detail keeps the limit it passed.
    #[arg(long, conflicts_with = "max_retries")]
    pub force: bool,

    /// Refuse unless this is the target's next attempt (optimistic concurrency).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
    pub expected_attempt: Option<i32>,

    #[command(flatten)]
    pub format: FormatArg,
}

/// `retrylog history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// A job: its own events and all of its variants' events.
    #[arg(long, value_name = "UUID", required_unless_present = "variant_id")]
    pub job_id: Option<Uuid>,

    /// A variant: its events.
    #[arg(long, value_name = "UUID", conflicts_with = "job_id")]
    pub variant_id: Option<Uuid>,

    /// Only events of this reason: stuck, failed or manual_recovery.
    #[arg(long, value_parser = RetryReason::parse)]
    pub reason: Option<RetryReason>,

    /// Only events of this step (exact match).
    #[arg(long)]
    pub step: Option<String>,

    /// Only events by this actor (exact match, e.g. cli:alice).
    #[arg(long)]
    pub actor: Option<String>,

    /// Only events that occurred at or after this time: a duration back (7d, 12h, 30m, 2w) or
    /// a timestamp (2026-11-01, 2026-11-01T12:00:00Z; UTC unless it has an offset).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,

    /// Only events that occurred at or before this time (same forms as --since).
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,

    /// The history as it stood then: only events recorded at or before this time (same forms
    /// as --since; durations in --since and --until then count back from it).
    #[arg(long, value_name = "WHEN")]
    pub as_of: Option<String>,

    #[command(flatten)]
    pub format: FormatArg,
}

/// `retrylog replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Print what would change and write nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Rebuild only this projection: retry_counts or retry_rollup [default: all].
    #[arg(long, value_name = "NAME", value_parser = parse_projection)]
    pub projection: Option<&'static crate::projection::Projection>,

    #[command(flatten)]
    pub format: FormatArg,
}

/// `retrylog verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub format: FormatArg,
}

/// `retrylog project`.
#[derive(Debug, Args)]
pub struct ProjectArgs {
    /// Roughly how many events one projector transaction applies.
    #[arg(long, default_value_t = crate::projector::DEFAULT_BATCH_EVENTS,
          value_parser = clap::value_parser!(i64).range(1..))]
    pub batch: i64,

    #[command(flatten)]
    pub format: FormatArg,
}

/// `retrylog serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub watchdog: crate::config::WatchdogSettings,

    /// Run only the projector, no watchdog (for an instance that must not retry anything).
    #[arg(long)]
    pub no_watchdog: bool,

    /// Roughly how many events one projector transaction applies.
    #[arg(long, env = "RETRYLOG_PROJECTOR_BATCH", default_value_t = crate::projector::DEFAULT_BATCH_EVENTS,
          value_parser = clap::value_parser!(i64).range(1..))]
    pub projector_batch: i64,

    /// Log lines as JSON objects instead of text.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How `serve` writes its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Parses `--projection`.
fn parse_projection(name: &str) -> Result<&'static crate::projection::Projection, String> {
    crate::projection::find(name)
}

/// Parses `--detail`: it must be a JSON object.
fn parse_detail(text: &str) -> Result<serde_json::Value, String> {
    match serde_json::from_str(text) {
        Ok(value @ serde_json::Value::Object(_)) if crate::event::contains_nul(&value) => {
            Err("detail contains a NUL character (\\u0000), which PostgreSQL cannot store".into())
        }
        Ok(value @ serde_json::Value::Object(_)) => Ok(value),
        Ok(_) => Err("detail must be a JSON object, e.g. '{\"error\": \"timeout\"}'".into()),
        Err(error) => Err(format!("not valid JSON: {error}")),
    }
}
