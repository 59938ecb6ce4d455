//! `retrylog-bench scale`: the same figures at two log sizes in one run (1M and 10M events by
//! default), with the larger ÷ the smaller per line — what grows with the log and what stays
//! flat (issue 23: everything but the full verify and the archive within 1.2×).
//!
//! The log is the reports benchmark's (`reports/realistic_log.rs`), loaded by COPY; each stage
//! adds events to reach its size. The archive needs an old month: before it, the stage's first
//! `--month-events` events in log order (a prefix of every stream they touch) are moved back
//! to a past month's partition, as a log that ran through that month would hold them; so the
//! archive's size is the same at both stages, and its time shows whether it follows the month
//! or the log. Verify is measured twice: `--full` right after the load (every event, every
//! whole-log check, the closed month's digest), which records the position; then, after the
//! appends, a plain verify, which reads the events appended since and one row per target.
//!
//! The appends have a baseline at each stage, the real "before" at that size: the twin
//! database (`twin.rs`, no retrylog object) is given a copy of the stage's pipeline tables,
//! and the same 16 connections run the bare counter `UPDATE` there on the same variants, right
//! after a checkpoint as the appends do. Its own large/small line says how much of the
//! appends' slowdown the pipeline's tables bring with their size, whatever records the retry.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use clap::Args;
use futures::TryStreamExt;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::Value;
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;

use retrylog::cli::FormatArg;
use retrylog::cmd::exit;
use retrylog::connect::Connected;
use retrylog::output::Rows;
use retrylog::report::{self, Bucket, GroupBy, OutcomeGroupBy, TrendQuery};
use retrylog::verify_state::Scope;
use retrylog::window::Moment;

use crate::database::{fresh_database, in_bench_database, print_server};
use crate::figures::{ms, percentile, thousands};
use crate::log::{load_log, outcomes_from_log};
use crate::reports::outcomes::measure_outcomes;
use crate::reports::realistic_log::realistic_log;
use crate::reports::WINDOW_DAYS;
use crate::stuck_retry;
use crate::twin::{fresh_twin, release_twin};

/// `retrylog-bench scale`.
#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// The log sizes measured at, comma-separated, smallest first.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000000,10000000",
        value_name = "N,N"
    )]
    pub sizes: Vec<u64>,

    /// Events moved into a past month and archived at each stage.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub month_events: u64,

    /// How long the 16 appending connections run.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    pub append_seconds: f64,

    /// Timed runs of the history, the trend and the outcomes report (p99 reported).
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub runs: u32,

    /// Keep the retrylog_bench database at the end, for inspection.
    #[arg(long)]
    pub keep: bool,

    #[command(flatten)]
    pub format: FormatArg,
}

impl ScaleArgs {
    /// `--smoke`: 2,000 then 4,000 events, a month of 200, a fraction of a second of appends.
    pub fn smoke(&mut self) {
        self.sizes = vec![2_000, 4_000];
        self.month_events = 200;
        self.append_seconds = 0.3;
        self.runs = 5;
    }
}

/// Appending connections.
const CONNECTIONS: usize = 16;

/// The variants the appends and the baseline take in turn (all of them, in a smaller
/// pipeline): more than either changes in its seconds (10,000 until 2026-12-07).
const VARIANTS: i64 = 100_000;

/// Every figure of one stage.
#[derive(Debug, Default)]
struct Stage {
    events: u64,
    appends: Appends,
    /// The bare counter UPDATE on a copy of the stage's pipeline tables, without retrylog.
    baseline: Appends,
    history_p99: f64,
    trend_p99: f64,
    outcomes_p99: f64,
    verify_events_per_second: f64,
    /// The plain verify after the appends: its time and the new events it read.
    plain_verify_ms: f64,
    plain_verify_events: f64,
    archive_seconds: f64,
    archive_events_per_second: f64,
    partition_ms: f64,
    /// Bytes per million events: the log, its indexes (and the head and event-id tables),
    /// the projections.
    disk: [f64; 3],
}

pub async fn run(connected: &Connected, args: ScaleArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.sizes.len() == 2 && args.sizes[0] < args.sizes[1],
        "--sizes takes two sizes, the smaller first"
    );
    let stages = in_bench_database(
        connected,
        "retrylog-bench scale",
        args.keep,
        async |options| {
            let twin = fresh_twin(connected, options).await?;
            let measured = measure(connected, options, &twin, &args).await;
            twin.close().await;
            release_twin(connected, args.keep).await;
            measured
        },
    )
    .await?;
    let Some(stages) = stages else {
        return Ok(ExitCode::from(exit::MISMATCH));
    };
    let (small, large) = (&stages[0], &stages[1]);
    let mut rows = Rows::new(&["figure", "unit", "small", "large", "large/small"]);
    let mut line = |figure: &str, unit: &str, a: f64, b: f64| {
        rows.push(vec![
            Value::from(figure.to_string()),
            Value::from(unit.to_string()),
            Value::from(round(a)),
            Value::from(round(b)),
            Value::from(if a > 0.0 { round(b / a) } else { 0.0 }),
        ]);
    };
    line("events", "events", small.events as f64, large.events as f64);
    line(
        "appends, 16 connections",
        "appends/s",
        small.appends.per_second,
        large.appends.per_second,
    );
    line(
        "appends: WAL per append",
        "bytes",
        small.appends.wal_bytes,
        large.appends.wal_bytes,
    );
    line(
        "appends: full-page images per append",
        "pages",
        small.appends.full_pages,
        large.appends.full_pages,
    );
    line(
        "appends: blocks read from outside shared_buffers, per append",
        "blocks",
        small.appends.blocks_read,
        large.appends.blocks_read,
    );
    line(
        "baseline: bare counter UPDATE, 16 connections, no retrylog",
        "updates/s",
        small.baseline.per_second,
        large.baseline.per_second,
    );
    line(
        "baseline: WAL per update",
        "bytes",
        small.baseline.wal_bytes,
        large.baseline.wal_bytes,
    );
    line(
        "baseline: full-page images per update",
        "pages",
        small.baseline.full_pages,
        large.baseline.full_pages,
    );
    line(
        "appends ÷ baseline",
        "×",
        small.appends.per_second / small.baseline.per_second,
        large.appends.per_second / large.baseline.per_second,
    );
    line(
        "history of a variant, p99",
        "ms",
        small.history_p99,
        large.history_p99,
    );
    line(
        "trend --since 30d --by reason, p99",
        "ms",
        small.trend_p99,
        large.trend_p99,
    );
    line(
        "outcomes --by reason, p99",
        "ms",
        small.outcomes_p99,
        large.outcomes_p99,
    );
    line(
        "verify --full",
        "events/s",
        small.verify_events_per_second,
        large.verify_events_per_second,
    );
    line(
        "verify (plain: the appends since --full)",
        "ms",
        small.plain_verify_ms,
        large.plain_verify_ms,
    );
    line(
        "verify (plain): new events read",
        "events",
        small.plain_verify_events,
        large.plain_verify_events,
    );
    line(
        "archive one month",
        "s",
        small.archive_seconds,
        large.archive_seconds,
    );
    line(
        "archive one month",
        "events/s",
        small.archive_events_per_second,
        large.archive_events_per_second,
    );
    line(
        "a partition created ahead",
        "ms",
        small.partition_ms,
        large.partition_ms,
    );
    for (i, what) in ["log", "indexes", "projections"].into_iter().enumerate() {
        line(
            &format!("disk per million events: {what}"),
            "MB",
            small.disk[i] / 1e6,
            large.disk[i] / 1e6,
        );
    }
    rows.print(args.format.format)?;
    Ok(ExitCode::SUCCESS)
}

fn round(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// Both stages in a fresh bench database; `None` when a verify was not clean.
async fn measure(
    connected: &Connected,
    options: &PgConnectOptions,
    twin: &PgPool,
    args: &ScaleArgs,
) -> anyhow::Result<Option<Vec<Stage>>> {
    let pool = fresh_database(connected, options).await?;
    print_server(&pool).await?;
    let end = Utc::now() - chrono::Duration::minutes(1);
    let mut rng = StdRng::from_entropy();
    let archive_dir =
        std::env::temp_dir().join(format!("retrylog-bench-scale-{}", std::process::id()));
    let mut stages = Vec::new();
    let mut loaded = 0;
    for (number, &size) in args.sizes.iter().enumerate() {
        // The month to archive first: targets of its own whose retries occurred in that
        // month, moved there; then the rest of the stage's events, in the last 30 days.
        let months_back = 2 * (args.sizes.len() - number) as i32;
        let first_seq: i64 =
            sqlx::query_scalar("SELECT coalesce(max(seq), 0) + 1 FROM retry_history")
                .fetch_one(&pool)
                .await?;
        let in_month = month_start(&pool, months_back).await? + chrono::Duration::days(20);
        load_log(
            &pool,
            realistic_log(args.month_events, in_month, &mut rng)?,
            Some(1_000),
        )
        .await?;
        move_to_past_month(&pool, first_seq, args.month_events as i64, months_back).await?;
        load_log(
            &pool,
            realistic_log(size - loaded - args.month_events, end, &mut rng)?,
            Some(1_000),
        )
        .await?;
        loaded = size;
        // COPY bypasses record_retry: the head rows, event ids and outcomes are derived
        // once, and the targets created (backfilled into settled hours) counted again.
        sqlx::query("SELECT retry_stream_head_rebuild()")
            .execute(&pool)
            .await?;
        outcomes_from_log(&pool).await?;
        sqlx::raw_sql(
            "UPDATE retry_rollup_created_window SET recount_from = NULL, counted_at = NULL;
             SELECT retry_rollup_count_created('0');",
        )
        .execute(&pool)
        .await?;
        catch_up(&pool).await?;
        sqlx::raw_sql("VACUUM ANALYZE").execute(&pool).await?;
        eprintln!(
            "retrylog-bench: scale: {} events loaded",
            thousands(size as f64)
        );

        let events: i64 = sqlx::query_scalar("SELECT count(*) FROM retry_history")
            .fetch_one(&pool)
            .await?;
        let mut stage = Stage {
            events: events as u64,
            ..Stage::default()
        };
        // The closed month's digest, as the maintenance step records it, then a full verify:
        // it reads everything and records the position the plain one starts from.
        retrylog::verify_state::digest::record_closed(&mut *pool.acquire().await?, Utc::now())
            .await?;
        let started = Instant::now();
        let full = retrylog::verify_state::run(&pool, Scope::Full, |_| {}).await?;
        stage.verify_events_per_second =
            full.report.events as f64 / started.elapsed().as_secs_f64();
        if !full.is_clean() {
            for mismatch in full.report.mismatches.iter().take(10) {
                eprintln!("retrylog-bench: verify --full: {mismatch}");
            }
            return Ok(None);
        }
        stage.disk = disk(&pool, stage.events).await?;
        // Enough variants that neither side comes back to one within its seconds: a retry
        // in a large pipeline is nearly always the first change to its target's pages since
        // the last checkpoint, and a baseline that changed each variant twice in the same
        // seconds would pay for half of its pages' first touches.
        let variants: Arc<Vec<(uuid::Uuid, uuid::Uuid)>> = Arc::new(
            sqlx::query_as(
                "SELECT job_id, job_variants_id FROM jobs_variants ORDER BY random() LIMIT $1",
            )
            .bind(VARIANTS)
            .fetch_all(&pool)
            .await?,
        );
        copy_pipeline(&pool, twin).await?;
        stage.baseline = drive(twin, Work::BareUpdate, &variants, args.append_seconds).await?;
        stage.appends = drive(&pool, Work::Append, &variants, args.append_seconds).await?;
        stage.history_p99 = history_p99(&pool, args.runs).await?;
        stage.trend_p99 = trend_p99(&pool, args.runs).await?;
        stage.outcomes_p99 = ms(measure_outcomes(&pool, OutcomeGroupBy::Reason, args.runs)
            .await?
            .rollup[1]);
        catch_up(&pool).await?;

        let started = Instant::now();
        let plain = retrylog::verify_state::run(&pool, Scope::New, |_| {}).await?;
        stage.plain_verify_ms = ms(started.elapsed());
        stage.plain_verify_events = plain.report.events as f64;
        if !plain.is_clean() {
            for mismatch in plain.report.mismatches.iter().take(10) {
                eprintln!("retrylog-bench: verify: {mismatch}");
            }
            return Ok(None);
        }

        let before = month_start(&pool, months_back - 1).await?;
        let started = Instant::now();
        let archived = retrylog::archive::run(&pool, before, &archive_dir).await?;
        stage.archive_seconds = started.elapsed().as_secs_f64();
        let events: i64 = archived.iter().map(|a| a.events).sum();
        anyhow::ensure!(
            events == args.month_events as i64,
            "archived {events} events"
        );
        stage.archive_events_per_second = events as f64 / stage.archive_seconds;

        let ahead = month_start(&pool, -(12 * (number as i32 + 1))).await?;
        let started = Instant::now();
        sqlx::query("SELECT retry_history_maintain($1)")
            .bind(ahead)
            .execute(&pool)
            .await?;
        stage.partition_ms = ms(started.elapsed());
        stages.push(stage);
    }
    let _ = std::fs::remove_dir_all(&archive_dir);
    pool.close().await;
    Ok(Some(stages))
}

/// The start of the UTC month `back` months before the current one (negative: ahead).
async fn month_start(pool: &PgPool, back: i32) -> anyhow::Result<chrono::DateTime<Utc>> {
    Ok(
        sqlx::query_scalar(
            "SELECT date_trunc('month', now(), 'UTC') - make_interval(months => $1)",
        )
        .bind(back)
        .fetch_one(pool)
        .await?,
    )
}

/// Moves `count` events from `first_seq` on into a partition of the month `back` months ago
/// (created here), with their event ids and head rows: see the module header.
async fn move_to_past_month(
    pool: &PgPool,
    first_seq: i64,
    count: i64,
    back: i32,
) -> anyhow::Result<()> {
    let from = month_start(pool, back).await?;
    let to = month_start(pool, back - 1).await?;
    sqlx::query(&format!(
        "CREATE TABLE retry_history_p{} PARTITION OF retry_history FOR VALUES FROM ('{}') TO ('{}')",
        from.format("%Y%m%d"),
        from.to_rfc3339(),
        to.to_rfc3339()
    ))
    .execute(pool)
    .await?;
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await?;
    let last = first_seq + count - 1;
    for sql in [
        "UPDATE retry_history SET recorded_at = $3 + (seq - $1) * interval '1 ms'
          WHERE seq BETWEEN $1 AND $2",
        "UPDATE retry_event_id SET recorded_at = $3 + (seq - $1) * interval '1 ms'
          WHERE seq BETWEEN $1 AND $2",
        "UPDATE retry_stream_head SET last_recorded_at = $3 + (last_seq - $1) * interval '1 ms'
          WHERE last_seq BETWEEN $1 AND $2",
    ] {
        sqlx::query(sql)
            .bind(first_seq)
            .bind(last)
            .bind(from + chrono::Duration::days(25))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn catch_up(pool: &PgPool) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    retrylog::projector::catch_up(
        &mut conn,
        retrylog::projector::ProjectorSettings::default().batch_events,
    )
    .await?;
    Ok(())
}

/// What 16 connections appending to random variants (or updating their counters) did, per
/// transaction.
#[derive(Debug, Default)]
struct Appends {
    per_second: f64,
    /// WAL written while they ran (checkpoints' full pages included), per append.
    wal_bytes: f64,
    /// Whole pages written to the WAL (a page's first change since the checkpoint the run
    /// starts with), per append: the share of the WAL that grows with the log.
    full_pages: f64,
    /// Blocks of the database read into shared_buffers (from the OS's cache or the disk),
    /// per append: what the appends' pages missed in PostgreSQL's own cache.
    blocks_read: f64,
}

/// The database's blocks read into shared_buffers so far, the WAL position, and the
/// cluster's full-page images written so far (a backend reports those when it exits).
async fn io_counters(pool: &PgPool) -> anyhow::Result<(i64, i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT blks_read, (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8, wal_fpi
           FROM pg_stat_database, pg_stat_wal WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await?)
}

/// The appending (or updating) connections' `application_name`.
const APPENDERS: &str = "retrylog-bench scale appends";

/// Replaces the twin's pipeline tables with a copy of the bench database's, rows and counts
/// as they are, so the baseline updates tables of the stage's size.
async fn copy_pipeline(from: &PgPool, twin: &PgPool) -> anyhow::Result<()> {
    sqlx::query("TRUNCATE jobs, jobs_variants")
        .execute(twin)
        .await?;
    for (table, columns) in [
        (
            "jobs",
            "job_id, status, current_step, created_at, updated_at, retry_count",
        ),
        (
            "jobs_variants",
            "job_variants_id, job_id, creation_order, status, current_step, created_at, \
             updated_at, retry_count",
        ),
    ] {
        let mut source = from.acquire().await?;
        let mut target = twin.acquire().await?;
        let mut rows = source
            .copy_out_raw(&format!(
                "COPY {table} ({columns}) TO STDOUT (FORMAT binary)"
            ))
            .await?;
        let mut sink = target
            .copy_in_raw(&format!(
                "COPY {table} ({columns}) FROM STDIN (FORMAT binary)"
            ))
            .await?;
        while let Some(chunk) = rows.try_next().await? {
            sink.send(chunk).await?;
        }
        sink.finish().await?;
    }
    sqlx::query("VACUUM ANALYZE jobs, jobs_variants")
        .execute(twin)
        .await?;
    Ok(())
}

/// What the 16 connections do to each variant, one transaction each.
#[derive(Debug, Clone, Copy)]
enum Work {
    /// `store::append` of a stuck retry, in the bench database.
    Append,
    /// The counter-only change, `retry_count + 1`, in the twin.
    BareUpdate,
}

/// The pipeline's counter-only change, as the twin runs it.
const BARE_UPDATE: &str = "UPDATE jobs_variants SET retry_count = retry_count + 1
                            WHERE job_variants_id = $2 AND job_id = $1";

/// 16 connections doing `work` to `variants` in turn for `seconds`, in `pool`'s database.
async fn drive(
    pool: &PgPool,
    work: Work,
    variants: &Arc<Vec<(uuid::Uuid, uuid::Uuid)>>,
    seconds: f64,
) -> anyhow::Result<Appends> {
    if let Work::Append = work {
        sqlx::query("UPDATE retrylog_settings SET max_retries = NULL")
            .execute(pool)
            .await?;
    }
    let clients = sqlx::postgres::PgPoolOptions::new()
        .max_connections(CONNECTIONS as u32)
        .connect_with(
            (*pool.connect_options())
                .clone()
                .application_name(APPENDERS),
        )
        .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    // Both stages start alike, right after a checkpoint, when an append's first change to
    // each page writes it whole: otherwise each starts wherever its load left the
    // checkpoints (a run at 300k and 3M wrote 7 kB and 30 kB of WAL an append).
    sqlx::query("CHECKPOINT").execute(pool).await?;
    let (blocks_before, wal_before, fpi_before) = io_counters(pool).await?;
    let started = Instant::now();
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|worker| {
            let (clients, stop, done, variants) = (
                clients.clone(),
                stop.clone(),
                done.clone(),
                variants.clone(),
            );
            tokio::spawn(async move {
                let mut i = worker;
                while !stop.load(Ordering::Relaxed) {
                    let (job_id, job_variants_id) = variants[i % variants.len()];
                    i += CONNECTIONS;
                    let mut tx = clients.begin().await?;
                    match work {
                        Work::Append => {
                            let retry = stuck_retry(job_id, job_variants_id);
                            retrylog::store::append(&mut tx, &retry).await?;
                        }
                        Work::BareUpdate => {
                            let updated = sqlx::query(BARE_UPDATE)
                                .bind(job_id)
                                .bind(job_variants_id)
                                .execute(&mut *tx)
                                .await?;
                            anyhow::ensure!(updated.rows_affected() == 1, "no variant updated");
                        }
                    }
                    tx.commit().await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await??;
    }
    let done = done.load(Ordering::Relaxed) as f64;
    let per_second = done / started.elapsed().as_secs_f64();
    let (_, wal_after, _) = io_counters(pool).await?;
    // A backend reports its block counters when it exits. Closing the pool ends its
    // connections, yet at 10M one stayed, idle, for minutes (why was not found): after a
    // second, what is left is ended, and the counters read once it is gone.
    clients.close().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE application_name = $1 AND datname = current_database()",
    )
    .bind(APPENDERS)
    .execute(pool)
    .await?;
    loop {
        let gone: bool = sqlx::query_scalar(
            "SELECT NOT EXISTS (SELECT FROM pg_stat_activity
                                 WHERE application_name = $1 AND datname = current_database())",
        )
        .bind(APPENDERS)
        .fetch_one(pool)
        .await?;
        if gone {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (blocks_after, _, fpi_after) = io_counters(pool).await?;
    Ok(Appends {
        per_second,
        wal_bytes: (wal_after - wal_before) as f64 / done,
        full_pages: (fpi_after - fpi_before) as f64 / done,
        blocks_read: (blocks_after - blocks_before) as f64 / done,
    })
}

/// A random variant's history, `runs` times: the p99 in milliseconds.
async fn history_p99(pool: &PgPool, runs: u32) -> anyhow::Result<f64> {
    let sample: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT job_variants_id FROM jobs_variants ORDER BY random() LIMIT $1")
            .bind(i64::from(runs))
            .fetch_all(pool)
            .await?;
    let mut conn = pool.acquire().await?;
    let filter = retrylog::store::HistoryFilter::default();
    let mut times = Vec::new();
    for variant in sample {
        let started = Instant::now();
        retrylog::store::load_variant_history_filtered(&mut conn, variant, &filter).await?;
        times.push(started.elapsed());
    }
    Ok(ms(percentile(&mut times, 0.99)))
}

/// The trend over the last 30 days by reason, `runs` times: the p99 in milliseconds.
async fn trend_p99(pool: &PgPool, runs: u32) -> anyhow::Result<f64> {
    let mut conn = pool.acquire().await?;
    let now = Utc::now();
    let query = TrendQuery {
        bucket: Bucket::Day,
        by: GroupBy::Reason,
        since: now - chrono::Duration::days(WINDOW_DAYS),
    };
    let mut times = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        report::trend(&mut conn, query, Moment::Now(now)).await?;
        times.push(started.elapsed());
    }
    Ok(ms(percentile(&mut times, 0.99)))
}

/// Bytes per million events of the log's partitions, of their indexes with the head and
/// event-id tables, and of the projections.
async fn disk(pool: &PgPool, events: u64) -> anyhow::Result<[f64; 3]> {
    let (log, indexes, projections): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT sum(pg_table_size(relid))::bigint FROM pg_partition_tree('retry_history')),
                (SELECT sum(pg_indexes_size(relid))::bigint FROM pg_partition_tree('retry_history'))
                  + pg_total_relation_size('retry_event_id')
                  + pg_total_relation_size('retry_stream_head'),
                (SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c
                  WHERE c.relkind = 'r' AND c.relname IN ('retry_rollup', 'retry_rollup_cell',
                        'retry_rollup_lowest', 'retry_rollup_created', 'retry_outcome',
                        'retry_open', 'retry_outcome_rollup', 'retry_outcome_recovery_time'))",
    )
    .fetch_one(pool)
    .await?;
    let per_million = |bytes: i64| bytes as f64 * 1e6 / events as f64;
    Ok([
        per_million(log),
        per_million(indexes),
        per_million(projections),
    ])
}
