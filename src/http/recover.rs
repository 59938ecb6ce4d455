//! `POST /api/v1/recover`: an operator's recovery of one target, through the one operation
//! `retrylog recover` and the dashboard call (`recovery::recover_by_hand`); the actor is the
//! admin token's name. Answers the `manual_recovery` event as one JSON object, the one
//! `recover --format json` prints in its array: 201, or 200 for a repeated `request_id`
//! (nothing changed).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::{body, Admin, ApiContext, Error};
use crate::metrics;
use crate::output::event_object;
use crate::recovery::{self, ManualRecovery, ManualTarget, Recovered};

/// The body: `retrylog recover`'s flags as JSON keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecoverBody {
    job_id: Option<Uuid>,
    variant_id: Option<Uuid>,
    note: String,
    to_status: Option<String>,
    request_id: Option<String>,
    event_id: Option<Uuid>,
}

/// Runs one recovery in a transaction of its own, counting a refusal in the metrics: the API
/// and the dashboard's form both come through here.
pub async fn recover_once(ctx: &ApiContext, request: &ManualRecovery) -> Result<Recovered, Error> {
    let mut tx = ctx.pool.begin().await?;
    let recovered = recovery::recover_by_hand(&mut tx, request, &ctx.steps)
        .await
        .map_err(|error| {
            metrics::recovery_refused(&error);
            Error::from(anyhow::Error::from(error))
        })?;
    tx.commit().await?;
    Ok(recovered)
}

pub async fn recover(
    State(ctx): State<ApiContext>,
    admin: Admin,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<(StatusCode, Json<Value>), Error> {
    let body: RecoverBody = body::parse(&headers, &bytes)?;
    let target = match (body.job_id, body.variant_id) {
        (None, Some(variant)) => ManualTarget::Variant(variant),
        (Some(job), None) => ManualTarget::Job(job),
        _ => {
            return Err(Error::BadRequest(
                "name exactly one of job_id and variant_id".into(),
            ))
        }
    };
    if body.request_id.is_some() && body.event_id.is_some() {
        return Err(Error::BadRequest(
            "request_id and event_id are two idempotency keys: give one".into(),
        ));
    }
    let request = ManualRecovery {
        target,
        note: body.note,
        actor: admin.name,
        to_status: body.to_status,
        event_id: body
            .event_id
            .or_else(|| body.request_id.as_deref().map(recovery::request_event_id)),
    };
    let recovered = recover_once(&ctx, &request).await?;
    let status = if recovered.repeated {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(event_object(recovered.event))))
}
