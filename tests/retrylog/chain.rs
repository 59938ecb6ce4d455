//! One chain check: `verify`, the dashboard's target page and `GET /api/v1/chain` give the
//! same verdict for clean, tampered, format-v1 and mixed streams, and the by-hand SQL recipe
//! of docs/architecture.md, run from the file, agrees with them.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use retrylog::event::Target;
use retrylog::replay::Mismatch;
use serde_json::Value;
use sqlx::PgPool;
use tower::ServiceExt;
use uuid::Uuid;

use crate::fixtures::*;
use crate::integrity::{behind_the_guard, seq_of};

/// The body of a GET without a token (the router is read-only), and its status.
async fn fetch(router: &Router, uri: &str) -> (StatusCode, String) {
    let request = Request::builder().uri(uri).body(Body::empty()).unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

/// The text of the element `id` of a target page (its first text node, up to the next tag).
fn element_text(html: &str, id: &str) -> String {
    let marker = format!("id=\"{id}\">");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no #{id} on the page:\n{html}"))
        + marker.len();
    html[start..][..html[start..].find('<').unwrap()].to_string()
}

/// The target page's chain card (`#chain`) and, for a job, its variants' (`#variant-chains`).
async fn page_verdicts(router: &Router, kind: &str, id: Uuid) -> (String, Option<String>) {
    let (status, html) = fetch(router, &format!("/targets/{kind}/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let variants = html
        .contains("id=\"variant-chains\"")
        .then(|| element_text(&html, "variant-chains"));
    (element_text(&html, "chain"), variants)
}

async fn api_chain(router: &Router, query: &str) -> (StatusCode, Value) {
    let (status, body) = fetch(router, &format!("/api/v1/chain?{query}")).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// `verify`'s chain problems about `target`, as JSON.
async fn verify_problems(pool: &PgPool, target: Target) -> Value {
    let problems: Vec<Mismatch> = verify(pool)
        .await
        .mismatches
        .into_iter()
        .filter(|m| matches!(m, Mismatch::BrokenLink { .. } | Mismatch::AttemptGap { .. }))
        .filter(|m| m.target() == Some(target))
        .collect();
    serde_json::to_value(problems).unwrap()
}

#[sqlx::test(migrations = false)]
async fn a_clean_log_is_intact_on_every_page_and_in_the_api_as_verify_says(pool: PgPool) {
    pipeline(&pool).await;
    lift_retry_limit(&pool).await;
    append_n(&pool, variant(JOB_A, VARIANT_A1), 3).await;
    append_n(&pool, variant(JOB_A, VARIANT_A2), 4).await;
    append_n(&pool, job(JOB_B), 2).await;
    assert_verify_clean(&pool).await;
    let app = router(&pool, false);

    assert_eq!(
        page_verdicts(&app, "variant", VARIANT_A1).await,
        ("intact (3 events)".to_string(), None)
    );
    // Job A has no events of its own, seven across its variants.
    assert_eq!(
        page_verdicts(&app, "job", JOB_A).await,
        (
            "no events of its own".to_string(),
            Some("2 variant chains intact (7 events)".to_string())
        )
    );
    assert_eq!(
        page_verdicts(&app, "job", JOB_B).await,
        (
            "intact (2 events)".to_string(),
            Some("no variant has events".to_string())
        )
    );

    let (status, chain) = api_chain(&app, &format!("job_id={JOB_A}")).await;
    assert_eq!(status, StatusCode::OK, "{chain}");
    assert_eq!(chain["intact"], true);
    assert_eq!(chain["events"], 0);
    assert_eq!(chain["variants"]["chains"], 2);
    assert_eq!(chain["variants"]["intact"], 2);
    assert_eq!(chain["variants"]["events"], 7);
    assert_eq!(chain["variants"]["broken"], serde_json::json!([]));
    let (_, chain) = api_chain(&app, &format!("variant_id={VARIANT_A2}")).await;
    assert_eq!(chain["verdict"], "intact (4 events)");
    assert_eq!(chain["variants"], Value::Null);
}

#[sqlx::test(migrations = false)]
async fn a_changed_event_is_broken_at_its_attempt_on_the_page_in_the_api_and_in_verify(
    pool: PgPool,
) {
    pipeline(&pool).await;
    append_n(&pool, variant(JOB_A, VARIANT_A1), 3).await;
    append_n(&pool, variant(JOB_A, VARIANT_A2), 2).await;
    append_n(&pool, variant(JOB_A, VARIANT_A3), 1).await;
    let seq = seq_of(&pool, variant(JOB_A, VARIANT_A1), 2).await;
    behind_the_guard(
        &pool,
        &format!("UPDATE retry_history SET actor = 'mallory' WHERE seq = {seq}"),
    )
    .await;
    let app = router(&pool, false);

    let (own, variants) = page_verdicts(&app, "variant", VARIANT_A1).await;
    assert!(
        own.starts_with(&format!(
            "broken at attempt 2 (event seq {seq}: stored hash "
        )),
        "{own}"
    );
    assert_eq!(variants, None);
    let (own, variants) = page_verdicts(&app, "job", JOB_A).await;
    assert_eq!(own, "no events of its own");
    assert_eq!(
        variants.as_deref(),
        Some("2 variant chains intact, 1 broken")
    );
    let (_, html) = fetch(&app, &format!("/targets/job/{JOB_A}")).await;
    assert!(
        html.contains(&format!("/targets/variant/{VARIANT_A1}\"")),
        "the job page links the broken variant"
    );
    // The other variants' pages are untouched by A1's break.
    assert_eq!(
        page_verdicts(&app, "variant", VARIANT_A2).await.0,
        "intact (2 events)"
    );

    // The API's problems are verify's mismatches for the stream, to the byte.
    let target = variant(JOB_A, VARIANT_A1);
    let expected = verify_problems(&pool, target).await;
    assert_eq!(expected.as_array().unwrap().len(), 1, "{expected}");
    let (_, chain) = api_chain(&app, &format!("variant_id={VARIANT_A1}")).await;
    assert_eq!(chain["intact"], false);
    assert_eq!(chain["broken_at_attempt"], 2);
    assert_eq!(chain["problems"], expected);
    assert_eq!(chain["verdict"], own_verdict(&app, VARIANT_A1).await);
    let (_, chain) = api_chain(&app, &format!("job_id={JOB_A}")).await;
    assert_eq!(chain["variants"]["intact"], 2);
    assert_eq!(chain["variants"]["broken"][0]["problems"], expected);
}

async fn own_verdict(app: &Router, variant: Uuid) -> String {
    page_verdicts(app, "variant", variant).await.0
}

#[sqlx::test(migrations = false)]
async fn a_missing_attempt_is_named_on_the_page_as_verify_names_it(pool: PgPool) {
    pipeline(&pool).await;
    lift_retry_limit(&pool).await;
    append_n(&pool, variant(JOB_A, VARIANT_A1), 4).await;
    let seq = seq_of(&pool, variant(JOB_A, VARIANT_A1), 3).await;
    behind_the_guard(
        &pool,
        &format!("DELETE FROM retry_history WHERE seq = {seq}"),
    )
    .await;
    let app = router(&pool, false);

    // Attempt 4 chained from attempt 3's hash: the gap and the link after it both show, the
    // verdict names the first.
    assert_eq!(
        own_verdict(&app, VARIANT_A1).await,
        "broken at attempt 3 (attempt 3 is missing: the next stored attempt is 4)"
    );
    let (_, chain) = api_chain(&app, &format!("variant_id={VARIANT_A1}")).await;
    assert_eq!(
        chain["problems"],
        verify_problems(&pool, variant(JOB_A, VARIANT_A1)).await
    );
    assert_eq!(chain["problems"].as_array().unwrap().len(), 2);
}

/// Rewrites `variant`'s stream as a log from before migration 0006 would hold it: attempts up
/// to `v1_through` hashed in format v1 without a `db_role`, the rest re-chained in v2; then
/// its head row as migration 0016 builds it from such a log.
async fn rechain_as_format_v1(pool: &PgPool, variant: Uuid, v1_through: i32, events: i32) {
    let genesis = "decode(repeat('00', 32), 'hex')";
    for attempt in 1..=events {
        let previous = if attempt == 1 {
            genesis.to_string()
        } else {
            format!(
                "(SELECT hash FROM retry_history
                   WHERE job_variants_id = '{variant}' AND attempt = {})",
                attempt - 1
            )
        };
        let (db_role, canonical) = if attempt <= v1_through {
            ("NULL", "retry_event_canonical")
        } else {
            ("db_role", "retry_event_canonical_v2")
        };
        let role_argument = if attempt <= v1_through {
            ""
        } else {
            ", db_role"
        };
        behind_the_guard(
            pool,
            &format!(
                "UPDATE retry_history
                    SET db_role = {db_role},
                        hash = retry_event_hash({previous}, {canonical}(
                            event_id, job_id, job_variants_id, reason, step, from_status,
                            to_status, attempt, actor, detail, occurred_at{role_argument}))
                  WHERE job_variants_id = '{variant}' AND attempt = {attempt}"
            ),
        )
        .await;
    }
    sqlx::query("SELECT retry_stream_head_rebuild()")
        .execute(pool)
        .await
        .unwrap();
}

#[sqlx::test(migrations = false)]
async fn events_hashed_in_format_v1_and_mixed_streams_are_intact_everywhere(pool: PgPool) {
    pipeline(&pool).await;
    append_n(&pool, variant(JOB_A, VARIANT_A1), 3).await;
    append_n(&pool, variant(JOB_A, VARIANT_A2), 3).await;
    // A1 wholly from before 0006; A2 two events before it and one after.
    rechain_as_format_v1(&pool, VARIANT_A1, 3, 3).await;
    rechain_as_format_v1(&pool, VARIANT_A2, 2, 3).await;
    let v1: i64 = sqlx::query_scalar("SELECT count(*) FROM retry_history WHERE db_role IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(v1, 5);
    assert_verify_clean(&pool).await;
    let app = router(&pool, false);

    assert_eq!(own_verdict(&app, VARIANT_A1).await, "intact (3 events)");
    assert_eq!(own_verdict(&app, VARIANT_A2).await, "intact (3 events)");
    assert_eq!(
        page_verdicts(&app, "job", JOB_A).await.1.as_deref(),
        Some("2 variant chains intact (6 events)")
    );

    // A v1 event changed is broken like a v2 one.
    let seq = seq_of(&pool, variant(JOB_A, VARIANT_A1), 2).await;
    behind_the_guard(
        &pool,
        &format!("UPDATE retry_history SET step = 'forged' WHERE seq = {seq}"),
    )
    .await;
    assert!(own_verdict(&app, VARIANT_A1)
        .await
        .starts_with("broken at attempt 2 "));
    let (_, chain) = api_chain(&app, &format!("variant_id={VARIANT_A1}")).await;
    assert_eq!(
        chain["problems"],
        verify_problems(&pool, variant(JOB_A, VARIANT_A1)).await
    );
}

#[sqlx::test(migrations = false)]
async fn the_chain_api_names_its_parameters_and_unknown_targets(pool: PgPool) {
    pipeline(&pool).await;
    let app = router(&pool, false);
    let unknown = Uuid::new_v4();
    let cases = [
        (
            "",
            StatusCode::BAD_REQUEST,
            "give exactly one of the parameters job_id and variant_id".to_string(),
        ),
        (
            &format!("job_id={JOB_A}&variant_id={VARIANT_A1}") as &str,
            StatusCode::BAD_REQUEST,
            "give exactly one of the parameters job_id and variant_id".to_string(),
        ),
        (
            "job_id=7",
            StatusCode::BAD_REQUEST,
            "job_id \"7\" is not a UUID".to_string(),
        ),
        (
            &format!("variant_id={unknown}"),
            StatusCode::NOT_FOUND,
            format!("unknown variant {unknown}: no such row and no retries recorded for it"),
        ),
    ];
    for (query, status, message) in cases {
        let (found, body) = api_chain(&app, query).await;
        assert_eq!(
            (found, body["error"].as_str()),
            (status, Some(message.as_str())),
            "{query}"
        );
    }
}

/// The `sql` block of docs/architecture.md that re-checks every link by hand.
fn recipe() -> &'static str {
    let doc = include_str!("../../docs/architecture.md");
    let start = doc
        .find("```sql\n-- Every link of the log")
        .expect("docs/architecture.md has the by-hand recipe")
        + "```sql\n".len();
    &doc[start..][..doc[start..].find("```").unwrap()]
}

/// The recipe's rows: `(job_variants_id, attempt, link_ok)` of every link it reports.
async fn run_recipe(pool: &PgPool) -> Vec<(Option<Uuid>, i32, bool)> {
    sqlx::query_as(&format!(
        "SELECT job_variants_id, attempt, link_ok FROM ({}) recipe",
        recipe().trim().trim_end_matches(';')
    ))
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn the_docs_by_hand_recipe_runs_as_written_and_agrees_with_verify(pool: PgPool) {
    pipeline(&pool).await;
    append_n(&pool, variant(JOB_A, VARIANT_A1), 3).await;
    append_n(&pool, variant(JOB_A, VARIANT_A2), 3).await;
    append_n(&pool, job(JOB_B), 1).await;
    rechain_as_format_v1(&pool, VARIANT_A2, 2, 3).await;
    // As written, on its own (a reader pastes it into psql).
    sqlx::raw_sql(recipe()).execute(&pool).await.unwrap();

    let rows = run_recipe(&pool).await;
    assert_eq!(rows.len(), 7, "{rows:?}");
    assert!(rows.iter().all(|(.., ok)| *ok), "{rows:?}");

    // One v2 and one v1 event changed: the recipe flags exactly the links verify does.
    for (changed, attempt) in [(VARIANT_A1, 3), (VARIANT_A2, 1)] {
        let seq = seq_of(&pool, variant(JOB_A, changed), attempt).await;
        behind_the_guard(
            &pool,
            &format!("UPDATE retry_history SET detail = '{{\"forged\": 1}}' WHERE seq = {seq}"),
        )
        .await;
    }
    let broken: Vec<(Option<Uuid>, i32)> = run_recipe(&pool)
        .await
        .into_iter()
        .filter(|(.., ok)| !ok)
        .map(|(variant, attempt, _)| (variant, attempt))
        .collect();
    let mut by_verify: Vec<(Option<Uuid>, i32)> = verify(&pool)
        .await
        .mismatches
        .iter()
        .filter_map(|m| match m {
            Mismatch::BrokenLink {
                target, attempt, ..
            } => Some((target.job_variants_id(), *attempt)),
            _ => None,
        })
        .collect();
    by_verify.sort();
    assert_eq!(broken, by_verify);
    assert_eq!(broken, [(Some(VARIANT_A1), 3), (Some(VARIANT_A2), 1)]);
}
