//! Connections that stay correct behind a pooler in transaction mode (pgbouncer's
//! `pool_mode = transaction`; Debian's 1.18 passes no protocol-level prepared statement from
//! one transaction to the next).
//!
//! Behind such a pooler a server session is ours only while a transaction is open: at every
//! `ReadyForQuery` that says "idle" it may go to another client. sqlx runs each query with
//! bound values as two round trips (Parse + Describe + Sync, then Bind + Execute + Sync), so
//! outside a transaction the Bind may reach another server session than the Parse did — one
//! without the statement, or holding another client's statement of the same name. Turning the
//! statement cache off (`statement_cache_capacity(0)`, the usual advice) is not enough with
//! sqlx 0.8: an uncached query still parses a *named* statement (`sqlx_s_N`, counted per
//! connection from 1) and never closes it, so two clients collide on one server session
//! ("prepared statement sqlx_s_1 already exists").
//!
//! So each checkout of a pooled connection is one transaction: `BEGIN` when the pool hands the
//! connection out, `COMMIT` when it comes back. Inside, the pooler keeps one server session
//! for us, so both round trips of every query meet the same statement. The checkout's first
//! message also clears whatever statements an earlier client left on that session, in a
//! transaction of its own (`BEGIN; DEALLOCATE ALL; COMMIT; BEGIN`: one message, so one server
//! session, and the checkout's transaction has run no query yet, so a `SET TRANSACTION
//! ISOLATION LEVEL` of the code's still may). A transaction the code opens itself
//! (`pool.begin()`) runs inside the checkout's, and its `COMMIT` is synchronous as always;
//! PostgreSQL's "already a transaction in progress" warning for its `BEGIN` is silenced for
//! the checkout (`SET LOCAL client_min_messages = error`: retrylog's SQL raises no notices).
//! The checkout is also marked (`SET LOCAL retrylog.pooled = on`) so that a trend read does
//! not try to lead the projector through the pooler (`projector::may_run`).
//!
//! Every write retrylog makes for a caller (an append, a recovery, a session) is such a
//! transaction; a statement outside one commits when its connection goes back to the pool.
//!
//! One rule follows for the code: after its own `COMMIT`, a checkout is outside any
//! transaction, so it takes a new connection for anything more rather than go on with the one
//! it has (the projector's catch-up does go on, which is why it never runs through a pooler).
//!
//! What this cannot give is a session: a lock or lease held past a transaction, a `LISTEN`.
//! Those run on `--direct-url` (docs/scale.md, "Through a pooler").

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor, PgConnection};

/// The connect options for a pooled connection: no statement cache, and no
/// `extra_float_digits` startup parameter (pgbouncer refuses startup parameters it does not
/// track unless told to ignore them; retrylog reads no floats whose last digits matter).
pub(super) fn options(options: PgConnectOptions) -> PgConnectOptions {
    options.statement_cache_capacity(0).extra_float_digits(None)
}

/// The pool's hooks: every checkout is one transaction (see the module docs). A new
/// connection is handed out without `before_acquire`, so `after_connect` opens it too.
pub(super) fn pool_options(pool: PgPoolOptions) -> PgPoolOptions {
    pool.after_connect(|conn, _| Box::pin(async move { open_checkout(conn).await }))
        .before_acquire(|conn, _| Box::pin(async move { open_checkout(conn).await.map(|()| true) }))
        .after_release(|conn, _| Box::pin(async move { close_checkout(conn).await }))
}

/// Clears the statements the server session may hold, then pins it for the checkout.
async fn open_checkout(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    conn.execute(
        "BEGIN; DEALLOCATE ALL; COMMIT; BEGIN; SET LOCAL client_min_messages = error;
         SET LOCAL retrylog.pooled = on",
    )
    .await
    .map(|_| ())
}

/// Commits what the checkout did outside a transaction of its own. After the code's own
/// `COMMIT` there is none left, and the warning saying so is silenced (`set_config(…, true)`
/// lasts for this one message). A connection whose commit fails is not kept.
async fn close_checkout(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    let commit = "SELECT set_config('client_min_messages', 'error', true); COMMIT";
    match conn.execute(commit).await {
        Ok(_) => Ok(true),
        Err(error) => {
            tracing::warn!(%error, "committing a pooled connection's checkout failed");
            Ok(false)
        }
    }
}
