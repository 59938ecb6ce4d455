//! `GET /alerts`: the rows `report alerts` gives (needing intervention first, then high retry
//! counts; `min` and `within` from the URL), each with a Recover form for an admin.
//! `GET /ui/live/alerts` is the table alone, fetched again every second. A filter the report
//! cannot use (`?within=soon`) keeps the page: the form as typed, the refusal beside its
//! field, 400.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use uuid::Uuid;

use super::{error_page, render, typed, Chrome, FilterError, FormProblem, Table, Viewer};
use crate::cli::AlertsArgs;
use crate::cmd::report;
use crate::http::{flags, page_retrying, ApiContext, Error};
use crate::window::{Moment, TimeSpec};

type Params = Query<Vec<(String, String)>>;

#[derive(Template)]
#[template(path = "alerts.html")]
struct Page {
    page: Chrome,
    min: String,
    within: String,
    live: String,
    /// A filter the report cannot use: the page shows the form and this, and no live part.
    problem: FormProblem,
}

/// The fields of the alerts' form.
const FIELDS: &[&str] = &["min", "within"];

/// The alerts the URL asks for, their times checked as the report will check them.
fn filters(params: &[(String, String)]) -> Result<AlertsArgs, FilterError> {
    let args: AlertsArgs = flags::try_parse(params)?;
    Moment::from_flag(args.options.as_of.as_deref())?;
    TimeSpec::parse("--within", &args.within)?;
    Ok(args)
}

#[derive(Template)]
#[template(path = "alerts_live.html")]
pub struct Live {
    pub base: String,
    pub admin: bool,
    pub alerts: Table,
    /// Per row: the target's kind and id, and a request id fresh with this render (a double
    /// submit recovers once), for its Recover form.
    pub targets: Vec<(String, String, String)>,
}

pub async fn page(
    State(ctx): State<ApiContext>,
    viewer: Viewer,
    Query(params): Params,
) -> Response {
    let args = match filters(&params) {
        Ok(args) => args,
        Err(problem) => {
            // The form as typed, the refusal beside its field; the defaults where none given.
            let defaults: AlertsArgs = flags::parse(&[]).expect("the defaults parse");
            let page = Page {
                page: Chrome::new(&ctx, &viewer, "Alerts"),
                min: typed(&params, "min", &defaults.min.to_string()),
                within: typed(&params, "within", &defaults.within),
                live: String::new(),
                problem: FormProblem::new(Some(problem), FIELDS),
            };
            return (StatusCode::BAD_REQUEST, render(&page)).into_response();
        }
    };
    let live = match page_retrying(|| body(&ctx, &viewer, &args))
        .await
        .and_then(|live| render(&live))
    {
        Ok(Html(live)) => live,
        Err(error) => return error_page(&ctx, &viewer, error),
    };
    let page = Page {
        page: Chrome::new(&ctx, &viewer, "Alerts"),
        min: args.min.to_string(),
        within: args.within.clone(),
        live,
        problem: FormProblem::new(None, FIELDS),
    };
    render(&page).into_response()
}

pub async fn live(
    State(ctx): State<ApiContext>,
    viewer: Viewer,
    Query(params): Params,
) -> Result<Html<String>, Error> {
    let args: AlertsArgs = flags::parse(&params)?;
    render(&page_retrying(|| body(&ctx, &viewer, &args)).await?)
}

async fn body(ctx: &ApiContext, viewer: &Viewer, args: &AlertsArgs) -> Result<Live, Error> {
    let rows = report::alerts_rows(ctx.reads(), args).await?;
    let render_id = Uuid::new_v4();
    let targets = rows
        .rows
        .iter()
        .enumerate()
        .map(|(n, row)| {
            let text = |i: usize| row[i].as_str().unwrap_or_default().to_string();
            (text(0), text(1), format!("{render_id}-{n}"))
        })
        .collect();
    Ok(Live {
        base: ctx.base_path.clone(),
        admin: viewer.admin,
        alerts: Table::from_rows(&rows, &ctx.base_path),
        targets,
    })
}
