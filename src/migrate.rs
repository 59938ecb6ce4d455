//! Brings a database to the schema this binary expects: the sqlx migrations in
//! `migrations/` (pipeline tables, the log, settings), then the live SQL functions of `sql/`
//! (record_retry and the hash chain) and the projections' SQL.

use sqlx::migrate::Migrator;
use sqlx::{Connection, PgConnection, PgPool};

use crate::projection;

/// The versioned migrations, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The live SQL functions of `sql/`, embedded at build time and installed (`CREATE OR
/// REPLACE`) on every migrate, in this order: the hash chain's functions, then the append.
/// Each is defined there and nowhere else; a migration only drops an old signature.
const FUNCTIONS: [&str; 2] = [
    include_str!("../sql/retry_event_hash.sql"),
    include_str!("../sql/record_retry.sql"),
];

/// A lock key no other code uses, so concurrent `migrate` runs install functions one at a time.
const INSTALL_LOCK: i64 = 0x7265_7472_796c_6f67; // "retrylog"

/// Runs the pending migrations, then (re)installs the functions of `sql/` and every
/// projection. Safe to run any number of times, also from several processes at once.
pub async fn run(pool: &PgPool) -> Result<(), sqlx::Error> {
    // On a connection rather than the pool: Migrator::run(&Pool) is not Send (a sqlx
    // limitation), and `serve` runs this inside spawned tasks.
    let mut conn = pool.acquire().await?;
    // 1. The migrations: sqlx takes its own lock, applies what is pending, checks the rest.
    MIGRATOR
        .run(&mut *conn)
        .await
        .map_err(|error| match error {
            sqlx::migrate::MigrateError::Execute(error) => error,
            other => sqlx::Error::Migrate(Box::new(other)),
        })?;
    // 2. The live functions, on the schema the migrations left: record_retry and the hash
    //    chain, then the projections (record_retry applies retry_counts inline). One
    //    transaction, so a session sees all of them replaced or none.
    let mut tx = conn.begin().await?;
    lock(&mut tx).await?;
    for sql in FUNCTIONS {
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
    }
    projection::install(&mut tx).await?;
    tx.commit().await
}

/// Takes the install lock until the transaction ends. CREATE OR REPLACE FUNCTION from two
/// sessions at once can fail with "tuple concurrently updated"; this serialises them.
async fn lock(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(INSTALL_LOCK)
        .execute(conn)
        .await?;
    Ok(())
}
