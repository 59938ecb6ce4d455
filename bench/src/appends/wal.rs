//! The WAL per event of each way of recording a retry: what the disk must absorb per retry,
//! whatever the throughput. Measured after the throughput slices, one approach at a time on
//! one connection, as the difference of `pg_current_wal_insert_lsn()` around a sample of
//! `SAMPLE_EVENTS` events divided by them.
//!
//! Each approach runs on `SAMPLE_TARGETS` of its targets, after a warm-up on them that is not
//! counted, so the rows' pages were written since the last checkpoint and carry no full-page
//! image in the sample (a new page of an index on random keys, the event_id's, still may).
//! The LSN is the server's, not the session's: anything else writing on the same server adds
//! to the difference. So, where the server has `pg_walinspect` (PostgreSQL's contrib; the
//! bench creates it in the bench database), a sample counts only the records that touch a
//! page of the approach's database and the commit records of their transactions; without it,
//! the whole difference. Either way each figure is the smallest of `REPEATS` samples (noise
//! only ever adds bytes), and the lines say which way was used.

use std::sync::Arc;

use sqlx::PgPool;

use super::{transaction, Approach, Targets};
use crate::figures::{Goal, Line, Unit};

/// Events per sample: 100 single transactions, or one batch of 100.
const SAMPLE_EVENTS: u64 = 100;

/// Samples per approach; the smallest counts.
const REPEATS: usize = 3;

/// Targets each approach's samples pick from, and the warm-up's events on them.
const SAMPLE_TARGETS: usize = 100;
const WARMUP_EVENTS: u64 = 500;

/// Issue 24's goal for one append.
const APPEND_GOAL_BYTES: f64 = 1024.0;

/// Bytes of WAL per event, per approach.
#[derive(Debug, Clone, Copy)]
pub struct WalFigures {
    append: f64,
    bare_update: f64,
    naive_event: f64,
    batch: f64,
    /// Whether only the approach's own records were counted (`pg_walinspect`).
    own_records: bool,
}

/// The WAL of one sample that belongs to the database `$3` (its oid): records with a block
/// of it, and the commit records of the transactions that wrote them.
const OWN_RECORDS: &str =
    "WITH r AS (SELECT * FROM pg_get_wal_records_info($1::pg_lsn, $2::pg_lsn)),
          own AS (SELECT * FROM r WHERE block_ref LIKE '% rel %/' || $3::text || '/%')
     SELECT ((SELECT coalesce(sum(record_length), 0) FROM own)
           + (SELECT coalesce(sum(record_length), 0) FROM r
               WHERE resource_manager = 'Transaction'
                 AND xid IN (SELECT xid FROM own)))::bigint";

/// Measures every approach on its own targets: the retrylog ones in `pool`, the baselines in
/// `twin` (indexed as [`Approach::ALL`]).
pub async fn measure(
    pool: &PgPool,
    twin: &PgPool,
    targets: &[Targets; 4],
) -> anyhow::Result<WalFigures> {
    let own_records = sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        .execute(pool)
        .await
        .is_ok();
    let mut bytes = [0f64; 4];
    for (index, approach) in Approach::ALL.into_iter().enumerate() {
        let database = if approach.retrylog() { pool } else { twin };
        let oid: i64 = sqlx::query_scalar(
            "SELECT oid::bigint FROM pg_database WHERE datname = current_database()",
        )
        .fetch_one(database)
        .await?;
        let sample: Targets = Arc::new(
            targets[index]
                .iter()
                .take(SAMPLE_TARGETS)
                .copied()
                .collect(),
        );
        for _ in 0..WARMUP_EVENTS / approach.events() {
            transaction(database.clone(), approach, sample.clone()).await?;
        }
        let mut smallest = f64::INFINITY;
        for _ in 0..REPEATS {
            let start = flush_lsn(database).await?;
            for _ in 0..SAMPLE_EVENTS / approach.events() {
                transaction(database.clone(), approach, sample.clone()).await?;
            }
            let end = flush_lsn(database).await?;
            let written = if own_records {
                sqlx::query_scalar(OWN_RECORDS)
                    .bind(&start.0)
                    .bind(&end.0)
                    .bind(oid)
                    .fetch_one(pool)
                    .await?
            } else {
                end.1 - start.1
            };
            smallest = smallest.min(written as f64 / SAMPLE_EVENTS as f64);
        }
        bytes[index] = smallest;
    }
    Ok(WalFigures {
        append: bytes[0],
        bare_update: bytes[1],
        naive_event: bytes[2],
        batch: bytes[3],
        own_records,
    })
}

/// The server's WAL flush position (our commits are flushed when they return), as text and
/// in bytes.
async fn flush_lsn(pool: &PgPool) -> sqlx::Result<(String, i64)> {
    sqlx::query_as(
        "SELECT pg_current_wal_flush_lsn()::text,
                (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint",
    )
    .fetch_one(pool)
    .await
}

/// The WAL lines: one append and one batched event against each baseline, and the batch
/// against the single append. The ratio is how many times smaller retrylog's figure is.
pub fn lines(figures: Option<&WalFigures>) -> Vec<Line> {
    let Some(wal) = figures else {
        return Vec::new();
    };
    let counted = if wal.own_records {
        "its own records (pg_walinspect)"
    } else {
        "the server's LSN difference"
    };
    let condition = |what: &str| {
        format!(
            "{what}, 1 connection, {SAMPLE_TARGETS} warm targets, smallest of {REPEATS} samples \
             of {SAMPLE_EVENTS} events, {counted}"
        )
    };
    let line = |what: &str, ours: f64, baseline: Approach, value: f64| {
        Line::new("WAL/event", condition(what), Unit::Bytes, ours)
            .baseline(baseline.label(), value)
            .connections(1)
            .events(SAMPLE_EVENTS)
    };
    vec![
        line(
            "store::append",
            wal.append,
            Approach::BareUpdate,
            wal.bare_update,
        ),
        line(
            "store::append",
            wal.append,
            Approach::NaiveEvent,
            wal.naive_event,
        )
        .goal(Goal::Under(APPEND_GOAL_BYTES)),
        line(
            "batches of 100",
            wal.batch,
            Approach::NaiveEvent,
            wal.naive_event,
        ),
        line("batches of 100", wal.batch, Approach::Append, wal.append),
    ]
}
