//! `retrylog report`: the audit and trend reports of `report/`, printed as a table, JSON,
//! CSV or (trend) an SVG chart.

mod chart;

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;

use super::exit;
use crate::cli::{
    AlertsArgs, OutcomesArgs, Report, ReportArgs, StatsArgs, TopJobsArgs, TopVariantsArgs,
    TrendArgs, TrendFormat,
};
use crate::output::{Format, Rows};
use crate::projector::Freshness;
use crate::report::{self, Bucket, OutcomesQuery, Trend, TrendQuery};
use crate::window::{Moment, TimeSpec};

pub async fn run(pool: &PgPool, args: ReportArgs) -> anyhow::Result<ExitCode> {
    match args.report {
        Report::TopJobs(args) => top_jobs(pool, args).await,
        Report::TopVariants(args) => top_variants(pool, args).await,
        Report::Stats(args) => stats(pool, args).await,
        Report::Alerts(args) => alerts(pool, args).await,
        Report::Trend(args) => trend(pool, args).await,
        Report::Outcomes(args) => outcomes(pool, args).await,
    }
}

async fn top_jobs(pool: &PgPool, args: TopJobsArgs) -> anyhow::Result<ExitCode> {
    let format = args.options.format;
    top_jobs_rows(pool, &args, format).await?.print(format)?;
    Ok(ExitCode::SUCCESS)
}

/// `report top-jobs` as rows (also `GET /api/v1/reports/top-jobs`).
pub async fn top_jobs_rows(
    pool: &PgPool,
    args: &TopJobsArgs,
    format: Format,
) -> anyhow::Result<Rows> {
    let moment = Moment::from_flag(args.options.as_of.as_deref())?;
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
    Ok(rows)
}

async fn top_variants(pool: &PgPool, args: TopVariantsArgs) -> anyhow::Result<ExitCode> {
    let format = args.options.format;
    top_variants_rows(pool, &args).await?.print(format)?;
    Ok(ExitCode::SUCCESS)
}

/// `report top-variants` as rows (also `GET /api/v1/reports/top-variants`).
pub async fn top_variants_rows(pool: &PgPool, args: &TopVariantsArgs) -> anyhow::Result<Rows> {
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
    Ok(rows)
}

async fn stats(pool: &PgPool, args: StatsArgs) -> anyhow::Result<ExitCode> {
    let format = args.options.format;
    stats_rows(pool, &args).await?.print(format)?;
    Ok(ExitCode::SUCCESS)
}

/// `report stats` as rows (also `GET /api/v1/reports/stats`).
pub async fn stats_rows(pool: &PgPool, args: &StatsArgs) -> anyhow::Result<Rows> {
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
    Ok(rows)
}

async fn alerts(pool: &PgPool, args: AlertsArgs) -> anyhow::Result<ExitCode> {
    let rows = alerts_rows(pool, &args).await?;
    rows.print(args.options.format)?;
    Ok(if rows.rows.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::ALERTS)
    })
}

/// `report alerts` as rows (also `GET /api/v1/reports/alerts`).
pub async fn alerts_rows(pool: &PgPool, args: &AlertsArgs) -> anyhow::Result<Rows> {
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
    Ok(rows)
}

async fn trend(pool: &PgPool, args: TrendArgs) -> anyhow::Result<ExitCode> {
    let (trend, moment) = load_trend(pool, &args, true).await?;

    // 2. Print, to --output if given.
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("creating --output {}", path.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    // A table shows the rows with data and says how many empty ones it left out; JSON and
    // CSV keep the full grid (their contract) unless --non-empty.
    let (format, non_empty) = match args.format {
        TrendFormat::Svg => {
            out.write_all(chart::render(&trend, moment).as_bytes())?;
            out.flush()?;
            return Ok(ExitCode::SUCCESS);
        }
        TrendFormat::Table => (Format::Table, true),
        TrendFormat::Json => (Format::Json, args.non_empty),
        TrendFormat::Csv => (Format::Csv, args.non_empty),
    };
    let (rows, left_out) = trend_rows(&trend, format, non_empty);
    if args.output.is_none() && format == Format::Table {
        // On stdout a table is fitted to the terminal like every other.
        drop(out);
        rows.print(format)?;
    } else {
        rows.write(format, &mut out)?;
        out.flush()?;
    }
    if left_out > 0 && format == Format::Table {
        eprintln!(
            "retrylog: left out {left_out} of {} rows with no retries and nothing created \
             (--format json or csv lists the full grid)",
            trend.rows.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `report trend --format json` as rows (also `GET /api/v1/reports/trend`): the full grid
/// unless `--non-empty`.
pub async fn trend_json_rows(pool: &PgPool, args: &TrendArgs) -> anyhow::Result<Rows> {
    let (trend, _) = load_trend(pool, args, true).await?;
    Ok(trend_rows(&trend, Format::Json, args.non_empty).0)
}

/// `report trend --format svg`: the chart the dashboard's overview shows, from the rollup as
/// it stands (the page shows the projector's lag; `serve`'s projector keeps it up).
pub async fn trend_svg(pool: &PgPool, args: &TrendArgs) -> anyhow::Result<String> {
    let (trend, moment) = load_trend(pool, args, false).await?;
    Ok(chart::render(&trend, moment))
}

/// The trend the flags ask for, and the moment it is for; `catch_up`: first bring the rollup
/// up to date, as the command does.
async fn load_trend(
    pool: &PgPool,
    args: &TrendArgs,
    catch_up: bool,
) -> anyhow::Result<(Trend, Moment)> {
    let moment = Moment::from_flag(args.as_of.as_deref())?;
    let query = TrendQuery {
        bucket: args.bucket,
        by: args.by,
        since: TimeSpec::parse("--since", &args.since)?.resolve(moment.time()),
    };
    // 1. Today's trend reads the rollup, which lags the log: catch it up first if this role
    //    may and no other instance is doing so, otherwise say how stale it is. The past is
    //    read from the log. A window the report refuses is refused before anything is written.
    report::check_window(&query, moment)?;
    if catch_up && moment.as_of().is_none() {
        bring_rollups_up_to_date(pool).await?;
    }
    let mut conn = pool.acquire().await?;
    let trend = report::trend(&mut conn, query, moment).await?;
    Ok((trend, moment))
}

/// Today's trend and outcomes read the rollups, which lag the log: catch them up first if this
/// role may and no other instance is doing so, otherwise say how stale they are.
async fn bring_rollups_up_to_date(pool: &PgPool) -> anyhow::Result<()> {
    if let Freshness::Behind(lag) = report::bring_rollup_up_to_date(pool).await? {
        if lag.events_behind > 0 && lag.runner_pid.is_none() {
            eprintln!(
                "retrylog: the rollups are {} event(s), {:.1} s behind the log and no \
                 projector runs (this role may not run it), so this shows it as it stands",
                lag.events_behind, lag.seconds_behind,
            );
        } else if lag.events_behind > 0 {
            eprintln!(
                "retrylog: the rollups are {} event(s), {:.1} s behind the log; another \
                 instance (backend pid {}) is applying them, so this shows it as it stands",
                lag.events_behind,
                lag.seconds_behind,
                lag.runner_pid
                    .map_or_else(|| "?".to_string(), |pid| pid.to_string()),
            );
        }
    }
    Ok(())
}

/// The trend as rows, and how many empty ones were left out (with `non_empty`: those with no
/// retry and nothing created); `recovered` right after `retries`, of which it is a part;
/// `retry_rate` rounded to 4 decimals, NULL when nothing was created.
fn trend_rows(trend: &Trend, format: Format, non_empty: bool) -> (Rows, usize) {
    let mut rows = Rows::new(&[
        "bucket",
        "group",
        "retries",
        "recovered",
        "targets_retried",
        "targets_created",
        "retry_rate",
    ]);
    let mut left_out = 0;
    for row in &trend.rows {
        if non_empty && row.retries == 0 && row.targets_retried == 0 && row.targets_created == 0 {
            left_out += 1;
            continue;
        }
        rows.push(vec![
            Value::from(bucket_label(row.bucket, trend.query.bucket, format)),
            Value::from(row.group.clone()),
            Value::from(row.retries),
            Value::from(row.recovered),
            Value::from(row.targets_retried),
            Value::from(row.targets_created),
            row.retry_rate
                .map_or(Value::Null, |rate| Value::from(round(rate, 4))),
        ]);
    }
    (rows, left_out)
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

async fn outcomes(pool: &PgPool, args: OutcomesArgs) -> anyhow::Result<ExitCode> {
    let format = args.options.format;
    outcomes_rows(pool, &args).await?.print(format)?;
    Ok(ExitCode::SUCCESS)
}

/// `report outcomes` as rows (also `GET /api/v1/reports/outcomes`), the rollups brought up to
/// date first unless as of T. Rates to 4 decimals, seconds to 3.
pub async fn outcomes_rows(pool: &PgPool, args: &OutcomesArgs) -> anyhow::Result<Rows> {
    let moment = Moment::from_flag(args.options.as_of.as_deref())?;
    let query = OutcomesQuery {
        by: args.by,
        since: TimeSpec::parse("--since", &args.since)?.resolve(moment.time()),
    };
    if moment.as_of().is_none() {
        bring_rollups_up_to_date(pool).await?;
    }
    let mut conn = pool.acquire().await?;
    let outcomes = report::outcomes(&mut conn, query, moment).await?;
    let mut rows = Rows::new(&[
        "group",
        "retries",
        "recovered",
        "retried_again",
        "gave_up",
        "open",
        "success_rate",
        "median_seconds_to_recover",
        "p90_seconds_to_recover",
    ]);
    let number = |value: Option<f64>, decimals| {
        value.map_or(Value::Null, |value| Value::from(round(value, decimals)))
    };
    for row in outcomes.rows {
        rows.push(vec![
            Value::from(row.group),
            Value::from(row.retries),
            Value::from(row.recovered),
            Value::from(row.retried_again),
            Value::from(row.gave_up),
            Value::from(row.open),
            number(row.success_rate, 4),
            number(row.median_seconds_to_recover, 3),
            number(row.p90_seconds_to_recover, 3),
        ]);
    }
    Ok(rows)
}

fn optional(text: Option<String>) -> Value {
    text.map_or(Value::Null, Value::from)
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}
