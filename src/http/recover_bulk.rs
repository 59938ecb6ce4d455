//! `POST /api/v1/recover/bulk`: `retrylog recover --state …` as JSON, through the one bulk
//! recovery (`recovery::bulk::recover_many`) the Targets page's form calls too; the actor is
//! the admin token's name. The `filter` object takes the query parameters of
//! `GET /api/v1/targets` that choose targets (its paging and order are no filter), read by the
//! same flags ([`FilterArgs`]). Answers the [`BulkResult`]: 201 when it recovered, 200 for a
//! dry run or a repeated `request_id` (the stored result), 409 for a `request_id` used with
//! another body.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{body, flags, Admin, ApiContext, Error};
use crate::cli::FilterArgs;
use crate::cmd::targets;
use crate::recovery::bulk::{self, BulkRequest, BulkResult, Seen, MAX_TARGETS};
use crate::targets::StuckRule;

/// The body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkBody {
    /// Which targets: `GET /api/v1/targets`' filter parameters, as strings or numbers.
    #[serde(default)]
    filter: Map<String, Value>,
    /// A preview's targets (`kind`, `id`, `attempt`): only these, each skipped if it changed.
    targets: Option<Vec<Seen>>,
    note: String,
    max: Option<i64>,
    #[serde(default)]
    dry_run: bool,
    request_id: Option<String>,
}

pub async fn recover_bulk(
    State(ctx): State<ApiContext>,
    admin: Admin,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<(StatusCode, Json<BulkResult>), Error> {
    let body: BulkBody = body::parse(&headers, &bytes)?;
    let params = filter_params(&body.filter)?;
    let request = request(
        &ctx,
        &params,
        body.targets,
        body.note,
        admin.name,
        body.max.unwrap_or(MAX_TARGETS),
        body.dry_run,
        body.request_id,
    )?;
    let result = run(&ctx, &request).await?;
    let status = if result.dry_run || result.repeated {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(result)))
}

/// The `filter` object as query parameters: each value a string or a number.
fn filter_params(filter: &Map<String, Value>) -> Result<Vec<(String, String)>, Error> {
    filter
        .iter()
        .map(|(key, value)| match value {
            Value::String(text) => Ok((key.clone(), text.clone())),
            Value::Number(number) => Ok((key.clone(), number.to_string())),
            _ => Err(Error::BadRequest(format!(
                "invalid filter.{key}: a string or a number, not {value}"
            ))),
        })
        .collect()
}

/// A bulk request from the API's body or the page's form: `params` are the filter's
/// parameters as given.
#[allow(clippy::too_many_arguments)]
pub fn request(
    ctx: &ApiContext,
    params: &[(String, String)],
    seen: Option<Vec<Seen>>,
    note: String,
    actor: String,
    max: i64,
    dry_run: bool,
    request_id: Option<String>,
) -> Result<BulkRequest, Error> {
    let args: FilterArgs = flags::try_parse(params)
        .map_err(|refusal| Error::BadRequest(format!("invalid filter: {}", refusal.message)))?;
    if !args.any() && seen.is_none() {
        return Err(anyhow::Error::from(bulk::BulkError::NoFilter).into());
    }
    let asked: Map<String, Value> = params
        .iter()
        .map(|(key, value)| (key.clone(), Value::from(value.clone())))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect();
    Ok(BulkRequest {
        filter: targets::filter(&args).map_err(anyhow::Error::from)?,
        stuck: StuckRule {
            steps: ctx.steps.clone(),
            stuck_after: args.stuck_after,
        },
        asked: Value::Object(asked),
        seen,
        note,
        actor,
        max,
        dry_run,
        request_id: request_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
    })
}

/// Runs the request.
pub async fn run(ctx: &ApiContext, request: &BulkRequest) -> Result<BulkResult, Error> {
    Ok(bulk::recover_many(&ctx.pool, request, &ctx.steps).await?)
}
