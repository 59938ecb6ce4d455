//! Capabilities, the PostgreSQL way: `retrylog grant writer|operator|reader|pipeline ROLE`
//! makes an existing role a member of one of the NOLOGIN group roles migrations 0006 and 0014
//! create. What each group may do is granted to the group (migrations/0006, sql/privileges.sql),
//! so a role's rights follow every later migrate without granting anything again.
//!
//! Membership rather than direct grants: one GRANT per capability to undo (`REVOKE
//! retrylog_writer FROM role`), `\du` shows who has what, and new functions reach every
//! member at the next migrate.

use sqlx::PgConnection;
use thiserror::Error;

use crate::error::CallerMistake;
use crate::sqlstate;

/// What a database role may do with retrylog.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    strum::Display,
    strum::EnumString,
    strum::AsRefStr,
    strum::EnumIter,
)]
#[strum(serialize_all = "snake_case")]
pub enum Capability {
    /// May append through record_retry (never with force); no right on the log or counts.
    Writer,
    /// A writer and a reader, plus force, replay and running the projector.
    Operator,
    /// Every read command; no write right at all.
    Reader,
    /// The pipeline's own workers: read, insert and advance rows of jobs and jobs_variants,
    /// never set retry_count; nothing of retrylog's.
    Pipeline,
}

impl Capability {
    /// Parses a capability, naming the accepted ones on failure.
    pub fn parse(text: &str) -> Result<Self, String> {
        text.parse().map_err(|_| {
            format!(
                "unknown capability \"{}\" (expected writer, operator, reader or pipeline)",
                crate::text::escape(text, 40)
            )
        })
    }

    /// The group role that carries the capability.
    pub fn group_role(self) -> &'static str {
        match self {
            Capability::Writer => "retrylog_writer",
            Capability::Operator => "retrylog_operator",
            Capability::Reader => "retrylog_reader",
            Capability::Pipeline => "retrylog_pipeline",
        }
    }
}

/// Why a grant was refused.
#[derive(Debug, Error)]
pub enum GrantError {
    /// The role named does not exist in the cluster.
    #[error("unknown role {0}: create it first (CREATE ROLE ... LOGIN)")]
    UnknownRole(String),
    /// The role named is one of the capability roles themselves.
    #[error("{0} is a capability role; grant it to a login role instead")]
    CapabilityRole(String),
    /// The role running the grant may not grant the group role.
    #[error("not permitted: {0}")]
    NotPermitted(String),
    #[error("database error while granting")]
    Database(#[source] sqlx::Error),
}

impl CallerMistake for GrantError {
    fn is_caller_mistake(&self) -> bool {
        !matches!(self, GrantError::Database(_))
    }
}

impl From<sqlx::Error> for GrantError {
    fn from(error: sqlx::Error) -> Self {
        match sqlstate::of(&error).as_deref() {
            Some(sqlstate::INSUFFICIENT_PRIVILEGE) => GrantError::NotPermitted(
                error
                    .as_database_error()
                    .map(|db| db.message().to_string())
                    .unwrap_or_default(),
            ),
            _ => GrantError::Database(error),
        }
    }
}

/// Gives `role` the capability in this cluster (membership is cluster-wide; the group's
/// rights are per database, set by migrate). Idempotent: granting a membership the role
/// already has changes nothing. Returns the statements it ran.
pub async fn grant(
    conn: &mut PgConnection,
    capability: Capability,
    role: &str,
) -> Result<Vec<String>, GrantError> {
    let shown = || crate::text::escape(role, 64);
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(role)
            .fetch_one(&mut *conn)
            .await?;
    if !exists {
        return Err(GrantError::UnknownRole(format!("\"{}\"", shown())));
    }
    use strum::IntoEnumIterator;
    if Capability::iter().any(|capability| capability.group_role() == role) {
        return Err(GrantError::CapabilityRole(role.to_string()));
    }
    // Quoted by the server (format %I): a role name is data here, never SQL.
    let statement: String = sqlx::query_scalar("SELECT format('GRANT %I TO %I', $1, $2)")
        .bind(capability.group_role())
        .bind(role)
        .fetch_one(&mut *conn)
        .await?;
    sqlx::raw_sql(&statement).execute(&mut *conn).await?;
    Ok(vec![statement])
}

/// The capabilities a role holds now (directly or through another role), for `status`.
pub async fn capabilities_of(
    conn: &mut PgConnection,
    role: &str,
) -> Result<Vec<Capability>, sqlx::Error> {
    use strum::IntoEnumIterator;
    let mut held = Vec::new();
    for capability in Capability::iter() {
        let member: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $2)
                AND pg_has_role($1, $2, 'MEMBER')",
        )
        .bind(role)
        .bind(capability.group_role())
        .fetch_one(&mut *conn)
        .await?;
        if member {
            held.push(capability);
        }
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_parse_from_their_names_and_refuse_others() {
        assert_eq!(Capability::parse("writer"), Ok(Capability::Writer));
        assert_eq!(Capability::parse("operator"), Ok(Capability::Operator));
        assert_eq!(Capability::parse("reader"), Ok(Capability::Reader));
        assert_eq!(Capability::parse("pipeline"), Ok(Capability::Pipeline));
        let error = Capability::parse("admin\u{1b}[31m").unwrap_err();
        assert!(
            error.contains("expected writer, operator, reader or pipeline"),
            "{error}"
        );
        assert!(!error.contains('\u{1b}'), "{error}");
    }
}
