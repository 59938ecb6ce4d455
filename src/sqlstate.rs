//! Every SQLSTATE the code matches on, named once: PostgreSQL's own, and retrylog's `RL0xx`
//! codes raised by the functions in `sql/` and the append-only guard (docs/architecture.md
//! lists them with the doors that map them).

use sqlx::postgres::PgDatabaseError;

// PostgreSQL's codes (Appendix A of its manual).

/// invalid_parameter_value: `record_retry` refuses a field.
pub const INVALID_PARAMETER_VALUE: &str = "22023";
/// invalid_text_representation: a bound value does not parse (a malformed uuid, reason).
pub const INVALID_TEXT_REPRESENTATION: &str = "22P02";
/// character_not_in_repertoire: bytes that are not valid in the database encoding.
pub const CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";
/// untranslatable_character: a NUL (`\u0000`) in jsonb.
pub const UNTRANSLATABLE_CHARACTER: &str = "22P05";
/// insufficient_privilege: a role without the capability (`force` by a writer, a GRANT).
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
/// unique_violation.
pub const UNIQUE_VIOLATION: &str = "23505";
/// serialization_failure: the caller's isolation level saw a concurrent update.
pub const SERIALIZATION_FAILURE: &str = "40001";
/// deadlock_detected.
pub const DEADLOCK_DETECTED: &str = "40P01";
/// lock_not_available: a `lock_timeout` ran out.
pub const LOCK_NOT_AVAILABLE: &str = "55P03";
/// invalid_catalog_name: the database does not exist.
pub const INVALID_CATALOG_NAME: &str = "3D000";
/// duplicate_database.
pub const DUPLICATE_DATABASE: &str = "42P04";
/// Class 08, connection exception: the session is gone.
pub const CLASS_CONNECTION_EXCEPTION: &str = "08";
/// Class 28, invalid authorization specification: the server refused the login (no such
/// role, a wrong password, no pg_hba.conf entry).
pub const CLASS_INVALID_AUTHORIZATION: &str = "28";
/// Class 57, operator intervention: the server shuts down or the backend was terminated.
pub const CLASS_OPERATOR_INTERVENTION: &str = "57";

// retrylog's codes.

/// No job or variant with that id.
pub const UNKNOWN_TARGET: &str = "RL001";
/// The variant belongs to another job than the one named.
pub const WRONG_JOB: &str = "RL002";
/// The target's retry_count reached the retry limit (shared or the caller's).
pub const LIMIT_REACHED: &str = "RL004";
/// The event_id is already recorded for another target.
pub const EVENT_ID_REUSED: &str = "RL005";
/// `expected_attempt` is not the stream's next attempt.
pub const ATTEMPT_CONFLICT: &str = "RL009";
/// A table of the log is append-only: UPDATE, DELETE and TRUNCATE are refused.
pub const APPEND_ONLY: &str = "RL010";

/// The SQLSTATE of a database error; `None` for any other error.
pub fn of(error: &sqlx::Error) -> Option<String> {
    error
        .as_database_error()
        .and_then(|db| db.code())
        .map(|code| code.into_owned())
}

/// The HINT PostgreSQL sent with a database error, if any.
pub fn hint(error: &sqlx::Error) -> Option<&str> {
    error
        .as_database_error()
        .and_then(|db| db.try_downcast_ref::<PgDatabaseError>())
        .and_then(|pg| pg.hint())
}

/// The COLUMN field of a database error: for `RL001`, the parameter of `record_retry` the id
/// given belongs in (`job_id` for a job's id passed as a variant's, `job_variants_id` for the
/// other way round).
pub fn column(error: &sqlx::Error) -> Option<&str> {
    error
        .as_database_error()
        .and_then(|db| db.try_downcast_ref::<PgDatabaseError>())
        .and_then(|pg| pg.column())
}

/// True when `error` means the database did not answer or the session is gone (network, no
/// connection within the pool's acquire timeout, server shutdown, the backend terminated)
/// rather than that one statement failed: the watchdog and the projector wait and reconnect,
/// the binary exits 69, the API answers 503 with Retry-After.
pub fn connection_lost(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        // Class 08: connection exception; class 57: the server shuts down or an administrator
        // terminated the backend (pg_terminate_backend raises 57P01).
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with(CLASS_CONNECTION_EXCEPTION)
                || code.starts_with(CLASS_OPERATOR_INTERVENTION)
        }),
        _ => false,
    }
}
