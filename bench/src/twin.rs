//! The real "before": a twin of the bench database, `retrylog_bench_before` (the bench
//! database's name + `_before`), created in the same run on the same server with the
//! counter-only schema of the original change — the pipeline tables, `retry_count` and its
//! five indexes — and no retrylog object at all (no trigger, no function, no log). Baselines
//! run there, so they measure the pipeline as it was before retrylog was installed.

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use retrylog::connect::Connected;
use retrylog::migrate::MIGRATOR;
use retrylog::scratch;

use crate::database::bench_database;

/// The twin database's name: the bench database's, then `_before`.
pub fn twin_database() -> anyhow::Result<String> {
    Ok(format!("{}_before", bench_database()?))
}

/// The schema of the original change: the two pipeline tables with their `retry_count`
/// counters and the five indexes it defined, nothing else. That is exactly retrylog's first
/// migration (`migrations/0001_pipeline_tables.sql`), which adds no retrylog object.
fn counter_only_schema() -> anyhow::Result<String> {
    let first = MIGRATOR
        .iter()
        .find(|migration| migration.version == 1)
        .context("retrylog's first migration, the pipeline tables")?;
    Ok(first.sql.to_string())
}

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
            .with_context(|| statement.clone())?;
    }
    admin.close().await?;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(twin_options(options)?)
        .await
        .context("connecting to the twin database")?;
    let schema = counter_only_schema()?;
    sqlx::raw_sql(&schema)
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
