//! `GET /targets/{job|variant}/{id}`: one target — its state, its timeline of events and the
//! watchdog's notes (`history`'s rows, filtered by the URL's `reason`, `step`, `actor`,
//! `since`, `until`: see [`super::timeline`]), its hash-chain status, for a job its variants —
//! with a Recover form for an admin. A filter the history refuses keeps the page: the form as
//! typed, the refusal beside its field, 400. `GET /search?q=ID` finds a job, a variant or an
//! event by id.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use uuid::Uuid;

use super::timeline::{self, Timeline};
use super::{error_page, render, Chrome, Table, Viewer};
use crate::chain::{self, TargetChains};
use crate::http::{page_retrying, ApiContext, Error};
use crate::output::Rows;

#[derive(Template)]
#[template(path = "target.html")]
struct Page {
    page: Chrome,
    kind: String,
    id: String,
    /// The row's status, step, count and last update (absent when only the log knows it).
    state: Option<(String, String, i32, String)>,
    job_id: String,
    timeline: Timeline,
    /// The target's own chain, and for a job its variants' (the one check `verify` runs).
    chain: TargetChains,
    variants: Table,
    request_id: String,
}

pub async fn page(
    State(ctx): State<ApiContext>,
    viewer: Viewer,
    Path((kind, id)): Path<(String, String)>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    match page_retrying(|| body(&ctx, &viewer, &kind, &id, &params)).await {
        Ok(page) if page.timeline.problem.refused() => {
            (StatusCode::BAD_REQUEST, render(&page)).into_response()
        }
        Ok(page) => render(&page).into_response(),
        Err(error) => error_page(&ctx, &viewer, error),
    }
}

async fn body(
    ctx: &ApiContext,
    viewer: &Viewer,
    kind: &str,
    id: &str,
    params: &[(String, String)],
) -> Result<Page, Error> {
    let uuid: Uuid = id
        .parse()
        .map_err(|_| Error::BadRequest(format!("invalid id \"{id}\": not a UUID")))?;
    let variant = match kind {
        "job" => false,
        "variant" => true,
        _ => {
            return Err(Error::NotFound(format!(
                "no such kind of target \"{kind}\""
            )))
        }
    };
    // 1. The timeline: `history`'s rows, filtered (also the 404 for an id nobody knows).
    let timeline = timeline::load(ctx, params, variant, uuid).await?;
    let mut conn = ctx.reads().acquire().await?;
    // 2. The state, as the pipeline's row has it now.
    let sql = if variant {
        "SELECT status, coalesce(current_step, ''), retry_count,
                to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), job_id
           FROM jobs_variants WHERE job_variants_id = $1"
    } else {
        "SELECT status, coalesce(current_step, ''), retry_count,
                to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), job_id
           FROM jobs WHERE job_id = $1"
    };
    let row: Option<(String, String, i32, String, Uuid)> = sqlx::query_as(sql)
        .bind(uuid)
        .fetch_optional(&mut *conn)
        .await?;
    let target = chain::find_target(&mut conn, uuid, variant)
        .await
        .map_err(anyhow::Error::from)?;
    let job_id = target.job_id();
    // 3. The chains, walked by the check `verify` runs.
    let chain = chain::check_target(&mut conn, target).await?;
    // 4. A job's variants.
    let mut variants = Rows::new(&[
        "job_variants_id",
        "creation_order",
        "status",
        "current_step",
        "retry_count",
    ]);
    if !variant {
        let rows: Vec<(Uuid, i32, String, Option<String>, i32)> = sqlx::query_as(
            "SELECT job_variants_id, creation_order, status, current_step, retry_count
               FROM jobs_variants WHERE job_id = $1 ORDER BY creation_order",
        )
        .bind(uuid)
        .fetch_all(&mut *conn)
        .await?;
        for (id, order, status, step, count) in rows {
            variants.push(vec![
                id.to_string().into(),
                order.into(),
                status.into(),
                step.map_or(serde_json::Value::Null, Into::into),
                count.into(),
            ]);
        }
    }
    Ok(Page {
        page: Chrome::new(ctx, viewer, format!("{kind} {id}")),
        kind: kind.to_string(),
        id: uuid.to_string(),
        state: row.map(|(status, step, count, updated, _)| (status, step, count, updated)),
        job_id: job_id.to_string(),
        timeline,
        chain,
        variants: Table::from_rows(&variants, &ctx.base_path),
        request_id: Uuid::new_v4().to_string(),
    })
}

#[derive(Debug, Deserialize)]
pub struct Search {
    q: String,
}

/// A job id, a variant id or an event id: to that target's page.
pub async fn search(
    State(ctx): State<ApiContext>,
    viewer: Viewer,
    Query(search): Query<Search>,
) -> Response {
    let query = search.q.trim();
    let Ok(id) = query.parse::<Uuid>() else {
        let error = Error::BadRequest(format!("\"{query}\" is not a job, variant or event id"));
        return error_page(&ctx, &viewer, error);
    };
    let found: Result<Option<(String, Uuid)>, sqlx::Error> = sqlx::query_as(
        "SELECT 'job', job_id FROM jobs WHERE job_id = $1
         UNION ALL SELECT 'variant', job_variants_id FROM jobs_variants WHERE job_variants_id = $1
         UNION ALL (SELECT CASE WHEN job_variants_id IS NULL THEN 'job' ELSE 'variant' END,
                           coalesce(job_variants_id, job_id)
                      FROM retry_history WHERE event_id = $1 OR job_id = $1
                        OR job_variants_id = $1 LIMIT 1)
         LIMIT 1",
    )
    .bind(id)
    .fetch_optional(ctx.reads())
    .await;
    match found {
        Ok(Some((kind, id))) => {
            Redirect::to(&format!("{}/targets/{kind}/{id}", ctx.base_path)).into_response()
        }
        Ok(None) => error_page(
            &ctx,
            &viewer,
            Error::NotFound(format!("no job, variant or event has the id {id}")),
        ),
        Err(error) => error_page(&ctx, &viewer, error.into()),
    }
}
