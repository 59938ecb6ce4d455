//! `GET /api/v1/reports/{report}`: the rows of `retrylog report … --format json`, built by the
//! same functions (`cmd::report::*_rows`), with the report's flags as query parameters.

use axum::extract::{Query, State};
use axum::Json;
use serde_json::Value;

use super::{flags, ApiContext, Error, Reader};
use crate::cli::{AlertsArgs, OutcomesArgs, StatsArgs, TopJobsArgs, TopVariantsArgs, TrendArgs};
use crate::cmd::report;
use crate::connect::read_retrying;
use crate::output::Format;

type Params = Query<Vec<(String, String)>>;

pub async fn top_jobs(
    State(ctx): State<ApiContext>,
    _: Reader,
    Query(params): Params,
) -> Result<Json<Value>, Error> {
    let args: TopJobsArgs = flags::parse(&params)?;
    let rows = read_retrying(|| report::top_jobs_rows(ctx.reads(), &args, Format::Json)).await?;
    Ok(Json(rows.to_json()))
}

pub async fn top_variants(
    State(ctx): State<ApiContext>,
    _: Reader,
    Query(params): Params,
) -> Result<Json<Value>, Error> {
    let args: TopVariantsArgs = flags::parse(&params)?;
    Ok(Json(
        read_retrying(|| report::top_variants_rows(ctx.reads(), &args))
            .await?
            .to_json(),
    ))
}

pub async fn stats(
    State(ctx): State<ApiContext>,
    _: Reader,
    Query(params): Params,
) -> Result<Json<Value>, Error> {
    let args: StatsArgs = flags::parse(&params)?;
    Ok(Json(
        read_retrying(|| report::stats_rows(ctx.reads(), &args))
            .await?
            .to_json(),
    ))
}

pub async fn alerts(
    State(ctx): State<ApiContext>,
    _: Reader,
    Query(params): Params,
) -> Result<Json<Value>, Error> {
    let args: AlertsArgs = flags::parse(&params)?;
    Ok(Json(
        read_retrying(|| report::alerts_rows(ctx.reads(), &args))
            .await?
            .to_json(),
    ))
}

pub async fn trend(
    State(ctx): State<ApiContext>,
    _: Reader,
    Query(params): Params,
) -> Result<Json<Value>, Error> {
    let args: TrendArgs = flags::parse(&params)?;
    Ok(Json(
        read_retrying(|| report::trend_json_rows(ctx.reads(), &args))
            .await?
            .to_json(),
    ))
}

pub async fn outcomes(
    State(ctx): State<ApiContext>,
    _: Reader,
    Query(params): Params,
) -> Result<Json<Value>, Error> {
    let args: OutcomesArgs = flags::parse(&params)?;
    Ok(Json(
        read_retrying(|| report::outcomes_rows(ctx.reads(), &args))
            .await?
            .to_json(),
    ))
}
