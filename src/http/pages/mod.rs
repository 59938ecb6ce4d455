//! The dashboard: server-rendered pages (askama templates in `templates/`, checked at compile
//! time) over the same rows as the API and the CLI, with the assets embedded in the binary.
//! Every filter is a query parameter, so every view can be bookmarked; the live parts are
//! fragments the page's script (`assets/app.js`) fetches again every second.
//!
//! # Layout
//!
//! - `overview`: counts, the trend chart, the top targets, the latest retries;
//! - `alerts`: `report alerts`' rows, each with a Recover form for an admin;
//! - `targets`: the targets list, every filter in the URL, paged by cursor, rows to select;
//! - `bulk`: the selected or all matching targets recovered: preview, confirmation, result;
//! - `target`: one job or variant — state, timeline, hash chain, variants — and search;
//!   `timeline`: its timeline, filtered by the URL as `GET /api/v1/history` is;
//! - `recover`: the Recover form's POST, through `recovery::recover_by_hand`;
//! - `login`: the token form and its cookie; `assets`: the embedded CSS and script.

mod alerts;
mod assets;
mod bulk;
mod login;
mod overview;

pub use overview::OverviewCache;
mod recover;
mod target;
mod targets;
mod timeline;

use askama::Template;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;

use super::auth::{authenticate, Role};
use super::{ApiContext, Error};
use crate::output::Rows;

/// The dashboard's routes, as `(method, path)`.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/"),
    ("get", "/ui/live/overview"),
    ("get", "/alerts"),
    ("get", "/ui/live/alerts"),
    ("get", "/targets"),
    ("get", "/targets/recover"),
    ("get", "/targets/recovered"),
    ("get", "/targets/{kind}/{id}"),
    ("get", "/search"),
    ("post", "/ui/recover"),
    ("post", "/ui/recover/bulk"),
    ("get", "/login"),
    ("post", "/login"),
    ("post", "/logout"),
    ("get", "/assets/{file}"),
];

/// The pages, their live fragments, the forms and the assets.
pub fn routes() -> Router<ApiContext> {
    Router::new()
        .route("/", get(overview::page))
        .route("/ui/live/overview", get(overview::live))
        .route("/alerts", get(alerts::page))
        .route("/ui/live/alerts", get(alerts::live))
        .route("/targets", get(targets::page))
        .route("/targets/recover", get(bulk::preview))
        .route("/targets/recovered", get(bulk::result))
        .route("/targets/{kind}/{id}", get(target::page))
        .route("/search", get(target::search))
        .route("/ui/recover", post(recover::recover))
        .route("/ui/recover/bulk", post(bulk::recover))
        .route("/login", get(login::form).post(login::login))
        .route("/logout", post(login::logout))
        .route("/assets/{file}", get(assets::asset))
}

/// Who looks at a page. With tokens configured, no valid token sends the browser to the login.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// The token's name; `None` on a server without tokens.
    pub name: Option<String>,
    /// Whether the Recover buttons show.
    pub admin: bool,
}

impl FromRequestParts<ApiContext> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &ApiContext) -> Result<Self, Response> {
        match authenticate(parts, state).await {
            Ok(None) => Ok(Viewer {
                name: None,
                admin: false,
            }),
            Ok(Some((name, role))) => Ok(Viewer {
                name: Some(name),
                admin: role == Role::Admin,
            }),
            Err(_) => Err(Redirect::to(&format!("{}/login", state.base_path)).into_response()),
        }
    }
}

/// What the layout needs on every page.
#[derive(Debug, Clone)]
pub struct Chrome {
    /// The prefix every link starts with.
    pub base: String,
    pub title: String,
    pub viewer: Option<String>,
    pub admin: bool,
    /// Whether the server has tokens (a login exists).
    pub has_tokens: bool,
}

impl Chrome {
    fn new(ctx: &ApiContext, viewer: &Viewer, title: impl Into<String>) -> Self {
        Chrome {
            base: ctx.base_path.clone(),
            title: title.into(),
            viewer: viewer.name.clone(),
            admin: viewer.admin,
            has_tokens: ctx.tokens.is_some(),
        }
    }
}

/// A table cell: its text, and a link when it names a target.
#[derive(Debug, Clone)]
pub struct Cell {
    pub text: String,
    pub href: Option<String>,
}

/// Rows for a page: the CLI's table rows, with ids linked to their target pages.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    /// `rows` as the table format prints them, ids linked under `base`.
    pub fn from_rows(rows: &Rows, base: &str) -> Table {
        let kind_column = rows.columns.iter().position(|column| *column == "kind");
        let cells = rows
            .rows
            .iter()
            .map(|row| {
                row.iter()
                    .zip(&rows.columns)
                    .map(|(value, column)| {
                        let text = match value {
                            Value::Null => String::new(),
                            Value::String(text) => text.clone(),
                            other => other.to_string(),
                        };
                        let kind = kind_column.and_then(|i| row[i].as_str());
                        let href = link(column, kind, &text).map(|path| format!("{base}{path}"));
                        Cell { text, href }
                    })
                    .collect()
            })
            .collect();
        Table {
            columns: rows.columns.iter().map(|c| c.to_string()).collect(),
            rows: cells,
        }
    }
}

/// The target page a cell links to, by its column.
fn link(column: &str, kind: Option<&str>, text: &str) -> Option<String> {
    if text.is_empty() {
        return None;
    }
    match column {
        "job_id" => Some(format!("/targets/job/{text}")),
        "job_variants_id" => Some(format!("/targets/variant/{text}")),
        "id" => kind.map(|kind| format!("/targets/{kind}/{text}")),
        // An event's `target` reads `job <uuid>` or `variant <uuid>`.
        "target" => text
            .split_once(' ')
            .map(|(kind, id)| format!("/targets/{kind}/{id}")),
        _ => None,
    }
}

/// A rendered template as a response.
pub fn render(template: &impl Template) -> Result<Html<String>, Error> {
    template
        .render()
        .map(Html)
        .map_err(|error| Error::Internal(error.into()))
}

/// A refusal shown as a page: the status and the message the API would give.
#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    page: Chrome,
    status: u16,
    message: String,
}

/// Shows `error` as an HTML page with its status (a fault is logged and not described).
pub fn error_page(ctx: &ApiContext, viewer: &Viewer, error: Error) -> Response {
    let (status, message) = error.status_and_message();
    let page = ErrorPage {
        page: Chrome::new(ctx, viewer, status.to_string()),
        status: status.as_u16(),
        message,
    };
    (status, render(&page).into_response()).into_response()
}

/// A filter of a page's form that the page cannot use: the field it belongs to and what is
/// wrong, in the page's terms (`since: "7x" is not a duration or a time (…)`). The page shows
/// itself again, 400, with the form as typed and the message beside the field: a bad filter
/// keeps the page, it does not replace it with an error page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    /// The parameter refused (`since`); `None` when no one parameter is to blame.
    pub field: Option<String>,
    /// The message, starting with the parameter's name when there is one.
    pub message: String,
}

impl FilterError {
    /// The message when it belongs beside `field`.
    pub fn beside(&self, field: &str) -> Option<&str> {
        (self.field.as_deref() == Some(field)).then_some(self.message.as_str())
    }

    /// The message when it belongs to none of the form's `fields`: shown above the form.
    pub fn above(&self, fields: &[&str]) -> Option<&str> {
        let beside_one = self
            .field
            .as_deref()
            .is_some_and(|field| fields.contains(&field));
        (!beside_one).then_some(self.message.as_str())
    }
}

/// A filter form's refusal, if any, with the form's fields: where its message shows.
#[derive(Debug, Clone)]
pub struct FormProblem {
    /// What the URL's filters were refused for; `None` when they were fine.
    problem: Option<FilterError>,
    /// The parameters the form has a field for.
    fields: &'static [&'static str],
}

impl FormProblem {
    pub fn new(problem: Option<FilterError>, fields: &'static [&'static str]) -> Self {
        FormProblem { problem, fields }
    }

    /// Whether the filters were refused (the page then shows the form and no live part).
    pub fn refused(&self) -> bool {
        self.problem.is_some()
    }

    /// The refusal to show beside `field`.
    pub fn beside(&self, field: &str) -> Option<&str> {
        self.problem
            .as_ref()
            .and_then(|problem| problem.beside(field))
    }

    /// A refusal of no field of the form (`as_of`, an unknown parameter), shown above it.
    pub fn above(&self) -> Option<&str> {
        self.problem
            .as_ref()
            .and_then(|problem| problem.above(self.fields))
    }
}

impl From<super::flags::Refusal> for FilterError {
    fn from(refusal: super::flags::Refusal) -> Self {
        match (refusal.parameter, refusal.problem) {
            (Some(field), Some(problem)) => FilterError {
                message: format!("{field}: {problem}"),
                field: Some(field),
            },
            (field, _) => FilterError {
                field,
                message: refusal.message,
            },
        }
    }
}

impl From<crate::window::WindowError> for FilterError {
    fn from(error: crate::window::WindowError) -> Self {
        match error.in_form_terms() {
            Some((field, problem)) => FilterError {
                message: format!("{field}: {problem}"),
                field: Some(field),
            },
            None => FilterError {
                field: None,
                message: super::flags::parameter_terms(&error.to_string()),
            },
        }
    }
}

/// The value of parameter `name` as the user typed it (the last one given), else `default`:
/// what the form shows again when a filter is refused.
pub fn typed(params: &[(String, String)], name: &str, default: &str) -> String {
    params
        .iter()
        .rev()
        .find(|(given, _)| given == name)
        .map_or_else(|| default.to_string(), |(_, value)| value.clone())
}
