//! Scratch databases: created fresh on the configured server, migrated, and dropped at the
//! end. `demo` runs its live pipeline in one and the benchmark (the `retrylog-bench` binary)
//! measures in another, so neither ever touches the data of the database retrylog is pointed
//! at.

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use crate::connect::Connected;
use crate::migrate;

/// The options of scratch database `name`: the configured server and settings, another
/// database. Refuses when the configured database is that one.
pub fn options(
    connected: &Connected,
    name: &str,
    application_name: &str,
) -> anyhow::Result<PgConnectOptions> {
    if connected.configured_database == name {
        anyhow::bail!(
            "the configured database is {name}, the name this command drops and recreates; \
             point retrylog at another database"
        );
    }
    Ok(connected
        .options
        .clone()
        .database(name)
        .application_name(application_name)
        .disable_statement_logging())
}

/// Whether database `name` exists on the configured server.
pub async fn exists(connected: &Connected, name: &str) -> anyhow::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&connected.pool)
        .await
        .with_context(|| format!("looking for a database named {name}"))
}

/// Drops database `name` if it exists, creates it, migrates it, and returns a pool of
/// `connections` on it.
pub async fn create(
    connected: &Connected,
    name: &str,
    options: &PgConnectOptions,
    connections: u32,
) -> anyhow::Result<PgPool> {
    let mut admin = maintenance_connection(connected, name).await?;
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .with_context(|| format!("dropping the previous {name} database"))?;
    sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .with_context(|| format!("creating the {name} database"))?;
    admin.close().await?;
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .connect_with(options.clone())
        .await
        .with_context(|| format!("connecting to the {name} database"))?;
    migrate::run(&pool)
        .await
        .with_context(|| format!("migrating the {name} database"))?;
    Ok(pool)
}

/// At the end of a run, successful or not: drops database `name`, or says it was kept.
pub async fn release(connected: &Connected, name: &str, keep: bool) {
    if keep {
        eprintln!("retrylog: kept database {name}");
    } else if let Err(error) = drop(connected, name).await {
        eprintln!("retrylog: could not drop database {name}: {error:#}");
    }
}

/// A connection to the server's maintenance database (`postgres`, else `template1`), with the
/// configured options.
async fn maintenance_connection(connected: &Connected, name: &str) -> anyhow::Result<PgConnection> {
    let mut last_error = None;
    for database in ["postgres", "template1"] {
        let options = connected
            .options
            .clone()
            .database(database)
            .disable_statement_logging();
        match PgConnection::connect_with(&options).await {
            Ok(conn) => return Ok(conn),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.expect("tried at least one database"))
        .with_context(|| format!("connecting to the maintenance database to create {name}"))
}

async fn drop(connected: &Connected, name: &str) -> anyhow::Result<()> {
    let mut admin = maintenance_connection(connected, name).await?;
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    Ok(())
}
