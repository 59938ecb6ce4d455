//! Trust under real privileges (docs/security.md): fresh LOGIN roles, each granted one
//! capability, connect to the test's database and try what issue 9's findings 1-7 did.
//! Refused attempts write nothing (snapshot before and after); allowed ones are done.

use retrylog::event::{CanonicalEvent, RetryReason, GENESIS_HASH};
use retrylog::projector;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::fixtures::*;

/// A LOGIN role made for one test, with a name no other run uses (roles are cluster-wide),
/// dropped when the guard goes — also when the test fails — after its sessions are ended.
pub struct TestRole {
    pub name: String,
    /// A pool logged in as the role, on the test's database.
    pub pool: PgPool,
    admin: PgConnectOptions,
}

impl TestRole {
    /// Creates the role and grants it `capabilities` through `retrylog grant`'s library call.
    pub async fn create(admin: &PgPool, capabilities: &[retrylog::grant::Capability]) -> Self {
        let name = format!("rl_test_{}", &Uuid::new_v4().simple().to_string()[..12]);
        sqlx::query(&format!("CREATE ROLE {name} LOGIN"))
            .execute(admin)
            .await
            .expect("the test role is created");
        let admin_options = (*admin.connect_options()).clone();
        // The guard exists from here on: a failing grant still drops the role.
        let mut role = TestRole {
            pool: PgPoolOptions::new()
                .max_connections(2)
                .connect_lazy_with(admin_options.clone().username(&name)),
            name,
            admin: admin_options,
        };
        let mut conn = admin.acquire().await.unwrap();
        for capability in capabilities {
            retrylog::grant::grant(&mut conn, *capability, &role.name)
                .await
                .expect("the capability is granted");
        }
        role.pool = PgPoolOptions::new()
            .max_connections(2)
            .connect_with(role.admin.clone().username(&role.name))
            .await
            .expect("the test role logs in");
        role
    }

    /// A URL for the binary, logged in as this role on the test's database.
    pub async fn url(&self, admin: &PgPool) -> String {
        let url = database_url(admin).await;
        let user = admin.connect_options().get_username().to_string();
        url.replacen(&format!("//{user}@"), &format!("//{}@", self.name), 1)
    }
}

impl Drop for TestRole {
    /// Ends the role's sessions (so that the test database can be dropped too) and drops it.
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = self.admin.clone();
        clean_up_from_drop(&format!("the test role {name}"), async move {
            use sqlx::Connection;
            let mut conn = PgConnection::connect_with(&admin).await?;
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
            )
            .bind(&name)
            .execute(&mut conn)
            .await?;
            // Its direct grants in the test's database go first (a role that holds a
            // privilege cannot be dropped); memberships go with the role.
            sqlx::query(&format!("DROP OWNED BY {name}"))
                .execute(&mut conn)
                .await?;
            sqlx::query(&format!("DROP ROLE IF EXISTS {name}"))
                .execute(&mut conn)
                .await?;
            conn.close().await
        });
    }
}

use retrylog::grant::Capability::{Operator, Pipeline, Reader, Writer};

/// `retrylog serve --no-watchdog` (its projector alone) on the test's database, its stderr
/// piped for the log; killed if the test ends without stopping it.
pub async fn serve_projector_only(pool: &PgPool) -> tokio::process::Child {
    serve_command(pool, &["--no-watchdog", "--no-http"])
        .await
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("retrylog serve starts")
}

/// The SQLSTATE of an error a role's statement got.
fn code_of(error: &sqlx::Error) -> String {
    database_error(error).0
}

/// insufficient_privilege.
const DENIED: &str = "42501";

/// Runs each statement on `pool` (a role's) and asserts PostgreSQL refused it for want of a
/// privilege: not some other error that would hide a grant too many.
pub(crate) async fn assert_denied(pool: &PgPool, statements: &[&str]) {
    for statement in statements {
        let error = sqlx::query(statement)
            .execute(pool)
            .await
            .expect_err(statement);
        assert_eq!(code_of(&error), DENIED, "{statement}: {error}");
    }
}

#[sqlx::test(migrations = false)]
async fn a_writer_appends_through_the_door_and_the_event_names_its_database_role(pool: PgPool) {
    pipeline(&pool).await;
    let writer = TestRole::create(&pool, &[Writer]).await;
    let (attempt, db_role, actor): (i32, String, String) = sqlx::query_as(
        "SELECT attempt, db_role, actor FROM record_retry(job_id => $1, reason => 'stuck',
                actor => 'pipeline-worker-7')",
    )
    .bind(JOB_A)
    .fetch_one(&writer.pool)
    .await
    .expect("a writer may append");
    assert_eq!(
        (attempt, db_role.as_str(), actor.as_str()),
        (1, writer.name.as_str(), "pipeline-worker-7")
    );
    assert_eq!(retry_count(&pool, job(JOB_A)).await, 1);
    assert_verify_clean(&pool).await;

    // It reads its own rows, and only those.
    append_ok(&pool, &retry(job(JOB_B))).await;
    let visible: Vec<String> = sqlx::query_scalar("SELECT db_role FROM retry_history")
        .fetch_all(&writer.pool)
        .await
        .expect("a writer reads its own rows");
    assert_eq!(visible, vec![writer.name.clone()]);

    let history = retrylog(
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
    assert_eq!(history.code, Some(0), "{history:#?}");
    assert_eq!(history.json()[0]["db_role"], json!(writer.name));
}

#[sqlx::test(migrations = false)]
async fn a_writer_cannot_forge_an_event_with_a_valid_hash_nor_bump_a_count(pool: PgPool) {
    pipeline(&pool).await;
    append_ok(&pool, &retry(job(JOB_A))).await;
    let writer = TestRole::create(&pool, &[Writer, Pipeline]).await;
    let before = snapshot(&pool).await;

    // A back-dated event under another actor, its hash computed exactly as verify would.
    let (previous, event_id) = (
        sqlx::query_scalar::<_, Vec<u8>>("SELECT hash FROM retry_history WHERE job_id = $1")
            .bind(JOB_A)
            .fetch_one(&pool)
            .await
            .unwrap(),
        Uuid::new_v4(),
    );
    let occurred_at = chrono::Utc::now() - chrono::Duration::days(30);
    let forged = CanonicalEvent {
        event_id,
        job_id: JOB_A,
        job_variants_id: None,
        reason: RetryReason::ManualRecovery,
        step: Some("segment"),
        from_status: Some("running"),
        to_status: None,
        attempt: 2,
        actor: "alice",
        occurred_at,
        detail_text: "{}",
        db_role: None,
    };
    let insert = sqlx::query(
        "INSERT INTO retry_history (event_id, job_id, reason, step, from_status, attempt, actor,
                                    occurred_at, hash)
         VALUES ($1, $2, 'manual_recovery', 'segment', 'running', 2, 'alice', $3, $4)",
    )
    .bind(event_id)
    .bind(JOB_A)
    .bind(occurred_at)
    .bind(forged.hash(&previous).to_vec())
    .execute(&writer.pool)
    .await
    .expect_err("a writer may not insert into the log");
    assert_eq!(code_of(&insert), DENIED, "{insert}");

    let bump = sqlx::query("UPDATE jobs SET retry_count = retry_count + 1 WHERE job_id = $1")
        .bind(JOB_A)
        .execute(&writer.pool)
        .await
        .expect_err("retry_count is not the pipeline's column");
    assert_eq!(code_of(&bump), DENIED, "{bump}");

    // A writer may call record_retry only, and has no DML on retrylog's tables.
    assert_denied(
        &writer.pool,
        &[
            "SELECT retry_counts_apply(1, 1)",
            "SELECT retry_event_hash('\\x00', 'x')",
            "SELECT retry_rollup_reset()",
            "SELECT * FROM retry_counts_rebuild()",
            "UPDATE retry_history SET actor = 'mallory'",
            "DELETE FROM retry_history",
            "INSERT INTO retry_opening_balance (job_id, balance) VALUES ('0a000000-0000-4000-8000-000000000000', 5)",
            "UPDATE retrylog_settings SET max_retries = NULL",
            "UPDATE projector_lease SET holder_pid = 1",
        ],
    )
    .await;
    // What the pipeline may do, it can.
    sqlx::query("UPDATE jobs SET updated_at = now() WHERE job_id = $1")
        .bind(JOB_B)
        .execute(&writer.pool)
        .await
        .expect("the pipeline's own columns stay writable");
    let after = snapshot(&pool).await;
    assert_eq!(before.retry_history, after.retry_history);
    assert_eq!(before.retry_opening_balance, after.retry_opening_balance);
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn a_temporary_retrylog_settings_does_not_lift_the_limit_for_anyone(pool: PgPool) {
    pipeline(&pool).await;
    append_n(&pool, job(JOB_A), 3).await;
    let writer = TestRole::create(&pool, &[Writer]).await;
    let before = snapshot(&pool).await;
    let mut conn = writer.pool.acquire().await.unwrap();
    sqlx::raw_sql(
        "CREATE TEMP TABLE retrylog_settings (max_retries int);
         INSERT INTO retrylog_settings VALUES (NULL);
         CREATE TEMP TABLE jobs (job_id uuid, status text, current_step text, retry_count int);",
    )
    .execute(&mut *conn)
    .await
    .expect("any role may create temporary tables");
    let refused = record_via_sql(&mut conn, job(JOB_A), "stuck")
        .await
        .expect_err("the 4th retry of a target at 3/3 is refused");
    assert_eq!(code_of(&refused), "RL004", "{refused}");
    drop(conn);
    assert_eq!(before, snapshot(&pool).await);
}

#[sqlx::test(migrations = false)]
async fn force_is_refused_to_a_writer_and_recorded_for_an_operator(pool: PgPool) {
    pipeline(&pool).await;
    append_n(&pool, job(JOB_A), 3).await;
    let writer = TestRole::create(&pool, &[Writer]).await;
    let operator = TestRole::create(&pool, &[Operator]).await;
    let force = "SELECT detail FROM record_retry(job_id => $1, reason => 'manual_recovery',
                        actor => 'ops-oncall', force => true)";
    let before = snapshot(&pool).await;
    let refused = sqlx::query_scalar::<_, serde_json::Value>(force)
        .bind(JOB_A)
        .fetch_one(&writer.pool)
        .await
        .expect_err("force is the operator's");
    let (code, message) = database_error(&refused);
    assert_eq!(code, DENIED, "{message}");
    assert!(message.contains("retrylog_operator"), "{message}");
    assert_eq!(before, snapshot(&pool).await);

    // Through the binary: exit 2, the same reason.
    let run = retrylog_at(
        &writer.url(&pool).await,
        &[
            "record",
            "--job-id",
            &JOB_A.to_string(),
            "--reason",
            "manual_recovery",
            "--force",
        ],
    )
    .await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(run.stderr.contains("operator capability"), "{run:#?}");
    assert_eq!(before, snapshot(&pool).await);

    let detail = sqlx::query_scalar::<_, serde_json::Value>(force)
        .bind(JOB_A)
        .fetch_one(&operator.pool)
        .await
        .expect("an operator may force");
    assert_eq!(detail["forced_past_limit"], json!(3));
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn replay_by_a_writer_is_refused_and_writes_nothing_and_an_operator_may(pool: PgPool) {
    pipeline(&pool).await;
    append_n(&pool, job(JOB_A), 2).await;
    let writer = TestRole::create(&pool, &[Writer]).await;
    let operator = TestRole::create(&pool, &[Operator]).await;
    let before = snapshot(&pool).await;
    let checkpoint = checkpoint(&pool).await;
    let run = retrylog_at(&writer.url(&pool).await, &["replay"]).await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert_eq!(
        run.only_problem_line(),
        needs("replay", "operator", &writer.name)
    );
    assert_eq!(before, snapshot(&pool).await);
    assert_eq!(checkpoint, self::checkpoint(&pool).await);

    // Counts rebuilt by an operator: the drift a superuser made is repaired.
    sqlx::query("UPDATE jobs SET retry_count = 9 WHERE job_id = $1")
        .bind(JOB_A)
        .execute(&pool)
        .await
        .unwrap();
    let run = retrylog_at(&operator.url(&pool).await, &["replay"]).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(retry_count(&pool, job(JOB_A)).await, 2);
    assert_verify_clean(&pool).await;
}

/// The rollup's checkpoint and lease, to show a command moved neither.
async fn checkpoint(pool: &PgPool) -> (String, Option<i32>) {
    sqlx::query_as(
        "SELECT c.position::text, l.holder_pid FROM projection_checkpoint c
           JOIN projector_lease l USING (projection)",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn every_read_command_runs_as_a_reader_and_writes_nothing(pool: PgPool) {
    pipeline(&pool).await;
    append_n(&pool, variant(JOB_A, VARIANT_A2), 2).await;
    append_ok(
        &pool,
        &retry(job(JOB_B)).with_detail(json!({"scenario": "failed_variant"})),
    )
    .await;
    let reader = TestRole::create(&pool, &[Reader]).await;
    let url = reader.url(&pool).await;
    let before = snapshot(&pool).await;
    let checkpoint = checkpoint(&pool).await;
    let job_a = JOB_A.to_string();
    let a2 = VARIANT_A2.to_string();
    for (args, code) in [
        (vec!["status"], 0),
        (vec!["verify"], 0),
        (vec!["history", "--job-id", &job_a], 0),
        (vec!["history", "--variant-id", &a2, "--format", "json"], 0),
        (vec!["report", "top-jobs"], 0),
        (vec!["report", "top-variants"], 0),
        (vec!["report", "stats"], 0),
        (vec!["report", "alerts"], 0),
        (
            vec!["report", "trend", "--since", "1h", "--bucket", "hour"],
            0,
        ),
        (vec!["report", "trend", "--since", "1h", "--as-of", "1m"], 0),
        (vec!["report", "outcomes", "--by", "attempt"], 0),
        (vec!["report", "outcomes", "--as-of", "1m"], 0),
    ] {
        let run = retrylog_at(&url, &args).await;
        assert_eq!(run.code, Some(code), "{args:?} as a reader: {run:#?}");
        assert!(
            !run.stderr.contains("permission denied"),
            "{args:?}: {run:#?}"
        );
    }
    assert_eq!(before, snapshot(&pool).await);
    assert_eq!(
        checkpoint,
        self::checkpoint(&pool).await,
        "a reader's trend ran no batch"
    );

    // And the reader can write nothing itself.
    assert_denied(
        &reader.pool,
        &[
            "INSERT INTO retry_rollup_created VALUES (now(), 'job', 1)",
            "UPDATE projection_checkpoint SET position = '1'",
            "UPDATE jobs SET retry_count = 0",
            "DELETE FROM retry_intervention",
            "DELETE FROM retry_open",
            "INSERT INTO retry_outcome (seq, outcome, resolved_at, observed_by, evidence)
             VALUES (1, 'recovered', now(), 'reader', '{}')",
            "SELECT retry_outcome_observe(ARRAY['segment'], 'reader', NULL)",
        ],
    )
    .await;
    let error = record_via_sql(
        &mut reader.pool.acquire().await.unwrap(),
        job(JOB_A),
        "stuck",
    )
    .await
    .expect_err("a reader may not append");
    assert_eq!(code_of(&error), DENIED, "{error}");
    assert_eq!(before, snapshot(&pool).await);
}

#[sqlx::test(migrations = false)]
async fn only_the_operator_can_take_the_projectors_lease_and_status_names_its_holder(pool: PgPool) {
    pipeline(&pool).await;
    let reader = TestRole::create(&pool, &[Reader]).await;
    let writer = TestRole::create(&pool, &[Writer]).await;
    let operator = TestRole::create(&pool, &[Operator]).await;
    for role in [&reader, &writer] {
        let mut conn = role.pool.acquire().await.unwrap();
        let error = projector::try_lead(&mut conn)
            .await
            .expect_err("the lease is the operator's");
        assert_eq!(code_of(&error), DENIED, "{}: {error}", role.name);
        // An advisory lock a hostile role takes stalls nothing any more.
        sqlx::query("SELECT pg_try_advisory_lock(125762666325360)")
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    let mut leader = operator.pool.acquire().await.unwrap().detach();
    sqlx::query("SET application_name = 'ops projector'")
        .execute(&mut leader)
        .await
        .unwrap();
    assert!(projector::try_lead(&mut leader).await.unwrap());
    append_n(&pool, job(JOB_A), 1).await;
    let run = retrylog(&pool, &["status", "--format", "json"]).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let rollup = &run.json()[1];
    assert_eq!(rollup["runner_role"], json!(operator.name), "{run:#?}");
    assert!(
        rollup["runner"].as_str().unwrap().contains("ops projector"),
        "{run:#?}"
    );
    assert_eq!(rollup["state"], json!("ok"));
    // A runner that stops renewing its lease shows as stalled.
    sqlx::query("UPDATE projector_lease SET renewed_at = now() - interval '5 minutes'")
        .execute(&pool)
        .await
        .unwrap();
    let run = retrylog(&pool, &["status", "--format", "json"]).await;
    assert!(
        run.json()[1]["state"]
            .as_str()
            .unwrap()
            .starts_with("stalled"),
        "{run:#?}"
    );
    let schema = retrylog::migrate::MIGRATOR
        .iter()
        .map(|migration| migration.version)
        .max()
        .unwrap();
    assert!(
        run.stderr.contains(&format!(
            "schema at migration {schema} of {schema}: current"
        )),
        "{run:#?}"
    );

    // The operator's own `project` runs no batch while another session leads; once it
    // resigns, an operator's project catches the rollup up.
    projector::resign(&mut leader).await.unwrap();
    let run = retrylog_at(&operator.url(&pool).await, &["project", "--format", "json"]).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(run.json()[0]["applied"], json!(1), "{run:#?}");
    leader.close().await.unwrap();
}

/// `project` as a role that may not run the projector (a reader, a writer) says so — the role,
/// the operator capability, `retrylog grant operator ROLE` — and exits 2, instead of exit 0
/// and "another instance runs the projector" while `status` shows none. It runs no batch and
/// writes nothing; once granted the operator capability, the same role's project catches up.
#[sqlx::test(migrations = false)]
async fn project_as_a_role_without_the_operator_capability_names_the_grant_and_exits_2(
    pool: PgPool,
) {
    pipeline(&pool).await;
    append_n(&pool, job(JOB_A), 1).await;
    let reader = TestRole::create(&pool, &[Reader]).await;
    let writer = TestRole::create(&pool, &[Writer]).await;
    let before = snapshot(&pool).await;
    let checkpoint = checkpoint(&pool).await;
    for role in [&reader, &writer] {
        let run = retrylog_at(&role.url(&pool).await, &["project"]).await;
        assert_eq!(run.code, Some(2), "{}: {run:#?}", role.name);
        assert_eq!(
            run.only_problem_line(),
            needs("project", "operator", &role.name)
        );
    }
    assert_eq!(before, snapshot(&pool).await);
    assert_eq!(checkpoint, self::checkpoint(&pool).await, "no batch ran");

    // The grant the message names, run as printed, is all the reader lacked.
    let grant = retrylog(&pool, &["grant", "operator", &reader.name]).await;
    assert_eq!(grant.code, Some(0), "{grant:#?}");
    let run = retrylog_at(&reader.url(&pool).await, &["project", "--format", "json"]).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(run.json()[0]["applied"], json!(1), "{run:#?}");
}

/// The line a command refused for want of a capability prints.
fn needs(command: &str, capability: &str, role: &str) -> String {
    format!(
        "retrylog: {command} needs the {capability} capability, which role {role} lacks: \
         retrylog grant {capability} {role} (as the schema owner)"
    )
}

/// Every command a reader or a writer may try and be refused — record as a reader, record
/// --force, recover and replay as either, the reads as a writer, anything as a role with
/// another capability — says which capability it needs and the grant that gives it, and
/// exits 2, instead of PostgreSQL's `permission denied for table jobs` and exit 70. `recover`
/// needs two: the operator's force and the pipeline's right to change the target's status.
/// Nothing is written; the grants run as printed are all the role lacked.
#[sqlx::test(migrations = false)]
async fn every_refusal_for_lack_of_rights_names_the_capability_and_its_grant_and_exits_2(
    pool: PgPool,
) {
    pipeline(&pool).await;
    append_n(&pool, job(JOB_A), 3).await;
    let reader = TestRole::create(&pool, &[Reader]).await;
    let writer = TestRole::create(&pool, &[Writer]).await;
    let operator = TestRole::create(&pool, &[Operator]).await;
    let pipeline_role = TestRole::create(&pool, &[Pipeline]).await;
    let before = snapshot(&pool).await;
    let checkpoint = checkpoint(&pool).await;
    let (job_a, a2) = (JOB_A.to_string(), VARIANT_A2.to_string());
    let record = ["record", "--job-id", &job_a, "--reason", "stuck"];
    let force = [
        "record",
        "--job-id",
        &job_a,
        "--reason",
        "manual_recovery",
        "--force",
    ];
    let recover_job = ["recover", "--job-id", &job_a, "--note", "by hand"];
    let recover_variant = ["recover", "--variant-id", &a2, "--note", "by hand"];
    let history = ["history", "--job-id", &job_a];
    let recover_needs = |role: &TestRole| {
        format!(
            "retrylog: recover needs the operator and pipeline capabilities, which role {0} \
             lacks: retrylog grant operator {0} and retrylog grant pipeline {0} (as the schema \
             owner)",
            role.name
        )
    };
    let mut cases: Vec<(&TestRole, &[&str], String)> = vec![
        (&reader, &record, needs("record", "writer", &reader.name)),
        (
            &reader,
            &force,
            needs("record --force", "operator", &reader.name),
        ),
        (&reader, &recover_job, recover_needs(&reader)),
        (&reader, &recover_variant, recover_needs(&reader)),
        (
            &reader,
            &["replay"],
            needs("replay", "operator", &reader.name),
        ),
        (
            &reader,
            &["replay", "--dry-run"],
            needs("replay --dry-run", "operator", &reader.name),
        ),
        (
            &writer,
            &force,
            needs("record --force", "operator", &writer.name),
        ),
        (&writer, &recover_job, recover_needs(&writer)),
        (&writer, &recover_variant, recover_needs(&writer)),
        (
            &writer,
            &["replay"],
            needs("replay", "operator", &writer.name),
        ),
        (&writer, &history, needs("history", "reader", &writer.name)),
        (
            &writer,
            &["verify"],
            needs("verify", "reader", &writer.name),
        ),
        (
            &writer,
            &["status"],
            needs("status", "reader", &writer.name),
        ),
        (
            &operator,
            &recover_variant,
            format!(
                "retrylog: recover needs the operator and pipeline capabilities; role {0} lacks \
                 pipeline: retrylog grant pipeline {0} (as the schema owner)",
                operator.name
            ),
        ),
        (
            &pipeline_role,
            &history,
            needs("history", "reader", &pipeline_role.name),
        ),
        (
            &pipeline_role,
            &record,
            needs("record", "writer", &pipeline_role.name),
        ),
    ];
    let reports = [
        ["report", "top-jobs"],
        ["report", "top-variants"],
        ["report", "stats"],
        ["report", "alerts"],
        ["report", "trend"],
        ["report", "outcomes"],
    ];
    for args in &reports {
        let command = args.join(" ");
        cases.push((&writer, args, needs(&command, "reader", &writer.name)));
    }
    for (role, args, expected) in cases {
        let run = retrylog_at(&role.url(&pool).await, args).await;
        assert_eq!(run.code, Some(2), "{args:?} as {}: {run:#?}", role.name);
        // `status` says where the schema stands before it reads the projections.
        let problems: Vec<&str> = run
            .problem_lines()
            .into_iter()
            .filter(|line| !line.starts_with("retrylog: schema at migration"))
            .collect();
        assert_eq!(problems, [expected], "{args:?} as {}", role.name);
    }
    assert_eq!(before, snapshot(&pool).await);
    assert_eq!(checkpoint, self::checkpoint(&pool).await, "no batch ran");

    // The grants as printed are what the reader lacked to recover.
    for capability in ["operator", "pipeline"] {
        let grant = retrylog(&pool, &["grant", capability, &reader.name]).await;
        assert_eq!(grant.code, Some(0), "{grant:#?}");
    }
    let run = retrylog_at(&reader.url(&pool).await, &recover_variant).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
}

#[sqlx::test(migrations = false)]
async fn read_commands_on_a_database_that_is_behind_name_retrylog_migrate_and_create_nothing(
    pool: PgPool,
) {
    for args in [
        vec![
            "history",
            "--job-id",
            "0a000000-0000-4000-8000-000000000000",
        ],
        vec!["verify"],
        vec!["report", "stats"],
        vec![
            "record",
            "--job-id",
            "0a000000-0000-4000-8000-000000000000",
            "--reason",
            "stuck",
        ],
        vec!["status"],
    ] {
        let run = retrylog(&pool, &args).await;
        assert_eq!(run.code, Some(2), "{args:?}: {run:#?}");
        assert!(
            run.stderr.contains("retrylog migrate"),
            "{args:?}: {run:#?}"
        );
    }
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class WHERE relnamespace = current_schema()::regnamespace",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 0, "no read command migrated");
}

#[sqlx::test(migrations = false)]
async fn grant_is_idempotent_prints_its_grant_and_refuses_unknown_roles_and_capabilities(
    pool: PgPool,
) {
    migrated(&pool).await;
    let role = TestRole::create(&pool, &[]).await;
    for _ in 0..2 {
        let run = retrylog(&pool, &["grant", "reader", &role.name]).await;
        assert_eq!(run.code, Some(0), "{run:#?}");
        assert_eq!(
            run.stdout.trim(),
            format!("GRANT retrylog_reader TO {};", role.name)
        );
    }
    let member: bool = sqlx::query_scalar("SELECT pg_has_role($1, 'retrylog_reader', 'MEMBER')")
        .bind(&role.name)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(member);
    let run = retrylog(&pool, &["grant", "writer", "rl_test_no_such_role"]).await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(run.stderr.contains("unknown role"), "{run:#?}");
    let run = retrylog(&pool, &["grant", "admin", &role.name]).await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(
        run.stderr
            .contains("expected writer, operator, reader or pipeline"),
        "{run:#?}"
    );
    // A writer may not hand out capabilities.
    let writer = TestRole::create(&pool, &[Writer]).await;
    let run = retrylog_at(
        &writer.url(&pool).await,
        &["grant", "operator", &writer.name],
    )
    .await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(run.stderr.contains("not permitted"), "{run:#?}");
}

#[sqlx::test(migrations = false)]
async fn a_long_scenario_or_a_defaulted_step_is_bounded_at_the_door(pool: PgPool) {
    pipeline(&pool).await;
    let long_step = format!("{}\n\u{1b}[31m", "s".repeat(312));
    sqlx::query("UPDATE jobs SET current_step = $2 WHERE job_id = $1")
        .bind(JOB_B)
        .bind(&long_step)
        .execute(&pool)
        .await
        .unwrap();
    let before = snapshot(&pool).await;
    let scenario = json!({"scenario": "x".repeat(2700)});
    let error = append(&pool, &retry(job(JOB_A)).with_detail(scenario))
        .await
        .expect_err("a 2.7 KB scenario is refused");
    assert!(error.to_string().contains("detail.scenario"), "{error}");
    let error = append(&pool, &retry(job(JOB_B)))
        .await
        .expect_err("the defaulted step follows the same rule");
    let message = error.to_string();
    assert!(
        message.contains("step (the target's current_step)"),
        "{message}"
    );
    assert!(
        !message.contains('\n') && !message.contains('\u{1b}'),
        "{message}"
    );
    assert_eq!(before, snapshot(&pool).await);
}

#[sqlx::test(migrations = false)]
async fn an_oversized_key_stored_before_the_bound_does_not_jam_the_rollup(pool: PgPool) {
    pipeline(&pool).await;
    // An event as an earlier release accepted it: a 2.7 KB scenario, hashed under v1.
    let event_id = Uuid::new_v4();
    let detail = json!({"scenario": "x".repeat(2700)});
    let occurred_at =
        chrono::DateTime::from_timestamp_micros(chrono::Utc::now().timestamp_micros()).unwrap();
    let detail_text: String = sqlx::query_scalar("SELECT $1::jsonb::text")
        .bind(&detail)
        .fetch_one(&pool)
        .await
        .unwrap();
    let event = CanonicalEvent {
        event_id,
        job_id: JOB_A,
        job_variants_id: None,
        reason: RetryReason::Stuck,
        step: Some("segment"),
        from_status: Some("running"),
        to_status: None,
        attempt: 1,
        actor: "old-release",
        occurred_at,
        detail_text: &detail_text,
        db_role: None,
    };
    sqlx::query(
        "INSERT INTO retry_history (event_id, job_id, reason, step, from_status, attempt, actor,
                                    detail, occurred_at, hash)
         VALUES ($1, $2, 'stuck', 'segment', 'running', 1, 'old-release', $3, $4, $5);
         ",
    )
    .bind(event_id)
    .bind(JOB_A)
    .bind(&detail)
    .bind(occurred_at)
    .bind(event.hash(&GENESIS_HASH).to_vec())
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("UPDATE jobs SET retry_count = 1 WHERE job_id = $1")
        .bind(JOB_A)
        .execute(&pool)
        .await
        .unwrap();
    // Migration 0009 would have found it the target's open retry, as the rebuild does.
    sqlx::query("SELECT retry_open_rebuild()")
        .execute(&pool)
        .await
        .unwrap();
    // The stream goes on in format v2, chained on the v1 hash: verify checks both formats.
    let next = append_ok(&pool, &retry(job(JOB_A))).await;
    assert_eq!(next.attempt, 2);
    assert!(next.db_role.is_some(), "{next:?}");
    for args in [
        vec!["project"],
        vec!["report", "trend", "--since", "1h", "--by", "scenario"],
        vec!["replay", "--projection", "retry_rollup"],
        vec!["verify"],
    ] {
        let run = retrylog(&pool, &args).await;
        assert_eq!(run.code, Some(0), "{args:?}: {run:#?}");
    }
}

#[sqlx::test(migrations = false)]
async fn a_projection_that_cannot_advance_is_reported_by_verify_and_status(pool: PgPool) {
    pipeline(&pool).await;
    // A fault the rollup will meet on every try: a constraint that refuses one row.
    sqlx::query(
        "ALTER TABLE retry_rollup ADD CONSTRAINT jammed CHECK (scenario <> 'jam') NOT VALID",
    )
    .execute(&pool)
    .await
    .unwrap();
    let event = append_ok(
        &pool,
        &retry(job(JOB_A)).with_detail(json!({"scenario": "jam"})),
    )
    .await;
    let run = retrylog(&pool, &["project"]).await;
    assert_eq!(run.code, Some(70), "{run:#?}");
    assert!(run.stderr.contains("jammed"), "the real cause: {run:#?}");

    let run = retrylog(&pool, &["verify", "--format", "json"]).await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    let rows = run.json()["mismatches"].clone();
    let stuck = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["problem"] == json!("projection_stuck"))
        .unwrap_or_else(|| panic!("verify names the stuck projection: {run:#?}"));
    let message = stuck["message"].as_str().unwrap();
    assert!(
        message.starts_with("retry_rollup cannot advance: checkpoint txid "),
        "{message}"
    );
    assert!(
        message.contains(&format!("stops at event seq {}", event.seq)),
        "{message}"
    );

    let run = retrylog(&pool, &["status", "--format", "json"]).await;
    assert!(
        run.json()[1]["state"]
            .as_str()
            .unwrap()
            .starts_with("cannot advance"),
        "{run:#?}"
    );
    // serve's projector meets it too, and logs the real cause, not a lost connection.
    let started: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let mut serve = serve_projector_only(&pool).await;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let failed_since: bool =
            sqlx::query_scalar("SELECT coalesce(failed_at > $1, false) FROM projector_lease")
                .bind(started)
                .fetch_one(&pool)
                .await
                .unwrap();
        if failed_since {
            break;
        }
        assert!(serve.try_wait().unwrap().is_none(), "serve exited");
        assert!(
            std::time::Instant::now() < until,
            "serve's projector never tried the batch"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let output = stop_serve(serve).await;
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains("projector batch failed") && log.contains("jammed"),
        "{log}"
    );
    assert!(!log.contains("lost its connection"), "{log}");

    // Once the fault is gone, the next batch succeeds and clears it.
    sqlx::query("ALTER TABLE retry_rollup DROP CONSTRAINT jammed")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(retrylog(&pool, &["project"]).await.code, Some(0));
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn detail_is_read_back_exactly_as_stored_whatever_its_numbers(pool: PgPool) {
    pipeline(&pool).await;
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query(
        "SELECT record_retry(job_id => $1, job_variants_id => $2, reason => 'failed',
                detail => '{\"n\": 1e400, \"tiny\": 1e-400, \"exact\": 0.1000000000000000000001}')",
    )
    .bind(JOB_A)
    .bind(VARIANT_A2)
    .execute(&mut *conn)
    .await
    .expect("jsonb holds any numeric");
    let stored: String = sqlx::query_scalar("SELECT detail::text FROM retry_history")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    for args in [
        vec![
            "history",
            "--variant-id",
            &VARIANT_A2.to_string(),
            "--format",
            "json",
        ],
        vec![
            "history",
            "--job-id",
            &JOB_A.to_string(),
            "--format",
            "json",
        ],
    ] {
        let run = retrylog(&pool, &args).await;
        assert_eq!(run.code, Some(0), "{args:?}: {run:#?}");
        let shown = serde_json::to_string(&run.json()[0]["detail"]).unwrap();
        let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
        assert_eq!(shown, serde_json::to_string(&stored).unwrap());
        assert!(shown.contains(&format!("1{}", "0".repeat(400))), "{shown}");
    }
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn refusals_quote_a_bounded_escaped_excerpt_and_bidi_or_ancient_times_are_refused(
    pool: PgPool,
) {
    pipeline(&pool).await;
    let before = snapshot(&pool).await;
    let huge = format!("\u{1b}[2J\u{1b}[31mred{}", "y".repeat(100_000));
    let run = retrylog(
        &pool,
        &[
            "record",
            "--job-id",
            &JOB_A.to_string(),
            "--reason",
            "stuck",
            "--actor",
            &huge,
        ],
    )
    .await;
    assert_eq!(
        run.code,
        Some(2),
        "{}",
        &run.stderr[..run.stderr.len().min(500)]
    );
    assert!(
        !run.stderr.contains('\u{1b}'),
        "no raw escape reaches the terminal"
    );
    assert!(
        run.stderr.len() < 2_000,
        "{} bytes of stderr",
        run.stderr.len()
    );
    assert!(run.stderr.contains("100012 characters"), "{}", run.stderr);

    let run = retrylog(
        &pool,
        &[
            "record",
            "--job-id",
            "\u{1b}[31mnot-a-uuid",
            "--reason",
            "stuck",
        ],
    )
    .await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(!run.stderr.contains('\u{1b}'), "{run:#?}");

    for (field, value) in [
        ("step", "seg\u{202e}tnem"),
        ("actor", "ops\u{2066}x"),
        ("to_status", "do\u{7f}ne"),
    ] {
        let sql = format!("SELECT record_retry(job_id => $1, reason => 'stuck', {field} => $2)");
        let error = sqlx::query(&sql)
            .bind(JOB_A)
            .bind(value)
            .execute(&pool)
            .await
            .expect_err("the one text rule");
        let (code, message) = database_error(&error);
        assert_eq!(code, "22023", "{message}");
        assert!(message.contains("\\u"), "{message}");
    }
    let error = sqlx::query(
        "SELECT record_retry(job_id => $1, reason => 'stuck', occurred_at => '4713-01-01 BC')",
    )
    .bind(JOB_A)
    .execute(&pool)
    .await
    .expect_err("4713 BC is outside the window");
    assert!(database_error(&error)
        .1
        .contains("outside the accepted window"));
    assert_eq!(before, snapshot(&pool).await);

    // A trend the report refuses writes nothing, though the rollup is behind.
    append_ok(&pool, &retry(job(JOB_A))).await;
    let checkpoint = checkpoint(&pool).await;
    let run = retrylog(
        &pool,
        &["report", "trend", "--since", "3000d", "--bucket", "hour"],
    )
    .await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert_eq!(checkpoint, self::checkpoint(&pool).await);
}

#[sqlx::test(migrations = false)]
async fn outcomes_are_decided_only_through_the_deciders_a_writers_retry_decides_its_predecessor(
    pool: PgPool,
) {
    pipeline(&pool).await;
    lift_retry_limit(&pool).await;
    let writer = TestRole::create(&pool, &[Writer]).await;
    let operator = TestRole::create(&pool, &[Operator]).await;
    let mut conn = writer.pool.acquire().await.unwrap();
    for _ in 0..2 {
        record_via_sql(&mut conn, variant(JOB_A, VARIANT_A1), "failed")
            .await
            .expect("a writer appends");
    }
    // Its second retry decided its first, through the door that runs as the owner.
    let decided: Vec<(i32, String, String)> = sqlx::query_as(
        "SELECT h.attempt, r.outcome::text, r.observed_by
           FROM retry_outcome r JOIN retry_history h USING (seq)",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(decided, [(1, "retried_again".into(), writer.name.clone())]);

    let before = snapshot(&pool).await;
    // A writer can neither decide nor undo an outcome, nor observe.
    assert_denied(
        &writer.pool,
        &[
            "INSERT INTO retry_outcome (seq, outcome, resolved_at, observed_by, evidence)
             SELECT seq, 'recovered', now(), 'forged', '{}' FROM retry_open",
            "DELETE FROM retry_open",
            "UPDATE retry_outcome SET outcome = 'recovered'",
            "SELECT retry_outcome_observe(ARRAY['prepare','generate','segment'], 'w', NULL)",
            "SELECT retry_open_rebuild()",
        ],
    )
    .await;
    // The operator may observe (the watchdog's capability), and rebuild, but not write
    // outcomes by hand either; and an outcome is never changed, whoever asks.
    assert_denied(
        &operator.pool,
        &[
            "INSERT INTO retry_outcome (seq, outcome, resolved_at, observed_by, evidence)
             SELECT seq, 'recovered', now(), 'forged', '{}' FROM retry_open",
            "UPDATE retry_outcome SET outcome = 'recovered'",
        ],
    )
    .await;
    let error = sqlx::query("UPDATE retry_outcome SET outcome = 'recovered'")
        .execute(&pool)
        .await
        .expect_err("append-only for the owner too");
    assert_eq!(code_of(&error), "RL010", "{error}");
    assert_eq!(before, snapshot(&pool).await);
    sqlx::query("UPDATE jobs_variants SET current_step = 'segment' WHERE job_variants_id = $1")
        .bind(VARIANT_A1)
        .execute(&pool)
        .await
        .unwrap();
    let observed: i64 = sqlx::query_scalar(
        "SELECT retry_outcome_observe(ARRAY['prepare','generate','segment','iou_eval'], 'op', NULL)",
    )
    .fetch_one(&operator.pool)
    .await
    .unwrap();
    assert_eq!(observed, 1);
    assert_verify_clean(&pool).await;
}
