//! Closed partitions' digests (migration 0022): the maintenance step records one per partition
//! whose range is over (a day past its end), and `verify --full` compares each partition still
//! in the database with it. A plain verify does not: recomputing a digest reads the whole
//! partition, which is what a plain verify never does.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::replay::Mismatch;

/// Records the digest of every closed partition that has none yet; returns their names.
pub async fn record_closed(
    conn: &mut PgConnection,
    at: DateTime<Utc>,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT retry_partition_digest_record($1)")
        .bind(at)
        .fetch_all(conn)
        .await
}

/// Every partition still in the database whose events differ from its recorded digest, in
/// the caller's snapshot.
pub async fn mismatches(conn: &mut PgConnection) -> Result<Vec<Mismatch>, sqlx::Error> {
    type Row = (
        String,
        i64,
        Option<i64>,
        Option<i64>,
        String,
        i64,
        Option<i64>,
        Option<i64>,
        String,
    );
    // A partition archived since is gone from the log: its archive's manifest speaks for it
    // (`verify --archive`), not the digest.
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT d.partition, d.events, d.first_seq, d.last_seq, d.sha256,
                n.events, n.first_seq, n.last_seq, n.sha256
           FROM retry_partition_digest d
           CROSS JOIN LATERAL retry_partition_digest_of(d.range_from, d.range_to) n
          WHERE NOT EXISTS (SELECT 1 FROM retry_archive a WHERE a.partition = d.partition)
            AND (d.events, d.first_seq, d.last_seq, d.sha256)
                IS DISTINCT FROM (n.events, n.first_seq, n.last_seq, n.sha256)
          ORDER BY d.range_from",
    )
    .fetch_all(conn)
    .await?;
    let seqs = |first: Option<i64>, last: Option<i64>| match (first, last) {
        (Some(first), Some(last)) => format!("seq {first}..{last}"),
        _ => "no seq".to_string(),
    };
    Ok(rows
        .into_iter()
        .map(
            |(partition, events, first, last, sha, now_events, now_first, now_last, now_sha)| {
                Mismatch::PartitionDigest {
                    partition,
                    differs: format!(
                        "the digest recorded when its range closed says {events} events, {}, \
                         sha256 {}…; it holds {now_events} events, {}, sha256 {}… now: events \
                         were added, removed or rehashed after the month was over",
                        seqs(first, last),
                        &sha[..12],
                        seqs(now_first, now_last),
                        &now_sha[..12],
                    ),
                }
            },
        )
        .collect())
}
