//! `retrylog report`: the audit and trend reports of `report/`, printed as a table, JSON,
//! CSV or (trend) an SVG chart.

mod chart;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde_json::Value;
use sqlx::PgPool;

use crate::output::{Format, Rows};
use crate::projector::Freshness;
use crate::report::{self, Bucket, GroupBy, Trend, TrendQuery};
use crate::window::{Moment, TimeSpec};

/// Exit status of `report alerts` when it lists anything (0 when the list is empty).
pub const EXIT_ALERTS: u8 = 3;

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
    /// The window: targets created at or after this time, a duration back (7d, 12h, 30m, 2w)
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
}

/// How `report trend` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TrendFormat {
    /// Aligned columns for people.
    Table,
    /// An array of row objects keyed by column name.
    Json,
    /// A header line, then one line per row.
    Csv,
    /// A line chart: retries and retry rate per bucket, one line per group.
    Svg,
}

pub async fn run(pool: &PgPool, args: ReportArgs) -> anyhow::Result<ExitCode> {
    match args.report {
        Report::TopJobs(args) => top_jobs(pool, args).await,
        Report::TopVariants(args) => top_variants(pool, args).await,
        Report::Stats(args) => stats(pool, args).await,
        Report::Alerts(args) => alerts(pool, args).await,
        Report::Trend(args) => trend(pool, args).await,
    }
}

async fn top_jobs(pool: &PgPool, args: TopJobsArgs) -> anyhow::Result<ExitCode> {
    let moment = Moment::from_flag(args.options.as_of.as_deref())?;
    let format = args.options.format;
    let mut conn = pool.acquire().await?;
    let jobs = report::top_jobs(&mut conn, args.limit, moment).await?;
    let mut rows = Rows::new(&[
        "job_id",
        "status",
        "current_step",
        "retry_count",
        "created_at",
        "updated_at",
    ]);
    for job in jobs {
        rows.push(vec![
            Value::from(job.job_id.to_string()),
            Value::from(job.status),
            optional(job.current_step),
            Value::from(job.retry_count),
            timestamp(job.created_at, format),
            timestamp(job.updated_at, format),
        ]);
    }
    rows.print(format)?;
    Ok(ExitCode::SUCCESS)
}

async fn top_variants(pool: &PgPool, args: TopVariantsArgs) -> anyhow::Result<ExitCode> {
    let moment = Moment::from_flag(args.options.as_of.as_deref())?;
    let mut conn = pool.acquire().await?;
    let variants = report::top_variants(&mut conn, args.limit, moment).await?;
    let mut rows = Rows::new(&[
        "job_variants_id",
        "job_id",
        "creation_order",
        "status",
        "current_step",
        "retry_count",
        "job_status",
        "job_current_step",
    ]);
    for variant in variants {
        rows.push(vec![
            Value::from(variant.job_variants_id.to_string()),
            Value::from(variant.job_id.to_string()),
            Value::from(variant.creation_order),
            Value::from(variant.status),
            optional(variant.current_step),
            Value::from(variant.retry_count),
            optional(variant.job_status),
            optional(variant.job_current_step),
        ]);
    }
    rows.print(args.options.format)?;
    Ok(ExitCode::SUCCESS)
}

async fn stats(pool: &PgPool, args: StatsArgs) -> anyhow::Result<ExitCode> {
    let moment = Moment::from_flag(args.options.as_of.as_deref())?;
    let since = TimeSpec::parse("--since", &args.since)?.resolve(moment.time());
    let mut conn = pool.acquire().await?;
    let stats = report::stats(&mut conn, since, args.high, moment).await?;
    let mut rows = Rows::new(&[
        "kind",
        "total",
        "no_retry",
        "has_retry",
        "high_retry",
        "avg_retry_count",
        "max_retry_count",
    ]);
    for kind in stats {
        rows.push(vec![
            Value::from(kind.kind),
            Value::from(kind.total),
            Value::from(kind.no_retry),
            Value::from(kind.has_retry),
            Value::from(kind.high_retry),
            Value::from(round(kind.avg_retry_count, 2)),
            Value::from(kind.max_retry_count),
        ]);
    }
    rows.print(args.options.format)?;
    Ok(ExitCode::SUCCESS)
}

async fn alerts(pool: &PgPool, args: AlertsArgs) -> anyhow::Result<ExitCode> {
    let moment = Moment::from_flag(args.options.as_of.as_deref())?;
    let updated_since = TimeSpec::parse("--within", &args.within)?.resolve(moment.time());
    let mut conn = pool.acquire().await?;
    let alerts = report::alerts(&mut conn, args.min, updated_since, moment).await?;
    let mut rows = Rows::new(&[
        "kind",
        "id",
        "job_id",
        "status",
        "current_step",
        "retry_count",
        "why",
    ]);
    for alert in &alerts {
        rows.push(vec![
            Value::from(alert.kind.clone()),
            Value::from(alert.id.to_string()),
            Value::from(alert.job_id.to_string()),
            Value::from(alert.status.clone()),
            optional(alert.current_step.clone()),
            Value::from(alert.retry_count),
            Value::from(alert.why.to_string()),
        ]);
    }
    rows.print(args.options.format)?;
    Ok(if alerts.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_ALERTS)
    })
}

async fn trend(pool: &PgPool, args: TrendArgs) -> anyhow::Result<ExitCode> {
    let moment = Moment::from_flag(args.as_of.as_deref())?;
    let query = TrendQuery {
        bucket: args.bucket,
        by: args.by,
        since: TimeSpec::parse("--since", &args.since)?.resolve(moment.time()),
    };
    // 1. Today's trend reads the rollup, which lags the log: catch it up first if no other
    //    instance is doing so, otherwise say how stale it is. The past is read from the log.
    if moment.as_of().is_none() {
        if let Freshness::Behind(lag) = report::bring_rollup_up_to_date(pool).await? {
            if lag.events_behind > 0 {
                eprintln!(
                    "retrylog: the trend rollup is {} event(s), {:.1} s behind the log; another \
                     instance (backend pid {}) is applying them, so this shows it as it stands",
                    lag.events_behind,
                    lag.seconds_behind,
                    lag.runner_pid
                        .map_or_else(|| "?".to_string(), |pid| pid.to_string()),
                );
            }
        }
    }
    let mut conn = pool.acquire().await?;
    let trend = report::trend(&mut conn, query, moment).await?;
    drop(conn);

    // 2. Print, to --output if given.
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("creating --output {}", path.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    match args.format {
        TrendFormat::Svg => out.write_all(chart::render(&trend, moment).as_bytes())?,
        TrendFormat::Table => trend_rows(&trend, Format::Table).write(Format::Table, &mut out)?,
        TrendFormat::Json => trend_rows(&trend, Format::Json).write(Format::Json, &mut out)?,
        TrendFormat::Csv => trend_rows(&trend, Format::Csv).write(Format::Csv, &mut out)?,
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The trend as rows; `retry_rate` rounded to 4 decimals, NULL when nothing was created.
fn trend_rows(trend: &Trend, format: Format) -> Rows {
    let mut rows = Rows::new(&[
        "bucket",
        "group",
        "retries",
        "targets_retried",
        "targets_created",
        "retry_rate",
    ]);
    for row in &trend.rows {
        rows.push(vec![
            Value::from(bucket_label(row.bucket, trend.query.bucket, format)),
            Value::from(row.group.clone()),
            Value::from(row.retries),
            Value::from(row.targets_retried),
            Value::from(row.targets_created),
            row.retry_rate
                .map_or(Value::Null, |rate| Value::from(round(rate, 4))),
        ]);
    }
    rows
}

/// A bucket for people (`2026-11-05 13:00`, `2026-11-05`, `2026-W45 (11-02)`), or its start
/// in RFC 3339 for machines.
fn bucket_label(start: DateTime<Utc>, bucket: Bucket, format: Format) -> String {
    if format != Format::Table {
        return start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    }
    match bucket {
        Bucket::Hour => start.format("%Y-%m-%d %H:00").to_string(),
        Bucket::Day => start.format("%Y-%m-%d").to_string(),
        Bucket::Week => start.format("%G-W%V (%m-%d)").to_string(),
    }
}

/// RFC 3339 for machines; seconds precision, UTC, for people.
fn timestamp(at: DateTime<Utc>, format: Format) -> Value {
    Value::from(if format == Format::Table {
        at.format("%Y-%m-%d %H:%M:%S").to_string()
    } else {
        at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    })
}

fn optional(text: Option<String>) -> Value {
    text.map_or(Value::Null, Value::from)
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}
