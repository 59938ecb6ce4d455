//! `retrylog archive` and `verify --archive`: a log that lived through three months, its
//! oldest month archived to a file, the rest still verifying from the streams' bases.
//!
//! How the three months are made: `record_retry` stamps `recorded_at` with the clock, so the
//! events are appended now (through the Rust door, with an `occurred_at` in the month they
//! stand for) and then moved back by whole months as a superuser with the triggers off
//! (`session_replication_role = replica`), their event ids and head rows with them — what a
//! log that really ran through those months would hold. `recorded_at` is not hashed, so the
//! chains are the ones the door wrote. The months' partitions are created first, as
//! `migrate` would have when the log was new.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Months, Utc};
use retrylog::grant::Capability::Operator;
use serde_json::Value;
use sqlx::PgPool;

use crate::fixtures::*;
use crate::security::TestRole;

/// The start of the UTC month `back` months before this one.
async fn month_start(pool: &PgPool, back: i32) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT date_trunc('month', now(), 'UTC') - make_interval(months => $1)")
        .bind(back)
        .fetch_one(pool)
        .await
        .expect("a month's start")
}

/// Creates the partitions of the two months before this one.
async fn past_partitions(pool: &PgPool) {
    for back in [2, 1] {
        let from = month_start(pool, back).await;
        sqlx::query(&format!(
            "CREATE TABLE retry_history_p{} PARTITION OF retry_history
                 FOR VALUES FROM ('{}') TO ('{}')",
            from.format("%Y%m%d"),
            from.to_rfc3339(),
            (from + Months::new(1)).to_rfc3339()
        ))
        .execute(pool)
        .await
        .expect("a past month's partition");
    }
}

/// Appends `n` retries of `target` that occurred `back` months ago (give or take the day).
async fn append_back(pool: &PgPool, target: retrylog::event::Target, n: usize, back: u32) {
    for _ in 0..n {
        let mut retry = retry(target);
        retry.occurred_at = Some(Utc::now() - Months::new(back) - Duration::seconds(1));
        append_ok(pool, &retry).await;
    }
}

/// Moves every event from `from_seq` on `back` months back in `recorded_at` (see the module
/// header).
async fn move_back(pool: &PgPool, from_seq: i64, back: i32) {
    let mut tx = pool.begin().await.unwrap();
    for sql in [
        "SET LOCAL session_replication_role = replica",
        "UPDATE retry_history SET recorded_at = recorded_at - make_interval(months => $2)
          WHERE seq >= $1",
        "UPDATE retry_event_id SET recorded_at = recorded_at - make_interval(months => $2)
          WHERE seq >= $1",
        "UPDATE retry_stream_head
            SET last_recorded_at = last_recorded_at - make_interval(months => $2)
          WHERE last_seq >= $1",
    ] {
        let query = sqlx::query(sql);
        let query = if sql.contains("$1") {
            query.bind(from_seq).bind(back)
        } else {
            query
        };
        query.execute(&mut *tx).await.expect(sql);
    }
    tx.commit().await.unwrap();
}

async fn next_seq(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT coalesce(max(seq), 0) + 1 FROM retry_history")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Three months of events: two months ago job A's three retries and variant A1's two; last
/// month job A's next two and variant A2's one; this month job A's sixth and job B's first.
/// The rollup is brought up to date (an archive refuses to take events it has not applied).
async fn three_months(pool: &PgPool) {
    pipeline(pool).await;
    lift_retry_limit(pool).await;
    past_partitions(pool).await;
    append_back(pool, job(JOB_A), 3, 2).await;
    append_back(pool, variant(JOB_A, VARIANT_A1), 2, 2).await;
    move_back(pool, 1, 2).await;
    let last_month = next_seq(pool).await;
    append_back(pool, job(JOB_A), 2, 1).await;
    append_back(pool, variant(JOB_A, VARIANT_A2), 1, 1).await;
    move_back(pool, last_month, 1).await;
    append_n(pool, job(JOB_A), 1).await;
    append_n(pool, job(JOB_B), 1).await;
    let project = retrylog(pool, &["project"]).await;
    assert_eq!(project.code, Some(0), "{project:#?}");
}

/// `retrylog archive` of everything before last month into `dir`.
async fn archive_oldest(pool: &PgPool, dir: &Path) -> Run {
    let before = month_start(pool, 1).await.to_rfc3339();
    retrylog(
        pool,
        &[
            "archive",
            "--before",
            &before,
            "--to",
            dir.to_str().unwrap(),
            "--format",
            "json",
        ],
    )
    .await
}

/// `retrylog verify` through the binary (which checks the archived streams from their base).
async fn assert_cli_verify_clean(pool: &PgPool) {
    let run = retrylog(pool, &["verify", "--format", "json"]).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(run.json()["clean"], Value::Bool(true), "{run:#?}");
}

fn archive_file(dir: &Path, pool_month: DateTime<Utc>) -> PathBuf {
    dir.join(format!(
        "retry_history_p{}.jsonl",
        pool_month.format("%Y%m%d")
    ))
}

#[sqlx::test(migrations = false)]
async fn archiving_the_oldest_month_keeps_counts_chains_and_appends(pool: PgPool) {
    three_months(&pool).await;
    assert_cli_verify_clean(&pool).await;
    let counts = (
        retry_count(&pool, job(JOB_A)).await,
        retry_count(&pool, variant(JOB_A, VARIANT_A1)).await,
    );
    assert_eq!(counts, (6, 2));

    let dir = TempPath::dir("archive");
    let run = archive_oldest(&pool, &dir).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let rows = run.json();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{run:#?}");
    assert_eq!(rows[0]["events"], Value::from(5), "{run:#?}");
    assert_eq!(rows[0]["streams"], Value::from(2), "{run:#?}");

    // The file: five event lines, its SHA-256 the one the manifest and the database hold.
    let month = month_start(&pool, 2).await;
    let file = archive_file(&dir, month);
    let bytes = std::fs::read(&file).unwrap();
    let lines: Vec<Value> = bytes
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    assert!(lines.iter().all(|line| line["type"] == "event"));
    assert_eq!(lines[0]["db_role"], Value::from("postgres"));
    assert_eq!(lines[0]["hash"].as_str().unwrap().len(), 64);
    assert_eq!(lines[1]["outcome"]["outcome"], Value::from("retried_again"));
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    let recorded: String = sqlx::query_scalar("SELECT sha256 FROM retry_archive")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(sha, recorded);
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(dir.join(format!(
            "retry_history_p{}.manifest.json",
            month.format("%Y%m%d")
        )))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["sha256"], Value::from(sha));
    assert_eq!(manifest["first_seq"], Value::from(1));
    assert_eq!(manifest["last_seq"], Value::from(5));

    // The database: the partition gone, its outcomes and event ids with it; still clean,
    // the counts unchanged.
    assert_eq!(event_count(&pool).await, 5);
    let leftovers: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM retry_outcome WHERE seq <= 5),
                (SELECT count(*) FROM retry_event_id WHERE seq <= 5)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(leftovers, (0, 0));
    assert_cli_verify_clean(&pool).await;
    assert_eq!(
        (
            retry_count(&pool, job(JOB_A)).await,
            retry_count(&pool, variant(JOB_A, VARIANT_A1)).await,
        ),
        counts
    );

    // A replay rebuilds the counts from the bases and keeps the archived months' trend.
    let archived_hours = || async {
        sqlx::query_scalar::<_, Option<i64>>(
            "SELECT sum(retries)::bigint FROM retry_rollup WHERE hour < retry_archive_horizon()",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let trend_before = archived_hours().await;
    assert_eq!(trend_before, Some(5));
    let replay = retrylog(&pool, &["replay", "--format", "json"]).await;
    assert_eq!(replay.code, Some(0), "{replay:#?}");
    assert_eq!(
        replay.json(),
        serde_json::json!([]),
        "nothing drifted: {replay:#?}"
    );
    assert_eq!(archived_hours().await, trend_before);
    assert_cli_verify_clean(&pool).await;

    // Appends go on where the archived prefix ended, also on a stream with no event left.
    assert_eq!(append_n(&pool, job(JOB_A), 1).await[0].attempt, 7);
    assert_eq!(
        append_n(&pool, variant(JOB_A, VARIANT_A1), 1).await[0].attempt,
        3
    );
    assert_cli_verify_clean(&pool).await;

    // The archive re-verifies against the database.
    let check = retrylog(&pool, &["verify", "--archive", dir.to_str().unwrap()]).await;
    assert_eq!(check.code, Some(0), "{check:#?}");

    // Running it again changes nothing, also as the policy that keeps last month.
    let again = archive_oldest(&pool, &dir).await;
    assert_eq!(again.code, Some(0), "{again:#?}");
    assert_eq!(again.json(), serde_json::json!([]));
    let again = retrylog(
        &pool,
        &[
            "archive",
            "--keep",
            "1month",
            "--to",
            dir.to_str().unwrap(),
            "--format",
            "json",
        ],
    )
    .await;
    assert_eq!(again.code, Some(0), "{again:#?}");
    assert_eq!(again.json(), serde_json::json!([]));
    let archives: i64 = sqlx::query_scalar("SELECT count(*) FROM retry_archive")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(archives, 1);
}

#[sqlx::test(migrations = false)]
async fn appends_to_archived_streams_during_the_archive_stay_gapless_and_verify(pool: PgPool) {
    three_months(&pool).await;
    let clients = clients(&pool, 8).await;
    let dir = TempPath::dir("archive");
    // Eight writers, four on job A (its first three retries are being archived) and four on
    // variant A1 (all of whose retries are), each appending until the archive is done.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|i| {
            let (pool, done) = (clients.pool.clone(), done.clone());
            let target = if i % 2 == 0 {
                job(JOB_A)
            } else {
                variant(JOB_A, VARIANT_A1)
            };
            tokio::spawn(async move {
                let mut appended = 0;
                while appended < 5 || !done.load(std::sync::atomic::Ordering::SeqCst) {
                    append_ok(&pool, &retry(target)).await;
                    appended += 1;
                }
                (i % 2, appended)
            })
        })
        .collect();
    let run = archive_oldest(&pool, &dir).await;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut appended = [0, 0];
    for writer in writers {
        let (which, n) = writer.await.unwrap();
        appended[which] += n;
    }
    clients.close().await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(run.json()[0]["events"], Value::from(5), "{run:#?}");
    let [on_a, on_a1] = appended;
    assert_eq!(retry_count(&pool, job(JOB_A)).await, 6 + on_a);
    assert_eq!(
        retry_count(&pool, variant(JOB_A, VARIANT_A1)).await,
        2 + on_a1
    );
    assert_eq!(
        attempts(&pool, job(JOB_A)).await,
        (4..=6 + on_a).collect::<Vec<i32>>()
    );
    assert_eq!(
        attempts(&pool, variant(JOB_A, VARIANT_A1)).await,
        (3..=2 + on_a1).collect::<Vec<i32>>()
    );
    let project = retrylog(&pool, &["project"]).await;
    assert_eq!(project.code, Some(0), "{project:#?}");
    assert_cli_verify_clean(&pool).await;
    let check = retrylog(&pool, &["verify", "--archive", dir.to_str().unwrap()]).await;
    assert_eq!(check.code, Some(0), "{check:#?}");
}

#[sqlx::test(migrations = false)]
async fn a_changed_byte_in_an_archive_is_named_by_line_and_field(pool: PgPool) {
    three_months(&pool).await;
    let dir = TempPath::dir("archive");
    assert_eq!(archive_oldest(&pool, &dir).await.code, Some(0));
    let file = archive_file(&dir, month_start(&pool, 2).await);
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    assert!(lines[1].contains("\"actor\":\"test\""));
    lines[1] = lines[1].replace("\"actor\":\"test\"", "\"actor\":\"tesT\"");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();

    let run = retrylog(&pool, &["verify", "--archive", file.to_str().unwrap()]).await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(
        run.stdout
            .contains("line 2: field hash does not follow from the line's hashed fields"),
        "{run:#?}"
    );
    assert!(run.stdout.contains("SHA-256 is"), "{run:#?}");
    // Only line 2 is named: the next link is checked against line 2's stored hash.
    assert!(!run.stdout.contains("line 3"), "{run:#?}");
}

#[sqlx::test(migrations = false)]
async fn a_deleted_line_of_an_archive_is_named(pool: PgPool) {
    three_months(&pool).await;
    let dir = TempPath::dir("archive");
    assert_eq!(archive_oldest(&pool, &dir).await.code, Some(0));
    let file = archive_file(&dir, month_start(&pool, 2).await);
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(1);
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();

    let run = retrylog(&pool, &["verify", "--archive", dir.to_str().unwrap()]).await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(
        run.stdout
            .contains("line 2: field attempt is 3, but job 0a000000-0000-4000-8000-000000000000's next attempt is 2 (after line 1)"),
        "{run:#?}"
    );
    assert!(
        run.stdout
            .contains("holds 4 events, the manifest recorded 5"),
        "{run:#?}"
    );
}

#[sqlx::test(migrations = false)]
async fn a_report_that_needs_archived_events_says_so(pool: PgPool) {
    three_months(&pool).await;
    let dir = TempPath::dir("archive");
    assert_eq!(archive_oldest(&pool, &dir).await.code, Some(0));
    let horizon = month_start(&pool, 1).await;
    let before = (horizon - Duration::days(3)).to_rfc3339();
    for args in [
        vec!["report", "top-jobs", "--as-of", &before],
        vec!["report", "trend", "--since", "60d", "--as-of", "1s"],
    ] {
        let run = retrylog(&pool, &args).await;
        assert_eq!(run.code, Some(2), "{args:?}: {run:#?}");
        assert!(
            run.only_problem_line().contains(&format!(
                "needs events recorded before {horizon}, which were archived"
            )),
            "{args:?}: {run:#?}"
        );
    }
    // After the horizon the count holds the archived retries.
    let now = (Utc::now() + Duration::seconds(5)).to_rfc3339();
    let run = retrylog(
        &pool,
        &["report", "top-jobs", "--as-of", &now, "--format", "json"],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(run.json()[0]["retry_count"], Value::from(6), "{run:#?}");
}

#[sqlx::test(migrations = false)]
async fn archive_is_refused_to_a_role_that_does_not_own_the_log(pool: PgPool) {
    three_months(&pool).await;
    let operator = TestRole::create(&pool, &[Operator]).await;
    let dir = TempPath::dir("archive");
    let before = month_start(&pool, 1).await.to_rfc3339();
    let run = retrylog_at(
        &operator.url(&pool).await,
        &[
            "archive",
            "--before",
            &before,
            "--to",
            dir.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert_eq!(
        run.only_problem_line(),
        format!(
            "retrylog: archive needs the schema owner (postgres), which role {} is not: it \
             detaches and drops partitions of retry_history; run it as postgres",
            operator.name
        )
    );
    assert_eq!(event_count(&pool).await, 10);
    assert_eq!(std::fs::read_dir(&*dir).unwrap().count(), 0);
}

/// `retrylog maintain` with extra flags: its run.
async fn maintain(pool: &PgPool, extra: &[&str]) -> Run {
    let mut args = vec!["maintain"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--format", "json"]);
    retrylog(pool, &args).await
}

fn partition_of(month: DateTime<Utc>) -> String {
    format!("retry_history_p{}", month.format("%Y%m%d"))
}

#[sqlx::test(migrations = false)]
async fn a_closed_months_digest_is_recorded_by_maintain_and_a_change_there_caught_by_full(
    pool: PgPool,
) {
    three_months(&pool).await;
    let run = maintain(&pool, &[]).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let oldest = partition_of(month_start(&pool, 2).await);
    assert!(
        run.stderr
            .contains(&format!("recorded the digest of closed partition {oldest}")),
        "{run:#?}"
    );
    let events: i64 =
        sqlx::query_scalar("SELECT events FROM retry_partition_digest WHERE partition = $1")
            .bind(&oldest)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(events, 5);
    // Recorded once; the current month, not over, has none.
    let again = maintain(&pool, &[]).await;
    assert!(!again.stderr.contains("recorded the digest"), "{again:#?}");
    let current: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM retry_partition_digest WHERE partition = $1)",
    )
    .bind(partition_of(month_start(&pool, 0).await))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(!current);
    assert_cli_verify_clean(&pool).await;
    let full = retrylog(&pool, &["verify", "--full", "--format", "json"]).await;
    assert_eq!(full.code, Some(0), "{full:#?}");

    // Variant A1's second retry, the last of its stream, removed from the closed month
    // together with everything that points at it: the chains that are left still link, the
    // head row, event id and count say attempt 1. Only the digest remembers it.
    crate::integrity::behind_the_guard(
        &pool,
        &format!(
            "DELETE FROM retry_outcome WHERE seq IN (SELECT seq FROM retry_history
                WHERE job_variants_id = '{VARIANT_A1}' AND attempt = 2);
             DELETE FROM retry_event_id WHERE seq IN (SELECT seq FROM retry_history
                WHERE job_variants_id = '{VARIANT_A1}' AND attempt = 2);
             DELETE FROM retry_history WHERE job_variants_id = '{VARIANT_A1}' AND attempt = 2;
             UPDATE retry_stream_head s SET attempt = 1, hash = h.hash, last_seq = h.seq,
                                            last_open = false
               FROM retry_history h
              WHERE h.job_variants_id = '{VARIANT_A1}' AND h.attempt = 1
                AND s.job_variants_id = '{VARIANT_A1}';
             UPDATE jobs_variants SET retry_count = 1 WHERE job_variants_id = '{VARIANT_A1}';"
        ),
    )
    .await;
    let full = retrylog(&pool, &["verify", "--full", "--format", "json"]).await;
    assert_eq!(full.code, Some(1), "{full:#?}");
    let found = full.json();
    let digest: Vec<&Value> = found["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["problem"] == "partition_digest")
        .collect();
    assert_eq!(digest.len(), 1, "{full:#?}");
    assert_eq!(digest[0]["target"], Value::from(oldest.clone()));
    let message = digest[0]["message"].as_str().unwrap();
    assert!(
        message.contains("says 5 events") && message.contains("it holds 4 events"),
        "{message}"
    );
}

#[sqlx::test(migrations = false)]
async fn maintain_with_a_retention_policy_archives_the_older_months_under_the_lease(pool: PgPool) {
    three_months(&pool).await;
    let dir = TempPath::dir("retention");
    let to = dir.to_str().unwrap();

    // The two flags go together.
    let half = maintain(&pool, &["--keep", "1month"]).await;
    assert_eq!(half.code, Some(2), "{half:#?}");
    assert!(half.stderr.contains("--archive-to"), "{half:#?}");
    let wrong = maintain(&pool, &["--keep", "13", "--archive-to", to]).await;
    assert_eq!(wrong.code, Some(2), "{wrong:#?}");
    assert!(
        wrong.stderr.contains("is not a number of months"),
        "{wrong:#?}"
    );
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM retry_archive")
            .fetch_one(&pool)
            .await
            .unwrap(),
        0
    );

    // While another instance holds the lease, nothing is archived.
    sqlx::query(
        "UPDATE retrylog_maintenance_lease
            SET holder = 'serve elsewhere', expires_at = now() + interval '1 minute'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let held = maintain(&pool, &["--keep", "1month", "--archive-to", to]).await;
    assert_eq!(held.code, Some(0), "{held:#?}");
    assert!(
        held.stderr
            .contains("serve elsewhere holds the maintenance lease"),
        "{held:#?}"
    );
    assert!(!archive_file(&dir, month_start(&pool, 2).await).exists());

    // Keep one whole month before this one: the month before that is archived.
    sqlx::query("UPDATE retrylog_maintenance_lease SET expires_at = now()")
        .execute(&pool)
        .await
        .unwrap();
    let run = maintain(&pool, &["--keep", "1month", "--archive-to", to]).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let oldest = partition_of(month_start(&pool, 2).await);
    assert!(
        run.stderr
            .contains(&format!("archived {oldest} (5 events) to ")),
        "{run:#?}"
    );
    assert!(archive_file(&dir, month_start(&pool, 2).await).exists());
    let (result, free): (String, bool) =
        sqlx::query_as("SELECT last_result, expires_at <= now() FROM retrylog_maintenance_lease")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(result.contains(&format!("archived {oldest}")), "{result}");
    assert!(free, "maintain gives the lease back when done");
    assert_eq!(retry_count(&pool, job(JOB_A)).await, 6);
    assert_cli_verify_clean(&pool).await;
    let checked = retrylog(&pool, &["verify", "--archive", to]).await;
    assert_eq!(checked.code, Some(0), "{checked:#?}");

    // Nothing older is left: a second run archives nothing.
    let again = maintain(&pool, &["--keep", "1month", "--archive-to", to]).await;
    assert_eq!(again.code, Some(0), "{again:#?}");
    assert!(!again.stderr.contains("archived"), "{again:#?}");
}

#[sqlx::test(migrations = false)]
async fn a_retention_policy_is_refused_to_a_role_that_does_not_own_the_log(pool: PgPool) {
    three_months(&pool).await;
    let operator = TestRole::create(&pool, &[Operator]).await;
    let dir = TempPath::dir("retention-refused");
    let run = retrylog_at(
        &operator.url(&pool).await,
        &[
            "maintain",
            "--keep",
            "1month",
            "--archive-to",
            dir.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(
        run.stderr.contains("archive needs the schema owner"),
        "{run:#?}"
    );
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM retry_archive")
            .fetch_one(&pool)
            .await
            .unwrap(),
        0
    );
}

#[sqlx::test(migrations = false)]
async fn serve_with_a_retention_policy_archives_in_its_maintenance_step(pool: PgPool) {
    three_months(&pool).await;
    let dir = TempPath::dir("serve-retention");
    let to = dir.to_str().unwrap();
    let serve = serve_command(
        &pool,
        &["--no-http", "--keep", "1month", "--archive-to", to],
    )
    .await
    .spawn()
    .unwrap();
    // The first step runs at start.
    let file = archive_file(&dir, month_start(&pool, 2).await);
    for _ in 0..300 {
        let archived: i64 = sqlx::query_scalar("SELECT count(*) FROM retry_archive")
            .fetch_one(&pool)
            .await
            .unwrap();
        if archived > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    stop_serve(serve).await;
    assert!(file.exists(), "{}", file.display());
    let (holder, result): (String, String) =
        sqlx::query_as("SELECT holder, last_result FROM retrylog_maintenance_lease")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(holder.starts_with("serve "), "{holder}");
    let oldest = partition_of(month_start(&pool, 2).await);
    assert!(
        result.contains(&format!("digested {oldest}"))
            && result.contains(&format!("archived {oldest}")),
        "{result}"
    );
    assert_eq!(retry_count(&pool, job(JOB_A)).await, 6);
    assert_cli_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn serve_with_a_retention_policy_refuses_to_start_under_a_role_that_does_not_own_the_log(
    pool: PgPool,
) {
    pipeline(&pool).await;
    let operator = TestRole::create(&pool, &[Operator]).await;
    let dir = TempPath::dir("serve-retention-refused");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_retrylog"))
        .args([
            "--database-url",
            &operator.url(&pool).await,
            "serve",
            "--no-http",
            "--keep",
            "13months",
            "--archive-to",
            dir.to_str().unwrap(),
        ])
        .env_remove("DATABASE_URL")
        .env_remove("RETRYLOG_LOG")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(20), output)
        .await
        .expect("serve stops at once")
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("archive needs the schema owner"),
        "{stderr}"
    );
}
