//! `GET /`: the overview — retries in the last hour, day and week and the retry rate (from the
//! rollup), targets needing intervention, the watchdog's last sweep and the projector's lag, the
//! trend chart (`report trend`'s SVG, filtered by the URL's `bucket`, `since`, `by`), the top
//! jobs and variants (reused for a few seconds), the latest retries. `GET /ui/live/overview` is the same body alone, which
//! the page fetches every second. A filter the chart cannot use (`?since=7x`) keeps the page:
//! the form as typed, the refusal beside its field, 400.

use std::time::{Duration, Instant};

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use tokio::sync::Mutex;

use super::{error_page, render, typed, Chrome, FilterError, FormProblem, Table, Viewer};
use crate::cli::{TopJobsArgs, TopVariantsArgs, TrendArgs};
use crate::cmd::report;
use crate::event::RetryEvent;
use crate::http::{flags, page_retrying, ApiContext, Error};
use crate::output::{event_rows, Format};
use crate::report::{check_window, TrendQuery};
use crate::store::EVENT_COLUMNS;
use crate::window::{Moment, TimeSpec};

type Params = Query<Vec<(String, String)>>;

#[derive(Template)]
#[template(path = "overview.html")]
struct Page {
    page: Chrome,
    bucket: String,
    by: String,
    since: String,
    live: String,
    /// A filter the chart cannot use: the page shows the form and this, and no live part.
    problem: FormProblem,
}

/// The fields of the overview's form.
const FIELDS: &[&str] = &["bucket", "by", "since"];

/// The trend the URL asks for, checked as the chart will check it (the flags, the times, the
/// number of buckets), so that a refusal can be told beside its field.
fn filters(params: &[(String, String)]) -> Result<TrendArgs, FilterError> {
    let trend: TrendArgs = flags::try_parse(params)?;
    let moment = Moment::from_flag(trend.as_of.as_deref())?;
    let since = TimeSpec::parse("--since", &trend.since)?.resolve(moment.time());
    let query = TrendQuery {
        bucket: trend.bucket,
        by: trend.by,
        since,
    };
    check_window(&query, moment).map_err(|error| FilterError {
        field: Some("since".into()),
        message: format!("since: {}", flags::parameter_terms(&error.to_string())),
    })?;
    Ok(trend)
}

#[derive(Template)]
#[template(path = "overview_live.html")]
struct Live {
    base: String,
    last_hour: i64,
    last_day: i64,
    last_week: i64,
    retry_rate: String,
    needing_intervention: i64,
    last_sweep: String,
    lag_events: i64,
    lag_seconds: String,
    /// With `--read-url`: how far the replica these numbers come from is behind.
    replica_lag: Option<String>,
    chart: String,
    top_jobs: Table,
    top_variants: Table,
    latest: Table,
}

pub async fn page(
    State(ctx): State<ApiContext>,
    viewer: Viewer,
    Query(params): Params,
) -> Response {
    let trend = match filters(&params) {
        Ok(trend) => trend,
        Err(problem) => {
            // The form as typed, the refusal beside its field; the defaults where none given.
            let defaults: TrendArgs = flags::parse(&[]).expect("the defaults parse");
            let page = Page {
                page: Chrome::new(&ctx, &viewer, "Overview"),
                bucket: typed(&params, "bucket", defaults.bucket.as_ref()),
                by: typed(&params, "by", defaults.by.as_ref()),
                since: typed(&params, "since", &defaults.since),
                live: String::new(),
                problem: FormProblem::new(Some(problem), FIELDS),
            };
            return (StatusCode::BAD_REQUEST, render(&page)).into_response();
        }
    };
    let live = page_retrying(|| live_body(&ctx, &trend)).await;
    let live = match live.and_then(|live| render(&live)) {
        Ok(Html(live)) => live,
        Err(error) => return error_page(&ctx, &viewer, error),
    };
    let page = Page {
        page: Chrome::new(&ctx, &viewer, "Overview"),
        bucket: trend.bucket.to_string(),
        by: trend.by.to_string(),
        since: trend.since.clone(),
        live,
        problem: FormProblem::new(None, FIELDS),
    };
    render(&page).into_response()
}

pub async fn live(
    State(ctx): State<ApiContext>,
    _: Viewer,
    Query(params): Params,
) -> Result<Html<String>, Error> {
    let trend: TrendArgs = flags::parse(&params)?;
    render(&page_retrying(|| live_body(&ctx, &trend)).await?)
}

/// How long the overview's top lists are reused: `report top-variants` sorts every variant
/// tied at the highest count (tens of milliseconds on a million events, docs/performance.md),
/// too much for every viewer every second; the latest retries stay live.
const TOPS_FOR: Duration = Duration::from_secs(5);

/// The overview's top jobs and variants, read at most every `TOPS_FOR` per process.
#[derive(Debug, Default)]
pub struct OverviewCache(Mutex<Option<(Instant, Table, Table)>>);

/// The top lists, from the cache or read now. The lock is held while reading, so concurrent
/// renders wait for one read instead of each making it.
async fn tops(ctx: &ApiContext) -> Result<(Table, Table), Error> {
    let mut cached = ctx.overview_cache.0.lock().await;
    if let Some((at, jobs, variants)) = cached.as_ref() {
        if at.elapsed() < TOPS_FOR {
            return Ok((jobs.clone(), variants.clone()));
        }
    }
    let top: TopJobsArgs = flags::parse(&[("limit".into(), "5".into())])?;
    let top_variants: TopVariantsArgs = flags::parse(&[("limit".into(), "5".into())])?;
    let jobs = Table::from_rows(
        &report::top_jobs_rows(ctx.reads(), &top, Format::Table).await?,
        &ctx.base_path,
    );
    let variants = Table::from_rows(
        &report::top_variants_rows(ctx.reads(), &top_variants).await?,
        &ctx.base_path,
    );
    *cached = Some((Instant::now(), jobs.clone(), variants.clone()));
    Ok((jobs, variants))
}

/// Everything the live part shows; each read uses the rollup or an index.
async fn live_body(ctx: &ApiContext, trend: &TrendArgs) -> Result<Live, Error> {
    let pool = ctx.reads();
    let base = &ctx.base_path;
    let chart = report::trend_svg(pool, trend).await?;
    let mut conn = pool.acquire().await?;
    // 1. The counts, from the rollup's hourly rows.
    let (last_hour, last_day, last_week, created_day): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(retries) FILTER (WHERE hour >= date_trunc('hour', now()) - interval '1 hour'), 0)::bigint,
                coalesce(sum(retries) FILTER (WHERE hour >= date_trunc('hour', now()) - interval '1 day'), 0)::bigint,
                coalesce(sum(retries), 0)::bigint,
                (SELECT coalesce(sum(created), 0)::bigint FROM retry_rollup_created
                  WHERE hour >= date_trunc('hour', now()) - interval '1 day')
           FROM retry_rollup WHERE hour >= date_trunc('hour', now()) - interval '7 days'",
    )
    .fetch_one(&mut *conn)
    .await?;
    let needing_intervention = crate::intervention::open_counts(&mut conn)
        .await?
        .iter()
        .map(|(_, count)| count)
        .sum();
    let lag = crate::projector::lag(&mut conn).await?;
    let replica_lag = match ctx.read {
        Some(_) => Some(
            match crate::connect::replica_lag(&mut conn).await?.seconds {
                Some(seconds) => format!("{seconds:.1} s"),
                None => "nothing replayed yet".into(),
            },
        ),
        None => None,
    };
    // 2. The latest retries, by the log's primary key.
    let sql = format!("SELECT {EVENT_COLUMNS} FROM retry_history ORDER BY seq DESC LIMIT 8");
    let latest: Vec<RetryEvent> = sqlx::query_as(&sql).fetch_all(&mut *conn).await?;
    drop(conn);
    // 3. The top targets, as `report top-jobs|top-variants --limit 5` lists them.
    let (top_jobs, top_variants) = tops(ctx).await?;
    Ok(Live {
        base: base.clone(),
        last_hour,
        last_day,
        last_week,
        retry_rate: if created_day > 0 {
            format!("{:.1} %", 100.0 * last_day as f64 / created_day as f64)
        } else {
            "–".into()
        },
        needing_intervention,
        last_sweep: crate::metrics::last_sweep().map_or_else(
            || "none in this process".into(),
            |at| at.format("%H:%M:%S UTC").to_string(),
        ),
        lag_events: lag.events_behind,
        lag_seconds: format!("{:.1}", lag.seconds_behind),
        replica_lag,
        chart,
        top_jobs,
        top_variants,
        latest: Table::from_rows(&event_rows(&latest, Format::Table), base),
    })
}
