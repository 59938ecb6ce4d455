//! The real "before": a twin of the bench database, `retrylog_bench_before` (the bench
//! database's name + `_before`), created in the
//! same run on the same server with the counter-only schema of the original change — the
//! pipeline tables, `retry_count` and its five indexes — and no retrylog object at all (no
//! trigger, no function, no log). Baselines run there, so they measure the pipeline as it was
//! before retrylog was installed.

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use retrylog::connect::Connected;
use retrylog::scratch;

use crate::database::bench_database;

/// The twin database's name: the bench database's, then `_before`.
pub fn twin_database() -> anyhow::Result<String> {
    Ok(format!("{}_before", bench_database()?))
}

/// The schema of the original change: the two pipeline tables with their `retry_count`
/// counters and the indexes it defined. Nothing else.
const COUNTER_ONLY_SCHEMA: &str = "
CREATE TABLE jobs (
    job_id       uuid PRIMARY KEY,
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'running', 'done', 'failed')),
    current_step text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    retry_count  integer NOT NULL DEFAULT 0
);
CREATE TABLE jobs_variants (
    job_variants_id uuid PRIMARY KEY,
    job_id          uuid NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    creation_order  integer NOT NULL DEFAULT 0,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'running', 'done', 'failed')),
    current_step    text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    retry_count     integer NOT NULL DEFAULT 0
);
CREATE INDEX idx_jobs_retry_count ON jobs (retry_count);
CREATE INDEX idx_jobs_status_retry_count ON jobs (status, retry_count);
CREATE INDEX idx_jobs_variants_retry_count ON jobs_variants (retry_count);
CREATE INDEX idx_jobs_variants_status_retry_count ON jobs_variants (status, retry_count);
CREATE INDEX idx_jobs_variants_job_id_retry_count ON jobs_variants (job_id, retry_count);
";

/// The twin's connection options (the bench database's, another database name).
pub fn twin_options(options: &PgConnectOptions) -> anyhow::Result<PgConnectOptions> {
    Ok(options.clone().database(&twin_database()?))
}

/// Drops and recreates the twin with the counter-only schema; returns a small pool on it.
pub async fn fresh_twin(
    connected: &Connected,
    options: &PgConnectOptions,
) -> anyhow::Result<PgPool> {
    let mut admin = PgConnection::connect_with(&connected.options.clone().database("postgres"))
        .await
        .context("connecting to the maintenance database to create the twin")?;
    let twin = twin_database()?;
    for statement in [
        format!("DROP DATABASE IF EXISTS {twin} WITH (FORCE)"),
        format!("CREATE DATABASE {twin}"),
    ] {
        sqlx::raw_sql(&statement)
            .execute(&mut admin)
            .await
            .with_context(|| format!("{statement}"))?;
    }
    admin.close().await?;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(twin_options(options)?)
        .await
        .context("connecting to the twin database")?;
    sqlx::raw_sql(COUNTER_ONLY_SCHEMA)
        .execute(&pool)
        .await
        .context("creating the counter-only schema in the twin")?;
    Ok(pool)
}

/// Drops the twin at the end of a run (or keeps it, with `keep`).
pub async fn release_twin(connected: &Connected, keep: bool) {
    match twin_database() {
        Ok(twin) => scratch::release(connected, &twin, keep).await,
        Err(error) => eprintln!("retrylog-bench: {error:#}"),
    }
}

/// Whether `pool`'s database holds any retrylog object: the twin must hold none.
pub async fn holds_retrylog_objects(pool: &PgPool) -> anyhow::Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE NOT tgisinternal)
             OR EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                         WHERE n.nspname = 'public')
             OR to_regclass('retry_history') IS NOT NULL",
    )
    .fetch_one(pool)
    .await?)
}
