//! `GET /api/v1/chain?job_id=ID` or `?variant_id=ID`: a target's hash chain verdict as JSON —
//! for a job with its variants' — from the same check `verify` and the target page run.

use axum::extract::{Query, State};
use axum::Json;
use uuid::Uuid;

use super::{ApiContext, Error, Reader};
use crate::chain::{self, TargetChains};
use crate::connect::read_retrying;

pub async fn chain(
    State(ctx): State<ApiContext>,
    _: Reader,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<TargetChains>, Error> {
    let [(name, value)] = params.as_slice() else {
        return Err(needs_one_target());
    };
    let variant = match name.as_str() {
        "job_id" => false,
        "variant_id" => true,
        _ => return Err(needs_one_target()),
    };
    let id: Uuid = value
        .parse()
        .map_err(|_| Error::BadRequest(format!("{name} \"{value}\" is not a UUID")))?;
    let check = || async {
        let mut conn = ctx.reads().acquire().await?;
        let target = chain::find_target(&mut conn, id, variant).await?;
        anyhow::Ok(chain::check_target(&mut conn, target).await?)
    };
    Ok(Json(read_retrying(check).await?))
}

fn needs_one_target() -> Error {
    Error::BadRequest("give exactly one of the parameters job_id and variant_id".to_string())
}
