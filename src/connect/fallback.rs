//! When connection rule 3 (see [`super`]) takes over from the libpq defaults, before any retry
//! can flow (retry → store → projector → report/http): nothing configured and nothing
//! answering, or nothing configured and a server that refuses the login — and the line that
//! says why the machine's server was not used.

use sqlx::postgres::PgConnectOptions;

use super::{location, non_empty_var};
use crate::sqlstate;

/// Whether the user pointed libpq at a particular server: then an unreachable server
/// is their problem to hear about, not a reason to start our own.
pub(super) fn names_server(set: &[&str]) -> bool {
    set.iter()
        .any(|name| matches!(*name, "PGHOST" | "PGHOSTADDR" | "PGPORT"))
}

/// Whether the user chose who logs in, or where: then a refused login is theirs to hear about.
/// (PGDATABASE alone does not count: the private cluster honours it.)
pub(super) fn names_login(set: &[&str]) -> bool {
    names_server(set) || set.contains(&"PGUSER") || non_empty_var("PGPASSWORD").is_some()
}

/// A server answered and refused the login (SQLSTATE class 28: no such role, a wrong or
/// missing password, no pg_hba.conf entry).
pub(super) fn login_refused(error: &sqlx::Error) -> bool {
    sqlstate::of(error).is_some_and(|code| code.starts_with(sqlstate::CLASS_INVALID_AUTHORIZATION))
}

/// The one line saying the server refused us and how to use it anyway.
pub(super) fn refused_login(options: &PgConnectOptions, error: &sqlx::Error) -> String {
    let why = error
        .as_database_error()
        .map_or_else(|| error.to_string(), |db| db.message().to_owned());
    let location = location(options);
    tracing::info!(server = %location, %why, "the server refused the login; using a private cluster");
    format!(
        "the PostgreSQL server at {location} refused the login as {} ({why}), so a private \
         cluster is used instead; to use that server, set PGUSER to a role it accepts (e.g. \
         PGUSER=postgres), or DATABASE_URL",
        options.get_username(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_host_or_port_name_a_server() {
        assert!(!names_server(&[]));
        assert!(!names_server(&["PGUSER", "PGDATABASE"]));
        assert!(names_server(&["PGPORT"]));
        assert!(names_server(&["PGHOST", "PGUSER"]));
        assert!(names_server(&["PGHOSTADDR"]));
    }

    #[test]
    fn a_chosen_user_or_password_makes_a_refusal_the_users_to_hear() {
        assert!(names_login(&["PGUSER"]));
        assert!(names_login(&["PGHOST"]));
    }
}
