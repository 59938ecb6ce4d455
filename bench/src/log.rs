//! Generated logs, loaded fast: a log planned in Rust (its pipeline rows, streams and events
//! in log order), every event's hash computed along its stream exactly as `record_retry`
//! chains it, then COPYed into `retry_history`, so `verify` over the result is clean. The
//! replay benchmark loads a uniform log (`replay.rs`), the reports benchmark a realistic one
//! (`reports/log.rs`).

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use retrylog::event::{CanonicalEvent, RetryReason, GENESIS_HASH};

use crate::pipeline::{insert_pipeline_rows, PipelineRows};
use crate::{progress, ACTOR};

/// One event stream of a generated log.
#[derive(Debug)]
pub struct Stream {
    pub job_id: Uuid,
    pub job_variants_id: Option<Uuid>,
    /// Events written so far: the last attempt.
    events: i32,
    previous_hash: [u8; 32],
}

impl Stream {
    pub fn new(job_id: Uuid, job_variants_id: Option<Uuid>) -> Self {
        Stream {
            job_id,
            job_variants_id,
            events: 0,
            previous_hash: GENESIS_HASH,
        }
    }
}

/// What an event says besides its target, attempt and time.
#[derive(Debug, Clone, Copy)]
pub struct EventKind {
    pub reason: RetryReason,
    pub step: Option<&'static str>,
    pub from_status: &'static str,
    pub to_status: &'static str,
    /// The detail as PostgreSQL prints the stored jsonb (`detail::text`, keys sorted, `": "`
    /// and `", "` between them): the canonical text the hash covers.
    pub detail: &'static str,
}

/// One event of a generated log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PlannedEvent {
    /// `occurred_at`, in microseconds since the Unix epoch (what timestamptz stores, so the
    /// hash Rust computes is the one verify recomputes).
    pub occurred_micros: i64,
    /// Index into [`GeneratedLog::streams`].
    pub stream: u32,
    /// Checked against the stream: each stream's events come in attempt order.
    pub attempt: u16,
    /// Index into [`GeneratedLog::kinds`].
    pub kind: u16,
}

/// A log to load: the pipeline rows of its targets, its streams, and its events in log order.
#[derive(Debug)]
pub struct GeneratedLog {
    pub rows: PipelineRows,
    pub streams: Vec<Stream>,
    pub kinds: Vec<EventKind>,
    pub events: Vec<PlannedEvent>,
}

/// Where a load's time went.
#[derive(Debug, Clone, Copy)]
pub struct LoadTimes {
    /// Inserting the jobs and variants.
    pub rows: Duration,
    /// Hashing and COPYing the events.
    pub copy: Duration,
    /// `retry_counts_rebuild()` and `VACUUM ANALYZE`.
    pub settle: Duration,
}

/// Loads a generated log: creates its pipeline rows, computes every event's hash along its
/// stream, COPYs the events into `retry_history` — in transactions of `per_transaction`
/// events, or all in one — then sets the counts and vacuums.
pub async fn load_log(
    pool: &PgPool,
    mut log: GeneratedLog,
    per_transaction: Option<usize>,
) -> anyhow::Result<LoadTimes> {
    let total = log.events.len() as u64;
    let started = Instant::now();
    insert_pipeline_rows(pool, &log.rows).await?;
    let rows = started.elapsed();
    // Quiet tables: autovacuum would otherwise wake up in the middle of a timed run. Every
    // timed run is preceded by an explicit VACUUM instead.
    sqlx::raw_sql(
        "ALTER TABLE jobs SET (autovacuum_enabled = off);
         ALTER TABLE jobs_variants SET (autovacuum_enabled = off);
         DO $$
         DECLARE
             part regclass;
         BEGIN
             -- The log is partitioned: the setting belongs on each partition.
             FOR part IN SELECT inhrelid::regclass FROM pg_inherits
                          WHERE inhparent = 'retry_history'::regclass LOOP
                 EXECUTE format('ALTER TABLE %s SET (autovacuum_enabled = off)', part);
             END LOOP;
         END
         $$;",
    )
    .execute(pool)
    .await?;

    let progress = progress::bar(
        total,
        "loading {bar:40} {pos}/{len} events ({per_sec}) [{elapsed}]",
    );
    // The detail as a CSV field: quoted, with its quotes doubled, when it holds any.
    let details: Vec<String> = log
        .kinds
        .iter()
        .map(|kind| {
            if kind.detail.contains(['"', ',']) {
                format!("\"{}\"", kind.detail.replace('"', "\"\""))
            } else {
                kind.detail.to_string()
            }
        })
        .collect();
    let started = Instant::now();
    let mut conn = pool.acquire().await?;
    let mut buffer = Vec::with_capacity(1 << 20);
    let mut written = 0u64;
    let mut copied = 0u64;
    let per_transaction = per_transaction.unwrap_or(log.events.len()).max(1);
    for transaction in log.events.chunks(per_transaction) {
        let mut copy = conn
            .copy_in_raw(
                "COPY retry_history (event_id, job_id, job_variants_id, reason, step,
                                     from_status, to_status, attempt, actor, detail,
                                     occurred_at, hash)
                 FROM STDIN (FORMAT csv)",
            )
            .await?;
        for planned in transaction {
            let stream = &mut log.streams[planned.stream as usize];
            let attempt = stream.events + 1;
            anyhow::ensure!(
                i32::from(planned.attempt) == attempt,
                "generated events out of attempt order"
            );
            let kind = log.kinds[usize::from(planned.kind)];
            let occurred_at = DateTime::<Utc>::from_timestamp_micros(planned.occurred_micros)
                .context("event timestamp out of range")?;
            let event = CanonicalEvent {
                event_id: Uuid::new_v4(),
                job_id: stream.job_id,
                job_variants_id: stream.job_variants_id,
                reason: kind.reason,
                step: kind.step,
                from_status: Some(kind.from_status),
                to_status: Some(kind.to_status),
                attempt,
                actor: ACTOR,
                occurred_at,
                detail_text: kind.detail,
                // COPY leaves db_role NULL, so these hash in format v1, as verify expects.
                db_role: None,
            };
            let hash = event.hash(&stream.previous_hash);
            writeln!(
                buffer,
                "{},{},{},{},{},{},{},{attempt},{ACTOR},{},{},\\x{}",
                event.event_id,
                event.job_id,
                event
                    .job_variants_id
                    .map(|id| id.to_string())
                    .unwrap_or_default(),
                kind.reason.as_ref(),
                kind.step.unwrap_or_default(),
                kind.from_status,
                kind.to_status,
                details[usize::from(planned.kind)],
                occurred_at.format("%Y-%m-%d %H:%M:%S%.6f+00"),
                hex::encode(hash),
            )?;
            stream.previous_hash = hash;
            stream.events = attempt;
            written += 1;
            if buffer.len() >= 1 << 20 {
                copy.send(std::mem::take(&mut buffer)).await?;
                buffer.reserve(1 << 20);
                progress.set_position(written);
            }
        }
        if !buffer.is_empty() {
            copy.send(std::mem::take(&mut buffer)).await?;
            buffer.reserve(1 << 20);
        }
        copied += copy
            .finish()
            .await
            .context("loading the generated events")?;
        progress.set_position(written);
    }
    drop(conn);
    anyhow::ensure!(copied == total, "COPY stored {copied} of {total} events");
    debug_assert_eq!(
        log.streams.iter().map(|s| s.events as u64).sum::<u64>(),
        total
    );

    let copy = started.elapsed();

    progress.set_message("");
    progress.finish_and_clear();
    let started = Instant::now();
    let settle = progress::spinner();
    settle.set_message("setting the counts and vacuuming the loaded log");
    sqlx::query("SELECT retry_counts_rebuild()")
        .execute(pool)
        .await?;
    // The head rows and event ids record_retry keeps, for the events COPY put past it.
    sqlx::query("SELECT retry_stream_head_rebuild()")
        .execute(pool)
        .await?;
    sqlx::raw_sql("VACUUM ANALYZE").execute(pool).await?;
    settle.finish_and_clear();
    Ok(LoadTimes {
        rows,
        copy,
        settle: started.elapsed(),
    })
}

/// What the deciders would have recorded for a log loaded past `record_retry`, as migration
/// 0009 derives it for a log that predates outcomes: every undecided retry followed by another
/// of its target was retried again, and each target's latest undecided retry is open. Without
/// it `verify` names every loaded retry followed by another as undecided.
pub async fn outcomes_from_log(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::raw_sql(
        "WITH decided AS MATERIALIZED (SELECT seq FROM retry_outcome)
         INSERT INTO retry_outcome (seq, outcome, resolved_at, observed_by, evidence)
         SELECT l.seq, 'retried_again', greatest(l.occurred_at, l.next_at), 'retrylog-bench',
                jsonb_build_object('next_seq', l.next_seq, 'attempt', l.next_attempt)
           FROM (SELECT h.seq, h.occurred_at, lead(h.seq) OVER w AS next_seq,
                        lead(h.attempt) OVER w AS next_attempt, lead(h.occurred_at) OVER w AS next_at
                   FROM retry_history h
                 WINDOW w AS (PARTITION BY h.job_id, h.job_variants_id ORDER BY h.attempt)) l
          WHERE l.next_seq IS NOT NULL
            -- The outcomes as they were before this statement's inserts, read once: an
            -- anti-join against the table itself may be planned (on an empty table) as a
            -- rescan per event, which then reads every row this statement has inserted; and
            -- NOT IN is hashed only while the outcomes fit in work_mem, a rescan per event
            -- past that. An anti-join with the CTE is hashed, spilling if it must.
            AND NOT EXISTS (SELECT 1 FROM decided d WHERE d.seq = l.seq);
         SELECT retry_open_rebuild();",
    )
    .execute(pool)
    .await?;
    Ok(())
}
