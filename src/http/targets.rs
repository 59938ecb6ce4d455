//! `GET /api/v1/targets`: a page of `retrylog targets --format json` (the same object, built by
//! `cmd::targets::listing`), with the command's flags as query parameters. The steps `state=stuck`
//! needs are the server's own.

use axum::extract::{Query, State};
use axum::Json;
use serde_json::Value;

use super::{flags, ApiContext, Error, Reader};
use crate::cli::TargetsArgs;
use crate::cmd::targets;
use crate::connect::read_retrying;

pub async fn targets(
    State(ctx): State<ApiContext>,
    _: Reader,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, Error> {
    let args: TargetsArgs = flags::parse(&params)?;
    let page =
        read_retrying(|| targets::listing(ctx.reads(), &args, &ctx.steps, Some(&ctx.stuck_census)))
            .await?;
    Ok(Json(targets::to_json(&page)))
}
