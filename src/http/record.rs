//! `POST /api/v1/record`: one retry through `store::append`, like `retrylog record`; the
//! body's fields are the command's flags, the actor is the admin token's name. Answers the
//! stored event as one JSON object, the one `record --format json` prints in its array (201;
//! for an event id already recorded, the original event, as the CLI does).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::{body, Admin, ApiContext, Error};
use crate::event::{NewRetry, RetryReason, Target};
use crate::output::event_object;
use crate::{metrics, store};

/// The body: `retrylog record`'s flags as JSON keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordBody {
    job_id: Uuid,
    variant_id: Option<Uuid>,
    reason: String,
    step: Option<String>,
    detail: Option<Value>,
    event_id: Option<Uuid>,
    max_retries: Option<i32>,
    expected_attempt: Option<i32>,
    #[serde(default)]
    force: bool,
}

pub async fn record(
    State(ctx): State<ApiContext>,
    admin: Admin,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<(StatusCode, Json<Value>), Error> {
    let body: RecordBody = body::parse(&headers, &bytes)?;
    let reason = RetryReason::parse(&body.reason).map_err(Error::BadRequest)?;
    let target = Target::from_columns(body.job_id, body.variant_id);
    let mut retry = NewRetry::new(target, reason, admin.name);
    retry.step = body.step;
    retry.event_id = body.event_id;
    retry.max_retries = body.max_retries;
    retry.expected_attempt = body.expected_attempt;
    retry.force = body.force;
    if let Some(detail) = body.detail {
        retry.detail = body::detail(detail)?;
    }
    let mut tx = ctx.pool.begin().await?;
    let event = store::append(&mut tx, &retry).await.map_err(|error| {
        metrics::append_refused(&error);
        Error::from(anyhow::Error::from(error))
    })?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(event_object(event))))
}
