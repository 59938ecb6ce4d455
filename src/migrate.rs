//! Brings a database to the schema this binary expects: the sqlx migrations in
//! `migrations/` (pipeline tables, the log, record_retry), then the projections' SQL.

use sqlx::migrate::Migrator;
use sqlx::{Connection, PgPool};

use crate::projection;

/// The versioned migrations, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// A lock key no other code uses, so concurrent `migrate` runs install projections one at a time.
const INSTALL_LOCK: i64 = 0x7265_7472_796c_6f67; // "retrylog"

/// Runs the pending migrations, then (re)installs every projection. Safe to run any number
/// of times, also from several processes at once.
pub async fn run(pool: &PgPool) -> Result<(), sqlx::Error> {
    // On a connection rather than the pool: Migrator::run(&Pool) is not Send (a sqlx
    // limitation), and `serve` runs this inside spawned tasks.
    let mut conn = pool.acquire().await?;
    MIGRATOR
        .run(&mut *conn)
        .await
        .map_err(|error| match error {
            sqlx::migrate::MigrateError::Execute(error) => error,
            other => sqlx::Error::Migrate(Box::new(other)),
        })?;
    let mut tx = conn.begin().await?;
    // CREATE OR REPLACE FUNCTION from two sessions at once can fail with "tuple concurrently
    // updated"; the transaction-scoped advisory lock serialises the installs.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(INSTALL_LOCK)
        .execute(&mut *tx)
        .await?;
    projection::install(&mut tx).await?;
    tx.commit().await
}
