//! PostgreSQL killed under load: a private cluster of its own (the code `connect` uses when no
//! server is configured), 8 concurrent writers and `retrylog serve`, stopped with `pg_ctl -m
//! immediate` mid-load (no checkpoint, no goodbye: crash recovery at restart) and started
//! again. Every acknowledged retry must be in the log, serve must recover by itself, and
//! verify must be clean.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use retrylog::connect::{start_private_cluster, stop_private_cluster};
use retrylog::event::{NewRetry, RetryReason, Target};
use retrylog::projector;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::fixtures::*;
use crate::security::serve_projector_only;

/// The private cluster's data directory, removed (cluster stopped first) when dropped, also
/// when the test fails.
pub(crate) struct Scratch {
    /// A 0700 directory of the test's own; its guard removes it after `drop` below ran.
    pub base: TempPath,
}

impl Scratch {
    /// A private cluster started under a 0700 directory of the test's own (the cluster's user
    /// must get in), with the database `database` created on it; returns where that database
    /// is.
    pub async fn with_database(what: &str, database: &str) -> (Scratch, PgConnectOptions) {
        let scratch = Scratch {
            base: TempPath::private_dir(what),
        };
        let server = start_private_cluster(&scratch.data_dir())
            .await
            .expect("the private cluster starts");
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(server.clone())
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {database}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        (scratch, server.database(database))
    }

    pub fn data_dir(&self) -> PathBuf {
        self.base.join("d")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = stop_private_cluster(&self.data_dir());
    }
}

/// `pg_ctl stop -m immediate`: every backend killed, nothing flushed beyond the WAL. As the
/// `postgres` user when this runs as root (the cluster runs as that user then).
fn crash(data_dir: &Path) {
    let pg_ctl = std::fs::read_dir("/usr/lib/postgresql")
        .expect("the PostgreSQL server binaries are installed")
        .filter_map(|entry| Some(entry.ok()?.path().join("bin/pg_ctl")))
        .find(|path| path.exists())
        .expect("pg_ctl is installed");
    let pgdata = data_dir.join("pgdata");
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false);
    let mut command = if root {
        let mut command = std::process::Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(&pg_ctl);
        command
    } else {
        std::process::Command::new(&pg_ctl)
    };
    let status = command
        .arg("stop")
        .arg("-D")
        .arg(&pgdata)
        .args(["-m", "immediate", "-w"])
        .current_dir("/")
        .status()
        .expect("pg_ctl runs");
    assert!(status.success(), "pg_ctl stop -m immediate: {status}");
}

/// A writer: appends retries of its own job, one transaction each, until told to stop;
/// remembers every event_id whose commit was acknowledged. Errors (the server is gone, or
/// restarting) are waited out and the next retry is tried.
async fn writer(
    pool: PgPool,
    job_id: Uuid,
    acknowledged: Arc<Mutex<Vec<Uuid>>>,
    stop: watch::Receiver<bool>,
) -> usize {
    let mut failures = 0;
    while !*stop.borrow() {
        let event_id = Uuid::new_v4();
        let retry = NewRetry::new(Target::Job { job_id }, RetryReason::Stuck, "crash-writer")
            .with_event_id(event_id);
        let committed = async {
            let mut tx = pool.begin().await?;
            retrylog::store::append(&mut tx, &retry)
                .await
                .map_err(|error| sqlx::Error::Protocol(error.to_string()))?;
            tx.commit().await
        }
        .await;
        match committed {
            Ok(()) => acknowledged.lock().unwrap().push(event_id),
            Err(_) => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    failures
}

#[tokio::test]
async fn postgres_killed_mid_load_loses_no_acknowledged_retry_and_serve_recovers_by_itself() {
    let (scratch, database) = Scratch::with_database("crash", "retrylog_crash").await;
    let data_dir = scratch.data_dir();
    let pool = PgPoolOptions::new()
        .max_connections(12)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(database)
        .await
        .unwrap();
    migrated(&pool).await;
    lift_retry_limit(&pool).await;
    let jobs: Vec<Uuid> = (0..8).map(|_| Uuid::new_v4()).collect();
    for job_id in &jobs {
        sqlx::query(
            "INSERT INTO jobs (job_id, status, current_step) VALUES ($1, 'running', 'segment')",
        )
        .bind(job_id)
        .execute(&pool)
        .await
        .unwrap();
    }

    // 1. serve (its projector) and 8 writers, for a moment.
    let mut serve = serve_projector_only(&pool).await;
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let (stop, stopped) = watch::channel(false);
    let writers: Vec<_> = jobs
        .iter()
        .map(|job_id| {
            tokio::spawn(writer(
                pool.clone(),
                *job_id,
                acknowledged.clone(),
                stopped.clone(),
            ))
        })
        .collect();
    let until = Instant::now() + Duration::from_secs(30);
    while acknowledged.lock().unwrap().len() < 300 {
        assert!(Instant::now() < until, "the writers never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 2. Kill the server mid-load, start it again (crash recovery), let the writers go on.
    let crash_data_dir = data_dir.clone();
    tokio::task::spawn_blocking(move || crash(&crash_data_dir))
        .await
        .unwrap();
    let before_restart = acknowledged.lock().unwrap().len();
    start_private_cluster(&data_dir)
        .await
        .expect("the cluster restarts");
    let until = Instant::now() + Duration::from_secs(60);
    while acknowledged.lock().unwrap().len() < before_restart + 300 {
        assert!(
            Instant::now() < until,
            "the writers never came back after the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send_replace(true);
    for writer in writers {
        writer.await.unwrap();
    }

    // 3. Every acknowledged retry is in the log.
    let acknowledged = acknowledged.lock().unwrap().clone();
    let stored: Vec<Uuid> = sqlx::query_scalar("SELECT event_id FROM retry_history")
        .fetch_all(&pool)
        .await
        .unwrap();
    let stored: std::collections::HashSet<Uuid> = stored.into_iter().collect();
    let lost: Vec<&Uuid> = acknowledged
        .iter()
        .filter(|id| !stored.contains(id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged retries lost",
        lost.len(),
        acknowledged.len()
    );

    // 4. serve recovers by itself: its projector catches the rollup up with the log.
    let until = Instant::now() + Duration::from_secs(90);
    loop {
        let mut conn = pool.acquire().await.unwrap();
        if projector::lag(&mut conn).await.unwrap().events_behind == 0 {
            break;
        }
        assert!(
            serve.try_wait().unwrap().is_none(),
            "serve exited after the crash"
        );
        assert!(
            Instant::now() < until,
            "serve never caught up after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_verify_clean(&pool).await;
    let output = stop_serve(serve).await;
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains("lost its connection"),
        "serve saw the crash: {log}"
    );
    pool.close().await;
    drop(scratch);
}
