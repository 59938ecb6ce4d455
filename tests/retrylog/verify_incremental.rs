//! A verify that costs what is new (issue 23; src/verify_state/): a plain `verify`
//! reads the events since the last clean one, continuing each stream from its verified head,
//! the counts and head rows of the streams walked and of a rotating slice of the others (every
//! target within a round), and what is new of the rest, and no more of the log or the targets
//! than that; `--full` reads everything. What each catches (docs/security.md),
//! the position under real concurrent appenders and late commits, who may advance it, and
//! `serve --verify-every` with its metrics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use retrylog::grant::Capability::{Operator, Reader, Writer};
use retrylog::verify_state::{self, Recorded, Scope};
use serde_json::Value;
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::fixtures::*;
use crate::integrity::behind_the_guard;
use crate::security::{assert_denied, TestRole};
use crate::serving::exchange;

/// `retrylog verify <extra> --format json` on the test's database: its exit code and object.
async fn verify_json(pool: &PgPool, extra: &[&str]) -> (Option<i32>, Value, Run) {
    let mut args = vec!["verify"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--format", "json"]);
    let run = retrylog(pool, &args).await;
    (run.code, run.json(), run)
}

/// The stored position (txid horizon) and the last recorded mismatches.
async fn state(pool: &PgPool) -> verify_state::State {
    verify_state::load(&mut pool.acquire().await.unwrap())
        .await
        .unwrap()
}

/// Changes the reason of `target`'s `attempt` behind the append-only guard, as a superuser can.
async fn tamper(pool: &PgPool, target: retrylog::event::Target, attempt: i32, reason: &str) {
    let seq = crate::integrity::seq_of(pool, target, attempt).await;
    behind_the_guard(
        pool,
        &format!("UPDATE retry_history SET reason = '{reason}' WHERE seq = {seq}"),
    )
    .await;
}

#[sqlx::test(migrations = false)]
async fn a_plain_verify_after_new_events_reads_only_those_and_full_reads_all(pool: PgPool) {
    pipeline(&pool).await;
    append_n(&pool, variant(JOB_A, VARIANT_A1), 3).await;
    append_n(&pool, job(JOB_B), 2).await;
    let (code, first, _) = verify_json(&pool, &[]).await;
    assert_eq!(code, Some(0), "{first:#?}");
    assert_eq!(first["scope"], "new");
    assert_eq!(first["events"], 5, "a first verify reads everything");
    assert_eq!(first["recorded"], "advanced", "{first:#?}");
    let horizon = state(&pool).await.horizon;
    assert_eq!(first["up_to_txid"], horizon);

    // Ten new events: two streams continued from their heads, one new stream.
    lift_retry_limit(&pool).await;
    let mut new = append_n(&pool, variant(JOB_A, VARIANT_A1), 4).await;
    new.extend(append_n(&pool, job(JOB_B), 3).await);
    new.extend(append_n(&pool, variant(JOB_B, VARIANT_B1), 3).await);
    let run = retrylog(&pool, &["verify"]).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let first_seq = new.iter().map(|e| e.seq).min().unwrap();
    let last_seq = new.iter().map(|e| e.seq).max().unwrap();
    assert!(
        run.stderr.contains(&format!(
            "verify clean: checked 10 new events in 3 streams since txid {horizon}, seq \
             {first_seq}..{last_seq}; the 5 events verified before are not read again"
        )),
        "{run:#?}"
    );
    let after = state(&pool).await;
    // Never back; forward once no older transaction in the cluster holds the xmin back.
    assert!(after.horizon >= horizon, "{after:?}");
    assert_eq!(after.events, 15);

    // Nothing new: nothing read, still clean.
    let (code, idle, _) = verify_json(&pool, &[]).await;
    assert_eq!(code, Some(0), "{idle:#?}");
    assert_eq!(
        (idle["events"].clone(), idle["streams"].clone()),
        (0.into(), 0.into())
    );
    assert_eq!(idle["verified_before"], 15);

    // --full reads every event from each stream's start.
    let (code, full, _) = verify_json(&pool, &["--full"]).await;
    assert_eq!(code, Some(0), "{full:#?}");
    assert_eq!(full["scope"], "full");
    assert_eq!(
        (full["events"].clone(), full["streams"].clone()),
        (15.into(), 3.into())
    );
    assert_eq!(full["since_txid"], 0);
    assert!(state(&pool).await.full_verified_at.is_some());
}

#[sqlx::test(migrations = false)]
async fn a_tampered_new_event_is_caught_by_a_plain_verify_and_stays_found(pool: PgPool) {
    pipeline(&pool).await;
    append_n(&pool, variant(JOB_A, VARIANT_A1), 2).await;
    assert_eq!(retrylog(&pool, &["verify"]).await.code, Some(0));
    let before = state(&pool).await;
    let target = variant(JOB_A, VARIANT_A3);
    append_n(&pool, target, 3).await;
    tamper(&pool, target, 2, "failed").await;

    for round in 0..2 {
        let (code, found, _) = verify_json(&pool, &[]).await;
        assert_eq!(code, Some(1), "round {round}: {found:#?}");
        assert_eq!(
            found["events"], 3,
            "only the new events are read: {found:#?}"
        );
        let mismatches = found["mismatches"].as_array().unwrap();
        assert_eq!(mismatches.len(), 1, "{found:#?}");
        assert_eq!(mismatches[0]["problem"], "broken_link");
        assert_eq!(found["recorded"], "failed");
        let now = state(&pool).await;
        assert_eq!(
            now.horizon, before.horizon,
            "a failing verify keeps the position"
        );
        assert_eq!(now.mismatches, 1);
    }
}

#[sqlx::test(migrations = false)]
async fn a_tampered_verified_event_is_caught_by_full_only_and_then_stands(pool: PgPool) {
    pipeline(&pool).await;
    let target = variant(JOB_A, VARIANT_A1);
    append_n(&pool, target, 3).await;
    assert_eq!(retrylog(&pool, &["verify"]).await.code, Some(0));
    tamper(&pool, target, 2, "manual_recovery").await;

    // A plain verify does not re-read a verified event, and says so.
    let plain = retrylog(&pool, &["verify"]).await;
    assert_eq!(plain.code, Some(0), "{plain:#?}");
    assert!(
        plain
            .stderr
            .contains("checked 0 new events in 0 streams since txid")
            && plain.stderr.contains(
                "the 3 events verified before are not read again (verify --full reads them)"
            ),
        "{plain:#?}"
    );

    // --full re-reads it.
    let (code, full, _) = verify_json(&pool, &["--full"]).await;
    assert_eq!(code, Some(1), "{full:#?}");
    assert_eq!(full["mismatches"][0]["problem"], "broken_link", "{full:#?}");
    assert_eq!(full["recorded"], "failed");

    // What --full found stands: plain verifies fail until a --full is clean.
    let standing = retrylog(&pool, &["verify"]).await;
    assert_eq!(standing.code, Some(1), "{standing:#?}");
    assert!(
        standing
            .stderr
            .contains("the last verify --full found 1 in events verified before"),
        "{standing:#?}"
    );
    assert_eq!(state(&pool).await.mismatches, 1);

    tamper(&pool, target, 2, "stuck").await;
    assert_eq!(retrylog(&pool, &["verify", "--full"]).await.code, Some(0));
    let (code, clean, _) = verify_json(&pool, &[]).await;
    assert_eq!(code, Some(0), "{clean:#?}");
    assert_eq!(clean["standing_full_mismatches"], 0);
    assert_eq!(state(&pool).await.mismatches, 0);
}

#[sqlx::test(migrations = false)]
async fn count_drift_is_caught_by_a_plain_verify_and_rollup_drift_by_full(pool: PgPool) {
    pipeline(&pool).await;
    append_n(&pool, job(JOB_B), 2).await;
    assert_eq!(retrylog(&pool, &["verify"]).await.code, Some(0));
    sqlx::query("UPDATE jobs SET retry_count = 7 WHERE job_id = $1")
        .bind(JOB_B)
        .execute(&pool)
        .await
        .unwrap();

    let (code, found, _) = verify_json(&pool, &[]).await;
    assert_eq!(code, Some(1), "{found:#?}");
    assert_eq!(found["events"], 0, "{found:#?}");
    let problems: Vec<&str> = found["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["problem"].as_str().unwrap())
        .collect();
    assert_eq!(problems, ["count"], "{found:#?}");

    // The rollups are recomputed from every event: --full checks them, a plain verify not.
    retrylog::projector::catch_up(&mut pool.acquire().await.unwrap(), 100)
        .await
        .unwrap();
    let changed = sqlx::query("UPDATE retry_rollup SET retries = retries + 1")
        .execute(&pool)
        .await
        .unwrap()
        .rows_affected();
    assert!(changed > 0, "the projector applied the events");
    let (_, plain, _) = verify_json(&pool, &[]).await;
    assert_eq!(
        plain["mismatches"].as_array().unwrap().len(),
        1,
        "{plain:#?}"
    );
    let (code, full, _) = verify_json(&pool, &["--full"]).await;
    assert_eq!(code, Some(1), "{full:#?}");
    let mut problems: Vec<&str> = full["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["problem"].as_str().unwrap())
        .collect();
    problems.dedup();
    assert_eq!(problems, ["count", "rollup"], "{full:#?}");
}

#[sqlx::test(migrations = false)]
async fn an_uncommitted_append_holds_the_position_back_and_is_read_once_it_commits(pool: PgPool) {
    pipeline(&pool).await;
    lift_retry_limit(&pool).await;
    let clients = clients(&pool, 4).await;
    append_n(&pool, variant(JOB_A, VARIANT_A1), 2).await;

    // 1. A client appends and keeps its transaction open.
    let mut held = clients.pool.begin().await.unwrap();
    record_via_sql(&mut held, variant(JOB_A, VARIANT_A2), "failed")
        .await
        .unwrap();
    let held_txid: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(&mut *held)
        .await
        .unwrap();
    // 2. Others append and commit after it, with higher seqs.
    append_n(&pool, job(JOB_B), 3).await;

    let run = verify_state::run(&clients.pool, Scope::New, |_| {})
        .await
        .unwrap();
    assert!(run.is_clean(), "{run:#?}");
    assert_eq!(run.recorded, Recorded::Advanced);
    assert_eq!(run.report.events, 5, "the committed events: {run:#?}");
    assert!(
        run.up_to_txid <= held_txid,
        "the position {} passes the open transaction {held_txid}",
        run.up_to_txid
    );
    assert!(state(&pool).await.horizon <= held_txid);

    // 3. It commits late: the next plain verify reads it, and only it.
    held.commit().await.unwrap();
    let late_seq: i64 =
        sqlx::query_scalar("SELECT seq FROM retry_history WHERE job_variants_id = $1")
            .bind(VARIANT_A2)
            .fetch_one(&pool)
            .await
            .unwrap();
    let run = verify_state::run(&clients.pool, Scope::New, |_| {})
        .await
        .unwrap();
    assert!(run.is_clean(), "{run:#?}");
    assert_eq!(run.report.events, 1, "{run:#?}");
    assert_eq!(
        (run.first_seq, run.last_seq),
        (Some(late_seq), Some(late_seq))
    );
    clients.close().await;
}

#[sqlx::test(migrations = false)]
async fn under_concurrent_appenders_and_late_commits_each_event_is_verified_exactly_once(
    pool: PgPool,
) {
    pipeline(&pool).await;
    lift_retry_limit(&pool).await;
    let clients = clients(&pool, 12).await;
    let streams = [
        job(JOB_A),
        job(JOB_B),
        variant(JOB_A, VARIANT_A1),
        variant(JOB_A, VARIANT_A2),
        variant(JOB_A, VARIANT_A3),
        variant(JOB_B, VARIANT_B1),
    ];
    let done = Arc::new(AtomicBool::new(false));
    let mut appenders = Vec::new();
    for writer in 0..8usize {
        let pool = clients.pool.clone();
        appenders.push(tokio::spawn(async move {
            for i in 0..25usize {
                let target = streams[(writer + i) % streams.len()];
                let mut tx = pool.begin().await.unwrap();
                record_via_sql(&mut tx, target, "stuck").await.unwrap();
                // Some commit late: a lower seq or txid becomes visible after higher ones.
                if (writer + i) % 3 == 0 {
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
                tx.commit().await.unwrap();
            }
        }));
    }
    let verifier = {
        let pool = clients.pool.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut walked = 0u64;
            let mut runs = 0;
            while !done.load(Ordering::SeqCst) {
                let run = verify_state::run(&pool, Scope::New, |_| {}).await.unwrap();
                assert!(run.is_clean(), "a plain verify under appends: {run:#?}");
                assert_eq!(run.recorded, Recorded::Advanced, "{run:#?}");
                walked += run.report.events;
                runs += 1;
            }
            (walked, runs)
        })
    };
    for appender in appenders {
        appender.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let (mut walked, runs) = verifier.await.unwrap();
    assert!(
        runs >= 2,
        "the verifier ran while appends ran ({runs} runs)"
    );
    let last = verify_state::run(&clients.pool, Scope::New, |_| {})
        .await
        .unwrap();
    assert!(last.is_clean(), "{last:#?}");
    walked += last.report.events;

    assert_eq!(
        walked as i64,
        event_count(&pool).await,
        "each event walked once"
    );
    let stale_heads: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (
             SELECT job_id, job_variants_id, max(attempt) AS attempt
               FROM retry_history GROUP BY 1, 2) s
         FULL JOIN verify_stream_head v
           ON v.job_id = s.job_id AND v.job_variants_id IS NOT DISTINCT FROM s.job_variants_id
          AND v.attempt = s.attempt
        WHERE v.job_id IS NULL OR s.job_id IS NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(stale_heads, 0, "every stream's head is its last event");
    clients.close().await;
}

#[sqlx::test(migrations = false)]
async fn only_one_holder_has_the_verify_lease_until_it_expires(pool: PgPool) {
    migrated(&pool).await;
    let mut conn = pool.acquire().await.unwrap();
    let ttl = Duration::from_millis(600);
    assert!(verify_state::take_lease(&mut conn, "a", ttl).await.unwrap());
    assert!(!verify_state::take_lease(&mut conn, "b", ttl).await.unwrap());
    assert!(
        verify_state::take_lease(&mut conn, "a", ttl).await.unwrap(),
        "renewed"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        verify_state::take_lease(&mut conn, "b", ttl).await.unwrap(),
        "expired"
    );
    assert!(!verify_state::take_lease(&mut conn, "a", ttl).await.unwrap());
}

#[sqlx::test(migrations = false)]
async fn a_reader_verifies_and_records_nothing_an_operator_advances_and_a_writer_cannot_read(
    pool: PgPool,
) {
    pipeline(&pool).await;
    append_n(&pool, variant(JOB_A, VARIANT_A1), 2).await;
    let reader = TestRole::create(&pool, &[Reader]).await;
    let operator = TestRole::create(&pool, &[Operator]).await;
    let writer = TestRole::create(&pool, &[Writer]).await;

    let before = state(&pool).await;
    let run = retrylog_at(&reader.url(&pool).await, &["verify", "--format", "json"]).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(run.json()["events"], 2);
    assert_eq!(run.json()["recorded"], "not_permitted");
    assert!(
        run.stderr
            .contains("takes the operator capability (retrylog grant operator ROLE)"),
        "{run:#?}"
    );
    let after = state(&pool).await;
    assert_eq!(
        (after.horizon, after.generation),
        (before.horizon, before.generation)
    );
    assert_denied(
        &reader.pool,
        &[
            "UPDATE verify_state SET horizon = '999999'",
            "INSERT INTO verify_stream_head VALUES (gen_random_uuid(), NULL, 1, sha256(''), 1)",
            "UPDATE verify_lease SET holder = 'reader'",
        ],
    )
    .await;
    // A reader cannot schedule verify either.
    let serve = retrylog_at(
        &reader.url(&pool).await,
        &[
            "serve",
            "--verify-every",
            "1s",
            "--no-watchdog",
            "--no-http",
        ],
    )
    .await;
    assert_eq!(serve.code, Some(2), "{serve:#?}");
    assert!(
        serve.stderr.contains(&format!(
            "serve --verify-every needs the operator capability, which role {0} lacks: retrylog \
             grant operator {0} (as the schema owner)",
            reader.name
        )),
        "{serve:#?}"
    );

    let run = retrylog_at(&operator.url(&pool).await, &["verify", "--format", "json"]).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(run.json()["recorded"], "advanced");
    let heads: Vec<(String,)> =
        sqlx::query_as("SELECT job_variants_id::text FROM verify_stream_head")
            .fetch_all(&operator.pool)
            .await
            .unwrap();
    assert_eq!(heads, [(VARIANT_A1.to_string(),)]);
    assert!(state(&pool).await.horizon > before.horizon);

    assert_denied(
        &writer.pool,
        &[
            "SELECT * FROM verify_state",
            "SELECT * FROM verify_stream_head",
        ],
    )
    .await;
}

/// The value of an unlabelled series in a `/metrics` exposition.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// `GET /metrics` from a serve listening at `addr`.
async fn scrape(addr: &str) -> String {
    let (response, _) = exchange(addr, "/metrics", None, None).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// Scrapes until `ready` holds of the text, for at most 20 s.
async fn scrape_until(addr: &str, what: &str, ready: impl Fn(&str) -> bool) -> String {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let text = scrape(addr).await;
            if ready(&text) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("within 20 s: {what}"))
}

#[sqlx::test(migrations = false)]
async fn serve_verify_every_runs_on_schedule_and_the_metrics_move(pool: PgPool) {
    pipeline(&pool).await;
    append_n(&pool, variant(JOB_A, VARIANT_A1), 2).await;
    let mut serve = serve_command(&pool, &["--no-watchdog", "--verify-every", "1s"])
        .await
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(serve.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = log.next_line().await.unwrap() {
            if let Some(rest) = line.split("HTTP on http://").nth(1) {
                return rest.split('/').next().unwrap().to_string();
            }
        }
        panic!("serve ended without saying where it listens");
    })
    .await
    .expect("serve listens within 30 s");
    // Keep reading its log, so that it never blocks on a full pipe.
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });

    let clean = scrape_until(&addr, "a scheduled verify succeeds", |text| {
        metric(text, "retrylog_verify_last_success_timestamp_seconds") > 0.0
    })
    .await;
    assert_eq!(metric(&clean, "retrylog_verify_mismatches"), 0.0);
    let first_success = metric(&clean, "retrylog_verify_last_success_timestamp_seconds");
    let holder: Option<String> = sqlx::query_scalar("SELECT holder FROM verify_lease")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(holder.is_some(), "serve holds the verify lease");

    // A new event changed behind the guard in the transaction that appends it, so no run sees
    // it unchanged: the next scheduled run finds it, and every run after it. The actor, which
    // only the chain covers (a changed reason would also leave the stream's head row behind).
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    record_via_sql(&mut tx, variant(JOB_A, VARIANT_A1), "stuck")
        .await
        .unwrap();
    sqlx::query(
        "UPDATE retry_history SET actor = 'mallory' WHERE job_variants_id = $1 AND attempt = 3",
    )
    .bind(VARIANT_A1)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let failing = scrape_until(&addr, "the scheduled verify finds the tamper", |text| {
        metric(text, "retrylog_verify_mismatches") == 1.0
    })
    .await;
    let last_success = metric(&failing, "retrylog_verify_last_success_timestamp_seconds");
    assert!(last_success >= first_success);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let later = scrape(&addr).await;
    assert_eq!(
        metric(&later, "retrylog_verify_mismatches"),
        1.0,
        "it stays found"
    );
    assert_eq!(
        metric(&later, "retrylog_verify_last_success_timestamp_seconds"),
        last_success,
        "no success since the tamper"
    );
    drop(drain);
    stop_serve(serve).await;
}

/// Rows of the log read so far, by the server's own counters: sequential and index reads of
/// every partition of retry_history.
async fn log_rows_read(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum(coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)), 0)::bigint
           FROM pg_stat_user_tables
          WHERE relid IN (SELECT relid FROM pg_partition_tree('retry_history'))",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A pool of its own beside the test's, its connections named `name` (to be found by).
async fn own_pool(pool: &PgPool, name: &str) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(
            pool.connect_options()
                .as_ref()
                .clone()
                .application_name(name),
        )
        .await
        .unwrap()
}

/// Closes `own` and waits until its backends are gone: a backend's statistics reach the
/// server's counters for certain only when it exits (an idle one may hold them for seconds).
async fn close_and_wait(pool: &PgPool, own: PgPool, name: &str) {
    own.close().await;
    for _ in 0..500 {
        let alive: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = $1)",
        )
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap();
        if !alive {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Verifies (plain, with a slice of `slice`) until the recorded position passes every event
/// of the log. The position is the cluster's xmin: a transaction of another database (another
/// test, a benchmark loading its log) can hold it below these events for a while, and a plain
/// verify reads every event above it again.
async fn verify_past_the_log(pool: &PgPool, slice: i64) {
    let last_txid: i64 = sqlx::query_scalar("SELECT max(txid)::text::bigint FROM retry_history")
        .fetch_one(pool)
        .await
        .unwrap();
    for _ in 0..1200 {
        if state(pool).await.horizon > last_txid {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        target_rows_read_by(pool, Scope::New, slice).await;
    }
    panic!("the verified position did not pass the log within two minutes");
}

/// A verify of `scope` on connections of its own, and the rows of the log it read.
async fn rows_read_by(pool: &PgPool, scope: Scope) -> (verify_state::Run, i64) {
    const NAME: &str = "retrylog verify under count";
    let before = log_rows_read(pool).await;
    let own = own_pool(pool, NAME).await;
    let run = verify_state::run(&own, scope, |_| {}).await.unwrap();
    close_and_wait(pool, own, NAME).await;
    (run, log_rows_read(pool).await - before)
}

#[sqlx::test(migrations = false)]
async fn a_plain_verify_reads_only_the_new_events_of_the_log_and_full_reads_them_all(pool: PgPool) {
    pipeline(&pool).await;
    lift_retry_limit(&pool).await;
    for target in [
        job(JOB_A),
        variant(JOB_A, VARIANT_A1),
        variant(JOB_A, VARIANT_A2),
        job(JOB_B),
    ] {
        append_n(&pool, target, 150).await;
    }
    let (first, _) = rows_read_by(&pool, Scope::New).await;
    assert!(first.is_clean(), "{:#?}", first.report);
    assert_eq!(first.report.events, 600);
    verify_past_the_log(&pool, retrylog::verify_state::rotation::DEFAULT_SLICE).await;
    sqlx::raw_sql("ANALYZE").execute(&pool).await.unwrap();
    // A verify also says whether the projector is stuck, which counts the events it has not
    // applied yet: as `serve` would, it has applied them. That and the new appends run on
    // connections that exit before the count, so what they read is never counted as the
    // verify's (the test's own pool may report its reads seconds later).
    const WRITER: &str = "retrylog appends before the count";
    let writer = own_pool(&pool, WRITER).await;
    retrylog::projector::catch_up(&mut writer.acquire().await.unwrap(), 10_000)
        .await
        .unwrap();
    append_n(&writer, variant(JOB_A, VARIANT_A1), 2).await;
    append_n(&writer, variant(JOB_B, VARIANT_B1), 1).await;
    close_and_wait(&pool, writer, WRITER).await;
    let (plain, read) = rows_read_by(&pool, Scope::New).await;
    assert!(plain.is_clean(), "{:#?}", plain.report);
    assert_eq!((plain.report.events, plain.report.streams), (3, 2));
    // The three new events, each read a few times (the walk, its event id, its outcome and
    // open retry, the event it follows, the projector's lag) and a probe of every partition
    // per lookup: tens of rows (about 60 when written), not the 603 of the log.
    assert!(
        read < 100,
        "a plain verify read {read} rows of a log of 603"
    );

    let (full, read) = rows_read_by(&pool, Scope::Full).await;
    assert!(full.is_clean(), "{:#?}", full.report);
    assert_eq!(full.report.events, 603);
    assert!(
        read >= 603,
        "a full verify read {read} rows of a log of 603"
    );
}

#[sqlx::test(migrations = false)]
async fn a_head_row_that_is_not_the_verified_chains_head_is_caught_by_a_plain_verify(pool: PgPool) {
    pipeline(&pool).await;
    let target = variant(JOB_A, VARIANT_A1);
    append_n(&pool, target, 3).await;
    append_n(&pool, job(JOB_B), 1).await;
    assert_eq!(retrylog(&pool, &["verify"]).await.code, Some(0));

    // The head row and the count moved back together, as a hand that hides the last retry
    // would: the counts agree with the head row, the verified chain does not.
    behind_the_guard(
        &pool,
        &format!(
            "UPDATE retry_stream_head SET attempt = 2,
                    last_seq = (SELECT seq FROM retry_history
                                 WHERE job_variants_id = '{VARIANT_A1}' AND attempt = 2)
              WHERE job_id = '{JOB_A}' AND job_variants_id = '{VARIANT_A1}';
             UPDATE jobs_variants SET retry_count = 2 WHERE job_variants_id = '{VARIANT_A1}'"
        ),
    )
    .await;
    let (code, found, _) = verify_json(&pool, &[]).await;
    assert_eq!(code, Some(1), "{found:#?}");
    assert_eq!(found["events"], 0, "{found:#?}");
    let mismatches = found["mismatches"].as_array().unwrap();
    let head: Vec<&Value> = mismatches
        .iter()
        .filter(|m| m["problem"] == "stream_head")
        .collect();
    assert_eq!(head.len(), 1, "{found:#?}");
    let message = head[0]["message"].as_str().unwrap();
    assert!(
        message.contains("retry_stream_head holds attempt 2")
            && message.contains("the verified hash chain ends at attempt 3"),
        "{message}"
    );
    // The open retry is the head row's flag (retry_open is a view of it), so where the open
    // retries are checked the moved head row shows there too; nothing else is reported.
    for other in mismatches.iter().filter(|m| m["problem"] != "stream_head") {
        assert_eq!(other["problem"], "outcome", "{found:#?}");
        assert!(
            other["message"]
                .as_str()
                .unwrap()
                .contains("retry_open holds seq 2, the log and the outcomes say seq 3"),
            "{found:#?}"
        );
    }
}

#[sqlx::test(migrations = false)]
async fn a_new_events_missing_outcome_and_open_retry_are_caught_by_a_plain_verify(pool: PgPool) {
    pipeline(&pool).await;
    let target = variant(JOB_A, VARIANT_A1);
    append_n(&pool, target, 1).await;
    assert_eq!(retrylog(&pool, &["verify"]).await.code, Some(0));
    let new = append_n(&pool, target, 1).await;
    // The outcome the append recorded for attempt 1 and the open retry of attempt 2 (the
    // head row's flag: retry_open is a view of it), gone.
    behind_the_guard(
        &pool,
        &format!(
            "DELETE FROM retry_outcome WHERE seq = (SELECT seq FROM retry_history
                                                   WHERE job_variants_id = '{VARIANT_A1}'
                                                     AND attempt = 1);
             UPDATE retry_stream_head SET last_open = false WHERE last_seq = {}",
            new[0].seq
        ),
    )
    .await;
    let (code, found, _) = verify_json(&pool, &[]).await;
    assert_eq!(code, Some(1), "{found:#?}");
    let messages: Vec<&str> = found["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message"].as_str().unwrap())
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("was followed by attempt 2") && m.contains("has no outcome")),
        "{messages:#?}"
    );
    assert!(
        messages.iter().any(|m| m.contains(&format!(
            "retry_open holds none, the log and the outcomes say seq {}",
            new[0].seq
        ))),
        "{messages:#?}"
    );
}

/// The problems of a verify's JSON, with the targets they name.
fn problems(found: &Value) -> Vec<(String, String)> {
    found["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["problem"].as_str().unwrap().to_string(),
                m["target"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[sqlx::test(migrations = false)]
async fn a_count_changed_on_an_untouched_target_is_caught_within_one_round_and_at_once_by_full(
    pool: PgPool,
) {
    pipeline(&pool).await;
    // Four head rows, in key order: (A, job), (A, A1), (A, A2), (B, job); A3 and B1 have none.
    for target in [
        job(JOB_A),
        variant(JOB_A, VARIANT_A1),
        variant(JOB_A, VARIANT_A2),
        job(JOB_B),
    ] {
        append_n(&pool, target, 1).await;
    }
    // A round of two slices of two: the first from the lowest key to (A, A1), the second
    // from there to the end, where the cursor wraps.
    let (code, first, _) = verify_json(&pool, &["--slice", "2"]).await;
    assert_eq!(code, Some(0), "{first:#?}");
    let rotation = &first["rotation"];
    assert_eq!(rotation["after"], Value::Null, "{first:#?}");
    assert_eq!(rotation["through"]["job_id"], JOB_A.to_string());
    assert_eq!(rotation["through"]["stream"], VARIANT_A1.to_string());
    assert_eq!(
        (rotation["streams"].as_i64(), rotation["wraps"].as_bool()),
        (Some(2), Some(false))
    );
    let (code, second, _) = verify_json(&pool, &["--slice", "2"]).await;
    assert_eq!(code, Some(0), "{second:#?}");
    let rotation = &second["rotation"];
    assert_eq!(rotation["after"]["stream"], VARIANT_A1.to_string());
    assert_eq!(
        (rotation["streams"].as_i64(), rotation["wraps"].as_bool()),
        (Some(2), Some(true))
    );
    assert_eq!(rotation["rounds_before"], 0);
    assert_eq!(state(&pool).await.rotation_rounds, 1);
    assert_eq!(state(&pool).await.rotation_cursor(), None);

    // Counts changed by hand on targets no new event touches, both in the second slice: B's
    // (a head row) and B1's (none).
    sqlx::query("UPDATE jobs SET retry_count = 7 WHERE job_id = $1")
        .bind(JOB_B)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE jobs_variants SET retry_count = 3 WHERE job_variants_id = $1")
        .bind(VARIANT_B1)
        .execute(&pool)
        .await
        .unwrap();

    // The wrapped cursor starts the next round at the lowest key: that slice misses them…
    let (code, third, _) = verify_json(&pool, &["--slice", "2"]).await;
    assert_eq!(code, Some(0), "{third:#?}");
    assert_eq!(third["rotation"]["after"], Value::Null, "{third:#?}");
    assert_eq!(third["rotation"]["rounds_before"], 1);
    // …the next, within the round, catches both; and, the cursor kept, so does the one after.
    for _ in 0..2 {
        let (code, found, _) = verify_json(&pool, &["--slice", "2"]).await;
        assert_eq!(code, Some(1), "{found:#?}");
        assert_eq!(
            problems(&found),
            [
                ("count".to_string(), job(JOB_B).to_string()),
                ("count".to_string(), variant(JOB_B, VARIANT_B1).to_string())
            ],
            "{found:#?}"
        );
        assert_eq!(found["rotation"]["after"]["stream"], VARIANT_A1.to_string());
    }

    // --full checks every target at once, whatever the cursor.
    let (code, full, _) = verify_json(&pool, &["--full"]).await;
    assert_eq!(code, Some(1), "{full:#?}");
    assert_eq!(full["rotation"], Value::Null, "{full:#?}");
    let counts: Vec<_> = problems(&full)
        .into_iter()
        .filter(|(problem, _)| problem == "count")
        .collect();
    assert_eq!(counts.len(), 2, "{full:#?}");
}

#[sqlx::test(migrations = false)]
async fn a_count_changed_on_a_target_a_new_event_touches_is_caught_whatever_the_slice(
    pool: PgPool,
) {
    pipeline(&pool).await;
    for target in [job(JOB_A), variant(JOB_A, VARIANT_A1), job(JOB_B)] {
        append_n(&pool, target, 1).await;
    }
    assert_eq!(
        retrylog(&pool, &["verify", "--slice", "1"]).await.code,
        Some(0)
    );
    // B lies beyond the next slice of one; a new event of B's puts it in this run anyway.
    sqlx::query("UPDATE jobs SET retry_count = 0 WHERE job_id = $1")
        .bind(JOB_B)
        .execute(&pool)
        .await
        .unwrap();
    append_n(&pool, job(JOB_B), 1).await;
    let (code, found, _) = verify_json(&pool, &["--slice", "1"]).await;
    assert_eq!(code, Some(1), "{found:#?}");
    assert_eq!(found["rotation"]["streams"], 1, "{found:#?}");
    assert_eq!(
        problems(&found),
        [("count".to_string(), job(JOB_B).to_string())],
        "{found:#?}"
    );
}

/// Rows read so far of the tables holding a row per target or stream (the counts, the head
/// rows, the verified heads, the opening balances, the archive bases).
async fn target_rows_read(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum(coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)), 0)::bigint
           FROM pg_stat_user_tables
          WHERE relname IN ('jobs', 'jobs_variants', 'retry_stream_head', 'verify_stream_head',
                            'retry_opening_balance', 'retry_stream_base')",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A verify of `scope` with a slice of `slice` on connections of its own, and the rows of the
/// per-target tables it read (as [`rows_read_by`] counts the log's).
async fn target_rows_read_by(pool: &PgPool, scope: Scope, slice: i64) -> (verify_state::Run, i64) {
    const NAME: &str = "retrylog verify under target count";
    let before = target_rows_read(pool).await;
    let own = own_pool(pool, NAME).await;
    let run = verify_state::run_sliced(&own, scope, slice, |_| {})
        .await
        .unwrap();
    close_and_wait(pool, own, NAME).await;
    (run, target_rows_read(pool).await - before)
}

#[sqlx::test(migrations = false)]
async fn a_plain_verify_reads_the_rows_of_its_slice_not_of_every_target(pool: PgPool) {
    pipeline(&pool).await;
    // 200 more jobs with one retry each: 200 head rows, verified heads and counts.
    sqlx::query(
        "INSERT INTO jobs (job_id)
         SELECT ('1f000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid
           FROM generate_series(1, 200) n",
    )
    .execute(&pool)
    .await
    .unwrap();
    // On connections that exit before anything is counted (see rows_read_by).
    const WRITER: &str = "retrylog appends before the target count";
    let writer = own_pool(&pool, WRITER).await;
    for n in 1..=200u32 {
        let id = uuid::Uuid::parse_str(&format!("1f000000-0000-4000-8000-{n:012}")).unwrap();
        append_n(&writer, job(id), 1).await;
    }
    close_and_wait(&pool, writer, WRITER).await;
    let (first, _) = target_rows_read_by(&pool, Scope::New, 5).await;
    assert!(first.is_clean(), "{:#?}", first.report);
    verify_past_the_log(&pool, 5).await;
    sqlx::raw_sql("ANALYZE").execute(&pool).await.unwrap();

    // No new event: the slice of 5 and little else, whatever
    // the 200 targets; a plain run reads by index only, so the tables' size does not decide.
    let (plain, read) = target_rows_read_by(&pool, Scope::New, 5).await;
    assert!(plain.is_clean(), "{:#?}", plain.report);
    let slice = plain.rotation.expect("a plain run has a slice");
    assert_eq!(slice.streams, 5, "{slice:?}");
    assert!(slice.runs_per_round() >= 40, "{slice:?}");
    // The slice's keys, then per key its head row, verified head, count and opening balance,
    // and the walk's lookups: about ten rows per stream of the slice (about 50 when written).
    assert!(
        read < 100,
        "a plain verify with a slice of 5 read {read} rows of the per-target tables (200 targets)"
    );

    let (full, read) = target_rows_read_by(&pool, Scope::Full, 5).await;
    assert!(full.is_clean(), "{:#?}", full.report);
    assert!(full.rotation.is_none());
    assert!(
        read >= 200,
        "a full verify read {read} rows of the per-target tables (200 targets)"
    );
}
