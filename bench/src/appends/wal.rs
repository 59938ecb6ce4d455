//! The WAL per event of each way of recording a retry: what the disk must absorb per retry,
//! whatever the throughput. Measured after the throughput slices, one approach at a time on
//! one connection, as the difference of `pg_current_wal_insert_lsn()` around a sample of
//! `SAMPLE_EVENTS` events divided by them.
//!
//! Each approach runs on `SAMPLE_TARGETS` of its targets, after a warm-up on them that is not
//! counted, so the rows' pages were written since the last checkpoint and carry no full-page
//! image in the sample (a new page of an index on random keys, the event_id's, still may).
//! The LSN is the server's, not the session's: anything else writing on the same server
//! (autovacuum, another database, a checkpoint's images) adds to the sample. Noise only ever
//! adds bytes, so each figure is the smallest of `REPEATS` samples.

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
}

/// Measures every approach on its own targets: the retrylog ones in `pool`, the baselines in
/// `twin` (indexed as [`Approach::ALL`]).
pub async fn measure(
    pool: &PgPool,
    twin: &PgPool,
    targets: &[Targets; 4],
) -> anyhow::Result<WalFigures> {
    let mut bytes = [0f64; 4];
    for (index, approach) in Approach::ALL.into_iter().enumerate() {
        let database = if approach.retrylog() { pool } else { twin };
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
            let start = insert_lsn(database).await?;
            for _ in 0..SAMPLE_EVENTS / approach.events() {
                transaction(database.clone(), approach, sample.clone()).await?;
            }
            let written = insert_lsn(database).await? - start;
            smallest = smallest.min(written as f64 / SAMPLE_EVENTS as f64);
        }
        bytes[index] = smallest;
    }
    Ok(WalFigures {
        append: bytes[0],
        bare_update: bytes[1],
        naive_event: bytes[2],
        batch: bytes[3],
    })
}

/// The server's WAL insert position, in bytes.
async fn insert_lsn(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint")
        .fetch_one(pool)
        .await
}

/// The WAL lines: one append and one batched event against each baseline, and the batch
/// against the single append. The ratio is how many times smaller retrylog's figure is.
pub fn lines(figures: Option<&WalFigures>) -> Vec<Line> {
    let Some(wal) = figures else {
        return Vec::new();
    };
    let condition = |what: &str| {
        format!(
            "{what}, 1 connection, {SAMPLE_TARGETS} warm targets, smallest of {REPEATS} samples \
             of {SAMPLE_EVENTS} events"
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
