//! What the tests start from and look with: migrated databases, the ids the SQL fixtures
//! use, the two append doors (Rust and SQL), snapshots that prove nothing was written, the
//! `retrylog` binary run against the test's database, and the HTTP router with the tests'
//! tokens. The metrics tests' binary (tests/metrics.rs) includes this file too.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use retrylog::event::{NewRetry, RetryEvent, RetryReason, Target};
use retrylog::http::{self, ApiContext, Tokens};
use retrylog::intervention::{self, NewIntervention};
use retrylog::replay::{self, VerifyReport};
use retrylog::store::{self, AppendError};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool};
use tokio::process::Command;
use tokio::sync::{Semaphore, SemaphorePermit};
use tower::ServiceExt;
use uuid::{uuid, Uuid};

pub use crate::temp::TempPath;

/// `tests/fixtures/pipeline.sql`: job A (three variants) and job B (one), on retrylog's schema.
pub const PIPELINE: &str = include_str!("../fixtures/pipeline.sql");
/// `tests/fixtures/counter_era.sql`: the pipeline's own tables with nullable counters.
pub const COUNTER_ERA: &str = include_str!("../fixtures/counter_era.sql");
/// `tests/fixtures/before_counters.sql`: the pipeline's tables without any counter.
pub const BEFORE_COUNTERS: &str = include_str!("../fixtures/before_counters.sql");
/// `tests/fixtures/recovery.sql`: each watchdog scenario's cases and near misses, every row
/// named in its table `recovery_case`.
pub const RECOVERY: &str = include_str!("../fixtures/recovery.sql");
/// `tests/fixtures/recovery_crowd.sql`: 200 conditions over the four scenarios and 20 failed
/// variants with three retries each.
pub const RECOVERY_CROWD: &str = include_str!("../fixtures/recovery_crowd.sql");

/// Job A of `pipeline.sql`: running at `segment`.
pub const JOB_A: Uuid = uuid!("0a000000-0000-4000-8000-000000000000");
/// Variant of job A: done, lagging at `generate`.
pub const VARIANT_A1: Uuid = uuid!("0a000000-0000-4000-8000-000000000001");
/// Variant of job A: failed at `segment`.
pub const VARIANT_A2: Uuid = uuid!("0a000000-0000-4000-8000-000000000002");
/// Variant of job A: running at `segment`.
pub const VARIANT_A3: Uuid = uuid!("0a000000-0000-4000-8000-000000000003");
/// Job B of `pipeline.sql`: running at `generate`.
pub const JOB_B: Uuid = uuid!("0b000000-0000-4000-8000-000000000000");
/// Job B's only variant.
pub const VARIANT_B1: Uuid = uuid!("0b000000-0000-4000-8000-000000000001");

/// Counter-era job retried 3 times before retrylog.
pub const OLD_JOB_1: Uuid = uuid!("0c000000-0000-4000-8000-000000000000");
/// Counter-era job whose count is NULL.
pub const OLD_JOB_2: Uuid = uuid!("0d000000-0000-4000-8000-000000000000");
/// Counter-era job never retried.
pub const OLD_JOB_3: Uuid = uuid!("0e000000-0000-4000-8000-000000000000");
/// Variant of old job 1 retried twice (also the variant of `before_counters.sql`).
pub const OLD_VARIANT_1_1: Uuid = uuid!("0c000000-0000-4000-8000-000000000001");
/// Variant of old job 1 whose count is NULL.
pub const OLD_VARIANT_1_2: Uuid = uuid!("0c000000-0000-4000-8000-000000000002");
/// Variant of old job 1 with count 0.
pub const OLD_VARIANT_1_3: Uuid = uuid!("0c000000-0000-4000-8000-000000000003");
/// Variant of old job 2 retried 5 times.
pub const OLD_VARIANT_2_1: Uuid = uuid!("0d000000-0000-4000-8000-000000000001");

/// A job or variant of `recovery_crowd.sql`: `kind` 1..=5, case `n`, variant `k` (0 for the job).
pub fn crowd_id(kind: u32, n: u32, k: u32) -> Uuid {
    format!("{kind}{n:07}-0000-4000-8000-{k:012}")
        .parse()
        .unwrap_or_else(|error| panic!("crowd id of kind {kind}, case {n}, variant {k}: {error}"))
}

/// A job-level stream.
pub fn job(job_id: Uuid) -> Target {
    Target::Job { job_id }
}

/// A variant's stream.
pub fn variant(job_id: Uuid, job_variants_id: Uuid) -> Target {
    Target::Variant {
        job_id,
        job_variants_id,
    }
}

/// Applies retrylog's schema, as every command does first, with its documented default
/// retry limit (3) in force.
pub async fn migrated(pool: &PgPool) {
    retrylog::migrate::run(pool)
        .await
        .expect("retrylog::migrate::run succeeds");
}

/// Lifts the shared retry limit, for the log's own tests that append far past any limit
/// (thousands of retries to one target, counter-era balances already above 3). Every other
/// test runs with the default.
pub async fn lift_retry_limit(pool: &PgPool) {
    set_retry_limit(pool, None).await;
}

/// Sets the limit every door enforces (`retrylog_settings.max_retries`); `None` lifts it.
pub async fn set_retry_limit(pool: &PgPool, limit: Option<i32>) {
    sqlx::query("UPDATE retrylog_settings SET max_retries = $1")
        .bind(limit)
        .execute(pool)
        .await
        .expect("the retry limit is set");
}

/// Runs a SQL fixture (several statements) as it is.
pub async fn load(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(sql)
        .execute(pool)
        .await
        .expect("the SQL fixture loads");
}

/// retrylog's schema with `pipeline.sql` loaded.
pub async fn pipeline(pool: &PgPool) {
    migrated(pool).await;
    load(pool, PIPELINE).await;
}

/// A retry of `target` for `stuck` by the test.
pub fn retry(target: Target) -> NewRetry {
    NewRetry::new(target, RetryReason::Stuck, "test")
}

/// Appends through the Rust door in a transaction of its own: committed when the append
/// succeeds, rolled back when it is refused.
pub async fn append(pool: &PgPool, retry: &NewRetry) -> Result<RetryEvent, AppendError> {
    let mut tx = pool.begin().await.expect("a transaction begins");
    match store::append(&mut tx, retry).await {
        Ok(event) => {
            tx.commit().await.expect("the append commits");
            Ok(event)
        }
        Err(error) => {
            tx.rollback().await.expect("the refused append rolls back");
            Err(error)
        }
    }
}

/// [`append`] that must succeed.
pub async fn append_ok(pool: &PgPool, retry: &NewRetry) -> RetryEvent {
    append(pool, retry)
        .await
        .unwrap_or_else(|error| panic!("append of {} failed: {error}", retry.target))
}

/// Appends `n` retries of `target`, one transaction each.
pub async fn append_n(pool: &PgPool, target: Target, n: usize) -> Vec<RetryEvent> {
    let mut events = Vec::with_capacity(n);
    for _ in 0..n {
        events.push(append_ok(pool, &retry(target)).await);
    }
    events
}

/// The SQL door as a psql or asyncpg client uses it: `SELECT attempt FROM record_retry(...)`
/// with named arguments, on the caller's connection (and so in its transaction, if any).
pub async fn record_via_sql(
    conn: &mut PgConnection,
    target: Target,
    reason: &str,
) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT attempt FROM record_retry(job_id => $1, job_variants_id => $2,
                reason => $3, actor => 'sql-door', detail => '{\"door\": \"sql\"}')",
    )
    .bind(target.job_id())
    .bind(target.job_variants_id())
    .bind(reason)
    .fetch_one(conn)
    .await
}

/// The SQLSTATE and message of a database error; panics on any other error.
pub fn database_error(error: &sqlx::Error) -> (String, String) {
    let db = error
        .as_database_error()
        .unwrap_or_else(|| panic!("expected a database error, got {error:?}"));
    (
        db.code().map(|code| code.into_owned()).unwrap_or_default(),
        db.message().to_string(),
    )
}

/// A target's `retry_count` as the pipeline's queries read it.
pub async fn retry_count(pool: &PgPool, target: Target) -> i32 {
    let query = match target {
        Target::Job { job_id } => {
            sqlx::query_scalar("SELECT retry_count FROM jobs WHERE job_id = $1").bind(job_id)
        }
        Target::Variant {
            job_variants_id, ..
        } => sqlx::query_scalar("SELECT retry_count FROM jobs_variants WHERE job_variants_id = $1")
            .bind(job_variants_id),
    };
    query
        .fetch_one(pool)
        .await
        .unwrap_or_else(|error| panic!("reading the retry_count of {target}: {error}"))
}

/// A target's attempts in log order (`seq`): gapless means exactly `1..=n`.
pub async fn attempts(pool: &PgPool, target: Target) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT attempt FROM retry_history
          WHERE job_id = $1 AND job_variants_id IS NOT DISTINCT FROM $2
          ORDER BY seq",
    )
    .bind(target.job_id())
    .bind(target.job_variants_id())
    .fetch_all(pool)
    .await
    .expect("reading the attempts")
}

/// Asserts a target's attempts are exactly 1..=n in log order.
pub async fn assert_gapless(pool: &PgPool, target: Target, n: i32) {
    let attempts = attempts(pool, target).await;
    let expected: Vec<i32> = (1..=n).collect();
    assert!(
        attempts == expected,
        "{target}: attempts are not exactly 1..={n}: {} stored, first differences: {:?}",
        attempts.len(),
        attempts
            .iter()
            .zip(expected.iter())
            .filter(|(found, wanted)| found != wanted)
            .take(5)
            .collect::<Vec<_>>()
    );
}

/// Number of events in the log.
pub async fn event_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM retry_history")
        .fetch_one(pool)
        .await
        .expect("counting events")
}

/// Every row an append (or a refused one) could have touched, as JSON: the log, both
/// pipeline tables with their counts, statuses and `updated_at`, and the opening balances.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    pub retry_history: Value,
    pub jobs: Value,
    pub jobs_variants: Value,
    pub retry_opening_balance: Value,
}

/// Takes a [`Snapshot`].
pub async fn snapshot(pool: &PgPool) -> Snapshot {
    async fn table(pool: &PgPool, name: &str, order: &str) -> Value {
        sqlx::query_scalar(&format!(
            "SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY {order}), '[]') FROM {name} t"
        ))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|error| panic!("snapshot of {name}: {error}"))
    }
    Snapshot {
        retry_history: table(pool, "retry_history", "seq").await,
        jobs: table(pool, "jobs", "job_id").await,
        jobs_variants: table(pool, "jobs_variants", "job_variants_id").await,
        retry_opening_balance: table(
            pool,
            "retry_opening_balance",
            "job_id, job_variants_id NULLS FIRST",
        )
        .await,
    }
}

/// Runs `verify` and returns its report.
pub async fn verify(pool: &PgPool) -> VerifyReport {
    replay::verify(pool, |_| {}).await.expect("verify runs")
}

/// Asserts `verify` finds nothing wrong.
pub async fn assert_verify_clean(pool: &PgPool) {
    let report = verify(pool).await;
    assert!(
        report.is_clean(),
        "verify found {} mismatch(es):\n{}",
        report.mismatches.len(),
        report
            .mismatches
            .iter()
            .map(|mismatch| format!("  {mismatch}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Tests that open dozens of connections take turns, so that the suite stays under the
/// server's `max_connections` however many test threads run. The test pools of
/// `#[sqlx::test]` share 20 connections between them; this adds at most one big pool.
static MANY_CLIENTS: Semaphore = Semaphore::const_new(1);

/// A pool of real, separate client connections to the test's database.
pub struct Clients {
    pub pool: PgPool,
    _turn: SemaphorePermit<'static>,
}

impl Clients {
    /// Closes every connection, so that the test database can be dropped.
    pub async fn close(self) {
        self.pool.close().await;
    }
}

/// Opens a pool of up to `connections` connections to the same database as `pool`.
pub async fn clients(pool: &PgPool, connections: u32) -> Clients {
    let turn = MANY_CLIENTS.acquire().await.expect("the semaphore is open");
    let options = (*pool.connect_options()).clone();
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(options)
        .await
        .expect("the clients connect");
    Clients { pool, _turn: turn }
}

/// A URL for the `retrylog` binary naming the test's database on the same server as `pool`.
pub async fn database_url(pool: &PgPool) -> String {
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
        .expect("reading current_database()");
    url_of(pool, &database)
}

/// A URL for the `retrylog` binary naming `database` on the same server as `pool`.
pub fn url_of(pool: &PgPool, database: &str) -> String {
    let options = pool.connect_options();
    let user = options.get_username();
    let port = options.get_port();
    match options.get_socket() {
        Some(socket) => format!(
            "postgres://{user}@localhost:{port}/{database}?host={}",
            socket.display()
        ),
        None => format!("postgres://{user}@{}:{port}/{database}", options.get_host()),
    }
}

/// A database name of the test's own on the test server (`retrylog_test_<what>_<random>`:
/// never a name a user's database or another run could have), not created here; whatever
/// made it, it is dropped when the guard goes, also when the test fails.
pub struct TestDatabase {
    /// The name.
    pub name: String,
    /// How to reach the server's maintenance database, to drop it.
    admin: sqlx::postgres::PgConnectOptions,
}

impl TestDatabase {
    /// A fresh name on the server `pool` is on.
    pub fn new(pool: &PgPool, what: &str) -> Self {
        Self {
            name: format!(
                "retrylog_test_{what}_{}",
                &Uuid::new_v4().simple().to_string()[..12]
            ),
            admin: (*pool.connect_options()).clone().database("postgres"),
        }
    }

    /// A URL for the binary naming this database.
    pub fn url(&self, pool: &PgPool) -> String {
        url_of(pool, &self.name)
    }

    /// Whether the database exists now.
    pub async fn exists(&self, pool: &PgPool) -> bool {
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)")
            .bind(&self.name)
            .fetch_one(pool)
            .await
            .expect("reading pg_database")
    }
}

impl Drop for TestDatabase {
    /// Drops the database, ending whatever sessions a failed test left on it.
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = self.admin.clone();
        clean_up_from_drop(&format!("the test database {name}"), async move {
            use sqlx::Connection;
            let mut conn = PgConnection::connect_with(&admin).await?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await?;
            conn.close().await
        });
    }
}

/// Runs `cleanup` from a `Drop`, which cannot await: on a thread of its own with a runtime of
/// its own, waiting for it. A failure is said on stderr, not raised: the test may be failing
/// already, and a leftover named `what` is the next run's to drop.
pub fn clean_up_from_drop(
    what: &str,
    cleanup: impl std::future::Future<Output = Result<(), sqlx::Error>> + Send + 'static,
) {
    let done = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the cleanup")
            .block_on(cleanup)
    })
    .join();
    if !matches!(done, Ok(Ok(()))) {
        eprintln!("could not drop {what}: {done:?}");
    }
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout parsed as JSON (`--format json`).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("stdout is not JSON ({error}): {self:#?}"))
    }

    /// The lines of stderr that say something about the outcome: without the line naming
    /// the database, clap's pointer to --help, and blank lines.
    pub fn problem_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .map(str::trim)
            .filter(|line| {
                !line.is_empty()
                    && !line.starts_with("retrylog: using ")
                    && !line.starts_with("For more information, try")
            })
            .collect()
    }

    /// The one line of stderr that says what went wrong; fails unless there is exactly one.
    pub fn only_problem_line(&self) -> &str {
        match self.problem_lines()[..] {
            [line] => line,
            _ => panic!("expected one problem line on stderr: {self:#?}"),
        }
    }
}

/// Runs `retrylog --database-url <the test's database> <args>` to completion.
pub async fn retrylog(pool: &PgPool, args: &[&str]) -> Run {
    retrylog_at(&database_url(pool).await, args).await
}

/// Runs `retrylog --database-url <url> <args>` to completion.
pub async fn retrylog_at(url: &str, args: &[&str]) -> Run {
    run_binary(url, args, None).await
}

/// [`retrylog_at`] from the directory `cwd` (outside the checkout, the hints the binary
/// prints name its path).
pub async fn retrylog_in(cwd: &Path, url: &str, args: &[&str]) -> Run {
    run_binary(url, args, Some(cwd)).await
}

async fn run_binary(url: &str, args: &[&str], cwd: Option<&Path>) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_retrylog"));
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let output = command
        .arg("--database-url")
        .arg(url)
        .args(args)
        // Only the URL above may choose the database.
        .env_remove("DATABASE_URL")
        .env_remove("PGHOST")
        .env_remove("PGPORT")
        .env_remove("PGDATABASE")
        .env_remove("PGUSER")
        // A panic would print its backtrace: the assertions below look for it.
        .env("RUST_BACKTRACE", "1")
        .env_remove("RETRYLOG_LOG")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("the retrylog binary runs");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(output.stderr).expect("stderr is UTF-8"),
    }
}

/// `retrylog serve <args>` on the test's database, ready to spawn: a port of its own (tests
/// run serves in parallel; a `--listen` in `args` still wins), none of the test's
/// DATABASE_URL or RETRYLOG_LOG, no stdin, stdout and stderr discarded (pipe stderr to read
/// the log), killed if the test ends without stopping it.
pub async fn serve_command(pool: &PgPool, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_retrylog"));
    command
        .arg("--database-url")
        .arg(database_url(pool).await)
        .arg("serve")
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("RETRYLOG_LOG")
        .env("RETRYLOG_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Sends SIGTERM to a running `retrylog serve` and waits for it: it must exit 0 within 10 s.
/// Returns what it printed (whatever the test piped).
pub async fn stop_serve(serve: tokio::process::Child) -> std::process::Output {
    let pid = serve.id().expect("serve is running").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let output = tokio::time::timeout(Duration::from_secs(10), serve.wait_with_output())
        .await
        .expect("serve exits within 10 s of SIGTERM")
        .unwrap();
    assert!(
        output.status.success(),
        "serve exits 0 on SIGTERM, got {}",
        output.status
    );
    output
}

/// Brings variant A2 (failed) to the limit of 3 and writes the watchdog's note for it, as a
/// sweep would: the target `report alerts` lists as needing intervention.
pub async fn a2_needs_intervention(pool: &PgPool) {
    append_n(pool, variant(JOB_A, VARIANT_A2), 3).await;
    note_a2_at_the_limit(pool).await;
}

/// The watchdog's note for variant A2 at the limit of 3 (its three retries made already),
/// which decides A2's open retry `gave_up`.
pub async fn note_a2_at_the_limit(pool: &PgPool) {
    let mut tx = pool.begin().await.unwrap();
    let noted = intervention::note(
        &mut tx,
        &NewIntervention {
            target: variant(JOB_A, VARIANT_A2),
            retry_count: 3,
            max_retries: 3,
            scenario: "failed",
            reason: RetryReason::Failed,
            step: Some("segment"),
            status: "failed",
            actor: "watchdog-test",
            detail: json!({"scenario": "failed"}),
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert!(noted);
}

/// The admin token of the tests' tokens file (name `ops-alice`).
pub const ADMIN: &str = "admin-secret-0123456789";
/// The read token (name `viewer`).
pub const READER: &str = "read-secret-0123456789";

/// A tokens file holding [`ADMIN`] and [`READER`], written to a fresh temporary path that is
/// removed when the guard drops.
pub fn tokens_file() -> TempPath {
    use sha2::{Digest, Sha256};
    let line = |name: &str, role: &str, token: &str| {
        format!("{name} {role} {}\n", hex::encode(Sha256::digest(token)))
    };
    let path = TempPath::new("tokens");
    let text = format!(
        "# test tokens\n{}\n{}",
        line("ops-alice", "admin", ADMIN),
        line("viewer", "read", READER)
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The router over `pool`, with the tests' tokens or none (read-only).
pub fn router(pool: &PgPool, with_tokens: bool) -> Router {
    let tokens = with_tokens.then(|| Arc::new(Tokens::load(&tokens_file()).unwrap()));
    let ctx = ApiContext {
        pool: pool.clone(),
        read: None,
        tokens,
        steps: retrylog::config::DEFAULT_STEPS.parse().unwrap(),
        base_path: String::new(),
        overview_cache: Default::default(),
        stuck_census: Default::default(),
    };
    http::app(ctx)
}

/// One response: status, headers, body as JSON (`Null` when it is not JSON).
pub struct Answer {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub json: Value,
}

/// Sends one request; `body` makes it a POST.
pub async fn call(
    router: &Router,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut request = Request::builder().uri(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = match body {
        Some(body) => request
            .method("POST")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string())),
        None => request.body(Body::empty()),
    }
    .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// Polls `condition`, a boolean SQL expression, every 20 ms until it holds; fails naming
/// `what` when it still does not after `deadline`.
pub async fn wait_until(pool: &PgPool, condition: &str, deadline: Duration, what: &str) {
    let until = Instant::now() + deadline;
    loop {
        let holds: bool = sqlx::query_scalar(&format!("SELECT {condition}"))
            .fetch_one(pool)
            .await
            .unwrap_or_else(|error| panic!("checking that {what}: {error}"));
        if holds {
            return;
        }
        assert!(Instant::now() < until, "{what}: not within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The condition "`id` has `n` events".
pub fn has_events(id: Uuid, n: usize) -> String {
    format!(
        "(SELECT count(*) FROM retry_history
           WHERE job_variants_id = '{id}' OR (job_id = '{id}' AND job_variants_id IS NULL)) = {n}"
    )
}
