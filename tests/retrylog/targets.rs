//! The targets list (`retrylog targets`, `GET /api/v1/targets`): every filter against rows
//! computed by hand, both orders paged forward and back, cursors that stay stable while other
//! tasks append, and the refusals of a malformed cursor or limit.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use retrylog::event::{NewRetry, RetryReason, Target};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::fixtures::*;
use crate::reports::at;

/// The pipeline fixture with this log (every time on 2026-11-01, UTC):
///
/// | target | retries | last retry: time, reason, step, actor, scenario, detail | state |
/// |---|---|---|---|
/// | job A (running)      | 1 | 01:00 stuck, segment, cli:alice, error "OOM killed"    | retrying |
/// | A1 (done, lagging)   | 2 | 02:00 stuck, generate, watchdog-1, lagging (first at prepare) | retrying, stuck |
/// | A2 (failed)          | 3 | 03:00 failed, segment, watchdog-1, failed; then noted at the limit | gave_up, needs_intervention |
/// | job B (running)      | 1 | 04:00 manual_recovery, generate, cli:bob, note "rerun after fix" | recovered |
/// | B1 (running)         | 1 | 05:00 stuck, generate, watchdog-2, message "Timeout 50%_done" | retrying |
///
/// A3 was never retried: it is not a target of the list.
pub async fn targets_log(pool: &PgPool) {
    pipeline(pool).await;
    let a1 = variant(JOB_A, VARIANT_A1);
    let a2 = variant(JOB_A, VARIANT_A2);
    let entry = |target: Target, reason, time: &str, step: &str, actor: &str, detail: Value| {
        NewRetry::new(target, reason, actor)
            .with_step(step)
            .with_detail(detail)
            .with_occurred_at(at(&format!("2026-11-01T{time}:00Z")))
    };
    let log = [
        entry(
            job(JOB_A),
            RetryReason::Stuck,
            "01:00",
            "segment",
            "cli:alice",
            json!({"error": "OOM killed"}),
        ),
        entry(
            a1,
            RetryReason::Stuck,
            "01:30",
            "prepare",
            "watchdog-1",
            json!({"scenario": "lagging"}),
        ),
        entry(
            a1,
            RetryReason::Stuck,
            "02:00",
            "generate",
            "watchdog-1",
            json!({"scenario": "lagging"}),
        ),
        entry(
            a2,
            RetryReason::Failed,
            "02:20",
            "segment",
            "watchdog-1",
            json!({"scenario": "failed"}),
        ),
        entry(
            a2,
            RetryReason::Failed,
            "02:40",
            "segment",
            "watchdog-1",
            json!({"scenario": "failed"}),
        ),
        entry(
            a2,
            RetryReason::Failed,
            "03:00",
            "segment",
            "watchdog-1",
            json!({"scenario": "failed"}),
        ),
        entry(
            job(JOB_B),
            RetryReason::ManualRecovery,
            "04:00",
            "generate",
            "cli:bob",
            json!({"note": "rerun after fix"}),
        ),
        entry(
            variant(JOB_B, VARIANT_B1),
            RetryReason::Stuck,
            "05:00",
            "generate",
            "watchdog-2",
            json!({"message": "Timeout 50%_done"}),
        ),
    ];
    let mut seqs = Vec::new();
    for retry in &log {
        seqs.push(append_ok(pool, retry).await.seq);
    }
    // A2 at the limit: the watchdog's note, which decides its open retry gave_up.
    note_a2_at_the_limit(pool).await;
    // Job B recovered, as the watchdog's observation records it.
    sqlx::query(
        "WITH decided AS (DELETE FROM retry_open WHERE seq = $1 RETURNING seq, occurred_at)
         INSERT INTO retry_outcome (seq, outcome, resolved_at, observed_by, evidence)
         SELECT seq, 'recovered', occurred_at, 'test', '{}' FROM decided",
    )
    .bind(seqs[6])
    .execute(pool)
    .await
    .unwrap();
    // A1 has sat still at its lagging step for an hour: the lagging scenario's candidate.
    sqlx::query("UPDATE jobs_variants SET updated_at = now() - interval '1 hour'")
        .execute(pool)
        .await
        .unwrap();
}

/// The ids of a page's rows, in order.
fn ids(page: &Value) -> Vec<Uuid> {
    page["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("a page with rows: {page}"))
        .iter()
        .map(|row| row["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// Each filter, as query parameters, and the rows it must give, in order.
fn cases() -> Vec<(&'static str, Vec<Uuid>)> {
    let (a, a1, a2, b, b1) = (JOB_A, VARIANT_A1, VARIANT_A2, JOB_B, VARIANT_B1);
    vec![
        ("", vec![b1, b, a2, a1, a]),
        ("state=failed", vec![a2]),
        ("state=running", vec![b1, b, a]),
        ("state=stuck", vec![a1]),
        ("state=stuck&stuck_after=2h", vec![]),
        ("state=retrying", vec![b1, a1, a]),
        ("state=needs_intervention", vec![a2]),
        ("state=recovered", vec![b]),
        ("state=gave_up", vec![a2]),
        ("kind=job", vec![b, a]),
        ("kind=variant", vec![b1, a2, a1]),
        ("step=generate", vec![b1, b, a1]),
        // A1's first retry was at prepare; only the last retry counts.
        ("step=prepare", vec![]),
        ("reason=failed", vec![a2]),
        ("reason=manual_recovery", vec![b]),
        ("scenario=lagging", vec![a1]),
        ("actor=watchdog-1", vec![a2, a1]),
        ("since=2026-11-01T02:30:00Z", vec![b1, b, a2]),
        ("until=2026-11-01T02:00:00Z", vec![a1, a]),
        (
            "since=2026-11-01T02:00:00Z&until=2026-11-01T04:00:00Z",
            vec![b, a2, a1],
        ),
        ("min_retries=2", vec![a2, a1]),
        ("q=oom", vec![a]),
        ("q=RERUN", vec![b]),
        // % and _ are the user's text, not a pattern.
        ("q=50%25_", vec![b1]),
        ("q=50%25x", vec![]),
        ("kind=variant&state=retrying&actor=watchdog-1", vec![a1]),
        ("sort=retry_count", vec![a2, a1, b1, b, a]),
        ("sort=retry_count&kind=job", vec![b, a]),
        (
            "sort=retry_count&state=running&min_retries=1",
            vec![b1, b, a],
        ),
    ]
}

#[sqlx::test(migrations = false)]
async fn every_filter_of_the_api_gives_the_rows_computed_by_hand(pool: PgPool) {
    targets_log(&pool).await;
    let router = router(&pool, true);
    for (query, expected) in cases() {
        let answer = targets_as_reader(&router, query).await;
        assert_eq!(answer.status, 200, "{query}: {}", answer.json);
        assert_eq!(ids(&answer.json), expected, "{query}");
        assert_eq!(answer.json["count"], json!(expected.len()), "{query}");
        assert_eq!(answer.json["count_exact"], json!(true), "{query}");
    }
    // A row in full: every id whole, the last retry's reason, outcome and time.
    let answer = targets_as_reader(&router, "state=gave_up").await;
    assert_eq!(
        answer.json["rows"][0],
        json!({
            "kind": "variant", "id": VARIANT_A2.to_string(), "job_id": JOB_A.to_string(),
            "status": "failed", "step": "segment", "retry_count": 3, "last_reason": "failed",
            "last_outcome": "gave_up", "last_retry_at": "2026-11-01T03:00:00.000000Z",
            "why": "failed at step segment",
        })
    );
}

#[sqlx::test(migrations = false)]
async fn every_filter_of_the_command_gives_the_same_rows_as_the_api(pool: PgPool) {
    targets_log(&pool).await;
    for (query, expected) in cases() {
        let mut args = vec!["targets".to_string(), "--format".into(), "json".into()];
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap();
            args.push(format!(
                "--{}={}",
                name.replace('_', "-"),
                value.replace("%25", "%")
            ));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = retrylog(&pool, &args).await;
        assert_eq!(run.code, Some(0), "{query}: {run:#?}");
        assert_eq!(ids(&run.json()), expected, "{query}");
    }
    // The table says how many match and how to go on, on stderr.
    let run = retrylog(&pool, &["targets", "--limit", "2"]).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(run.stdout.contains(&VARIANT_B1.to_string()), "{run:#?}");
    assert!(
        run.stderr.contains("5 matching; next page: --after "),
        "{run:#?}"
    );
    let run = retrylog(&pool, &["targets", "--format", "csv", "--state", "failed"]).await;
    assert_eq!(
        run.stdout.lines().next(),
        Some("kind,id,job_id,status,step,retry_count,last_reason,last_outcome,last_retry_at,why")
    );
    assert_eq!(run.stdout.lines().count(), 2, "{run:#?}");
}

/// `GET /api/v1/targets?{query}` as the reader.
async fn targets_as_reader(router: &axum::Router, query: &str) -> Answer {
    call(
        router,
        &format!("/api/v1/targets?{query}"),
        Some(READER),
        None,
        &[],
    )
    .await
}

/// Pages `query` forward with `limit`, then back from the last page with the `previous`
/// cursors: the ids in order both ways.
async fn page_through(router: &axum::Router, query: &str, limit: usize) -> (Vec<Uuid>, Vec<Uuid>) {
    let fetch = |cursor: String| {
        let uri = format!("/api/v1/targets?{query}&limit={limit}{cursor}");
        async move {
            let answer = call(router, &uri, Some(READER), None, &[]).await;
            assert_eq!(answer.status, 200, "{uri}: {}", answer.json);
            answer.json
        }
    };
    let mut forward = Vec::new();
    let mut page = fetch(String::new()).await;
    assert_eq!(
        page["previous"],
        Value::Null,
        "the first page has no previous"
    );
    loop {
        let rows = ids(&page);
        assert!(rows.len() <= limit);
        forward.extend(rows);
        match page["next"].as_str() {
            Some(next) => page = fetch(format!("&after={next}")).await,
            None => break,
        }
    }
    let mut backward = ids(&page);
    while let Some(previous) = page["previous"].as_str() {
        page = fetch(format!("&before={previous}")).await;
        let mut rows = ids(&page);
        assert_eq!(rows.len(), limit, "a previous page is full");
        rows.extend(backward);
        backward = rows;
    }
    (forward, backward)
}

#[sqlx::test(migrations = false)]
async fn both_orders_page_forward_and_back_to_the_same_rows(pool: PgPool) {
    targets_log(&pool).await;
    let router = router(&pool, true);
    for (query, expected) in cases() {
        for limit in [1, 2, 3] {
            let (forward, backward) = page_through(&router, query, limit).await;
            assert_eq!(forward, expected, "{query} forward by {limit}");
            if !expected.is_empty() {
                assert_eq!(backward, expected, "{query} back by {limit}");
            }
        }
    }
}

#[sqlx::test(migrations = false)]
async fn a_malformed_cursor_or_limit_is_refused_naming_the_parameter(pool: PgPool) {
    targets_log(&pool).await;
    let router = router(&pool, true);
    let first = call(&router, "/api/v1/targets?limit=1", Some(READER), None, &[]).await;
    let next = first.json["next"].as_str().unwrap().to_string();
    for (query, named) in [
        ("after=not-a-cursor", "'after'"),
        ("after=eyJ4IjoxfQ", "'after'"),
        ("before=%7B%7D", "'before'"),
        (&format!("sort=retry_count&after={next}") as &str, "after"),
        ("limit=0", "'limit'"),
        ("limit=501", "'limit'"),
        ("limit=ten", "'limit'"),
        ("min_retries=0", "'min_retries'"),
        ("state=asleep", "'state'"),
        ("since=soon", "since"),
        (&format!("after={next}&before={next}"), "before"),
    ] {
        let answer = targets_as_reader(&router, query).await;
        assert_eq!(answer.status, 400, "{query}: {}", answer.json);
        let error = answer.json["error"].as_str().unwrap();
        // API errors name query parameters, never the CLI's flags.
        assert!(
            error.contains(named) && !error.contains("--"),
            "{query}: {error}"
        );
    }
    let run = retrylog(&pool, &["targets", "--after", "garbage"]).await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(run.only_problem_line().contains("--after"), "{run:#?}");
    let run = retrylog(
        &pool,
        &["targets", "--sort", "retry_count", "--after", &next],
    )
    .await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(run.only_problem_line().contains("--after"), "{run:#?}");
}

/// `n` jobs, each with one variant, each retried once at its own minute of 2026-11-02.
async fn crowd(pool: &PgPool, n: usize) -> Vec<(Uuid, Uuid)> {
    migrated(pool).await;
    lift_retry_limit(pool).await;
    let mut targets = Vec::new();
    for i in 0..n {
        let (job_id, variant_id) = (Uuid::new_v4(), Uuid::new_v4());
        sqlx::query(
            "INSERT INTO jobs (job_id, status, current_step) VALUES ($1, 'running', 'generate');
             ",
        )
        .bind(job_id)
        .execute(pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO jobs_variants (job_variants_id, job_id, status, current_step)
             VALUES ($1, $2, 'running', 'generate')",
        )
        .bind(variant_id)
        .bind(job_id)
        .execute(pool)
        .await
        .unwrap();
        let when = at("2026-11-02T00:00:00Z") + chrono::Duration::minutes(i as i64);
        append_ok(
            pool,
            &retry(variant(job_id, variant_id)).with_occurred_at(when),
        )
        .await;
        append_ok(pool, &retry(job(job_id)).with_occurred_at(when)).await;
        targets.push((job_id, variant_id));
    }
    targets
}

#[sqlx::test(migrations = false)]
async fn cursors_list_no_row_twice_and_skip_none_while_other_tasks_append(pool: PgPool) {
    let targets = crowd(&pool, 40).await;
    let router = router(&pool, true);
    for sort in ["last_retry", "retry_count"] {
        // Writers, each a task of its own, retrying old targets and creating new ones while
        // the pages are read.
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..3usize {
            let (pool, stop, targets) = (pool.clone(), stop.clone(), targets.clone());
            writers.push(tokio::spawn(async move {
                let mut retried = HashSet::new();
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    // Every third writer's turn retries an old target (every 7th one of them);
                    // the others retry a new job.
                    let (job_id, variant_id) = targets[(w * 7 + n * 21) % targets.len()];
                    if n.is_multiple_of(3) {
                        append_ok(&pool, &retry(variant(job_id, variant_id))).await;
                        retried.insert(variant_id);
                    } else {
                        let new_job = Uuid::new_v4();
                        sqlx::query("INSERT INTO jobs (job_id, status) VALUES ($1, 'running')")
                            .bind(new_job)
                            .execute(&pool)
                            .await
                            .unwrap();
                        append_ok(&pool, &retry(job(new_job))).await;
                    }
                    n += 1;
                    tokio::task::yield_now().await;
                }
                retried
            }));
        }
        let mut seen: HashMap<Uuid, usize> = HashMap::new();
        let mut cursor = String::new();
        let mut pages = 0;
        loop {
            let uri = format!("/api/v1/targets?sort={sort}&limit=7{cursor}");
            let page = call(&router, &uri, Some(READER), None, &[]).await;
            assert_eq!(page.status, 200, "{uri}: {}", page.json);
            for id in ids(&page.json) {
                *seen.entry(id).or_default() += 1;
            }
            pages += 1;
            // Let the writers append between two fetches.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            match page.json["next"].as_str() {
                Some(next) => cursor = format!("&after={next}"),
                None => break,
            }
        }
        stop.store(true, Ordering::Relaxed);
        let mut retried = HashSet::new();
        for writer in writers {
            retried.extend(writer.await.unwrap());
        }
        assert!(pages > 5, "{sort}: the listing took several pages");
        assert!(
            !retried.is_empty(),
            "{sort}: the writers retried old targets meanwhile"
        );
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "{sort}: listed twice: {twice:?}");
        // Every old target whose sort key did not move while paging is listed.
        for (job_id, variant_id) in &targets {
            assert!(seen.contains_key(job_id), "{sort}: job {job_id} skipped");
            if !retried.contains(variant_id) {
                assert!(
                    seen.contains_key(variant_id),
                    "{sort}: variant {variant_id} skipped"
                );
            }
        }
    }
}

/// 1,210 variants of one more job, each retried once or twice through the batch door (every
/// retry at its own minute, the second ones interleaved with the first), 1,100 of them failed,
/// every other one last retried at `prepare`, the OOM text on one in ten, every one at its
/// count noted at the limit when it is a multiple of 5 (ids by their number).
async fn crowded_log(pool: &PgPool) {
    migrated(pool).await;
    sqlx::raw_sql(
        "INSERT INTO jobs (job_id, status, current_step) VALUES
             ('0c000000-0000-4000-8000-000000000000', 'running', 'generate');
         INSERT INTO jobs_variants (job_variants_id, job_id, status, current_step)
         SELECT ('0c000000-0000-4000-8000-' || lpad(to_hex(n), 12, '0'))::uuid,
                '0c000000-0000-4000-8000-000000000000',
                CASE WHEN n % 11 = 0 THEN 'done' ELSE 'failed' END, 'generate'
           FROM generate_series(1, 1210) n;
         DO $$
         DECLARE
             batch jsonb;
         BEGIN
             FOR batch IN
                 SELECT jsonb_agg(jsonb_build_object(
                            'job_id', '0c000000-0000-4000-8000-000000000000',
                            'job_variants_id',
                            '0c000000-0000-4000-8000-' || lpad(to_hex(n), 12, '0'),
                            'reason', 'failed', 'actor', 'test', 'max_retries', 10,
                            'step', CASE WHEN round = 2 OR n % 2 = 0 THEN 'prepare'
                                         ELSE 'generate' END,
                            'detail', CASE WHEN n % 10 = 0
                                           THEN '{\"error\": \"OOM killed\"}'::jsonb
                                           ELSE '{}'::jsonb END,
                            'occurred_at',
                            to_char(timestamptz '2026-11-01 00:00Z'
                                    + make_interval(mins => (n * 7919 + round * 3) % 5000),
                                    'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'))
                        ORDER BY round, n)
                   FROM generate_series(1, 1210) n CROSS JOIN generate_series(1, 2) round
                  WHERE round = 1 OR n % 3 = 0
                  GROUP BY (round * 10000 + n) / 500
                  ORDER BY 1
             LOOP
                 PERFORM record_retries(batch);
             END LOOP;
         END
         $$;
         INSERT INTO retry_intervention (job_id, job_variants_id, retry_count, max_retries,
                                         scenario, reason, step, status, actor, detail)
         SELECT job_id, job_variants_id, retry_count, 3, 'failed', 'failed', current_step,
                status, 'test', '{}'
           FROM jobs_variants
          WHERE job_id = '0c000000-0000-4000-8000-000000000000'
            AND ('x' || right(job_variants_id::text, 8))::bit(32)::int % 5 = 0;",
    )
    .execute(pool)
    .await
    .unwrap();
}

/// The ids `condition` keeps, in `order`, computed from the log itself: each stream's last
/// event by attempt (the way the list was first written), never through the head rows.
async fn by_hand(pool: &PgPool, condition: &str, order: &str) -> Vec<Uuid> {
    sqlx::query_scalar(&format!(
        "WITH last AS (
             SELECT DISTINCT ON (job_id, job_variants_id) *
               FROM retry_history ORDER BY job_id, job_variants_id, attempt DESC)
         SELECT v.job_variants_id
           FROM last h JOIN jobs_variants v ON v.job_variants_id = h.job_variants_id
           LEFT JOIN retry_outcome o ON o.seq = h.seq
          WHERE {condition}
          ORDER BY {order}"
    ))
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn past_the_count_bound_every_filter_pages_the_rows_computed_from_the_log(pool: PgPool) {
    crowded_log(&pool).await;
    // Two connections idle in the pool from the start: a page whose rows do not depend on
    // its count reads the count on the second at the same time.
    let (first, second) = (pool.acquire().await.unwrap(), pool.acquire().await.unwrap());
    drop((first, second));
    let router = router(&pool, true);
    let last_retry = "h.occurred_at DESC, h.seq DESC";
    let retry_count = "v.retry_count DESC, v.job_variants_id DESC";
    // Each: more than the bound (each page then walks its order's index) or fewer (the page
    // sorts the set the count read), in both orders.
    let cases = [
        ("", "true"),
        ("state=failed", "v.status = 'failed'"),
        (
            "state=failed&step=prepare",
            "v.status = 'failed' AND h.step = 'prepare'",
        ),
        ("state=retrying", "o.seq IS NULL"),
        ("state=gave_up", "o.outcome = 'gave_up'"),
        (
            "state=needs_intervention",
            "EXISTS (SELECT 1 FROM retry_intervention i
                      WHERE i.job_variants_id = v.job_variants_id
                        AND i.retry_count = v.retry_count)",
        ),
        ("min_retries=2", "v.retry_count >= 2"),
        ("kind=variant&min_retries=1", "true"),
        // The failed scenario's candidates (the job runs at a managed step), read from the
        // census a statement's worth at a time; narrowed, the count reads them too.
        (
            "state=stuck",
            "v.status = 'failed'
             AND NOT EXISTS (SELECT 1 FROM retry_intervention i
                              WHERE i.job_variants_id = v.job_variants_id
                                AND i.retry_count = v.retry_count)",
        ),
        (
            "state=stuck&step=prepare",
            "v.status = 'failed' AND h.step = 'prepare'
             AND NOT EXISTS (SELECT 1 FROM retry_intervention i
                              WHERE i.job_variants_id = v.job_variants_id
                                AND i.retry_count = v.retry_count)",
        ),
        ("q=oom", "h.detail->>'error' ILIKE '%oom%'"),
        (
            "q=oom&state=failed&step=generate",
            "h.detail->>'error' ILIKE '%oom%' AND v.status = 'failed'
             AND h.step = 'generate'",
        ),
    ];
    let mut walked = 0;
    for (query, condition) in cases {
        for (sort, order) in [("last_retry", last_retry), ("retry_count", retry_count)] {
            let query = format!("{query}&sort={sort}");
            let expected = by_hand(&pool, condition, order).await;
            if query.starts_with("state=stuck") {
                // More than a page of 400, so each page reads several statements' worth.
                assert!(expected.len() > 400, "{query}: {}", expected.len());
            }
            let exact = expected.len() <= 1_000;
            walked += usize::from(!exact);
            let first = targets_as_reader(&router, &query).await;
            assert_eq!(first.json["count_exact"], json!(exact), "{query}");
            let count = expected.len().min(1_000);
            assert_eq!(first.json["count"], json!(count), "{query}");
            let (forward, backward) = page_through(&router, &query, 400).await;
            assert_eq!(forward, expected, "{query} forward");
            assert_eq!(backward, expected, "{query} back");
        }
    }
    // Both ways were read: past the bound (the index walk) and within it (the sorted set).
    assert!((6..=14).contains(&walked), "{walked} of 24 past the bound");
}

/// The served Targets page reads `state=stuck` from a census shared by its requests
/// (`retrylog::targets::census`): each row it shows is stuck now (a target that moved since
/// the census is checked, dropped and forgotten), a target stuck only after the census waits
/// for the next one, which a renewal in the background brings; `retrylog targets` detects
/// for itself. The page and the API say when the census was taken.
#[sqlx::test(migrations = false)]
async fn a_served_stuck_page_reads_a_census_and_shows_only_what_is_stuck_now(pool: PgPool) {
    use std::time::Duration;

    use retrylog::http::ApiContext;
    use retrylog::targets::StuckCensus;

    targets_log(&pool).await;
    let served = |census: StuckCensus| {
        retrylog::http::app(ApiContext {
            pool: pool.clone(),
            read: None,
            tokens: None,
            steps: retrylog::config::DEFAULT_STEPS.parse().unwrap(),
            base_path: String::new(),
            overview_cache: Default::default(),
            stuck_census: Arc::new(census),
        })
    };
    let stuck = async |router: &axum::Router| {
        let answer = call(router, "/api/v1/targets?state=stuck", None, None, &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.json);
        (
            ids(&answer.json),
            answer.json["count"].clone(),
            answer.json["stuck_as_of"].as_str().unwrap().to_string(),
        )
    };
    let idle_a1 = async |interval: &str| {
        sqlx::query(&format!(
            "UPDATE jobs_variants SET updated_at = now() - interval '{interval}'
              WHERE job_variants_id = $1"
        ))
        .bind(VARIANT_A1)
        .execute(&pool)
        .await
        .unwrap();
    };

    // A census kept for an hour, never renewed.
    let router = served(StuckCensus::with_ages(
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    ));
    let (rows, count, as_of) = stuck(&router).await;
    assert_eq!((rows, count), (vec![VARIANT_A1], json!(1)));
    // A1 moved: the census still names it; the page checks it, drops it and forgets it.
    idle_a1("0 seconds").await;
    let (rows, count, moved_as_of) = stuck(&router).await;
    assert_eq!((rows, count), (vec![], json!(0)));
    assert_eq!(moved_as_of, as_of, "the same census");
    // A1 idle again: stuck now, but the census has forgotten it and is not renewed.
    idle_a1("1 hour").await;
    let (rows, _, still_as_of) = stuck(&router).await;
    assert_eq!(rows, Vec::<Uuid>::new());
    assert_eq!(still_as_of, as_of);
    // The command detects for itself.
    let run = retrylog(&pool, &["targets", "--state", "stuck", "--format", "json"]).await;
    assert_eq!(ids(&run.json()), vec![VARIANT_A1], "{run:#?}");
    // The dashboard's page says when its census was taken.
    let request = axum::http::Request::builder()
        .uri("/targets?state=stuck")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(router.clone(), request)
        .await
        .unwrap();
    let html = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let html = String::from_utf8(html.to_vec()).unwrap();
    let shown_as_of = chrono::DateTime::parse_from_rfc3339(&as_of)
        .unwrap()
        .format("%Y-%m-%d %H:%M:%S UTC")
        .to_string();
    assert!(
        html.contains(&format!("stuck as detected at {shown_as_of}")),
        "{html}"
    );

    // A census renewed after every read: A1 moves and is dropped, then idles again, and a
    // renewal in the background finds it.
    let router = served(StuckCensus::with_ages(
        Duration::from_secs(3600),
        Duration::ZERO,
    ));
    let (rows, _, first_as_of) = stuck(&router).await;
    assert_eq!(rows, vec![VARIANT_A1]);
    idle_a1("0 seconds").await;
    assert_eq!(stuck(&router).await.0, Vec::<Uuid>::new());
    idle_a1("1 hour").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (rows, _, renewed_as_of) = stuck(&router).await;
        if rows == vec![VARIANT_A1] {
            assert!(
                renewed_as_of > first_as_of,
                "{renewed_as_of} after {first_as_of}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no renewal found A1 within 30 s (census of {renewed_as_of})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Another page than stuck has no census time.
    let answer = call(&router, "/api/v1/targets?state=failed", None, None, &[]).await;
    assert_eq!(answer.json.get("stuck_as_of"), None, "{}", answer.json);
}

/// The trigram index of `q` holds only the retries that have text to search (migration
/// 0025): a retry whose detail has no `error`, `message` or `note`, as the watchdog's have
/// not, writes nothing into it, and the search still finds by the index what it found before.
#[sqlx::test(migrations = false)]
async fn the_text_index_holds_only_the_retries_with_text(pool: PgPool) {
    targets_log(&pool).await;
    let indexed: bool =
        sqlx::query_scalar("SELECT to_regclass('retry_history_detail_text') IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(indexed, "pg_trgm is installed here, so the index is");
    // The entries waiting in the index's pending list, where every insert goes first (no
    // vacuum runs during the test to move them on).
    let pending = async || -> i64 {
        sqlx::query_scalar(
            "SELECT sum((pgstatginindex(relid)).pending_tuples)::int8
               FROM pg_partition_tree('retry_history_detail_text') WHERE isleaf",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pgstattuple")
        .execute(&pool)
        .await
        .unwrap();
    // Three of the fixture's six retries have text: job A's error, job B's note, B1's message.
    assert_eq!(pending().await, 3);
    let a3 = variant(JOB_A, VARIANT_A3);
    for detail in [
        json!({"scenario": "lagging", "idle_seconds": 900}),
        json!({}),
        json!({"errors": "not one of the three keys"}),
    ] {
        append_ok(&pool, &retry(a3).with_detail(detail)).await;
    }
    assert_eq!(
        pending().await,
        3,
        "retries without text are not in the index"
    );
    // (A3 is at the limit of 3 now.)
    append_ok(
        &pool,
        &retry(variant(JOB_B, VARIANT_B1)).with_detail(json!({"message": "disk quota exceeded"})),
    )
    .await;
    assert_eq!(pending().await, 4);
    // The search finds what has text.
    let router = router(&pool, true);
    for (query, expected) in [("q=quota", vec![VARIANT_B1]), ("q=oom", vec![JOB_A])] {
        let answer = targets_as_reader(&router, query).await;
        assert_eq!(ids(&answer.json), expected, "{query}: {}", answer.json);
    }
    // The search's condition (as `targets::push_text_match` writes it) lets the planner read
    // the partial index: the seq scan a table this small would get is turned off.
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SET enable_seqscan = off")
        .execute(&mut *conn)
        .await
        .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT seq FROM retry_history h
          WHERE h.detail ?| ARRAY['error', 'message', 'note']
            AND substr(coalesce(' ' || (h.detail->>'error'), '')
                       || coalesce(' ' || (h.detail->>'message'), '')
                       || coalesce(' ' || (h.detail->>'note'), ''), 2) ILIKE '%quota%'",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    assert!(
        plan.iter()
            .any(|line| line.contains("detail_text") || line.contains("substr_idx")),
        "the search's condition reads the partial index: {plan:#?}"
    );
}

/// `scenario` reads the head row's copy of its last retry's `detail.scenario` (migration
/// 0024): both doors write it, verify's head-row check names a wrong one and the rebuild puts
/// it back.
#[sqlx::test(migrations = false)]
async fn the_scenario_filter_reads_the_head_row_which_verify_holds_to_the_log(pool: PgPool) {
    targets_log(&pool).await;
    let router = router(&pool, true);
    let scenario = async |name: &str| {
        let answer = targets_as_reader(&router, &format!("scenario={name}")).await;
        assert_eq!(answer.status, 200, "{}", answer.json);
        ids(&answer.json)
    };
    let head_scenario = async |stream: Uuid| -> Option<String> {
        sqlx::query_scalar("SELECT last_scenario FROM retry_stream_head WHERE stream = $1")
            .bind(stream)
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    // record_retry wrote A1's; B1's last retry has none.
    assert_eq!(head_scenario(VARIANT_A1).await.as_deref(), Some("lagging"));
    assert_eq!(head_scenario(VARIANT_B1).await, None);
    assert_eq!(scenario("lagging").await, vec![VARIANT_A1]);
    // The batch door writes it too.
    sqlx::query("SELECT * FROM record_retries($1)")
        .bind(
            json!([{ "job_id": JOB_B, "job_variants_id": VARIANT_B1, "reason": "stuck",
                       "actor": "watchdog-2", "detail": { "scenario": "stale" } }]),
        )
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(head_scenario(VARIANT_B1).await.as_deref(), Some("stale"));
    assert_eq!(scenario("stale").await, vec![VARIANT_B1]);
    // A head row that says another scenario than its event is drift, and rebuilt from the log.
    sqlx::query("UPDATE retry_stream_head SET last_scenario = 'stale' WHERE stream = $1")
        .bind(VARIANT_A1)
        .execute(&pool)
        .await
        .unwrap();
    let drift: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT job_variants_id, problem FROM retry_stream_head_drift() ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(drift.len(), 1, "{drift:?}");
    assert_eq!(drift[0].0, VARIANT_A1);
    assert!(drift[0].1.contains("scenario"), "{drift:?}");
    let wrong: i64 = sqlx::query_scalar("SELECT retry_stream_head_rebuild()")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(wrong, 1);
    assert_eq!(head_scenario(VARIANT_A1).await.as_deref(), Some("lagging"));
    assert_eq!(scenario("lagging").await, vec![VARIANT_A1]);
}
