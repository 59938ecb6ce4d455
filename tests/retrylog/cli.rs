//! The `retrylog` binary as an operator runs it: what it prints, its exit codes, and how it
//! turns a mistake into one line on stderr without writing anything.

use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::fixtures::*;

/// Runs a command that must fail because of the user's input: exit code 2, nothing on
/// stdout, exactly one line on stderr containing every `names`, no panic, nothing written.
async fn assert_user_mistake(pool: &PgPool, args: &[&str], names: &[&str]) {
    let before = snapshot(pool).await;
    let run = retrylog(pool, args).await;

    assert_eq!(run.code, Some(2), "a user mistake exits 2: {run:#?}");
    assert!(
        !run.stderr.contains("panicked") && !run.stderr.contains("backtrace"),
        "no panic: {run:#?}"
    );
    assert_eq!(run.stdout, "", "nothing on stdout: {run:#?}");
    let lines = run.problem_lines();
    assert_eq!(lines.len(), 1, "one line on stderr: {lines:#?}");
    for name in names {
        assert!(
            lines[0].contains(name),
            "the line names `{name}`: {:?}",
            lines[0]
        );
    }
    assert_eq!(
        snapshot(pool).await,
        before,
        "a refused command wrote nothing"
    );
}

fn string(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("expected a string, got {value}"))
}

#[sqlx::test(migrations = false)]
async fn record_prints_the_stored_event(pool: PgPool) {
    pipeline(&pool).await;
    let (job_id, variant_id) = (JOB_A.to_string(), VARIANT_A1.to_string());

    let run = retrylog(
        &pool,
        &[
            "record",
            "--job-id",
            &job_id,
            "--variant-id",
            &variant_id,
            "--reason",
            "stuck",
            "--actor",
            "ops:alice",
            "--detail",
            r#"{"ticket": 42, "note": "lagging"}"#,
            "--format",
            "json",
        ],
    )
    .await;

    assert_eq!(run.code, Some(0), "{run:#?}");
    let printed = run.json();
    let events = printed.as_array().expect("an array of events");
    assert_eq!(events.len(), 1, "{printed:#}");
    let event = &events[0];
    assert_eq!(string(&event["target"]), format!("variant {VARIANT_A1}"));
    assert_eq!(string(&event["job_id"]), job_id);
    assert_eq!(string(&event["job_variants_id"]), variant_id);
    assert_eq!(event["attempt"], 1);
    assert_eq!(event["reason"], "stuck");
    assert_eq!(event["step"], "generate");
    assert_eq!(event["from_status"], "done");
    assert_eq!(event["actor"], "ops:alice");
    assert_eq!(
        event["detail"],
        serde_json::json!({"ticket": 42, "note": "lagging"})
    );
    let hash = string(&event["hash"]);
    assert!(
        hash.len() == 64 && hash.chars().all(|c| c.is_ascii_hexdigit()),
        "{hash}"
    );

    // It is the row in the log, and the count moved with it.
    let stored: (i64, Uuid, Vec<u8>) =
        sqlx::query_as("SELECT seq, event_id, hash FROM retry_history")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(event["seq"], stored.0);
    assert_eq!(string(&event["event_id"]), stored.1.to_string());
    assert_eq!(hash, hex::encode(&stored.2));
    assert_eq!(retry_count(&pool, variant(JOB_A, VARIANT_A1)).await, 1);
}

#[sqlx::test(migrations = false)]
async fn record_with_an_event_id_again_prints_the_original_event(pool: PgPool) {
    pipeline(&pool).await;
    let job_id = JOB_A.to_string();
    let event_id = Uuid::new_v4().to_string();
    let record = |reason: &'static str| {
        [
            "record",
            "--job-id",
            &job_id,
            "--reason",
            reason,
            "--event-id",
            &event_id,
            "--format",
            "json",
        ]
        .map(String::from)
    };

    let first = retrylog(&pool, &record("stuck").each_ref().map(String::as_str)).await;
    let again = retrylog(&pool, &record("failed").each_ref().map(String::as_str)).await;

    assert_eq!(first.code, Some(0), "{first:#?}");
    assert_eq!(again.code, Some(0), "{again:#?}");
    assert_eq!(again.json(), first.json());
    assert_eq!(first.json()[0]["reason"], "stuck");
    assert_eq!(event_count(&pool).await, 1);
    assert_eq!(retry_count(&pool, job(JOB_A)).await, 1);
}

#[sqlx::test(migrations = false)]
async fn history_of_a_job_lists_its_own_and_its_variants_events_labelled_with_their_target(
    pool: PgPool,
) {
    pipeline(&pool).await;
    for target in [
        variant(JOB_A, VARIANT_A1),
        job(JOB_A),
        variant(JOB_B, VARIANT_B1),
        variant(JOB_A, VARIANT_A2),
        job(JOB_B),
        variant(JOB_A, VARIANT_A1),
    ] {
        append_ok(&pool, &retry(target)).await;
    }

    let run = retrylog(
        &pool,
        &[
            "history",
            "--job-id",
            &JOB_A.to_string(),
            "--format",
            "json",
        ],
    )
    .await;

    assert_eq!(run.code, Some(0), "{run:#?}");
    let events = run.json();
    let listed: Vec<(String, i64)> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|event| {
            assert_eq!(string(&event["job_id"]), JOB_A.to_string());
            (
                string(&event["target"]).to_string(),
                event["attempt"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            (format!("variant {VARIANT_A1}"), 1),
            (format!("job {JOB_A}"), 1),
            (format!("variant {VARIANT_A2}"), 1),
            (format!("variant {VARIANT_A1}"), 2),
        ],
        "job A's events and its variants', in log order, each labelled"
    );

    // The table for people carries the same labels.
    let table = retrylog(&pool, &["history", "--job-id", &JOB_A.to_string()]).await;
    assert_eq!(table.code, Some(0), "{table:#?}");
    assert!(
        table.stdout.contains(&format!("job {JOB_A}")),
        "{}",
        table.stdout
    );
    assert!(
        table.stdout.contains(&format!("variant {VARIANT_A2}")),
        "{}",
        table.stdout
    );
    assert!(!table.stdout.contains(&VARIANT_B1.to_string()));
}

#[sqlx::test(migrations = false)]
async fn history_of_a_variant_lists_only_its_events(pool: PgPool) {
    pipeline(&pool).await;
    append_n(&pool, variant(JOB_A, VARIANT_A2), 2).await;
    append_n(&pool, job(JOB_A), 1).await;
    append_n(&pool, variant(JOB_A, VARIANT_A1), 1).await;

    let run = retrylog(
        &pool,
        &[
            "history",
            "--variant-id",
            &VARIANT_A2.to_string(),
            "--format",
            "json",
        ],
    )
    .await;

    assert_eq!(run.code, Some(0), "{run:#?}");
    let events = run.json();
    let attempts: Vec<i64> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|event| {
            assert_eq!(string(&event["target"]), format!("variant {VARIANT_A2}"));
            event["attempt"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(attempts, [1, 2]);
}

#[sqlx::test(migrations = false)]
async fn history_of_an_unknown_job_is_one_clear_line(pool: PgPool) {
    pipeline(&pool).await;
    let unknown = Uuid::new_v4().to_string();

    assert_user_mistake(
        &pool,
        &["history", "--job-id", &unknown],
        &["unknown job", &unknown],
    )
    .await;
}

#[sqlx::test(migrations = false)]
async fn verify_exits_zero_on_an_untouched_log(pool: PgPool) {
    pipeline(&pool).await;
    append_n(&pool, variant(JOB_A, VARIANT_A1), 2).await;
    append_n(&pool, job(JOB_B), 1).await;

    let run = retrylog(&pool, &["verify"]).await;

    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(run.stderr.contains("verify clean"), "{run:#?}");

    // JSON says what was checked, not just that nothing was found: one object, clean or not
    // (--full: the run above recorded its position, so a plain one would read nothing new).
    let json = retrylog(&pool, &["verify", "--full", "--format", "json"]).await;
    assert_eq!(json.code, Some(0), "{json:#?}");
    let object = json.json();
    assert_eq!(
        [
            &object["clean"],
            &object["scope"],
            &object["events"],
            &object["streams"],
            &object["mismatches"]
        ],
        [
            &json!(true),
            &json!("full"),
            &json!(3),
            &json!(2),
            &json!([])
        ],
        "{json:#?}"
    );
}

#[sqlx::test(migrations = false)]
async fn verify_exits_one_and_prints_the_target_of_a_tampered_event(pool: PgPool) {
    pipeline(&pool).await;
    append_n(&pool, variant(JOB_A, VARIANT_A1), 3).await;
    append_n(&pool, job(JOB_A), 1).await;
    sqlx::raw_sql(
        "ALTER TABLE retry_history DISABLE TRIGGER retry_history_append_only;
         UPDATE retry_history SET reason = 'manual_recovery'
          WHERE job_variants_id = '0a000000-0000-4000-8000-000000000001' AND attempt = 2;
         ALTER TABLE retry_history ENABLE TRIGGER retry_history_append_only;",
    )
    .execute(&pool)
    .await
    .unwrap();

    let table = retrylog(&pool, &["verify"]).await;
    assert_eq!(table.code, Some(1), "{table:#?}");
    assert!(
        table.stdout.contains(&VARIANT_A1.to_string()),
        "the tampered variant is named: {table:#?}"
    );
    assert!(
        table
            .stderr
            .contains("retrylog: verify found 1 mismatch(es) in "),
        "{table:#?}"
    );

    let json = retrylog(&pool, &["verify", "--format", "json"]).await;
    assert_eq!(json.code, Some(1), "{json:#?}");
    let report = json.json();
    assert_eq!(report["clean"], false, "{report:#?}");
    assert_eq!(report["events"], 4, "{report:#?}");
    assert_eq!(report["streams"], 2, "{report:#?}");
    let mismatches = report["mismatches"].as_array().unwrap();
    assert_eq!(mismatches.len(), 1, "{mismatches:#?}");
    assert_eq!(mismatches[0]["problem"], "broken_link");
    assert_eq!(
        string(&mismatches[0]["job_variants_id"]),
        VARIANT_A1.to_string()
    );
}

#[sqlx::test(migrations = false)]
async fn verify_exits_one_when_a_count_was_changed_by_hand(pool: PgPool) {
    pipeline(&pool).await;
    append_n(&pool, job(JOB_B), 2).await;
    sqlx::query("UPDATE jobs SET retry_count = 5 WHERE job_id = $1")
        .bind(JOB_B)
        .execute(&pool)
        .await
        .unwrap();

    let run = retrylog(&pool, &["verify", "--format", "json"]).await;

    assert_eq!(run.code, Some(1), "{run:#?}");
    let mismatches = run.json()["mismatches"].clone();
    assert_eq!(
        mismatches.as_array().map(Vec::len),
        Some(1),
        "{mismatches:#?}"
    );
    assert_eq!(mismatches[0]["problem"], "count");
    assert_eq!(string(&mismatches[0]["job_id"]), JOB_B.to_string());
}

#[sqlx::test(migrations = false)]
async fn replay_dry_run_lists_the_changes_and_writes_nothing_then_replay_restores_them(
    pool: PgPool,
) {
    pipeline(&pool).await;
    append_n(&pool, variant(JOB_A, VARIANT_A1), 3).await;
    sqlx::raw_sql("UPDATE jobs_variants SET retry_count = 0")
        .execute(&pool)
        .await
        .unwrap();
    let before = snapshot(&pool).await;

    let dry = retrylog(&pool, &["replay", "--dry-run", "--format", "json"]).await;

    assert_eq!(dry.code, Some(0), "{dry:#?}");
    let listed = dry.json();
    let counts: Vec<&Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["projection"] == "retry_counts")
        .collect();
    assert_eq!(counts.len(), 1, "{listed:#}");
    assert_eq!(
        string(&counts[0]["job_variants_id"]),
        VARIANT_A1.to_string()
    );
    assert_eq!(counts[0]["stored"], 0);
    assert_eq!(counts[0]["replayed"], 3);
    assert!(dry.stderr.contains("nothing written"), "{dry:#?}");
    assert_eq!(snapshot(&pool).await, before);

    let applied = retrylog(&pool, &["replay"]).await;
    assert_eq!(applied.code, Some(0), "{applied:#?}");
    assert_eq!(retry_count(&pool, variant(JOB_A, VARIANT_A1)).await, 3);
    assert_eq!(retrylog(&pool, &["verify"]).await.code, Some(0));
}

#[sqlx::test(migrations = false)]
async fn record_with_a_malformed_job_id_names_it_on_one_line(pool: PgPool) {
    pipeline(&pool).await;

    assert_user_mistake(
        &pool,
        &["record", "--job-id", "nope", "--reason", "stuck"],
        &["--job-id", "nope"],
    )
    .await;
}

#[sqlx::test(migrations = false)]
async fn record_with_an_unknown_reason_names_it_on_one_line(pool: PgPool) {
    pipeline(&pool).await;

    assert_user_mistake(
        &pool,
        &[
            "record",
            "--job-id",
            &JOB_A.to_string(),
            "--reason",
            "flaky",
        ],
        &["flaky", "manual_recovery"],
    )
    .await;
}

#[sqlx::test(migrations = false)]
async fn record_for_an_unknown_job_names_it_on_one_line(pool: PgPool) {
    pipeline(&pool).await;
    let unknown = Uuid::new_v4().to_string();

    assert_user_mistake(
        &pool,
        &["record", "--job-id", &unknown, "--reason", "stuck"],
        &["unknown job", &unknown],
    )
    .await;
}

#[sqlx::test(migrations = false)]
async fn record_for_an_unknown_variant_names_it_on_one_line(pool: PgPool) {
    pipeline(&pool).await;
    let unknown = Uuid::new_v4().to_string();

    assert_user_mistake(
        &pool,
        &[
            "record",
            "--job-id",
            &JOB_A.to_string(),
            "--variant-id",
            &unknown,
            "--reason",
            "failed",
        ],
        &["unknown variant", &unknown],
    )
    .await;
}

/// A job's id given to --variant-id (or a variant's to --job-id) is said to be one, with the
/// flag it belongs in, by every command that takes a target — not "unknown variant". Through
/// the SQL door the same refusal is RL001, its COLUMN the parameter the id belongs in.
#[sqlx::test(migrations = false)]
async fn an_id_of_the_other_kind_of_target_is_said_to_be_one_with_the_flag_it_belongs_in(
    pool: PgPool,
) {
    pipeline(&pool).await;
    let (job_a, a2) = (JOB_A.to_string(), VARIANT_A2.to_string());
    let a_job = format!("retrylog: {job_a} is a job, not a variant: use --job-id");
    let a_variant = format!("retrylog: {a2} is a variant, not a job: use --variant-id");
    let cases: [(&[&str], String); 7] = [
        (&["history", "--variant-id", &job_a], a_job.clone()),
        (&["history", "--job-id", &a2], a_variant.clone()),
        (
            &["recover", "--variant-id", &job_a, "--note", "x"],
            a_job.clone(),
        ),
        (
            &["recover", "--job-id", &a2, "--note", "x"],
            a_variant.clone(),
        ),
        (
            &[
                "record",
                "--job-id",
                &job_a,
                "--variant-id",
                &job_a,
                "--reason",
                "stuck",
            ],
            a_job.clone(),
        ),
        (
            &[
                "record",
                "--job-id",
                &JOB_B.to_string(),
                "--variant-id",
                &job_a,
                "--reason",
                "stuck",
            ],
            a_job,
        ),
        (
            &["record", "--job-id", &a2, "--reason", "failed"],
            format!("retrylog: {a2} is a variant of job {job_a}, not a job: use --variant-id"),
        ),
    ];
    for (args, line) in cases {
        assert_user_mistake(&pool, args, &[]).await;
        let run = retrylog(&pool, args).await;
        assert_eq!(run.only_problem_line(), line, "{args:?}");
    }
    // A job known only to the log (its row deleted) is still a job.
    sqlx::query("DELETE FROM jobs_variants WHERE job_id = $1")
        .bind(JOB_B)
        .execute(&pool)
        .await
        .unwrap();
    append_ok(&pool, &retry(job(JOB_B))).await;
    sqlx::query("DELETE FROM jobs WHERE job_id = $1")
        .bind(JOB_B)
        .execute(&pool)
        .await
        .unwrap();
    let run = retrylog(&pool, &["history", "--variant-id", &JOB_B.to_string()]).await;
    assert_eq!(
        run.only_problem_line(),
        format!("retrylog: {JOB_B} is a job, not a variant: use --job-id")
    );

    // The SQL door: RL001, the id's kind said, COLUMN the parameter it belongs in.
    let error =
        sqlx::query("SELECT record_retry(job_id => $1, job_variants_id => $1, reason => 'stuck')")
            .bind(JOB_A)
            .execute(&pool)
            .await
            .unwrap_err();
    let db = error.as_database_error().unwrap();
    let pg = db
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .unwrap();
    assert_eq!(
        (pg.code(), pg.message(), pg.column()),
        (
            "RL001",
            format!("{JOB_A} is a job, not a variant").as_str(),
            Some("job_id")
        )
    );
    assert_eq!(
        pg.hint(),
        Some("pass it as job_id, with job_variants_id NULL")
    );
}

#[sqlx::test(migrations = false)]
async fn record_for_a_variant_of_another_job_names_both_on_one_line(pool: PgPool) {
    pipeline(&pool).await;

    assert_user_mistake(
        &pool,
        &[
            "record",
            "--job-id",
            &JOB_A.to_string(),
            "--variant-id",
            &VARIANT_B1.to_string(),
            "--reason",
            "failed",
        ],
        &[
            &VARIANT_B1.to_string(),
            &JOB_B.to_string(),
            &JOB_A.to_string(),
        ],
    )
    .await;
}

#[sqlx::test(migrations = false)]
async fn record_with_a_detail_that_is_not_json_says_so_on_one_line(pool: PgPool) {
    pipeline(&pool).await;

    assert_user_mistake(
        &pool,
        &[
            "record",
            "--job-id",
            &JOB_A.to_string(),
            "--reason",
            "stuck",
            "--detail",
            "{error: timeout",
        ],
        &["--detail", "not valid JSON"],
    )
    .await;
}

#[sqlx::test(migrations = false)]
async fn record_with_a_detail_that_is_not_an_object_says_so_on_one_line(pool: PgPool) {
    pipeline(&pool).await;

    assert_user_mistake(
        &pool,
        &[
            "record",
            "--job-id",
            &JOB_A.to_string(),
            "--reason",
            "stuck",
            "--detail",
            "[1, 2]",
        ],
        &["--detail", "must be a JSON object"],
    )
    .await;
}

#[sqlx::test(migrations = false)]
async fn record_with_an_oversized_detail_says_so_on_one_line(pool: PgPool) {
    pipeline(&pool).await;
    let detail = serde_json::json!({ "log": "x".repeat(20_000) }).to_string();

    assert_user_mistake(
        &pool,
        &[
            "record",
            "--job-id",
            &JOB_A.to_string(),
            "--reason",
            "stuck",
            "--detail",
            &detail,
        ],
        &["detail is", "over the limit of 16384 bytes"],
    )
    .await;
}

#[sqlx::test(migrations = false)]
async fn record_past_the_limit_says_so_on_one_line(pool: PgPool) {
    pipeline(&pool).await;
    append_n(&pool, variant(JOB_A, VARIANT_A2), 3).await;

    assert_user_mistake(
        &pool,
        &[
            "record",
            "--job-id",
            &JOB_A.to_string(),
            "--variant-id",
            &VARIANT_A2.to_string(),
            "--reason",
            "failed",
            "--max-retries",
            "3",
        ],
        &["retry limit reached", &VARIANT_A2.to_string(), "limit 3"],
    )
    .await;
}

/// The refusal at the limit points to `retrylog recover`, the documented way, for the target
/// itself, and the command runs as printed once the note says why; a SQL caller's hint names
/// it and the forced append, and the API names its own recover with the body to send.
#[sqlx::test(migrations = false)]
async fn the_limits_refusal_names_retrylog_recover_for_the_target_which_runs_as_printed(
    pool: PgPool,
) {
    pipeline(&pool).await;
    let a2 = variant(JOB_A, VARIANT_A2);
    append_n(&pool, a2, 3).await;
    let (job_a, variant_a2) = (JOB_A.to_string(), VARIANT_A2.to_string());
    let refused = retrylog(
        &pool,
        &[
            "record",
            "--job-id",
            &job_a,
            "--variant-id",
            &variant_a2,
            "--reason",
            "failed",
        ],
    )
    .await;
    assert_eq!(refused.code, Some(2), "{refused:#?}");
    let command = format!("retrylog recover --variant-id {variant_a2} --note \"why\"");
    assert_eq!(
        refused.only_problem_line(),
        format!(
            "retrylog: retry limit reached: variant {variant_a2} has 3 retries (limit 3); an \
             operator recovers it by hand: {command}"
        )
    );

    // The SQL door's hint: the same command, and the forced append for SQL callers.
    let error = record_via_sql(&mut pool.acquire().await.unwrap(), a2, "failed")
        .await
        .unwrap_err();
    let hint = error
        .as_database_error()
        .and_then(|db| db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>())
        .and_then(|pg| pg.hint())
        .unwrap()
        .to_string();
    assert_eq!(
        hint,
        format!(
            "an operator recovers it by hand: retrylog recover --variant-id {variant_a2} --note \
             'why'; from SQL, record_retry(..., reason => 'manual_recovery', force => true) by a \
             member of retrylog_operator records a recovery made elsewhere"
        )
    );

    // The API names its own way, with the body to send; sent, it recovers the target.
    let api = router(&pool, true);
    let body = json!({"job_id": JOB_A, "variant_id": VARIANT_A2, "reason": "failed"});
    let answer = call(&api, "/api/v1/record", Some(ADMIN), Some(body), &[]).await;
    assert_eq!(answer.status.as_u16(), 400, "{}", answer.json);
    assert_eq!(
        answer.json["error"],
        format!(
            "retry limit reached: variant {variant_a2} has 3 retries (limit 3); an operator \
             recovers it by hand: POST /api/v1/recover with {{\"variant_id\": \"{variant_a2}\", \
             \"note\": \"why\"}}"
        )
    );

    // The command as printed (the program's path for `retrylog`) recovers the target.
    let line = command.replacen(
        "retrylog",
        &format!(
            "'{}' --database-url '{}'",
            env!("CARGO_BIN_EXE_retrylog"),
            database_url(&pool).await
        ),
        1,
    );
    let ran = tokio::process::Command::new("sh")
        .args(["-c", &line])
        .env_remove("DATABASE_URL")
        .output()
        .await
        .unwrap();
    assert!(ran.status.success(), "{line}: {ran:?}");
    assert_eq!(retry_count(&pool, a2).await, 4);
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn record_with_a_stale_expected_attempt_says_so_on_one_line(pool: PgPool) {
    pipeline(&pool).await;
    append_n(&pool, job(JOB_A), 1).await;

    assert_user_mistake(
        &pool,
        &[
            "record",
            "--job-id",
            &JOB_A.to_string(),
            "--reason",
            "stuck",
            "--expected-attempt",
            "1",
        ],
        &["conflict", &JOB_A.to_string(), "next attempt is 2"],
    )
    .await;
}

#[sqlx::test(migrations = false)]
async fn concurrent_record_commands_number_attempts_without_gaps(pool: PgPool) {
    pipeline(&pool).await;
    lift_retry_limit(&pool).await;
    let (job_id, variant_id) = (JOB_A.to_string(), VARIANT_A3.to_string());
    let args = [
        "record",
        "--job-id",
        &job_id,
        "--variant-id",
        &variant_id,
        "--reason",
        "manual_recovery",
        "--format",
        "json",
    ];

    // Eight operators at once: eight processes, each migrating first, then appending.
    let runs = futures::future::join_all((0..8).map(|_| retrylog(&pool, &args))).await;

    let mut attempts: Vec<i64> = runs
        .iter()
        .map(|run| {
            assert_eq!(run.code, Some(0), "{run:#?}");
            run.json()[0]["attempt"].as_i64().unwrap()
        })
        .collect();
    attempts.sort_unstable();
    assert_eq!(attempts, (1..=8).collect::<Vec<_>>());
    assert_eq!(retry_count(&pool, variant(JOB_A, VARIANT_A3)).await, 8);
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn record_with_a_nul_character_in_the_detail_says_so_on_one_line(pool: PgPool) {
    pipeline(&pool).await;

    // Valid JSON, but PostgreSQL's jsonb cannot store U+0000: still the user's mistake.
    assert_user_mistake(
        &pool,
        &[
            "record",
            "--job-id",
            &JOB_A.to_string(),
            "--reason",
            "stuck",
            "--detail",
            r#"{"error": "bad byte \u0000 here"}"#,
        ],
        &["detail"],
    )
    .await;
}

#[sqlx::test(migrations = false)]
async fn record_when_the_database_fails_prints_the_cause_once_and_exits_70(pool: PgPool) {
    pipeline(&pool).await;
    // Not the user's mistake: the pipeline's own trigger refuses every change of a variant.
    load(
        &pool,
        "CREATE FUNCTION pipeline_frozen() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'pipeline is frozen for maintenance'; END $$;
         CREATE TRIGGER jobs_variants_frozen BEFORE UPDATE ON jobs_variants
             FOR EACH ROW EXECUTE FUNCTION pipeline_frozen();",
    )
    .await;
    let before = snapshot(&pool).await;

    let run = retrylog(
        &pool,
        &[
            "record",
            "--job-id",
            &JOB_A.to_string(),
            "--variant-id",
            &VARIANT_A1.to_string(),
            "--reason",
            "stuck",
        ],
    )
    .await;

    assert_eq!(run.code, Some(70), "a fault exits 70: {run:#?}");
    assert!(!run.stderr.contains("panicked"), "{run:#?}");
    let lines = run.problem_lines();
    assert_eq!(lines.len(), 1, "one line on stderr: {lines:#?}");
    assert_eq!(
        lines[0]
            .matches("pipeline is frozen for maintenance")
            .count(),
        1,
        "the cause is said once: {:?}",
        lines[0]
    );
    assert_eq!(snapshot(&pool).await, before);
}
