//! `GET /targets`: the targets list (`cmd::targets::listing`, the rows of
//! `GET /api/v1/targets`) with a form for every filter, the count, and Previous/Next links that
//! carry the cursors; the URL holds every filter and the page, so any view can be bookmarked.
//! For an admin each row has a checkbox, and the bulk form previews the ticked rows or all
//! matching ones (`bulk.rs`).

use askama::Template;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};

use super::{error_page, render, Cell, Chrome, Table, Viewer};
use crate::cli::TargetsArgs;
use crate::cmd::targets;
use crate::http::{flags, ApiContext};
use crate::output::Format;
use crate::targets::{Kind, Sort, State as TargetState};

#[derive(Template)]
#[template(path = "targets.html")]
struct Page {
    page: Chrome,
    /// The form's fields as the URL gave them (empty when absent).
    field: Fields,
    /// The choices of the selects, as (value, label).
    states: Vec<String>,
    kinds: Vec<String>,
    reasons: Vec<String>,
    sorts: Vec<String>,
    table: Table,
    /// For an admin, each row with its `kind:id`, the value of its checkbox in the bulk form.
    selectable: Vec<(String, Vec<Cell>)>,
    /// The filters given, carried by the bulk form as hidden fields.
    filters: Vec<(String, String)>,
    /// "12", or "more than 1,000".
    count: String,
    /// With `state=stuck`: when the stuck targets were detected (UTC, to the second).
    stuck_as_of: Option<String>,
    /// The Previous and Next links, with every filter.
    previous: Option<String>,
    next: Option<String>,
}

/// The form's values, echoed back.
#[derive(Debug, Default)]
struct Fields {
    state: String,
    kind: String,
    step: String,
    reason: String,
    scenario: String,
    actor: String,
    since: String,
    until: String,
    min_retries: String,
    q: String,
    sort: String,
    limit: String,
}

pub async fn page(
    State(ctx): State<ApiContext>,
    viewer: Viewer,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    // A form sends its empty fields too: an empty field is no filter.
    let params: Vec<(String, String)> = params
        .into_iter()
        .filter(|(_, value)| !value.trim().is_empty())
        .collect();
    let args: TargetsArgs = match flags::parse(&params) {
        Ok(args) => args,
        Err(error) => return error_page(&ctx, &viewer, error),
    };
    let listing = crate::connect::read_retrying(|| {
        targets::listing(ctx.reads(), &args, &ctx.steps, Some(&ctx.stuck_census))
    });
    let listing = match listing.await {
        Ok(listing) => listing,
        Err(error) => return error_page(&ctx, &viewer, error.into()),
    };
    let value = |name: &str| {
        params
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
            .unwrap_or_default()
    };
    // The links keep every filter and replace the page.
    let link = |cursor_name: &str, cursor: &str| {
        let mut query: Vec<(String, String)> = params
            .iter()
            .filter(|(key, _)| key != "after" && key != "before")
            .cloned()
            .collect();
        query.push((cursor_name.to_string(), cursor.to_string()));
        format!("{}/targets?{}", ctx.base_path, encode(&query))
    };
    let table = Table::from_rows(&targets::rows(&listing, Format::Table), &ctx.base_path);
    let page = Page {
        page: Chrome::new(&ctx, &viewer, "Targets"),
        field: Fields {
            state: value("state"),
            kind: value("kind"),
            step: value("step"),
            reason: value("reason"),
            scenario: value("scenario"),
            actor: value("actor"),
            since: value("since"),
            until: value("until"),
            min_retries: value("min_retries"),
            q: value("q"),
            sort: value("sort"),
            limit: value("limit"),
        },
        states: names::<TargetState>(),
        kinds: names::<Kind>(),
        reasons: ["stuck", "failed", "manual_recovery"]
            .map(String::from)
            .to_vec(),
        sorts: names::<Sort>(),
        table: table.clone(),
        selectable: if viewer.admin {
            listing
                .rows
                .iter()
                .map(|row| format!("{}:{}", row.kind, row.id))
                .zip(table.rows)
                .collect()
        } else {
            Vec::new()
        },
        filters: params
            .iter()
            .filter(|(key, _)| !matches!(key.as_str(), "sort" | "limit" | "after" | "before"))
            .cloned()
            .collect(),
        count: targets::count_text(&listing),
        stuck_as_of: listing
            .stuck_as_of
            .map(|at| at.format("%Y-%m-%d %H:%M:%S UTC").to_string()),
        previous: listing.previous.as_deref().map(|c| link("before", c)),
        next: listing.next.as_deref().map(|c| link("after", c)),
    };
    render(&page).into_response()
}

/// The values a select offers: the flag's own names.
fn names<E: clap::ValueEnum>() -> Vec<String> {
    E::value_variants()
        .iter()
        .filter_map(|variant| variant.to_possible_value())
        .map(|value| value.get_name().to_string())
        .collect()
}

/// `application/x-www-form-urlencoded`, as a form would send it.
pub(super) fn encode(params: &[(String, String)]) -> String {
    fn escape(text: &str) -> String {
        text.bytes()
            .map(|byte| match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (byte as char).to_string()
                }
                b' ' => "+".to_string(),
                other => format!("%{other:02X}"),
            })
            .collect()
    }
    params
        .iter()
        .map(|(key, value)| format!("{}={}", escape(key), escape(value)))
        .collect::<Vec<_>>()
        .join("&")
}
