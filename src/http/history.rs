//! `GET /api/v1/history`: the rows of `retrylog history --format json` (events and the
//! watchdog's notes), built by the same function, with its flags as query parameters
//! (`job_id` or `variant_id`, `reason`, `step`, `actor`, `since`, `until`, `as_of`).

use axum::extract::{Query, State};
use axum::Json;
use serde_json::Value;

use super::{flags, ApiContext, Error, Reader};
use crate::cli::HistoryArgs;
use crate::cmd::history;
use crate::connect::read_retrying;
use crate::output::Format;

pub async fn history(
    State(ctx): State<ApiContext>,
    _: Reader,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, Error> {
    // clap would name --job-id alone as missing; either parameter names a target.
    if !params
        .iter()
        .any(|(name, _)| name == "job_id" || name == "variant_id")
    {
        return Err(Error::BadRequest(
            "history needs a target: give the parameter job_id or variant_id".into(),
        ));
    }
    let args: HistoryArgs = flags::parse(&params)?;
    let rows = read_retrying(|| history::rows(ctx.reads(), &args, Format::Json)).await?;
    Ok(Json(rows.to_json()))
}
