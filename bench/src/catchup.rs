//! `retrylog-bench catchup`: whether the projector's catch-up pays for its batch or for the
//! history of the streams the batch lands on (issue 10).
//!
//! Two cases, each in a fresh bench database, differing only in how long the streams are:
//!
//! 1. `--streams` variant streams (one job each) get `--short-history` events (10), or
//!    `--long-history` events (10,000), spread over the 30 days before the batch's two hours;
//!    reasons, steps and scenarios vary as in the reports' log (12 kinds, drawn at random).
//! 2. `--new-events` more (10,000), spread evenly over the same streams, in the two hours
//!    that end `--week-hour` hours into a UTC week (the last hour of the last full week by
//!    default: the most history in the batch's week): the batch.
//! 3. The history is applied the way replay does it (`retry_rollup_reset`, then
//!    `retry_rollup_apply('1', cut)` and the checkpoint moved to the cut, the first new
//!    event's transaction), then `VACUUM ANALYZE` of the database and a `CHECKPOINT` (the
//!    bench's role needs the right to run it: a superuser, or pg_checkpoint).
//! 4. Timed: `projector::catch_up` of the new events with the projector's batch size; it must
//!    apply exactly them. Then `retry_rollup_drift` must be empty (the rollup, its cells and
//!    their lowest equal what the log says).
//!
//! Both cases run `--rounds` times (5), alternating. The figure is the catch-up's events/s
//! onto the long streams against onto the short ones, in the round of median ratio.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveTime, TimeDelta, Utc, Weekday};
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use uuid::Uuid;

use retrylog::cli::FormatArg;
use retrylog::cmd::exit;
use retrylog::connect::Connected;
use retrylog::event::RetryReason;
use retrylog::projector::{self, ProjectorSettings};

use crate::database::{fresh_database, in_bench_database, print_server};
use crate::figures::{figure_table, thousands, Goal, Line, Unit};
use crate::log::{load_log, EventKind, GeneratedLog, PlannedEvent, Stream};
use crate::pipeline::PipelineRows;
use crate::progress;

/// `retrylog-bench catchup`.
///
/// Runs in its own database, `retrylog_bench` (or RETRYLOG_BENCH_DATABASE), created twice
/// (dropped first if it exists) and dropped at the end.
#[derive(Debug, Args)]
pub struct CatchupArgs {
    /// Variant streams the history and the new events land on.
    #[arg(long, default_value_t = 100, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub streams: u32,

    /// Events each stream holds before the catch-up, in the short case.
    #[arg(long, default_value_t = 10, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=60_000))]
    pub short_history: u32,

    /// Events each stream holds before the catch-up, in the long case.
    #[arg(long, default_value_t = 10_000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=60_000))]
    pub long_history: u32,

    /// New events caught up, spread evenly over the streams.
    #[arg(long, default_value_t = 10_000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub new_events: u32,

    /// Events per projector batch (one transaction); the default is the projector's.
    #[arg(long, default_value_t = ProjectorSettings::default().batch_events, value_name = "N",
          value_parser = clap::value_parser!(i64).range(1..))]
    pub batch_events: i64,

    /// Where in its UTC week the batch ends, in hours from Monday 00:00 (the latest such
    /// instant not in the future). Until migration 0011 a batch read every cell of the weeks
    /// it touched, so the later in the week, the slower; the default, the week's last hour,
    /// is where that was worst, and any fixed hour makes runs comparable.
    #[arg(long, default_value_t = 167, value_name = "HOURS",
          value_parser = clap::value_parser!(u32).range(2..=167))]
    pub week_hour: u32,

    /// Rounds of both cases; the figure is the round of median ratio. One catch-up takes a
    /// quarter of a second here, and now and then one takes a third longer in either case,
    /// on a quiet machine too: five rounds outvote two such.
    #[arg(long, default_value_t = 5, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,

    /// Keep the bench database of the last long case at the end, for inspection.
    #[arg(long)]
    pub keep: bool,

    #[command(flatten)]
    pub format: FormatArg,
}

impl CatchupArgs {
    /// `--smoke`: 4 streams of 2 and of 50 events, 40 new events, one round.
    pub fn smoke(&mut self) {
        self.streams = 4;
        self.short_history = 2;
        self.long_history = 50;
        self.new_events = 40;
        self.rounds = 1;
    }
}

/// The catch-up's goal: onto the long streams at least this fraction of its speed onto the
/// short ones.
const FLAT: f64 = 0.8;

/// The new events fall in this many last microseconds before the run; the history before.
const NEW_SPAN_MICROS: i64 = 2 * 3_600 * 1_000_000;
const HISTORY_SPAN_MICROS: i64 = 30 * 24 * 3_600 * 1_000_000;

/// What one case measured.
#[derive(Debug)]
struct Case {
    history: u32,
    applied_history: i64,
    catch_up: Duration,
    drift: usize,
}

pub async fn run(connected: &Connected, args: CatchupArgs) -> anyhow::Result<ExitCode> {
    let rounds = in_bench_database(
        connected,
        "retrylog-bench catchup",
        args.keep,
        async |options| {
            let mut rounds = Vec::new();
            for round in 1..=args.rounds {
                let short = measure(connected, options, &args, args.short_history).await?;
                let long = measure(connected, options, &args, args.long_history).await?;
                eprintln!(
                    "retrylog-bench: round {round} of {}: catch-up {:.3} s onto the long \
                     streams, {:.3} s onto the short ones: {:.2}×",
                    args.rounds,
                    long.catch_up.as_secs_f64(),
                    short.catch_up.as_secs_f64(),
                    ratio(&short, &long),
                );
                rounds.push((short, long));
            }
            Ok(rounds)
        },
    )
    .await?;
    let drift: usize = rounds
        .iter()
        .map(|(short, long)| short.drift + long.drift)
        .sum();
    let (short, long) = median_round(rounds);

    let rate = |case: &Case| f64::from(args.new_events) / case.catch_up.as_secs_f64();
    let describe = |case: &Case| {
        format!(
            "projector::catch_up of {} new events onto {} streams of {} events ({} applied), \
             batches of {}, ending {} h into a UTC week; the round of median ratio of {}",
            thousands(f64::from(args.new_events)),
            thousands(f64::from(args.streams)),
            thousands(f64::from(case.history)),
            thousands(case.applied_history as f64),
            thousands(args.batch_events as f64),
            args.week_hour,
            args.rounds,
        )
    };
    let lines = vec![
        Line::new(
            "catch-up events/s",
            describe(&long),
            Unit::PerSecond,
            rate(&long),
        )
        .baseline(
            format!(
                "the same onto {} streams of {} events",
                thousands(f64::from(args.streams)),
                thousands(f64::from(short.history))
            ),
            rate(&short),
        )
        .goal(Goal::AtLeast(FLAT)),
        Line::check(
            "rollup = log",
            format!("retry_rollup_drift after each catch-up: {drift} row(s) differ"),
            "equal",
            drift == 0,
        ),
    ];
    let format = args.format.format;
    figure_table(&lines, format, &["unit"]).print(format)?;
    if drift > 0 {
        eprintln!("retrylog-bench: the rollup after the catch-up differs from the log's");
        return Ok(ExitCode::from(exit::MISMATCH));
    }
    Ok(ExitCode::SUCCESS)
}

/// The round whose ratio (the short case's catch-up time over the long case's) is the
/// median: the two cases of a round ran a minute apart, under the same conditions.
fn median_round(mut rounds: Vec<(Case, Case)>) -> (Case, Case) {
    rounds.sort_by(|(s1, l1), (s2, l2)| ratio(s1, l1).total_cmp(&ratio(s2, l2)));
    rounds.swap_remove(rounds.len() / 2)
}

/// A round's ratio: the short case's catch-up time over the long case's (the long case's
/// events/s against the short's).
fn ratio(short: &Case, long: &Case) -> f64 {
    short.catch_up.as_secs_f64() / long.catch_up.as_secs_f64()
}

/// One case, in a freshly created bench database: load, apply the history, time the
/// catch-up of the new events, compare the rollup with the log.
async fn measure(
    connected: &Connected,
    options: &PgConnectOptions,
    args: &CatchupArgs,
    history: u32,
) -> anyhow::Result<Case> {
    let pool = fresh_database(connected, options).await?;
    print_server(&pool).await?;
    let history_events = u64::from(args.streams) * u64::from(history);
    let log = generate(
        args.streams,
        history,
        args.new_events,
        batch_end(Utc::now(), args.week_hour),
        &mut StdRng::from_entropy(),
    )?;
    // COPY transactions that end exactly where the history does, so the cut takes only
    // the new events.
    let per_transaction = gcd(history_events, 1_000) as usize;
    let times = load_log(&pool, log, Some(per_transaction)).await?;
    eprintln!(
        "retrylog-bench: loaded {} streams of {} events + {} new: events hashed and copied in \
         {:.1} s",
        thousands(f64::from(args.streams)),
        thousands(f64::from(history)),
        thousands(f64::from(args.new_events)),
        times.copy.as_secs_f64(),
    );

    let started = Instant::now();
    let applied_history = apply_history(&pool, history_events).await?;
    let history_apply = started.elapsed();
    anyhow::ensure!(
        applied_history as u64 == history_events,
        "the history's apply took {applied_history} events, the log holds {history_events} before the new ones"
    );
    // The steady state of a long-lived pipeline: its tables vacuumed, its dirty pages
    // written. Otherwise the long case's million fresh rows wake autovacuum, and its
    // hundreds of MB of dirty pages the checkpointer, during the timed catch-up.
    sqlx::raw_sql("VACUUM ANALYZE").execute(&pool).await?;
    sqlx::raw_sql("CHECKPOINT").execute(&pool).await?;

    let progress = progress::spinner();
    progress.set_message(format!(
        "projector catch-up of {} events onto streams of {}",
        thousands(f64::from(args.new_events)),
        thousands(f64::from(history))
    ));
    let mut conn = pool.acquire().await?;
    let wal_before = wal_written(&mut conn).await?;
    let started = Instant::now();
    let applied = projector::catch_up(&mut conn, args.batch_events).await?;
    let catch_up = started.elapsed();
    let wal_after = wal_written(&mut conn).await?;
    progress.finish_and_clear();
    anyhow::ensure!(
        applied == i64::from(args.new_events),
        "the catch-up applied {applied} events, {} were new",
        args.new_events
    );
    let drift: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM retry_rollup_drift(
             (SELECT position FROM projection_checkpoint WHERE projection = 'retry_rollup'))",
    )
    .fetch_one(&mut *conn)
    .await?;
    eprintln!(
        "retrylog-bench: streams of {}: history applied in {:.1} s, catch-up of {} new \
         events in {:.3} s, {:.1} MB of WAL (the cluster's, during it)",
        thousands(f64::from(history)),
        history_apply.as_secs_f64(),
        thousands(f64::from(args.new_events)),
        catch_up.as_secs_f64(),
        (wal_after - wal_before) as f64 / 1e6,
    );
    drop(conn);
    pool.close().await;
    Ok(Case {
        history,
        applied_history,
        catch_up,
        drift: drift as usize,
    })
}

/// The cluster's WAL insert position, in bytes.
async fn wal_written(conn: &mut sqlx::PgConnection) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint")
            .fetch_one(conn)
            .await?,
    )
}

/// Applies the first `history_events` events of the log (in `seq` order) as replay does, and
/// moves the checkpoint to the first new event's transaction: the rollup then holds the
/// history, as if the projector had applied it. Returns the events applied.
async fn apply_history(pool: &PgPool, history_events: u64) -> anyhow::Result<i64> {
    let mut tx = pool.begin().await?;
    let cut: i64 = sqlx::query_scalar(
        "SELECT txid::text::bigint FROM retry_history ORDER BY seq OFFSET $1 LIMIT 1",
    )
    .bind(history_events as i64)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("SELECT retry_rollup_reset()")
        .execute(&mut *tx)
        .await?;
    let applied: i64 = sqlx::query_scalar("SELECT retry_rollup_apply('1', $1::text::xid8)")
        .bind(cut.to_string())
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE projection_checkpoint SET position = $1::text::xid8, events_applied = $2
          WHERE projection = 'retry_rollup'",
    )
    .bind(cut.to_string())
    .bind(applied)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(applied)
}

/// The kinds of event the streams get: the watchdog's variant retries at three steps.
fn kinds() -> Vec<EventKind> {
    let mut kinds = Vec::new();
    for (reason, detail, from_status) in [
        (RetryReason::Stuck, r#"{"scenario": "lagging"}"#, "done"),
        (RetryReason::Stuck, r#"{"scenario": "stale"}"#, "done"),
        (RetryReason::Failed, r#"{"scenario": "failed"}"#, "failed"),
        (RetryReason::ManualRecovery, "{}", "failed"),
    ] {
        for step in ["prepare", "generate", "segment"] {
            kinds.push(EventKind {
                reason,
                step: Some(step),
                from_status,
                to_status: "done",
                detail,
            });
        }
    }
    kinds
}

/// The latest instant not after `now` that lies `week_hour` hours into its UTC week.
fn batch_end(now: DateTime<Utc>, week_hour: u32) -> DateTime<Utc> {
    let monday = now.date_naive().week(Weekday::Mon).first_day();
    let end = monday.and_time(NaiveTime::MIN).and_utc() + TimeDelta::hours(i64::from(week_hour));
    if end > now {
        end - TimeDelta::weeks(1)
    } else {
        end
    }
}

/// `streams` variants of one job each, `history` events per stream spread over the 30 days
/// before the two hours that end at `end`, then `new_events` spread over the streams in
/// those two hours; all in `occurred_at` order.
fn generate(
    streams: u32,
    history: u32,
    new_events: u32,
    end: DateTime<Utc>,
    rng: &mut StdRng,
) -> anyhow::Result<GeneratedLog> {
    let end_micros = end.timestamp_micros();
    let new_start = end_micros - NEW_SPAN_MICROS;
    let history_start = new_start - HISTORY_SPAN_MICROS;
    let kinds = kinds();
    let mut rows = PipelineRows::default();
    let mut log_streams = Vec::new();
    let mut events = Vec::new();
    let created = chrono::DateTime::from_timestamp_micros(history_start - 60_000_000)
        .ok_or_else(|| anyhow::anyhow!("creation time out of range"))?;
    for index in 0..streams {
        let (job, variant) = (Uuid::new_v4(), Uuid::new_v4());
        rows.jobs.push(job);
        rows.job_created.push(created);
        rows.variants.push(variant);
        rows.owners.push(job);
        rows.orders.push(0);
        rows.variant_created.push(created);
        log_streams.push(Stream::new(job, Some(variant)));
        // This stream's share of the new events: the remainder goes to the first streams.
        let new = new_events / streams + u32::from(index < new_events % streams);
        let mut attempt: u16 = 0;
        for (count, from, span) in [
            (history, history_start, HISTORY_SPAN_MICROS),
            (new, new_start, NEW_SPAN_MICROS),
        ] {
            let gap = span / i64::from(count.max(1));
            for i in 0..count {
                attempt = attempt
                    .checked_add(1)
                    .ok_or_else(|| anyhow::anyhow!("a stream holds at most 65,535 events"))?;
                events.push(PlannedEvent {
                    occurred_micros: from + i64::from(i) * gap + rng.gen_range(0..gap.max(1)),
                    stream: index,
                    attempt,
                    kind: rng.gen_range(0..kinds.len() as u16),
                });
            }
        }
    }
    events.sort();
    Ok(GeneratedLog {
        rows,
        streams: log_streams,
        kinds,
        events,
    })
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn the_batch_ends_at_the_latest_such_hour_of_a_utc_week_not_in_the_future() {
        // Tuesday 2026-12-01: Monday 20:00 of this week has passed, Sunday 23:00 not yet.
        let now = at("2026-12-01T00:25:00Z");
        assert_eq!(batch_end(now, 20), at("2026-11-30T20:00:00Z"));
        assert_eq!(batch_end(now, 167), at("2026-11-29T23:00:00Z"));
        assert_eq!(batch_end(now, 24), at("2026-12-01T00:00:00Z"));
        assert_eq!(batch_end(now, 25), at("2026-11-24T01:00:00Z"));
    }
}
