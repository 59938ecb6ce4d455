//! The partitioned log (migrations/0016): partitions created ahead and idempotently, an
//! append with no partition for its time caught by the DEFAULT partition and moved by
//! maintenance, the TRUNCATE guard on every partition, the maintenance lease, and the head
//! rows and event ids that keep attempts gapless and event ids unique across partitions.

use std::time::Duration;

use retrylog::maintain::{self, LeasedRun};
use retrylog::replay::Mismatch;
use sqlx::PgPool;

use crate::fixtures::*;

/// The names of the log's partitions, in bound order (the DEFAULT last).
async fn partitions(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
          WHERE i.inhparent = 'retry_history'::regclass
          ORDER BY c.relname = 'retry_history_default', c.relname",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The partition `seq` is stored in.
async fn partition_of(pool: &PgPool, seq: i64) -> String {
    sqlx::query_scalar("SELECT tableoid::regclass::text FROM retry_history WHERE seq = $1")
        .bind(seq)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The name of the monthly partition holding `now() + months`.
async fn month_partition(pool: &PgPool, months: i32) -> String {
    sqlx::query_scalar(
        "SELECT 'retry_history_p' || to_char(date_trunc('month', now() + make_interval(months => $1),
                                                     'UTC') AT TIME ZONE 'UTC', 'YYYYMMDD')",
    )
    .bind(months)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn migrate_leaves_this_month_and_two_ahead_and_maintain_is_idempotent(pool: PgPool) {
    pipeline(&pool).await;
    let expected = vec![
        month_partition(&pool, 0).await,
        month_partition(&pool, 1).await,
        month_partition(&pool, 2).await,
        "retry_history_default".to_string(),
    ];
    assert_eq!(partitions(&pool).await, expected);

    let mut conn = pool.acquire().await.unwrap();
    assert!(maintain::create_partitions(&mut conn)
        .await
        .unwrap()
        .is_empty());
    // A month later the next one is due, once.
    let created: Vec<String> =
        sqlx::query_scalar("SELECT retry_history_maintain(now() + interval '1 month')")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(created, vec![month_partition(&pool, 3).await]);
    let again: Vec<String> =
        sqlx::query_scalar("SELECT retry_history_maintain(now() + interval '1 month')")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(again.is_empty(), "{again:?}");

    // A new partition has the log's indexes and its own TRUNCATE guard.
    let indexes: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_indexes WHERE tablename = $1::text")
            .bind(&created[0])
            .fetch_one(&pool)
            .await
            .unwrap();
    // As many as the log has: its four, and the trigram index of `targets --q` where pg_trgm
    // could be installed (migration 0020).
    let on_the_log: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_index WHERE indrelid = 'retry_history'::regclass",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(on_the_log >= 4, "{on_the_log}");
    assert_eq!(indexes, on_the_log);
    let error = sqlx::query(&format!("TRUNCATE {}", created[0]))
        .execute(&pool)
        .await
        .expect_err("a partition made by maintenance cannot be truncated");
    assert_eq!(database_error(&error).0, "RL010", "{error}");
}

#[sqlx::test(migrations = false)]
async fn an_append_with_no_partition_for_its_month_lands_in_default_and_maintain_moves_it(
    pool: PgPool,
) {
    pipeline(&pool).await;
    let target = variant(JOB_A, VARIANT_A1);
    // As if maintenance had not run for months: no partition covers now.
    for months in 0..3 {
        sqlx::query(&format!(
            "DROP TABLE {}",
            month_partition(&pool, months).await
        ))
        .execute(&pool)
        .await
        .unwrap();
    }

    let event = append_ok(&pool, &retry(target)).await;
    assert_eq!(
        partition_of(&pool, event.seq).await,
        "retry_history_default"
    );

    let mut conn = pool.acquire().await.unwrap();
    let created = maintain::create_partitions(&mut conn).await.unwrap();
    drop(conn);
    let this_month = month_partition(&pool, 0).await;
    assert_eq!(
        created,
        vec![
            format!("{this_month} (events moved from retry_history_default)"),
            month_partition(&pool, 1).await,
            month_partition(&pool, 2).await,
        ]
    );
    assert_eq!(partition_of(&pool, event.seq).await, this_month);
    // The moved event keeps its place: the next attempt chains on it, the log verifies.
    let next = append_ok(&pool, &retry(target)).await;
    assert_eq!((next.attempt, next.seq), (2, event.seq + 1));
    assert_eq!(partition_of(&pool, next.seq).await, this_month);
    assert_verify_clean(&pool).await;
    let error = sqlx::query("TRUNCATE retry_history_default")
        .execute(&pool)
        .await
        .expect_err("the rebuilt DEFAULT partition keeps its TRUNCATE guard");
    assert_eq!(database_error(&error).0, "RL010", "{error}");
}

#[sqlx::test(migrations = false)]
async fn no_partition_can_be_truncated_or_its_rows_changed(pool: PgPool) {
    pipeline(&pool).await;
    let event = append_ok(&pool, &retry(job(JOB_A))).await;
    let partition = partition_of(&pool, event.seq).await;
    for sql in [
        "TRUNCATE retry_history".to_string(),
        format!("TRUNCATE {partition}"),
        "TRUNCATE retry_history_default".to_string(),
        format!("DELETE FROM {partition}"),
        format!("UPDATE {partition} SET actor = 'mallory'"),
    ] {
        let error = sqlx::query(&sql).execute(&pool).await.expect_err(&sql);
        let (code, message) = database_error(&error);
        assert_eq!(code, "RL010", "{sql}: {message}");
        assert!(
            message.starts_with("retry_history is append-only"),
            "{message}"
        );
    }
    assert_eq!(event_count(&pool).await, 1);
}

#[sqlx::test(migrations = false)]
async fn one_instance_holds_the_maintenance_lease_until_it_expires(pool: PgPool) {
    pipeline(&pool).await;
    let ttl = Duration::from_secs(60);
    assert_eq!(
        maintain::run_leased(&pool, "serve a", ttl).await.unwrap(),
        LeasedRun::Ran { created: vec![] }
    );
    assert_eq!(
        maintain::run_leased(&pool, "serve b", ttl).await.unwrap(),
        LeasedRun::Skipped {
            holder: "serve a".into()
        }
    );
    // The holder renews it; once it expires another instance takes over.
    assert!(matches!(
        maintain::run_leased(&pool, "serve a", ttl).await.unwrap(),
        LeasedRun::Ran { .. }
    ));
    sqlx::query("UPDATE retrylog_maintenance_lease SET expires_at = now() - interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();
    assert!(matches!(
        maintain::run_leased(&pool, "serve b", ttl).await.unwrap(),
        LeasedRun::Ran { .. }
    ));
    let (holder, result): (String, String) =
        sqlx::query_as("SELECT holder, last_result FROM retrylog_maintenance_lease")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (holder.as_str(), result.as_str()),
        ("serve b", "nothing due")
    );
}

#[sqlx::test(migrations = false)]
async fn a_stream_continues_across_partitions_from_its_head_row(pool: PgPool) {
    pipeline(&pool).await;
    lift_retry_limit(&pool).await;
    let target = variant(JOB_A, VARIANT_A1);
    // This month split in two a second from now, so one stream spans two partitions.
    let this_month = month_partition(&pool, 0).await;
    sqlx::raw_sql(&format!(
        "DROP TABLE {this_month};
         DO $$
         DECLARE
             month_start constant timestamptz := date_trunc('month', now(), 'UTC');
             split constant timestamptz := clock_timestamp() + interval '1 second';
         BEGIN
             EXECUTE format('CREATE TABLE early PARTITION OF retry_history
                             FOR VALUES FROM (%L) TO (%L)', month_start, split);
             EXECUTE format('CREATE TABLE late PARTITION OF retry_history
                             FOR VALUES FROM (%L) TO (%L)', split,
                            month_start + interval '1 month');
         END
         $$;"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let early = append_n(&pool, target, 2).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let late = append_n(&pool, target, 2).await;
    assert_eq!(partition_of(&pool, early[1].seq).await, "early");
    assert_eq!(partition_of(&pool, late[0].seq).await, "late");
    assert_eq!((late[0].attempt, late[1].attempt), (3, 4));
    assert_gapless(&pool, target, 4).await;
    assert_verify_clean(&pool).await;

    // A head row that says otherwise is named by verify and rebuilt by replay.
    sqlx::query("UPDATE retry_stream_head SET attempt = 7 WHERE stream = $1")
        .bind(VARIANT_A1)
        .execute(&pool)
        .await
        .unwrap();
    let report = verify(&pool).await;
    let last = late[1].seq;
    assert_eq!(
        report.mismatches,
        vec![Mismatch::StreamHead(retrylog::projection::OutcomeDrift {
            target: Some(target),
            problem: format!(
                "retry_stream_head holds attempt 7 (seq {last}), the log says attempt 4 (seq \
                 {last})"
            ),
        })]
    );
    retrylog::replay::replay(&pool, false).await.unwrap();
    assert_verify_clean(&pool).await;
    assert_eq!(append_ok(&pool, &retry(target)).await.attempt, 5);
}

#[sqlx::test(migrations = false)]
async fn retrylog_maintain_creates_what_is_due_and_then_nothing(pool: PgPool) {
    pipeline(&pool).await;
    // One month more ahead than migrate left.
    sqlx::query("UPDATE retrylog_settings SET partitions_ahead = 3")
        .execute(&pool)
        .await
        .unwrap();
    let run = retrylog(&pool, &["maintain", "--format", "json"]).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(
        run.json(),
        serde_json::json!([{ "created": month_partition(&pool, 3).await }])
    );
    let again = retrylog(&pool, &["maintain", "--format", "json"]).await;
    assert_eq!(again.code, Some(0), "{again:#?}");
    assert_eq!(again.json(), serde_json::json!([]));
}
