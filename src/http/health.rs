//! `/healthz` (the process answers) and `/readyz` (the database answers and its schema has
//! every migration this binary knows): for a load balancer or an orchestrator. Open to all.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::{ApiContext, Error};
use crate::migrate::MIGRATOR;

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn readyz(State(ctx): State<ApiContext>) -> Result<Json<Value>, Error> {
    let applied: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(&ctx.pool)
            .await
            .map_err(|error| {
                tracing::warn!(%error, "readiness: the database does not answer");
                Error::Unavailable("the database does not answer".into())
            })?;
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
