//! `retrylog targets`: a page of the targets list (`crate::targets`), as a table, CSV, or one
//! JSON object with the cursors and the count; `GET /api/v1/targets` and the Targets page
//! answer with the same [`listing`].

use std::process::ExitCode;
use std::sync::Arc;

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::cli::{FilterArgs, TargetsArgs, TargetsCommand};
use crate::config::Steps;
use crate::output::{Format, Rows};
use crate::targets::{self, Filter, Page, Position, Stuck, StuckCensus, StuckRule, COUNT_BOUND};
use crate::window::{TimeSpec, WindowError};

/// The columns of a row, in order.
pub const COLUMNS: &[&str] = &[
    "kind",
    "id",
    "job_id",
    "status",
    "step",
    "retry_count",
    "last_reason",
    "last_outcome",
    "last_retry_at",
    "why",
];

pub async fn run(pool: &PgPool, command: TargetsCommand) -> anyhow::Result<ExitCode> {
    let args = &command.args;
    let page = listing(pool, args, &command.steps, None).await?;
    match args.format {
        Format::Json => {
            println!("{}", serde_json::to_string_pretty(&to_json(&page))?);
        }
        format => {
            rows(&page, format).print(format)?;
            // The count and the way on go to stderr, so stdout stays the rows alone.
            let mut line = format!("{} matching", count_text(&page));
            if let Some(next) = &page.next {
                line.push_str(&format!("; next page: --after {next}"));
            }
            if let Some(previous) = &page.previous {
                line.push_str(&format!("; previous page: --before {previous}"));
            }
            crate::cmd::notice(crate::cli::LogFormat::Text, &line);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The filter the flags ask for, times resolved against now.
pub fn filter(args: &FilterArgs) -> Result<Filter, WindowError> {
    let now = chrono::Utc::now();
    let resolve = |flag: &'static str, text: &Option<String>| {
        text.as_deref()
            .map(|text| TimeSpec::parse(flag, text).map(|spec| spec.resolve(now)))
            .transpose()
    };
    let since = resolve("--since", &args.since)?;
    let until = resolve("--until", &args.until)?;
    if let (Some(since), Some(until)) = (since, until) {
        if since > until {
            return Err(WindowError::EmptyRange(format!(
                "--since {} is after --until {}: no retry can match",
                since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )));
        }
    }
    Ok(Filter {
        state: args.state,
        kind: args.kind,
        step: args.step.clone(),
        reason: args.reason,
        scenario: args.scenario.clone(),
        actor: args.actor.clone(),
        since,
        until,
        min_retries: args.min_retries,
        q: args.q.clone().filter(|q| !q.is_empty()),
        ids: Vec::new(),
    })
}

/// The page the flags ask for; `steps` are the watchdog's, for `--state stuck`, which reads
/// `census` when given (a server's) and otherwise detects now.
pub async fn listing(
    pool: &PgPool,
    args: &TargetsArgs,
    steps: &Steps,
    census: Option<&Arc<StuckCensus>>,
) -> anyhow::Result<Page> {
    let filter = filter(&args.filter)?;
    let position = match (&args.after, &args.before) {
        (Some(after), _) => Position::After(after.clone()),
        (None, Some(before)) => Position::Before(before.clone()),
        (None, None) => Position::First,
    };
    let stuck = StuckRule {
        steps: steps.clone(),
        stuck_after: args.filter.stuck_after,
    };
    let stuck = match census {
        Some(census) => Stuck::Census {
            rule: &stuck,
            census,
            pool,
        },
        None => Stuck::Detect(&stuck),
    };
    let mut conn = pool.acquire().await?;
    targets::page(
        &mut conn,
        Some(pool),
        &filter,
        stuck,
        args.sort,
        &position,
        args.limit,
    )
    .await
}

/// "1,234", or "more than 1,000" past the bound.
pub fn count_text(page: &Page) -> String {
    let grouped = |n: i64| {
        let digits = n.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    };
    if page.count_exact {
        grouped(page.count)
    } else {
        format!("more than {}", grouped(COUNT_BOUND))
    }
}

/// The page's rows as every format prints them.
pub fn rows(page: &Page, format: Format) -> Rows {
    let table = format == Format::Table;
    let mut rows = Rows::new(COLUMNS);
    for row in &page.rows {
        let at = if table {
            row.last_retry_at.format("%Y-%m-%d %H:%M:%S").to_string()
        } else {
            row.last_retry_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        };
        rows.push(vec![
            Value::from(row.kind.clone()),
            Value::from(row.id.to_string()),
            Value::from(row.job_id.to_string()),
            Value::from(row.status.clone()),
            row.step.clone().map_or(Value::Null, Value::from),
            Value::from(row.retry_count),
            Value::from(row.last_reason.clone()),
            Value::from(
                row.last_outcome
                    .clone()
                    .unwrap_or_else(|| crate::outcome::OPEN.to_string()),
            ),
            Value::from(at),
            Value::from(row.why()),
        ]);
    }
    rows
}

/// `--format json` and the API's answer: the rows and how to go on.
pub fn to_json(page: &Page) -> Value {
    let mut json = json!({
        "rows": rows(page, Format::Json).to_json(),
        "next": page.next,
        "previous": page.previous,
        "count": page.count,
        "count_exact": page.count_exact,
    });
    if let Some(at) = page.stuck_as_of {
        json["stuck_as_of"] = json!(at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    }
    json
}
