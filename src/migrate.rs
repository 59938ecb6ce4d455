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

/// Migrations rewritten after release, each with the checksum (SHA-384 of the file, hex)
/// that earlier releases recorded in `_sqlx_migrations` when they applied it. sqlx refuses a
/// database whose applied migration's checksum differs from the embedded one
/// (`VersionMismatch`), so [`run`] swaps these for the embedded checksums first.
///
/// Versions 3 and 5 carried record_retry's body (twice) until it moved to
/// `sql/record_retry.sql`; what they ran is still what a database needs, so accepting their
/// old checksums is honest. Add a row only for a rewrite that leaves the schema the same.
pub const LEGACY_CHECKSUMS: [(i64, &str); 2] = [
    (
        3,
        "d39489615082299a43e7cad43561bdb496567214e399a7fed1247f85c2a8345621e9d69e4e9bacc001e0213cae98a185",
    ),
    (
        5,
        "fdabf24bc5c9836acafcdb5a7eb8eafda613f5ea92316f44e5c29d49753d2813e587eac6f8053605699c35f85676070c",
    ),
];

/// A lock key no other code uses, so concurrent `migrate` runs repair checksums and install
/// functions one at a time.
const INSTALL_LOCK: i64 = 0x7265_7472_796c_6f67; // "retrylog"

/// Runs the pending migrations, then (re)installs the functions of `sql/` and every
/// projection. Safe to run any number of times, also from several processes at once.
pub async fn run(pool: &PgPool) -> Result<(), sqlx::Error> {
    // On a connection rather than the pool: Migrator::run(&Pool) is not Send (a sqlx
    // limitation), and `serve` runs this inside spawned tasks.
    let mut conn = pool.acquire().await?;
    // 1. Before sqlx compares checksums: accept the ones earlier releases recorded for the
    //    migrations this release rewrote. Its own transaction, committed before the migrator
    //    runs, because the migrator reads `_sqlx_migrations` on this same connection.
    let mut tx = conn.begin().await?;
    lock(&mut tx).await?;
    repair_legacy_checksums(&mut tx).await?;
    tx.commit().await?;
    // 2. The migrations: sqlx takes its own lock, applies what is pending, checks the rest.
    MIGRATOR
        .run(&mut *conn)
        .await
        .map_err(|error| match error {
            sqlx::migrate::MigrateError::Execute(error) => error,
            other => sqlx::Error::Migrate(Box::new(other)),
        })?;
    // 3. The live functions, on the schema the migrations left: record_retry and the hash
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

/// Replaces each legacy checksum of [`LEGACY_CHECKSUMS`] still recorded in
/// `_sqlx_migrations` with the checksum of the migration this binary embeds. Only an exact
/// legacy match is touched: a migration edited in any other way still fails sqlx's check.
/// Nothing to do on a database that has no `_sqlx_migrations` yet (sqlx creates it, in the
/// schema `search_path` names first; `to_regclass` looks it up the same way).
async fn repair_legacy_checksums(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Ok(());
    }
    for (version, legacy) in LEGACY_CHECKSUMS {
        let Some(migration) = MIGRATOR.iter().find(|m| m.version == version) else {
            continue;
        };
        let repaired = sqlx::query(
            "UPDATE _sqlx_migrations SET checksum = $1
              WHERE version = $2 AND checksum = decode($3, 'hex')",
        )
        .bind(&*migration.checksum)
        .bind(version)
        .bind(legacy)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if repaired > 0 {
            tracing::info!(
                version,
                "accepted the checksum an earlier release recorded for migration {version} \
                 (rewritten when record_retry moved to sql/)"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_legacy_checksum_is_a_sha384_of_a_migration_this_binary_rewrote() {
        for (version, legacy) in LEGACY_CHECKSUMS {
            let legacy = hex::decode(legacy).expect("a legacy checksum is hex");
            assert_eq!(legacy.len(), 48, "version {version}: SHA-384 is 48 bytes");
            let migration = MIGRATOR
                .iter()
                .find(|m| m.version == version)
                .unwrap_or_else(|| panic!("version {version} is not embedded"));
            assert_ne!(
                &*migration.checksum, &*legacy,
                "version {version} is unchanged: it needs no legacy checksum"
            );
        }
    }
}
