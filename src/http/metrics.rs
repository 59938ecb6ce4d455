//! `GET /metrics`: the Prometheus exposition of `crate::metrics` (a read: a token when the
//! server has tokens), and the middleware that counts every answer by route template.

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiContext, Error, Reader};

/// The OpenMetrics text format Prometheus negotiates.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub async fn metrics(State(ctx): State<ApiContext>, _: Reader) -> Result<Response, Error> {
    let mut conn = ctx.pool.acquire().await?;
    let text = match &ctx.read {
        Some(read) => {
            let mut replica = read.acquire().await?;
            crate::metrics::render(&mut conn, Some(&mut replica)).await?
        }
        None => crate::metrics::render(&mut conn, None).await?,
    };
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

/// Counts the answer under the route's template (never the path itself: ids stay out).
pub async fn count_request(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |path| path.as_str().to_string());
    let response = next.run(request).await;
    crate::metrics::http_request(&route, response.status().as_u16());
    response
}
