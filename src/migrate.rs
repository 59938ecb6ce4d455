//! Brings a database to the schema this binary expects: the sqlx migrations in
//! `migrations/` (pipeline tables, the log, settings), then the live SQL functions of `sql/`
//! (record_retry and the hash chain) and the projections' SQL, then the privileges. Read
//! commands never migrate: [`ensure_current`] only checks that a database is current.

use sha2::{Digest, Sha256};
use sqlx::migrate::Migrator;
use sqlx::{Connection, PgConnection, PgPool};
use thiserror::Error;

use crate::error::CallerMistake;
use crate::projection::{self, PROJECTIONS};

/// The versioned migrations, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The live SQL functions of `sql/`, embedded at build time and installed (`CREATE OR
/// REPLACE`) on every migrate, in this order: the hash chain's functions, then the append,
/// the batch door that calls it, the head rows' checks and the partitions' upkeep. Each is
/// defined there and nowhere else; a migration only drops an old signature.
const FUNCTIONS: [&str; 6] = [
    include_str!("../sql/retry_event_hash.sql"),
    include_str!("../sql/retrylog_text.sql"),
    include_str!("../sql/record_retry.sql"),
    include_str!("../sql/record_retries.sql"),
    include_str!("../sql/retry_stream_head.sql"),
    include_str!("../sql/retry_partitions.sql"),
];

/// Installed last, after the projections: pins search_path and sets EXECUTE per capability
/// on everything installed before it (CREATE OR REPLACE resets both).
const PRIVILEGES: &str = include_str!("../sql/privileges.sql");

/// The checksum of everything migrate installs after the migrations, recorded in
/// `retrylog_install`: a read command compares it to know the functions are this binary's.
pub fn install_checksum() -> String {
    let mut hasher = Sha256::new();
    for sql in FUNCTIONS
        .iter()
        .chain(PROJECTIONS.iter().map(|p| &p.sql))
        .chain([&PRIVILEGES])
    {
        hasher.update(sql.as_bytes());
    }
    hex::encode(hasher.finalize())
}

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
    sqlx::raw_sql(PRIVILEGES).execute(&mut *tx).await?;
    // 4. The log's partitions through `partitions_ahead` past the current one, so a database
    //    migrated and then left alone still has a partition for the coming months.
    crate::maintain::create_partitions(&mut tx).await?;
    sqlx::query(
        "INSERT INTO retrylog_install (sql_checksum) VALUES ($1)
         ON CONFLICT (singleton) DO UPDATE
            SET sql_checksum = excluded.sql_checksum, installed_at = now(),
                installed_by = session_user",
    )
    .bind(install_checksum())
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Why a command that does not migrate cannot run on this database.
#[derive(Debug, Error)]
pub enum SchemaError {
    /// Migrations or installed functions are missing or older than this binary's.
    #[error(
        "the database schema is behind this retrylog ({0}); run `retrylog migrate` as the \
         schema's owner first"
    )]
    Behind(String),
    /// The database was migrated by a newer retrylog.
    #[error("the database schema is ahead of this retrylog ({0}); use the newer retrylog")]
    Ahead(String),
    #[error("database error while checking the schema version")]
    Database(#[from] sqlx::Error),
}

impl CallerMistake for SchemaError {
    /// Behind or ahead: the operator runs the other command or binary; nothing is broken.
    fn is_caller_mistake(&self) -> bool {
        !matches!(self, SchemaError::Database(_))
    }
}

/// Where a database stands against this binary: what `status` shows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SchemaVersion {
    /// The highest migration applied (0: none).
    pub applied: i64,
    /// The highest migration this binary embeds.
    pub expected: i64,
    /// None when current, else what is missing or newer.
    pub problem: Option<String>,
    /// True when the database is newer than this binary.
    pub ahead: bool,
}

/// Reads the schema version without writing anything: needs only SELECT on
/// `_sqlx_migrations` and `retrylog_install` (every capability has it).
pub async fn schema_version(conn: &mut PgConnection) -> Result<SchemaVersion, sqlx::Error> {
    let expected = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let mut version = SchemaVersion {
        applied: 0,
        expected,
        problem: None,
        ahead: false,
    };
    let tracked: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await?;
    if !tracked {
        version.problem = Some("no migration applied".into());
        return Ok(version);
    }
    let applied: Vec<(i64, Vec<u8>, bool)> =
        sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut *conn)
            .await?;
    version.applied = applied.iter().map(|(v, _, _)| *v).max().unwrap_or(0);
    let mut missing = Vec::new();
    for migration in MIGRATOR.iter() {
        let legacy = LEGACY_CHECKSUMS
            .iter()
            .find(|(v, _)| *v == migration.version)
            .and_then(|(_, hex)| hex::decode(hex).ok());
        let found = applied.iter().find(|(v, checksum, success)| {
            *v == migration.version
                && *success
                && (checksum[..] == migration.checksum[..] || Some(checksum) == legacy.as_ref())
        });
        if found.is_none() {
            missing.push(migration.version.to_string());
        }
    }
    let known: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
    let newer: Vec<String> = applied
        .iter()
        .filter(|(v, _, _)| !known.contains(v))
        .map(|(v, _, _)| v.to_string())
        .collect();
    if !newer.is_empty() {
        version.ahead = true;
        version.problem = Some(format!("migrations {} unknown here", newer.join(", ")));
    } else if !missing.is_empty() {
        version.problem = Some(format!(
            "migration(s) {} not applied, or applied from another text",
            missing.join(", ")
        ));
    } else {
        // Every migration is applied, so retrylog_install (0006) exists.
        let installed: Option<String> =
            sqlx::query_scalar("SELECT sql_checksum FROM retrylog_install")
                .fetch_optional(&mut *conn)
                .await?;
        if installed.as_deref() != Some(install_checksum().as_str()) {
            version.problem = Some("the functions of sql/ and projections/ differ".into());
        }
    }
    Ok(version)
}

/// Refuses (exit 2, naming `retrylog migrate`) unless the database is exactly what this binary
/// migrates to. What a command that must not migrate calls instead of [`run`].
pub async fn ensure_current(pool: &PgPool) -> Result<SchemaVersion, SchemaError> {
    let mut conn = pool.acquire().await?;
    let version = schema_version(&mut conn).await?;
    match (&version.problem, version.ahead) {
        (None, _) => Ok(version),
        (Some(problem), false) => Err(SchemaError::Behind(problem.clone())),
        (Some(problem), true) => Err(SchemaError::Ahead(problem.clone())),
    }
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
