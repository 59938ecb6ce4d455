//! `retrylog report`'s flags: one struct per report, the options they share, and how the
//! trend prints. The reports themselves are `crate::report`; `cmd/report.rs` prints them.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use crate::output::Format;
use crate::report::{Bucket, GroupBy, OutcomeGroupBy};

/// `retrylog report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(subcommand)]
    pub report: Report,
}

/// The reports.
#[derive(Debug, Subcommand)]
pub enum Report {
    /// Jobs with retries, most retried first (ties: most recently updated first).
    TopJobs(TopJobsArgs),
    /// Variants with retries and their job's status and step, most retried first.
    TopVariants(TopVariantsArgs),
    /// Jobs and variants created in a window: how many were retried, how often.
    Stats(StatsArgs),
    /// Running or failed targets retried often and updated recently; exit 3 when any.
    Alerts(AlertsArgs),
    /// Retries and the retry rate per hour, day or week, read from the rollup.
    Trend(TrendArgs),
    /// What became of the retries: recovered, retried again, gave up or open, per group, with
    /// the success rate and the time to recover.
    Outcomes(OutcomesArgs),
}

/// The flags every table report has.
#[derive(Debug, Args)]
pub struct ReportOptions {
    /// The counts as they were then, rebuilt from the log: a duration back (2h, 1d) or a
    /// timestamp (2026-11-01T12:00:00Z); status and step stay today's.
    #[arg(long, value_name = "WHEN")]
    pub as_of: Option<String>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `retrylog report top-jobs`.
#[derive(Debug, Args)]
pub struct TopJobsArgs {
    /// How many jobs to list.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i64).range(1..))]
    pub limit: i64,

    #[command(flatten)]
    pub options: ReportOptions,
}

/// `retrylog report top-variants`.
#[derive(Debug, Args)]
pub struct TopVariantsArgs {
    /// How many variants to list.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..))]
    pub limit: i64,

    #[command(flatten)]
    pub options: ReportOptions,
}

/// `retrylog report stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The window: targets created at or after this time, a duration back (90s, 1h30m, 7d, 2w)
    /// or a timestamp (2026-11-01, 2026-11-01T12:00:00Z).
    #[arg(long, value_name = "WHEN", default_value = "7d")]
    pub since: String,

    /// A target with at least this many retries counts as high_retry.
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub high: i32,

    #[command(flatten)]
    pub options: ReportOptions,
}

/// `retrylog report alerts`.
#[derive(Debug, Args)]
pub struct AlertsArgs {
    /// List running or failed targets with at least this many retries (targets needing
    /// manual intervention are listed whatever their count and age).
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub min: i32,

    /// Only high-retry targets updated within this long (or since this timestamp).
    #[arg(long, value_name = "WHEN", default_value = "1h")]
    pub within: String,

    #[command(flatten)]
    pub options: ReportOptions,
}

/// `retrylog report trend`.
#[derive(Debug, Args)]
pub struct TrendArgs {
    /// The width of a bucket (UTC; a week starts on Monday).
    #[arg(long, value_enum, default_value_t = Bucket::Day)]
    pub bucket: Bucket,

    /// The window: from the start of the bucket holding this time, a duration back (30d, 2w)
    /// or a timestamp (2026-11-01).
    #[arg(long, value_name = "WHEN", default_value = "30d")]
    pub since: String,

    /// What each bucket is split by.
    #[arg(long, value_enum, default_value_t = GroupBy::Kind)]
    pub by: GroupBy,

    /// The trend as it was then, counted from the log (events recorded by then) instead of
    /// the rollup: a duration back (1d) or a timestamp.
    #[arg(long, value_name = "WHEN")]
    pub as_of: Option<String>,

    /// Output format; svg draws one line per group.
    #[arg(long, value_enum, default_value_t = TrendFormat::Table)]
    pub format: TrendFormat,

    /// Write to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// JSON and CSV: only the rows with data, like the table (which always leaves out the
    /// empty ones and says how many); by default they keep the full grid.
    #[arg(long)]
    pub non_empty: bool,
}

/// `retrylog report outcomes`.
#[derive(Debug, Args)]
pub struct OutcomesArgs {
    /// The window: retries that occurred from the start of the UTC day holding this time, a
    /// duration back (30d, 2w) or a timestamp (2026-11-01).
    #[arg(long, value_name = "WHEN", default_value = "30d")]
    pub since: String,

    /// What the retries are split by.
    #[arg(long, value_enum, default_value_t = OutcomeGroupBy::Reason)]
    pub by: OutcomeGroupBy,

    #[command(flatten)]
    pub options: ReportOptions,
}

/// How `report trend` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TrendFormat {
    /// Aligned columns for people.
    Table,
    /// An array of row objects keyed by column name.
    Json,
    /// A header line, then one line per row; a text cell beginning with = + - @ ' tab or
    /// carriage return gets a leading ' so a spreadsheet shows it rather than evaluating it
    /// (numbers stay numbers; --format json is exact).
    Csv,
    /// A line chart: retries and retry rate per bucket, one line per group.
    Svg,
}
