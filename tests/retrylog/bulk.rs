//! Bulk recovery (`retrylog recover --state …`, `POST /api/v1/recover/bulk`, the Targets
//! page's bulk form): what a filter matches and recovers against rows computed by hand, a dry
//! run that writes nothing, idempotency by request id (a repeat, another body, concurrent
//! duplicates from real concurrent clients), the `max` refusal with its count, a target that
//! changed since the preview skipped, the rights each door needs, as real roles and tokens; and
//! the Targets page's flow in Chromium: tick rows, preview, confirm, the result page.

use retrylog::event::Target;
use retrylog::grant::Capability::{Operator, Pipeline, Reader};
use retrylog::recovery::bulk::{self, Done, Planned, Recovery};
use retrylog::targets::Kind;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::fixtures::*;
use crate::security::TestRole;
use crate::targets::targets_log;

const BULK: &str = "/api/v1/recover/bulk";

/// The ids of an answer's list (`targets`, `skipped`) or of its events' targets (`recovered`).
fn ids(list: &Value) -> Vec<Uuid> {
    list.as_array()
        .unwrap_or_else(|| panic!("a list: {list}"))
        .iter()
        .map(|row| {
            let id = row
                .get("id")
                .or_else(|| row.get("job_variants_id").filter(|id| !id.is_null()))
                .or_else(|| row.get("job_id"))
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("an id in {row}"));
            id.parse().unwrap()
        })
        .collect()
}

/// The rows of the bulk requests' table.
async fn stored_requests(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM retrylog_bulk_recovery")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn post(pool: &PgPool, body: Value) -> Answer {
    call(&router(pool, true), BULK, Some(ADMIN), Some(body), &[]).await
}

#[sqlx::test(migrations = false)]
async fn a_filter_recovers_each_match_with_its_own_event_and_skips_what_no_recovery_changes(
    pool: PgPool,
) {
    targets_log(&pool).await;
    // Job B is done now: a recovery by hand changes only running or failed jobs.
    sqlx::query("UPDATE jobs SET status = 'done' WHERE job_id = $1")
        .bind(JOB_B)
        .execute(&pool)
        .await
        .unwrap();
    let answer = post(
        &pool,
        json!({"filter": {"kind": "job"}, "note": "storage back", "request_id": "r-jobs"}),
    )
    .await;
    assert_eq!(answer.status, 201, "{}", answer.json);
    let result = &answer.json;
    // kind=job, newest last retry first: job B (04:00), job A (01:00).
    assert_eq!(result["matched"], 2);
    assert_eq!(ids(&result["targets"]), [JOB_B, JOB_A]);
    assert_eq!(result["targets"][1]["attempt"], 1);
    assert_eq!(
        result["targets"][1]["why"],
        "stuck at step segment; error: OOM killed"
    );
    // Job A, running at segment (not the final step), goes back to running: attempt 2.
    assert_eq!(ids(&result["recovered"]), [JOB_A]);
    let event = &result["recovered"][0];
    assert_eq!(event["reason"], "manual_recovery");
    assert_eq!(event["attempt"], 2);
    assert_eq!(event["actor"], "ops-alice");
    assert_eq!(event["detail"]["note"], "storage back");
    assert_eq!(
        (event["from_status"].as_str(), event["to_status"].as_str()),
        (Some("running"), Some("running"))
    );
    assert_eq!(
        event["event_id"],
        bulk::target_event_id("r-jobs", Kind::Job, JOB_A).to_string()
    );
    assert_eq!(
        result["skipped"],
        json!([{"kind": "job", "id": JOB_B, "reason": "not_recoverable",
                "message": "it is done: a recovery by hand changes only running or failed jobs"}])
    );
    assert_eq!(result["repeated"], false);
    assert_eq!(attempts(&pool, job(JOB_A)).await, [1, 2]);
    assert_eq!(attempts(&pool, job(JOB_B)).await, [1]);
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn the_why_of_the_last_retry_is_a_column_of_every_targets_door(pool: PgPool) {
    targets_log(&pool).await;
    let api = call(
        &router(&pool, true),
        "/api/v1/targets?kind=job",
        Some(READER),
        None,
        &[],
    )
    .await;
    let whys: Vec<&str> = api.json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["why"].as_str().unwrap())
        .collect();
    assert_eq!(
        whys,
        [
            "manual: rerun after fix",
            "stuck at step segment; error: OOM killed"
        ]
    );
    let cli = retrylog(&pool, &["targets", "--kind", "job", "--format", "csv"]).await;
    assert_eq!(cli.code, Some(0), "{cli:#?}");
    let header = cli.stdout.lines().next().unwrap();
    assert!(header.ends_with(",last_retry_at,why"), "{header}");
    assert!(
        cli.stdout.contains("manual: rerun after fix"),
        "{}",
        cli.stdout
    );
}

#[sqlx::test(migrations = false)]
async fn a_dry_run_answers_each_match_with_its_attempt_and_writes_nothing(pool: PgPool) {
    targets_log(&pool).await;
    let before = snapshot(&pool).await;
    let answer = post(
        &pool,
        json!({"filter": {"state": "retrying"}, "note": "later", "dry_run": true,
               "request_id": "r-dry"}),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    // state=retrying: B1 (05:00, attempt 1), A1 (02:00, attempt 2), job A (01:00, attempt 1).
    assert_eq!(
        ids(&answer.json["targets"]),
        [VARIANT_B1, VARIANT_A1, JOB_A]
    );
    let seen: Vec<i64> = answer.json["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|target| target["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(seen, [1, 2, 1]);
    assert_eq!(answer.json["dry_run"], true);
    assert_eq!(answer.json["recovered"], json!([]));
    assert_eq!(snapshot(&pool).await, before);
    assert_eq!(stored_requests(&pool).await, 0);
}

#[sqlx::test(migrations = false)]
async fn a_repeated_request_id_answers_the_stored_result_and_another_body_is_refused(pool: PgPool) {
    targets_log(&pool).await;
    let body = json!({"filter": {"state": "needs_intervention"}, "note": "fixed input",
                      "request_id": "ticket-9"});
    let first = post(&pool, body.clone()).await;
    assert_eq!(first.status, 201, "{}", first.json);
    assert_eq!(ids(&first.json["recovered"]), [VARIANT_A2]);
    let events = event_count(&pool).await;

    let again = post(&pool, body.clone()).await;
    assert_eq!(again.status, 200, "{}", again.json);
    assert_eq!(again.json["repeated"], true);
    assert_eq!(again.json["recovered"], first.json["recovered"]);
    assert_eq!(again.json["targets"], first.json["targets"]);
    assert_eq!(event_count(&pool).await, events);

    let mut other = body.clone();
    other["note"] = json!("another note");
    let before = snapshot(&pool).await;
    let refused = post(&pool, other).await;
    assert_eq!(refused.status, 409, "{}", refused.json);
    let message = refused.json["error"].as_str().unwrap();
    assert!(
        message.contains("request_id \"ticket-9\" was used for another request"),
        "{message}"
    );
    assert_eq!(snapshot(&pool).await, before);
}

#[sqlx::test(migrations = false)]
async fn concurrent_duplicates_of_one_request_recover_once(pool: PgPool) {
    targets_log(&pool).await;
    let events = event_count(&pool).await;
    let body = json!({"filter": {"state": "retrying"}, "note": "one click, many sends",
                      "request_id": "double-click"});
    // Eight clients send the same request at once, each on a connection of its own.
    let router = router(&pool, true);
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (router, body) = (router.clone(), body.clone());
            tokio::spawn(async move { call(&router, BULK, Some(ADMIN), Some(body), &[]).await })
        })
        .collect();
    let mut answers = Vec::new();
    for client in clients {
        answers.push(client.await.unwrap());
    }
    let created = answers.iter().filter(|answer| answer.status == 201).count();
    assert_eq!(created, 1, "exactly one request recovered");
    assert!(answers
        .iter()
        .all(|answer| answer.status == 201 || answer.json["repeated"] == true));
    for answer in &answers {
        assert_eq!(answer.json["recovered"], answers[0].json["recovered"]);
    }
    // Three targets retrying, one event each.
    assert_eq!(event_count(&pool).await, events + 3);
    assert_eq!(stored_requests(&pool).await, 1);
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn more_matches_than_max_are_refused_with_their_count_writing_nothing(pool: PgPool) {
    targets_log(&pool).await;
    let before = snapshot(&pool).await;
    let refused = post(
        &pool,
        json!({"filter": {"state": "retrying"}, "note": "x", "max": 2}),
    )
    .await;
    assert_eq!(refused.status, 400, "{}", refused.json);
    assert_eq!(
        refused.json["error"],
        "3 targets match, more than max 2: nothing was recovered (narrow the filter, or raise \
         max up to 500)"
    );
    let above = post(
        &pool,
        json!({"filter": {"state": "retrying"}, "note": "x", "max": 501}),
    )
    .await;
    assert_eq!(above.status, 400, "{}", above.json);
    assert!(above.json["error"]
        .as_str()
        .unwrap()
        .starts_with("max 501 is out of range"));
    let no_filter = post(&pool, json!({"filter": {}, "note": "x"})).await;
    assert_eq!(no_filter.status, 400, "{}", no_filter.json);
    assert!(no_filter.json["error"]
        .as_str()
        .unwrap()
        .starts_with("name the targets"));
    let nul = post(
        &pool,
        json!({"filter": {"state": "failed"}, "note": "a\0b"}),
    )
    .await;
    assert_eq!(nul.status, 400, "{}", nul.json);
    assert!(
        nul.json["error"].as_str().unwrap().contains("note"),
        "{}",
        nul.json
    );
    let bad_key = post(
        &pool,
        json!({"filter": {"sort": "retry_count"}, "note": "x"}),
    )
    .await;
    assert_eq!(bad_key.status, 400, "{}", bad_key.json);
    assert!(
        bad_key.json["error"].as_str().unwrap().contains("sort"),
        "{}",
        bad_key.json
    );
    assert_eq!(snapshot(&pool).await, before);
    assert_eq!(stored_requests(&pool).await, 0);
}

#[sqlx::test(migrations = false)]
async fn a_target_retried_since_the_preview_is_skipped_not_forced(pool: PgPool) {
    targets_log(&pool).await;
    let preview = post(
        &pool,
        json!({"filter": {"state": "retrying"}, "note": "x", "dry_run": true}),
    )
    .await;
    assert_eq!(preview.status, 200, "{}", preview.json);
    let seen: Vec<Value> = preview.json["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| json!({"kind": t["kind"], "id": t["id"], "attempt": t["attempt"]}))
        .collect();
    // The watchdog retries A1 after the preview: its attempt 3.
    append_ok(&pool, &retry(variant(JOB_A, VARIANT_A1))).await;
    let done = post(
        &pool,
        json!({"filter": {"state": "retrying"}, "targets": seen, "note": "after the preview",
               "request_id": "previewed"}),
    )
    .await;
    assert_eq!(done.status, 201, "{}", done.json);
    assert_eq!(ids(&done.json["recovered"]), [VARIANT_B1, JOB_A]);
    assert_eq!(
        done.json["skipped"],
        json!([{"kind": "variant", "id": VARIANT_A1, "reason": "changed",
                "message": "changed since the preview: its last attempt is 3, the preview saw 2"}])
    );
    assert_eq!(attempts(&pool, variant(JOB_A, VARIANT_A1)).await, [1, 2, 3]);
}

#[sqlx::test(migrations = false)]
async fn a_retry_between_the_match_and_the_lock_is_record_retrys_conflict_and_a_skip(pool: PgPool) {
    targets_log(&pool).await;
    // A1's last attempt is 2; a plan made before a third would expect 3. The third lands
    // first: record_retry refuses attempt 3 again (RL009), and the target is skipped. The
    // plan's other targets, in the same batch, are recovered all the same: a variant, a job
    // and one gone meanwhile.
    append_ok(&pool, &retry(variant(JOB_A, VARIANT_A1))).await;
    let next = |target: Target| {
        let pool = pool.clone();
        async move { attempts(&pool, target).await.last().copied().unwrap_or(0) + 1 }
    };
    let (b1, b) = (variant(JOB_B, VARIANT_B1), job(JOB_B));
    let plan = [
        Planned {
            kind: Kind::Variant,
            id: VARIANT_A1,
            expected_attempt: 3,
        },
        Planned {
            kind: Kind::Variant,
            id: VARIANT_B1,
            expected_attempt: next(b1).await,
        },
        Planned {
            kind: Kind::Job,
            id: JOB_B,
            expected_attempt: next(b).await,
        },
        Planned {
            kind: Kind::Variant,
            id: Uuid::new_v4(),
            expected_attempt: 1,
        },
    ];
    let a1_row = || {
        sqlx::query_as::<_, (String, chrono::DateTime<chrono::Utc>, i32)>(
            "SELECT status, updated_at, retry_count FROM jobs_variants WHERE job_variants_id = $1",
        )
        .bind(VARIANT_A1)
        .fetch_one(&pool)
    };
    let a1_before = a1_row().await.unwrap();
    let recovery = Recovery {
        note: "raced".into(),
        actor: "ops:test".into(),
        request_id: "raced".into(),
        previewed: false,
    };
    let steps = retrylog::config::DEFAULT_STEPS.parse().unwrap();
    let mut tx = pool.begin().await.unwrap();
    let done = bulk::execute(&mut tx, &plan, &recovery, &steps)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    match &done[..] {
        [Done::Skipped { reason, message }, Done::Recovered(b1_event), Done::Recovered(b_event), Done::Skipped { reason: gone, .. }] =>
        {
            assert_eq!(*reason, "changed");
            assert_eq!(
                message,
                "changed since it was matched: a retry was recorded meanwhile"
            );
            assert_eq!(b1_event["attempt"], plan[1].expected_attempt);
            assert_eq!(b1_event["reason"], "manual_recovery");
            assert_eq!(b_event["attempt"], plan[2].expected_attempt);
            assert_eq!(b_event["job_variants_id"], Value::Null);
            assert_eq!(*gone, "gone");
        }
        other => panic!("expected a skip, two recoveries and a skip, got {other:?}"),
    }
    assert_eq!(
        a1_row().await.unwrap(),
        a1_before,
        "A1's state change was rolled back with the refused batch"
    );
    assert_eq!(
        attempts(&pool, b1).await.last(),
        Some(&plan[1].expected_attempt)
    );
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn the_command_previews_with_dry_run_then_recovers_what_matches(pool: PgPool) {
    targets_log(&pool).await;
    let before = snapshot(&pool).await;
    let dry = retrylog(
        &pool,
        &[
            "recover",
            "--state",
            "needs_intervention",
            "--note",
            "fixed",
            "--dry-run",
            "--format",
            "json",
        ],
    )
    .await;
    assert_eq!(dry.code, Some(0), "{dry:#?}");
    assert_eq!(ids(&dry.json()["targets"]), [VARIANT_A2]);
    assert_eq!(dry.json()["targets"][0]["attempt"], 3);
    assert!(dry.stderr.contains("1 matching; dry run"), "{}", dry.stderr);
    assert_eq!(snapshot(&pool).await, before);

    let run = retrylog(
        &pool,
        &[
            "recover",
            "--state",
            "needs_intervention",
            "--step",
            "segment",
            "--note",
            "fixed",
            "--by",
            "ops:bo",
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(
        run.stdout.contains(&VARIANT_A2.to_string()) && run.stdout.contains("recovered"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains("1 matching, 1 recovered, 0 skipped"),
        "{}",
        run.stderr
    );
    let (actor, note, to): (String, String, String) = sqlx::query_as(
        "SELECT actor, detail->>'note', to_status FROM retry_history
          WHERE reason = 'manual_recovery' AND job_variants_id = $1",
    )
    .bind(VARIANT_A2)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (actor.as_str(), note.as_str(), to.as_str()),
        ("ops:bo", "fixed", "done")
    );

    let too_many = retrylog(
        &pool,
        &[
            "recover", "--state", "retrying", "--max", "2", "--note", "x",
        ],
    )
    .await;
    assert_eq!(too_many.code, Some(2), "{too_many:#?}");
    assert!(
        too_many
            .only_problem_line()
            .contains("4 targets match, more than --max 2"),
        "{too_many:#?}"
    );
    let nothing = retrylog(&pool, &["recover", "--note", "x"]).await;
    assert_eq!(nothing.code, Some(2), "{nothing:#?}");
    assert!(nothing.only_problem_line().contains("name the targets"));
    let both = retrylog(
        &pool,
        &[
            "recover",
            "--job-id",
            &JOB_A.to_string(),
            "--state",
            "failed",
            "--note",
            "x",
        ],
    )
    .await;
    assert_eq!(both.code, Some(2), "{both:#?}");
}

#[sqlx::test(migrations = false)]
async fn a_bulk_recovery_without_the_rights_exits_2_naming_the_grants_and_writes_nothing(
    pool: PgPool,
) {
    targets_log(&pool).await;
    let before = snapshot(&pool).await;
    let args = ["recover", "--state", "needs_intervention", "--note", "x"];
    let reader = TestRole::create(&pool, &[Reader]).await;
    let refused = retrylog_at(&reader.url(&pool).await, &args).await;
    assert_eq!(refused.code, Some(2), "{refused:#?}");
    assert_eq!(
        refused.only_problem_line(),
        format!(
            "retrylog: recover needs the operator and pipeline capabilities, which role {0} \
             lacks: retrylog grant operator {0} and retrylog grant pipeline {0} (as the schema \
             owner)",
            reader.name
        )
    );
    // A reader may preview.
    let dry = retrylog_at(
        &reader.url(&pool).await,
        &[&args[..], &["--dry-run"]].concat(),
    )
    .await;
    assert_eq!(dry.code, Some(0), "{dry:#?}");

    let operator = TestRole::create(&pool, &[Operator]).await;
    let half = retrylog_at(&operator.url(&pool).await, &args).await;
    assert_eq!(half.code, Some(2), "{half:#?}");
    assert!(
        half.only_problem_line().ends_with(&format!(
            "role {0} lacks pipeline: retrylog grant pipeline {0} (as the schema owner)",
            operator.name
        )),
        "{half:#?}"
    );
    assert_eq!(snapshot(&pool).await, before);
    assert_eq!(stored_requests(&pool).await, 0);

    let both = TestRole::create(&pool, &[Operator, Pipeline]).await;
    let done = retrylog_at(&both.url(&pool).await, &args).await;
    assert_eq!(done.code, Some(0), "{done:#?}");
    assert_eq!(
        attempts(&pool, variant(JOB_A, VARIANT_A2)).await,
        [1, 2, 3, 4]
    );

    // The API: a read token is refused, whatever the body.
    let read = call(
        &router(&pool, true),
        BULK,
        Some(READER),
        Some(json!({"filter": {"state": "failed"}, "note": "x"})),
        &[],
    )
    .await;
    assert_eq!(read.status, 403, "{}", read.json);
    // Nor may it preview on the dashboard.
    let preview = call(
        &router(&pool, true),
        "/targets/recover?state=failed&selection=all",
        Some(READER),
        None,
        &[],
    )
    .await;
    assert_eq!(preview.status, 403);
}

#[sqlx::test(migrations = false)]
async fn the_targets_page_recovers_ticked_rows_after_a_preview_and_names_what_it_skipped(
    pool: PgPool,
) {
    use crate::dashboard::{serve, Browser};
    use fantoccini::Locator;

    targets_log(&pool).await;
    let served = serve(&pool).await;
    let browser = Browser::open(false).await;
    browser.login(&served, ADMIN).await;
    browser
        .goto(&format!("{}/targets?state=retrying", served.base))
        .await;
    assert_eq!(
        browser.text("#recover-all").await,
        "Recover all 3 matching…"
    );
    for value in [format!("variant:{VARIANT_B1}"), format!("job:{JOB_A}")] {
        browser
            .client
            .find(Locator::Css(&format!(
                "input[name=target][value='{value}']"
            )))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }
    browser
        .client
        .find(Locator::Id("recover-selected"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait_for_url(|url| url.contains("/targets/recover?"))
        .await;
    assert!(
        browser
            .text("#preview-count")
            .await
            .starts_with("2 matching."),
        "{}",
        browser.text("#preview-count").await
    );
    let preview = browser.text("#preview").await;
    assert!(
        preview.contains(&VARIANT_B1.to_string()) && preview.contains(&JOB_A.to_string()),
        "{preview}"
    );
    assert!(!preview.contains(&VARIANT_A1.to_string()), "{preview}");

    // Job A is retried while the admin reads the preview.
    append_ok(&pool, &retry(job(JOB_A))).await;
    let events = event_count(&pool).await;
    browser
        .client
        .find(Locator::Css("#bulk-confirm textarea"))
        .await
        .unwrap()
        .send_keys("queue drained")
        .await
        .unwrap();
    browser
        .client
        .find(Locator::Css("#bulk-confirm input[name=confirm]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .client
        .form(Locator::Id("bulk-confirm"))
        .await
        .unwrap()
        .submit()
        .await
        .unwrap();
    browser
        .wait_for_url(|url| url.contains("/targets/recovered?request_id="))
        .await;
    assert_eq!(
        browser.text("#result-count").await.split(" (").next(),
        Some("2 matched, 1 recovered, 1 skipped")
    );
    assert!(browser
        .text("#recovered")
        .await
        .contains(&VARIANT_B1.to_string()));
    let skipped = browser.text("#skipped").await;
    assert!(
        skipped.contains(&JOB_A.to_string())
            && skipped
                .contains("changed since the preview: its last attempt is 2, the preview saw 1"),
        "{skipped}"
    );

    assert_eq!(event_count(&pool).await, events + 1);
    let (actor, note): (String, String) = sqlx::query_as(
        "SELECT actor, detail->>'note' FROM retry_history
          WHERE reason = 'manual_recovery' AND job_variants_id = $1",
    )
    .bind(VARIANT_B1)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (actor.as_str(), note.as_str()),
        ("ops-alice", "queue drained")
    );
    browser.assert_no_console_problems().await;
    browser.close().await;
}
