//! `GET /alerts`: the rows `report alerts` gives (needing intervention first, then high retry
//! counts; `min` and `within` from the URL), each with a Recover form for an admin.
//! `GET /ui/live/alerts` is the table alone, fetched again every second.

use askama::Template;
use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
use uuid::Uuid;

use super::{error_page, render, Chrome, Table, Viewer};
use crate::cli::AlertsArgs;
use crate::cmd::report;
use crate::http::{flags, ApiContext, Error};

type Params = Query<Vec<(String, String)>>;

#[derive(Template)]
#[template(path = "alerts.html")]
struct Page {
    page: Chrome,
    min: i32,
    within: String,
    live: String,
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
    let args: AlertsArgs = match flags::parse(&params) {
        Ok(args) => args,
        Err(error) => return error_page(&ctx, &viewer, error),
    };
    let live = match body(&ctx, &viewer, &args)
        .await
        .and_then(|live| render(&live))
    {
        Ok(Html(live)) => live,
        Err(error) => return error_page(&ctx, &viewer, error),
    };
    let page = Page {
        page: Chrome::new(&ctx, &viewer, "Alerts"),
        min: args.min,
        within: args.within.clone(),
        live,
    };
    render(&page).into_response()
}

pub async fn live(
    State(ctx): State<ApiContext>,
    viewer: Viewer,
    Query(params): Params,
) -> Result<Html<String>, Error> {
    let args: AlertsArgs = flags::parse(&params)?;
    render(&body(&ctx, &viewer, &args).await?)
}

async fn body(ctx: &ApiContext, viewer: &Viewer, args: &AlertsArgs) -> Result<Live, Error> {
    let rows = report::alerts_rows(&ctx.pool, args).await?;
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
