//! Retention that keeps the audit (`retrylog archive`, migration 0019). A whole partition of
//! the log older than a date leaves the database as a JSON Lines file and a manifest; what
//! stays still verifies, because each archived stream keeps a *base* (its last archived
//! attempt and hash) from which its remaining chain, its next attempt and its `retry_count` go
//! on.
//!
//! Why whole partitions: `recorded_at`, the partition key, is taken after the target's lock
//! (migration 0016), so within a stream attempt order is partition order and an old partition
//! always holds a *prefix* of each stream. Why the file first: it is written and fsynced
//! before the database changes, and the database step (one transaction per partition) checks
//! that the detached partition still holds what the file holds; if that step fails the file
//! stays and the database is unchanged, and running the archive again writes the same file and
//! tries again. A partition already archived is no longer there, so a second run is a no-op.
//!
//! Detaching and dropping a partition is the schema owner's job: the command checks that
//! first and names what it needs ([`ArchiveError::NotOwner`]).

mod file;
pub mod verify;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use thiserror::Error;
use uuid::Uuid;

use crate::event::Target;

pub use file::{ArchivedEvent, Line, Manifest, StreamEntry};

/// Why an archive did not run or did not finish.
#[derive(Debug, Error)]
pub enum ArchiveError {
    /// The session's role does not own the log: only the owner may detach and drop one of its
    /// partitions.
    #[error(
        "archive needs the schema owner ({owner}), which role {role} is not: it detaches and \
         drops partitions of retry_history; run it as {owner}"
    )]
    NotOwner { role: String, owner: String },
    /// The rollup has not yet applied every event of the partition: archiving now would take
    /// them out of the trend for good.
    #[error(
        "the trend rollup has not applied every event of {partition} yet: bring it up to date \
         first (retrylog project), then archive"
    )]
    RollupBehind { partition: String },
    /// The partition changed between the file and the database step.
    #[error(
        "{partition} holds {found} events up to seq {found_last}, but {file} holds {events} up \
         to seq {last}: nothing was changed in the database; run the archive again"
    )]
    Changed {
        partition: String,
        file: String,
        events: i64,
        last: i64,
        found: i64,
        found_last: i64,
    },
    /// A stream's first archived event does not follow the base the database holds.
    #[error(
        "{target}: the first event of {partition} is attempt {attempt}, but its base in \
         retry_stream_base is {base}: the log or the base was changed by hand; run retrylog \
         verify"
    )]
    NoBase {
        target: Target,
        partition: String,
        attempt: i32,
        base: String,
    },
    /// The directory or a file could not be written.
    #[error("cannot write the archive {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database error while archiving")]
    Database(#[from] sqlx::Error),
}

impl crate::error::CallerMistake for ArchiveError {
    fn is_caller_mistake(&self) -> bool {
        matches!(
            self,
            ArchiveError::NotOwner { .. } | ArchiveError::RollupBehind { .. }
        )
    }
}

/// One partition the archive wrote and dropped.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Archived {
    pub partition: String,
    /// The events file and its manifest.
    pub file: PathBuf,
    pub manifest: PathBuf,
    pub events: i64,
    pub interventions: i64,
    pub streams: usize,
}

/// A stream's base: its last archived event (`retry_stream_base`).
#[derive(Debug, Clone)]
pub struct Base {
    pub target: Target,
    pub attempt: i32,
    pub hash: Vec<u8>,
}

/// The bases of every stream, or of one job's streams when `job_id` is given.
pub async fn bases(
    conn: &mut PgConnection,
    job_id: Option<Uuid>,
) -> Result<HashMap<Target, Base>, sqlx::Error> {
    let rows: Vec<(Uuid, Option<Uuid>, i32, Vec<u8>)> = sqlx::query_as(
        "SELECT job_id, job_variants_id, attempt, hash FROM retry_stream_base
          WHERE $1::uuid IS NULL OR job_id = $1",
    )
    .bind(job_id)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(job_id, job_variants_id, attempt, hash)| {
            let target = Target::from_columns(job_id, job_variants_id);
            (
                target,
                Base {
                    target,
                    attempt,
                    hash,
                },
            )
        })
        .collect())
}

/// The bases of one job's streams (its own and its variants').
pub async fn bases_of(
    conn: &mut PgConnection,
    job_id: Uuid,
) -> Result<HashMap<Target, Base>, sqlx::Error> {
    bases(conn, Some(job_id)).await
}

/// A partition of the log: its name and range.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Partition {
    name: String,
    range_from: DateTime<Utc>,
    range_to: DateTime<Utc>,
}

/// Archives every partition whose range ends at or before `before` into `dir` (created if
/// missing), oldest first, each in its own transaction. Returns what it archived; empty when
/// there was nothing (left) to archive.
pub async fn run(
    pool: &PgPool,
    before: DateTime<Utc>,
    dir: &Path,
) -> Result<Vec<Archived>, ArchiveError> {
    let mut conn = pool.acquire().await?;
    ensure_owner(&mut conn).await?;
    let partitions: Vec<Partition> = sqlx::query_as(
        "SELECT p.name, p.range_from, p.range_to
           FROM (SELECT c.relname::text AS name,
                        substring(pg_get_expr(c.relpartbound, c.oid)
                                  FROM 'FROM \\(''([^'']+)''\\)')::timestamptz AS range_from,
                        substring(pg_get_expr(c.relpartbound, c.oid)
                                  FROM 'TO \\(''([^'']+)''\\)')::timestamptz AS range_to
                   FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                  WHERE i.inhparent = 'retry_history'::regclass
                    AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT') p
          WHERE p.range_to <= $1
          ORDER BY p.range_from",
    )
    .bind(before)
    .fetch_all(&mut *conn)
    .await?;
    drop(conn);
    if partitions.is_empty() {
        return Ok(Vec::new());
    }
    std::fs::create_dir_all(dir).map_err(|source| ArchiveError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut archived = Vec::new();
    for partition in partitions {
        archived.push(archive_partition(pool, &partition, dir).await?);
    }
    Ok(archived)
}

/// Refuses any role that does not own the log (a superuser owns everything): `serve
/// --keep` asks at start, so a role that could never archive is told then.
pub async fn ensure_owner(conn: &mut PgConnection) -> Result<(), ArchiveError> {
    let (role, owner, owns): (String, String, bool) = sqlx::query_as(
        "SELECT session_user::text, pg_get_userbyid(c.relowner)::text,
                pg_has_role(session_user, c.relowner, 'USAGE')
           FROM pg_class c WHERE c.oid = 'retry_history'::regclass",
    )
    .fetch_one(conn)
    .await?;
    if owns {
        Ok(())
    } else {
        Err(ArchiveError::NotOwner { role, owner })
    }
}

/// Writes one partition's file and manifest, then records and drops it in one transaction.
async fn archive_partition(
    pool: &PgPool,
    partition: &Partition,
    dir: &Path,
) -> Result<Archived, ArchiveError> {
    let mut conn = pool.acquire().await?;
    // Every event of the partition must be in the rollup before it leaves the log.
    let behind: bool = sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM {} h
                        WHERE h.txid >= coalesce((SELECT position FROM projection_checkpoint
                                                   WHERE projection = 'retry_rollup'),
                                                 '0'::xid8))",
        quote_ident(&partition.name)
    ))
    .fetch_one(&mut *conn)
    .await?;
    if behind {
        return Err(ArchiveError::RollupBehind {
            partition: partition.name.clone(),
        });
    }
    let written = file::write(
        &mut conn,
        &partition.name,
        partition.range_from,
        partition.range_to,
        dir,
    )
    .await?;
    drop(conn);
    record_and_drop(pool, partition, &written).await?;
    Ok(Archived {
        partition: partition.name.clone(),
        file: written.file,
        manifest: written.manifest_path,
        events: written.manifest.events,
        interventions: written.manifest.interventions,
        streams: written.manifest.streams.len(),
    })
}

/// The database step: detach the partition, check it holds what the file holds, record the
/// manifest and the bases, take the archived outcomes, open retries, notes and event ids out,
/// drop the partition. One transaction: all of it or none.
async fn record_and_drop(
    pool: &PgPool,
    partition: &Partition,
    written: &file::Written,
) -> Result<(), ArchiveError> {
    let manifest = &written.manifest;
    let name = quote_ident(&partition.name);
    let mut tx = pool.begin().await?;
    // Every table this step writes, locked up front in the order an append takes them (the
    // log first): an append that got in before waits to be let finish, the rest wait for the
    // commit, and none holds one of them while waiting for the log.
    sqlx::query("LOCK TABLE retry_history IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "LOCK TABLE retry_event_id, retry_stream_base, retry_outcome, retry_open,
                    retry_intervention IN SHARE ROW EXCLUSIVE MODE",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!(
        "ALTER TABLE retry_history DETACH PARTITION {name}"
    ))
    .execute(&mut *tx)
    .await?;
    let (found, found_last): (i64, Option<i64>) =
        sqlx::query_as(&format!("SELECT count(*), max(seq) FROM {name}"))
            .fetch_one(&mut *tx)
            .await?;
    if found != manifest.events || found_last != manifest.last_seq {
        return Err(ArchiveError::Changed {
            partition: partition.name.clone(),
            file: manifest.file.clone(),
            events: manifest.events,
            last: manifest.last_seq.unwrap_or(0),
            found,
            found_last: found_last.unwrap_or(0),
        });
    }
    sqlx::query(
        "INSERT INTO retry_archive (partition, range_from, range_to, file, sha256, events,
                                    first_seq, last_seq, first_recorded_at, last_recorded_at,
                                    manifest)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&partition.name)
    .bind(partition.range_from)
    .bind(partition.range_to)
    .bind(&manifest.file)
    .bind(&manifest.sha256)
    .bind(manifest.events)
    .bind(manifest.first_seq)
    .bind(manifest.last_seq)
    .bind(manifest.first_recorded_at)
    .bind(manifest.last_recorded_at)
    .bind(sqlx::types::Json(manifest))
    .execute(&mut *tx)
    .await?;
    for stream in &manifest.streams {
        let hash = hex::decode(&stream.last_hash).expect("the manifest's hashes are hex");
        sqlx::query(
            "INSERT INTO retry_stream_base AS b
                    (job_id, stream, job_variants_id, attempt, hash, last_seq, last_reason,
                     last_step, last_occurred_at, last_recorded_at, archive)
             VALUES ($1, coalesce($2, '00000000-0000-0000-0000-000000000000'::uuid), $2, $3,
                     $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (job_id, stream) DO UPDATE
                SET attempt = excluded.attempt, hash = excluded.hash,
                    last_seq = excluded.last_seq, last_reason = excluded.last_reason,
                    last_step = excluded.last_step,
                    last_occurred_at = excluded.last_occurred_at,
                    last_recorded_at = excluded.last_recorded_at, archive = excluded.archive
              WHERE excluded.attempt > b.attempt",
        )
        .bind(stream.job_id)
        .bind(stream.job_variants_id)
        .bind(stream.last_attempt)
        .bind(hash)
        .bind(stream.last_seq)
        .bind(stream.last_reason)
        .bind(&stream.last_step)
        .bind(stream.last_occurred_at)
        .bind(stream.last_recorded_at)
        .bind(&partition.name)
        .execute(&mut *tx)
        .await?;
    }
    // A head row whose last retry is now archived keeps what its base keeps: no detail, so no
    // scenario (retry_stream_head_expected()).
    sqlx::query(
        "UPDATE retry_stream_head hd SET last_scenario = NULL
           FROM retry_stream_base b
          WHERE b.archive = $1 AND (hd.job_id, hd.stream, hd.last_seq) = (b.job_id, b.stream, b.last_seq)
            AND hd.last_scenario IS NOT NULL",
    )
    .bind(&partition.name)
    .execute(&mut *tx)
    .await?;
    // The archived retries' outcomes and notes went into the file: they leave with them. The
    // append-only guards are lifted for this transaction only (the owner's right; the other
    // sessions wait on the lock until it commits).
    sqlx::query(&format!(
        "DELETE FROM retry_open WHERE seq IN (SELECT seq FROM {name})"
    ))
    .execute(&mut *tx)
    .await?;
    sqlx::query("ALTER TABLE retry_outcome DISABLE TRIGGER retry_outcome_append_only")
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!(
        "DELETE FROM retry_outcome WHERE seq IN (SELECT seq FROM {name})"
    ))
    .execute(&mut *tx)
    .await?;
    sqlx::query("ALTER TABLE retry_outcome ENABLE TRIGGER retry_outcome_append_only")
        .execute(&mut *tx)
        .await?;
    sqlx::query("ALTER TABLE retry_intervention DISABLE TRIGGER retry_intervention_append_only")
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM retry_intervention WHERE seq = ANY($1)")
        .bind(&written.intervention_seqs)
        .execute(&mut *tx)
        .await?;
    sqlx::query("ALTER TABLE retry_intervention ENABLE TRIGGER retry_intervention_append_only")
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!(
        "DELETE FROM retry_event_id WHERE event_id IN (SELECT event_id FROM {name})"
    ))
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!("DROP TABLE {name}"))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// The archived ranges, oldest first: what a report that needs the raw log before
/// [`horizon`] names when it refuses.
pub async fn horizon(
    conn: &mut PgConnection,
) -> Result<Option<(DateTime<Utc>, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as("SELECT min(range_from), max(range_to) FROM retry_archive HAVING count(*) > 0")
        .fetch_optional(conn)
        .await
}

/// The value of `--keep`: a number of whole months, written `13months` (or `1month`).
pub fn parse_keep(text: &str) -> Result<u32, String> {
    let number = text
        .trim()
        .strip_suffix("months")
        .or_else(|| text.trim().strip_suffix("month"))
        .ok_or_else(|| format!("{text:?} is not a number of months: write e.g. 13months"))?;
    match number.parse::<u32>() {
        Ok(months @ 1..=1200) => Ok(months),
        _ => Err(format!(
            "{text:?} is not a number of months between 1 and 1200: write e.g. 13months"
        )),
    }
}

/// Where a policy of keeping `months` whole months before the current one (UTC) puts the
/// archive's `before`: the start of the month `months` months before the current month.
pub fn keep_before(months: u32, now: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::{Datelike, TimeZone};
    let month_start = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .expect("the first of a month at midnight UTC exists");
    month_start - chrono::Months::new(months)
}

/// A partition name as an SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_counts_whole_months_back_from_the_current_one() {
        let now = "2026-12-06T14:00:00Z".parse().unwrap();
        assert_eq!(
            keep_before(13, now),
            "2025-11-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            keep_before(1, now),
            "2026-11-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
    }

    #[test]
    fn keep_is_a_number_of_months() {
        assert_eq!(parse_keep("13months"), Ok(13));
        assert_eq!(parse_keep("1month"), Ok(1));
        for wrong in ["13", "0months", "13days", "months", "-1months"] {
            assert!(parse_keep(wrong).is_err(), "{wrong}");
        }
    }
}
