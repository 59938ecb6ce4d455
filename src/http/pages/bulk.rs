//! The Targets page's bulk recovery, in three steps, through the one bulk recovery the API and
//! `retrylog recover --state …` call (`recovery::bulk::recover_many`):
//!
//! 1. `GET /targets/recover` — the preview: the Targets form's filters, and either the rows an
//!    admin ticked (`selection=selected`, `target=kind:id`) or every match (`selection=all`).
//!    A dry run: it writes nothing, and shows the count, the first rows and one form (a note,
//!    one confirmation) that carries every matched target with the attempt it was seen at;
//! 2. `POST /ui/recover/bulk` — the form: an admin on a same-origin request (the `Admin`
//!    extractor, as every write), the note required, the box ticked. Each previewed target is
//!    recovered only if it has not changed since (its attempt), so what the admin confirmed is
//!    all that can happen; the request id made with the preview makes a second submit answer
//!    the first one's result;
//! 3. `GET /targets/recovered?request_id=…` — the result, read back from where the request
//!    stored it: what was recovered (each event) and what was skipped and why.

use askama::Template;
use axum::extract::{Form, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use uuid::Uuid;

use super::{error_page, render, Chrome, Viewer};
use crate::http::recover_bulk;
use crate::http::{Admin, ApiContext, Error};
use crate::recovery::bulk::{self, BulkResult, Matched, Seen, MAX_TARGETS};
use crate::targets::Kind;

/// The filter parameters a bulk form carries (the Targets form's, without its order and page).
const FILTERS: &[&str] = &[
    "state",
    "kind",
    "step",
    "reason",
    "scenario",
    "actor",
    "since",
    "until",
    "min_retries",
    "q",
];

/// How many of the matched rows the preview shows; the form carries them all.
pub const PREVIEW_ROWS: usize = 20;

#[derive(Template)]
#[template(path = "bulk_preview.html")]
struct Preview {
    page: Chrome,
    /// The filters, as hidden fields of the form.
    filters: Vec<(String, String)>,
    /// Every matched target as `kind:id:attempt`, hidden fields of the form.
    seen: Vec<String>,
    /// The first rows, shown.
    shown: Vec<Matched>,
    matched: usize,
    request_id: String,
}

#[derive(Template)]
#[template(path = "bulk_result.html")]
struct Outcome {
    page: Chrome,
    result: BulkResult,
    /// The Targets page with the request's filters, to go back to.
    back: String,
}

/// The filters among `params`, blanks dropped (a form sends its empty fields too).
fn filters(params: &[(String, String)]) -> Vec<(String, String)> {
    params
        .iter()
        .filter(|(key, value)| FILTERS.contains(&key.as_str()) && !value.trim().is_empty())
        .cloned()
        .collect()
}

/// `GET /targets/recover`: the preview (a dry run).
pub async fn preview(
    State(ctx): State<ApiContext>,
    viewer: Viewer,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    match make_preview(&ctx, &viewer, &params).await {
        Ok(preview) => render(&preview).into_response(),
        Err(error) => error_page(&ctx, &viewer, error),
    }
}

async fn make_preview(
    ctx: &ApiContext,
    viewer: &Viewer,
    params: &[(String, String)],
) -> Result<Preview, Error> {
    if !viewer.admin {
        return Err(Error::Forbidden(
            "a bulk recovery needs an admin token: log in with one".into(),
        ));
    }
    let filters = filters(params);
    let selection = params
        .iter()
        .find(|(key, _)| key == "selection")
        .map(|(_, value)| value.as_str());
    // A dry run records nothing: its note is the confirmation form's, still to be written.
    let mut request = recover_bulk::request(
        ctx,
        &filters,
        None,
        String::new(),
        viewer.name.clone().unwrap_or_default(),
        MAX_TARGETS,
        true,
        None,
    )?;
    if selection == Some("selected") {
        let ids = params
            .iter()
            .filter(|(key, _)| key == "target")
            .map(|(_, value)| {
                value
                    .split_once(':')
                    .and_then(|(_, id)| id.parse::<Uuid>().ok())
                    .ok_or_else(|| Error::BadRequest(format!("invalid target \"{value}\"")))
            })
            .collect::<Result<Vec<Uuid>, Error>>()?;
        if ids.is_empty() {
            return Err(Error::BadRequest(
                "no row is ticked: tick the rows to recover, or recover all matching".into(),
            ));
        }
        request.filter.ids = ids;
    }
    let result = recover_bulk::run(ctx, &request).await?;
    Ok(Preview {
        page: Chrome::new(ctx, viewer, "Recover targets"),
        seen: result
            .targets
            .iter()
            .map(|target| format!("{}:{}:{}", target.kind, target.id, target.attempt))
            .collect(),
        shown: result.targets.iter().take(PREVIEW_ROWS).cloned().collect(),
        matched: result.matched,
        filters,
        request_id: Uuid::new_v4().to_string(),
    })
}

/// `POST /ui/recover/bulk`: the confirmed preview.
pub async fn recover(
    State(ctx): State<ApiContext>,
    admin: Result<Admin, Error>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let viewer = Viewer {
        name: admin.as_ref().ok().map(|admin| admin.name.clone()),
        admin: admin.is_ok(),
    };
    match run(&ctx, admin, &form).await {
        Ok(location) => Redirect::to(&location).into_response(),
        Err(error) => error_page(&ctx, &viewer, error),
    }
}

async fn run(
    ctx: &ApiContext,
    admin: Result<Admin, Error>,
    form: &[(String, String)],
) -> Result<String, Error> {
    let admin = admin?;
    let value = |name: &str| {
        form.iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    if value("confirm").is_none() {
        return Err(Error::BadRequest(
            "tick the box to confirm the recovery".into(),
        ));
    }
    let request_id = value("request_id")
        .ok_or_else(|| Error::BadRequest("the form has no request_id: preview again".into()))?;
    let seen = form
        .iter()
        .filter(|(key, _)| key == "target")
        .map(|(_, value)| seen(value))
        .collect::<Result<Vec<Seen>, Error>>()?;
    let request = recover_bulk::request(
        ctx,
        &filters(form),
        Some(seen),
        value("note").unwrap_or_default(),
        admin.name,
        MAX_TARGETS,
        false,
        Some(request_id.clone()),
    )?;
    recover_bulk::run(ctx, &request).await?;
    Ok(format!(
        "{}/targets/recovered?{}",
        ctx.base_path,
        super::targets::encode(&[("request_id".to_string(), request_id)])
    ))
}

/// `kind:id:attempt`, as the preview wrote it.
fn seen(value: &str) -> Result<Seen, Error> {
    let mut parts = value.splitn(3, ':');
    let parsed = (|| {
        Some(Seen {
            kind: parts.next()?.parse::<Kind>().ok()?,
            id: parts.next()?.parse().ok()?,
            attempt: parts.next()?.parse().ok()?,
        })
    })();
    parsed.ok_or_else(|| Error::BadRequest(format!("invalid target \"{value}\": preview again")))
}

/// `GET /targets/recovered?request_id=…`: a bulk recovery's stored result.
pub async fn result(
    State(ctx): State<ApiContext>,
    viewer: Viewer,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let request_id = params
        .iter()
        .find(|(key, _)| key == "request_id")
        .map(|(_, value)| value.clone())
        .unwrap_or_default();
    let stored = match bulk::stored_result(&ctx.pool, &request_id).await {
        Ok(Some(result)) => result,
        Ok(None) => {
            return error_page(
                &ctx,
                &viewer,
                Error::NotFound(format!(
                    "no bulk recovery with request_id \"{}\"",
                    crate::text::escape(&request_id, 60)
                )),
            )
        }
        Err(error) => return error_page(&ctx, &viewer, error.into()),
    };
    let page = Outcome {
        page: Chrome::new(&ctx, &viewer, "Recovered"),
        back: format!("{}/targets", ctx.base_path),
        result: stored,
    };
    (StatusCode::OK, render(&page)).into_response()
}
