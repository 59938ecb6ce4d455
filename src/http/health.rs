//! `/healthz` (the process answers) and `/readyz` (the database answers and its schema has
//! every migration this binary knows): for a load balancer or an orchestrator. Open to all.
//! Both answer within a second whatever the database does: `/readyz` gives the database
//! [`READY_WITHIN`], then says 503.

use std::time::Duration;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::{ApiContext, Error};
use crate::migrate::MIGRATOR;

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// How long `/readyz` waits for the database before it answers 503: a probe expects an
/// answer within a second, and a database that takes longer is not ready to serve.
pub const READY_WITHIN: Duration = Duration::from_millis(800);

pub async fn readyz(State(ctx): State<ApiContext>) -> Result<Json<Value>, Error> {
    let asked = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(&ctx.pool);
    let applied: Option<i64> = match tokio::time::timeout(READY_WITHIN, asked).await {
        Ok(Ok(applied)) => applied,
        Ok(Err(error)) => {
            tracing::warn!(%error, "readiness: the database does not answer");
            return Err(Error::Unavailable("the database does not answer".into()));
        }
        Err(_) => {
            tracing::warn!("readiness: the database did not answer within {READY_WITHIN:?}");
            return Err(Error::Unavailable(format!(
                "the database did not answer within {} ms",
                READY_WITHIN.as_millis()
            )));
        }
    };
    let known = MIGRATOR.iter().map(|migration| migration.version).max();
    if applied < known {
        return Err(Error::Unavailable(format!(
            "the schema is at migration {}, this binary needs {}",
            applied.unwrap_or(0),
            known.unwrap_or(0)
        )));
    }
    Ok(Json(json!({ "status": "ready", "migration": applied })))
}
