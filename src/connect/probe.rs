//! Probing a server and connection rule 4 (see [`super`]): does a server answer at the
//! chosen address, does the database exist, and if not, create it when this command may (or
//! say it is missing) — the last step before the pool that every retry flows through (retry →
//! store → projector → report/http) opens.

use std::io;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, Executor, PgConnection};

use super::{database_name, location, ConnectError, DatabaseUse, MAINTENANCE_DATABASE};
use crate::sqlstate;

/// Fallback maintenance database when `postgres` was dropped (it always exists).
const TEMPLATE_DATABASE: &str = "template1";

/// How long one probing connection of the private cluster's may take before we call it
/// unreachable (the configured server gets `--db-timeout`).
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

// SQLSTATEs we act on.

/// What one connection attempt told us about the server.
pub(super) enum Probe {
    /// Connected to the target database.
    Ready,
    /// A server answered and said the database does not exist.
    MissingDatabase,
    /// Nothing listens there (connection refused, socket file missing).
    NothingListening(sqlx::Error),
    /// Anything else: a server that refused us, a timeout, a TLS failure, ...
    Failed(sqlx::Error),
}

pub(super) async fn probe(options: &PgConnectOptions) -> Probe {
    probe_within(options, PROBE_TIMEOUT).await
}

/// [`probe`], giving the server `timeout` to answer (`--db-timeout` for the configured one).
pub(super) async fn probe_within(options: &PgConnectOptions, timeout: Duration) -> Probe {
    match tokio::time::timeout(timeout, PgConnection::connect_with(options)).await {
        Ok(Ok(conn)) => {
            // A failed goodbye does not make the server less reachable.
            if let Err(error) = conn.close().await {
                tracing::debug!(%error, "closing the probe connection failed");
            }
            Probe::Ready
        }
        Ok(Err(error))
            if sqlstate::of(&error).as_deref() == Some(sqlstate::INVALID_CATALOG_NAME) =>
        {
            Probe::MissingDatabase
        }
        Ok(Err(error)) if nothing_listening(&error) => Probe::NothingListening(error),
        Ok(Err(error)) => Probe::Failed(error),
        Err(_) => Probe::Failed(sqlx::Error::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {timeout:?}"),
        ))),
    }
}

/// Refused or a missing socket file (or, for `localhost` on a machine without a
/// loopback network, no route) means no server is there at all; anything else
/// (authentication, unknown role, TLS, DNS, timeout, ...) means either a server is there
/// or the address is wrong, and neither is a reason to start a cluster of our own.
fn nothing_listening(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(io) => matches!(
            io.kind(),
            io::ErrorKind::ConnectionRefused
                | io::ErrorKind::NotFound
                | io::ErrorKind::AddrNotAvailable
                | io::ErrorKind::NetworkUnreachable
                | io::ErrorKind::HostUnreachable
        ),
        _ => false,
    }
}

/// Turns a connection failure into the error naming where we tried.
pub(super) fn failure(options: &PgConnectOptions, error: sqlx::Error) -> ConnectError {
    let target = location(options);
    match error {
        sqlx::Error::Database(_) => ConnectError::Refused { target, error },
        error => ConnectError::Unreachable { target, error },
    }
}

/// What rule 4 does when the server says the database to open does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Missing {
    /// Create it.
    Create,
    /// Stop: [`ConnectError::MissingDatabase`].
    Refuse,
    /// It was the maintenance database `postgres` (someone dropped it): open `template1`,
    /// which cannot be dropped, instead.
    OpenTemplate,
}

impl Missing {
    /// The rule of [`DatabaseUse`]: `named` when the user named the database (URL,
    /// `PGDATABASE`), `private_cluster` on the cluster retrylog started itself, where every
    /// command installs the schema (so the unnamed default is created by any of them).
    pub(super) fn of(usage: DatabaseUse, named: bool, private_cluster: bool) -> Self {
        match usage {
            DatabaseUse::ServerOnly => Missing::OpenTemplate,
            DatabaseUse::Create => Missing::Create,
            DatabaseUse::CreateDefault if !named => Missing::Create,
            DatabaseUse::Existing if !named && private_cluster => Missing::Create,
            DatabaseUse::CreateDefault | DatabaseUse::Existing => Missing::Refuse,
        }
    }
}

/// Rule 4: given the probe of the database to open, make sure it is there (or stop, as
/// `missing` says); returns the options to open the pool with.
pub(super) async fn ensure_database(
    options: &PgConnectOptions,
    probe: Probe,
    missing: Missing,
) -> Result<PgConnectOptions, ConnectError> {
    match probe {
        Probe::Ready => Ok(options.clone()),
        Probe::MissingDatabase => match missing {
            Missing::Create => create_database(options).await.map(|()| options.clone()),
            Missing::Refuse => Err(ConnectError::MissingDatabase {
                database: database_name(options),
                target: location(options),
            }),
            Missing::OpenTemplate => {
                let template = options.clone().database(TEMPLATE_DATABASE);
                match self::probe(&template).await {
                    Probe::Ready => Ok(template),
                    Probe::MissingDatabase => Err(ConnectError::MissingDatabase {
                        database: TEMPLATE_DATABASE.to_owned(),
                        target: location(options),
                    }),
                    Probe::NothingListening(error) | Probe::Failed(error) => {
                        Err(failure(&template, error))
                    }
                }
            }
        },
        Probe::NothingListening(error) | Probe::Failed(error) => Err(failure(options, error)),
    }
}

/// `CREATE DATABASE` through the maintenance database, with the same server and user.
async fn create_database(options: &PgConnectOptions) -> Result<(), ConnectError> {
    let database = database_name(options);
    let target = location(options);
    let create_error = |error| ConnectError::CreateDatabase {
        database: database.clone(),
        target: target.clone(),
        error,
    };

    let mut conn = match PgConnection::connect_with(&options.clone().database(MAINTENANCE_DATABASE))
        .await
    {
        Ok(conn) => conn,
        // Someone dropped `postgres`; template1 cannot be dropped.
        Err(error) if sqlstate::of(&error).as_deref() == Some(sqlstate::INVALID_CATALOG_NAME) => {
            PgConnection::connect_with(&options.clone().database(TEMPLATE_DATABASE))
                .await
                .map_err(create_error)?
        }
        Err(error) => return Err(create_error(error)),
    };

    tracing::info!(%database, server = %target, "creating database");
    let result = conn
        .execute(format!("CREATE DATABASE {}", quote_ident(&database)).as_str())
        .await;
    if let Err(error) = conn.close().await {
        tracing::debug!(%error, "closing the maintenance connection failed");
    }
    match result {
        Ok(_) => Ok(()),
        // Another retrylog process created it between our probe and now: that is the
        // outcome we wanted. Concurrent creation can also surface as a unique violation
        // on pg_database's name index.
        Err(error)
            if matches!(
                sqlstate::of(&error).as_deref(),
                // A concurrent CREATE DATABASE can surface as a unique violation.
                Some(sqlstate::DUPLICATE_DATABASE | sqlstate::UNIQUE_VIOLATION)
            ) =>
        {
            tracing::debug!(%database, "database was created concurrently");
            Ok(())
        }
        Err(error) => Err(create_error(error)),
    }
}

/// Quotes an SQL identifier (`"` doubled), so any database name is safe in DDL.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_schema_installers_create_and_a_named_database_only_migrate() {
        use DatabaseUse::*;
        // (usage, named, private cluster) → what a missing database gets.
        for (usage, named, private, expected) in [
            (Create, true, false, Missing::Create),
            (Create, false, false, Missing::Create),
            (CreateDefault, false, false, Missing::Create),
            (CreateDefault, true, false, Missing::Refuse),
            (CreateDefault, true, true, Missing::Refuse),
            (Existing, false, false, Missing::Refuse),
            (Existing, true, false, Missing::Refuse),
            (Existing, false, true, Missing::Create),
            (Existing, true, true, Missing::Refuse),
            (ServerOnly, false, false, Missing::OpenTemplate),
            (ServerOnly, true, true, Missing::OpenTemplate),
        ] {
            assert_eq!(
                Missing::of(usage, named, private),
                expected,
                "{usage:?}, named {named}, private cluster {private}"
            );
        }
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("retrylog"), r#""retrylog""#);
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
    }
    #[test]
    fn refused_and_missing_socket_mean_nothing_listens() {
        let io = |kind| sqlx::Error::Io(io::Error::from(kind));
        assert!(nothing_listening(&io(io::ErrorKind::ConnectionRefused)));
        assert!(nothing_listening(&io(io::ErrorKind::NotFound)));
        assert!(!nothing_listening(&io(io::ErrorKind::PermissionDenied)));
        assert!(!nothing_listening(&io(io::ErrorKind::TimedOut)));
        assert!(!nothing_listening(&sqlx::Error::PoolTimedOut));
    }
}
