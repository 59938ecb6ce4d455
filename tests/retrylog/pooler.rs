//! Through pgbouncer in transaction pooling mode (`tests/common/pgbouncer.rs`: a real one of
//! the test's own, `pool_mode = transaction`, a few server connections shared by many
//! clients): the commands, serve's API and concurrent appends work with `--pooler
//! transaction`; without it pgbouncer refuses the connection; what needs a session asks for
//! `--direct-url`.

use axum::http::StatusCode;
use retrylog::config::{DatabaseRoutes, Pooler};
use retrylog::connect::{connect, ConnectSettings, DatabaseUse};
use serde_json::json;
use sqlx::PgPool;

use crate::fixtures::*;
use crate::pgbouncer::Pgbouncer;

/// A pgbouncer in front of the test's server, with `pool_size` server connections.
async fn bouncer(pool: &PgPool, pool_size: u32) -> (Pgbouncer, String) {
    let options = pool.connect_options();
    let bouncer = Pgbouncer::start(
        options.get_host(),
        options.get_port(),
        options.get_username(),
        pool_size,
    );
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
        .unwrap();
    let url = bouncer.url(options.get_username(), &database);
    (bouncer, url)
}

/// Connects as the binary does, to `url`, through a transaction pooler or not.
async fn pooled(url: &str, pooler: Pooler, connections: u32) -> Result<PgPool, String> {
    let settings = ConnectSettings {
        database_url: Some(url.to_string()),
        max_connections: connections,
        database: DatabaseUse::Existing,
        routes: DatabaseRoutes {
            pooler,
            ..DatabaseRoutes::default()
        },
        ..ConnectSettings::default()
    };
    connect(&settings)
        .await
        .map(|connected| connected.pool)
        .map_err(|error| error.to_string())
}

#[sqlx::test(migrations = false)]
async fn without_the_setting_pgbouncer_refuses_the_connection_with_it_connects(pool: PgPool) {
    let (bouncer, url) = bouncer(&pool, 2).await;
    // sqlx's startup parameter extra_float_digits is one pgbouncer 1.18 does not track.
    let refused = pooled(&url, Pooler::None, 1).await.unwrap_err();
    assert!(
        refused.contains("extra_float_digits"),
        "{refused}\n{}",
        bouncer.log()
    );
    let through = pooled(&url, Pooler::Transaction, 1).await.unwrap();
    let one: i32 = sqlx::query_scalar("SELECT $1::int")
        .bind(1)
        .fetch_one(&through)
        .await
        .unwrap();
    assert_eq!(one, 1);
}

#[sqlx::test(migrations = false)]
async fn record_history_report_and_verify_work_through_pgbouncer(pool: PgPool) {
    pipeline(&pool).await;
    let (bouncer, url) = bouncer(&pool, 2).await;
    let through = |args: &[&str]| {
        let mut all = vec!["--pooler", "transaction"];
        all.extend_from_slice(args);
        all.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let (job, a1) = (JOB_A.to_string(), VARIANT_A1.to_string());
    for _ in 0..2 {
        let args = through(&[
            "record",
            "--job-id",
            &job,
            "--variant-id",
            &a1,
            "--reason",
            "stuck",
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = retrylog_at(&url, &args).await;
        assert_eq!(run.code, Some(0), "{}\n{}", run.stderr, bouncer.log());
        assert!(
            run.stderr.contains("through a transaction pooler"),
            "{}",
            run.stderr
        );
    }
    let args = through(&["history", "--variant-id", &a1, "--format", "json"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = retrylog_at(&url, &args).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let attempts: Vec<i64> = run
        .json()
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|row| row["attempt"].as_i64())
        .collect();
    assert_eq!(attempts, [1, 2]);
    for report in [["report", "top-variants"], ["report", "trend"]] {
        let args = through(&[report[0], report[1], "--format", "json"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = retrylog_at(&url, &args).await;
        assert_eq!(run.code, Some(0), "{report:?}: {}", run.stderr);
    }
    let args = through(&["verify"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = retrylog_at(&url, &args).await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert_eq!(retry_count(&pool, variant(JOB_A, VARIANT_A1)).await, 2);
}

#[sqlx::test(migrations = false)]
async fn the_sql_door_works_through_pgbouncer_from_clients_of_every_kind(pool: PgPool) {
    pipeline(&pool).await;
    let (bouncer, url) = bouncer(&pool, 2).await;
    // psql: the simple protocol, one statement one transaction.
    let sql = format!(
        "SELECT attempt FROM record_retry(job_id => '{JOB_A}', job_variants_id => '{VARIANT_A3}', \
         reason => 'stuck', actor => 'psql')"
    );
    for expected in ["1", "2"] {
        let out = tokio::process::Command::new("psql")
            .args([url.as_str(), "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", &sql])
            .output()
            .await
            .expect("psql runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            bouncer.log()
        );
        assert_eq!(stdout.trim(), expected);
    }
    // A pooled client of retrylog's connect, in a transaction of its own as retrylog's writes
    // are (a lone statement would commit only as its connection comes back to the pool).
    let through = pooled(&url, Pooler::Transaction, 2).await.unwrap();
    let mut tx = through.begin().await.unwrap();
    let attempt = record_via_sql(&mut tx, variant(JOB_A, VARIANT_A3), "failed")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(attempt, 3);
    through.close().await;
    assert_gapless(&pool, variant(JOB_A, VARIANT_A3), 3).await;
}

#[sqlx::test(migrations = false)]
async fn a_grant_through_pgbouncer_is_committed_before_the_command_exits(pool: PgPool) {
    pipeline(&pool).await;
    let role = format!(
        "rl_pooled_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    sqlx::query(&format!("CREATE ROLE {role} NOLOGIN"))
        .execute(&pool)
        .await
        .unwrap();
    let (_bouncer, url) = bouncer(&pool, 2).await;
    // GRANT runs outside a transaction of its own: it commits as the checkout ends.
    let run = retrylog_at(&url, &["--pooler", "transaction", "grant", "reader", &role]).await;
    let may_read: bool =
        sqlx::query_scalar("SELECT has_table_privilege($1, 'retry_history', 'SELECT')")
            .bind(&role)
            .fetch_one(&pool)
            .await
            .unwrap();
    sqlx::raw_sql(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(may_read, "the grant was committed");
}

#[sqlx::test(migrations = false)]
async fn migrate_and_serve_through_a_transaction_pooler_need_the_direct_url(pool: PgPool) {
    pipeline(&pool).await;
    let (_bouncer, url) = bouncer(&pool, 2).await;
    for command in ["migrate", "serve", "project"] {
        let run = retrylog_at(&url, &["--pooler", "transaction", command]).await;
        assert_eq!(run.code, Some(2), "{command}: {}", run.stderr);
        assert!(run.stderr.contains("--direct-url"), "{}", run.stderr);
    }
    let direct = database_url(&pool).await;
    let run = retrylog_at(
        &url,
        &[
            "--pooler",
            "transaction",
            "--direct-url",
            &direct,
            "migrate",
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stderr.contains("(--direct-url)"), "{}", run.stderr);
}

#[sqlx::test(migrations = false)]
async fn serves_api_works_through_pgbouncer(pool: PgPool) {
    pipeline(&pool).await;
    let (bouncer, url) = bouncer(&pool, 2).await;
    let through = pooled(&url, Pooler::Transaction, 4).await.unwrap();
    let app = router(&through, true);
    for _ in 0..3 {
        let recorded = call(
            &app,
            "/api/v1/record",
            Some(ADMIN),
            Some(json!({"job_id": JOB_A, "variant_id": VARIANT_A2, "reason": "failed"})),
            &[],
        )
        .await;
        assert_eq!(
            recorded.status,
            StatusCode::CREATED,
            "{}\n{}",
            recorded.json,
            bouncer.log()
        );
    }
    let history = call(
        &app,
        &format!("/api/v1/history?variant_id={VARIANT_A2}"),
        Some(READER),
        None,
        &[],
    )
    .await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.json);
    assert_eq!(
        history.json.as_array().unwrap().len(),
        3,
        "{}",
        history.json
    );
    for uri in [
        "/api/v1/reports/top-jobs",
        "/api/v1/reports/trend",
        "/api/v1/targets",
    ] {
        let answer = call(&app, uri, Some(READER), None, &[]).await;
        assert_eq!(answer.status, StatusCode::OK, "{uri}: {}", answer.json);
    }
    assert_gapless(&pool, variant(JOB_A, VARIANT_A2), 3).await;
    // The trend read the rollup as it stands: no projector lease was taken through the pooler.
    let held: Option<i32> =
        sqlx::query_scalar("SELECT holder_pid FROM projector_lease WHERE holder_pid IS NOT NULL")
            .fetch_optional(&pool)
            .await
            .unwrap();
    assert_eq!(held, None);
    let lag = retrylog::projector::lag(&mut pool.acquire().await.unwrap())
        .await
        .unwrap()
        .events_behind;
    assert_eq!(
        lag, 3,
        "the trend through the pooler did not catch the rollup up"
    );
}

#[sqlx::test(migrations = false)]
async fn concurrent_appends_through_pgbouncer_stay_gapless(pool: PgPool) {
    pipeline(&pool).await;
    lift_retry_limit(&pool).await;
    // Eight clients of two connections each share three server connections.
    let (bouncer, url) = bouncer(&pool, 3).await;
    let target = variant(JOB_A, VARIANT_A1);
    let mut writers = Vec::new();
    for _ in 0..8 {
        let client = pooled(&url, Pooler::Transaction, 2).await.unwrap();
        writers.push(tokio::spawn(async move {
            let mut done = 0;
            while done < 25 {
                match append(&client, &retry(target)).await {
                    Ok(_) => done += 1,
                    // Two writers at the same attempt: the loser is told and retries.
                    Err(retrylog::store::AppendError::Conflict(_)) => {}
                    Err(error) => panic!("append through pgbouncer: {error}"),
                }
            }
            client.close().await;
        }));
    }
    for writer in writers {
        writer
            .await
            .unwrap_or_else(|error| panic!("{error}\n{}", bouncer.log()));
    }
    assert_gapless(&pool, target, 200).await;
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn recover_bulk_recover_and_replay_work_through_pgbouncer(pool: PgPool) {
    pipeline(&pool).await;
    a2_needs_intervention(&pool).await;
    append_n(&pool, variant(JOB_A, VARIANT_A1), 2).await;
    // One server connection: every command's statements share it with whatever ran before.
    let (bouncer, url) = bouncer(&pool, 1).await;
    let run = |args: &'static [&'static str]| {
        let url = url.clone();
        async move {
            let mut all = vec!["--pooler", "transaction"];
            all.extend_from_slice(args);
            retrylog_at(&url, &all).await
        }
    };

    let dry = run(&[
        "recover",
        "--state",
        "needs_intervention",
        "--note",
        "fixed upstream",
        "--dry-run",
        "--format",
        "json",
    ])
    .await;
    assert_eq!(dry.code, Some(0), "{dry:#?}\n{}", bouncer.log());
    assert_eq!(dry.json()["targets"][0]["attempt"], 3, "{dry:#?}");
    let bulk = run(&[
        "recover",
        "--state",
        "needs_intervention",
        "--note",
        "fixed upstream",
        "--by",
        "ops:bo",
    ])
    .await;
    assert_eq!(bulk.code, Some(0), "{bulk:#?}\n{}", bouncer.log());
    assert_eq!(retry_count(&pool, variant(JOB_A, VARIANT_A2)).await, 4);

    let single = run(&[
        "recover",
        "--job-id",
        "0b000000-0000-4000-8000-000000000000",
        "--note",
        "restarted by hand",
        "--by",
        "ops:bo",
    ])
    .await;
    assert_eq!(single.code, Some(0), "{single:#?}\n{}", bouncer.log());
    let reason: String = sqlx::query_scalar(
        "SELECT reason::text FROM retry_history WHERE job_id = $1 AND job_variants_id IS NULL
          ORDER BY seq DESC LIMIT 1",
    )
    .bind(JOB_B)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(reason, "manual_recovery");

    // Counts wiped behind retrylog's back: replay through the pooler rebuilds them.
    sqlx::query("UPDATE jobs_variants SET retry_count = 0")
        .execute(&pool)
        .await
        .unwrap();
    let replay = run(&["replay", "--format", "json"]).await;
    assert_eq!(replay.code, Some(0), "{replay:#?}\n{}", bouncer.log());
    assert_eq!(retry_count(&pool, variant(JOB_A, VARIANT_A1)).await, 2);
    assert_eq!(retry_count(&pool, variant(JOB_A, VARIANT_A2)).await, 4);
    let verify = run(&["verify"]).await;
    assert_eq!(verify.code, Some(0), "{verify:#?}");
}
