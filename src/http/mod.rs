//! The HTTP side of `retrylog serve`, at the end of the flow (retry → store (log + inline
//! projection) → projector → report/http): a JSON API over the same report and history rows
//! the CLI prints, the writes (record, recover) through the same library operations, the
//! dashboard's pages over the same rows, `/metrics`, and the health endpoints. [`app`] builds
//! the router from an [`ApiContext`]; [`serve`] runs it on a listener with its [`Limits`], so
//! the tests drive the router directly.
//!
//! # Layout
//!
//! - `auth`: the tokens file, roles, the Bearer check, the cross-site check of writes;
//!   `session`: the dashboard's logins, kept in the database;
//! - `error`: [`Error`], a refusal or fault as a JSON response (4xx or logged 5xx);
//! - `flags`, `body`: query parameters and bodies, read as the CLI's flags;
//! - `reports`, `history`, `targets`, `chain`, `record`, `recover`, `recover_bulk`, `health`,
//!   `openapi`, `metrics`: one file per resource;
//! - `pages`: the dashboard (overview, alerts, target pages, search, login, assets);
//! - `server`: the accept loop: the header timeout, the connection cap, the graceful stop.

mod auth;
mod body;
mod chain;
mod error;
mod flags;
mod health;
mod history;
mod metrics;
mod openapi;
mod pages;
mod record;
pub(crate) mod recover;
pub(crate) mod recover_bulk;
mod reports;
mod server;
mod session;
mod targets;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{header, HeaderValue};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use sqlx::PgPool;

pub use auth::{new_token, Admin, Reader, Role, Tokens, TokensError};
use error::page_retrying;
pub use error::Error;
pub use openapi::DOCUMENT as OPENAPI;
pub use pages::OverviewCache;
pub use server::{
    effective_backlog, listen, serve, Limits, BACKLOG, DEFAULT_HEADER_TIMEOUT, RESERVED_FILES,
};

use crate::config::Steps;
use crate::error::CallerMistake;
use crate::targets::StuckCensus;

/// What every handler shares.
#[derive(Clone)]
pub struct ApiContext {
    /// The primary: every write, the sessions, and the reads when there is no replica.
    pub pool: PgPool,
    /// The hot standby of `--read-url`, when there is one: the pages' and the API's reads.
    pub read: Option<PgPool>,
    /// The accepted tokens; `None`: no tokens file, the server is read-only.
    pub tokens: Option<Arc<Tokens>>,
    /// The pipeline's steps: the last one is where a recovered job goes to `done`.
    pub steps: Steps,
    /// The prefix everything is served under (`""` or e.g. `/retrylog`): the pages' links.
    pub base_path: String,
    /// The overview's top lists, reused for a few seconds (`Default::default()`).
    pub overview_cache: Arc<OverviewCache>,
    /// The stuck targets the Targets page reads, renewed while they are read
    /// (`Default::default()`; `crate::targets::census`).
    pub stuck_census: Arc<StuckCensus>,
}

impl ApiContext {
    /// Where the pages and the API read: the replica, else the primary.
    pub fn reads(&self) -> &PgPool {
        self.read.as_ref().unwrap_or(&self.pool)
    }
}

/// Every route, as `(method, path)` under the base path: the list the OpenAPI test holds the
/// document to.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/api/v1/openapi.json"),
    ("get", "/api/v1/reports/top-jobs"),
    ("get", "/api/v1/reports/top-variants"),
    ("get", "/api/v1/reports/stats"),
    ("get", "/api/v1/reports/alerts"),
    ("get", "/api/v1/reports/trend"),
    ("get", "/api/v1/reports/outcomes"),
    ("get", "/api/v1/history"),
    ("get", "/api/v1/targets"),
    ("get", "/api/v1/chain"),
    ("post", "/api/v1/record"),
    ("post", "/api/v1/recover"),
    ("post", "/api/v1/recover/bulk"),
    ("get", "/metrics"),
];

/// The dashboard's routes (beside [`ROUTES`], which the OpenAPI document describes).
pub const PAGE_ROUTES: &[(&str, &str)] = pages::ROUTES;

/// The router, under `ctx.base_path` (`""` or `/retrylog`: for a reverse proxy's prefix).
pub fn app(ctx: ApiContext) -> Router {
    let base_path = ctx.base_path.clone();
    let routes = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/api/v1/openapi.json", get(openapi::openapi))
        .route("/api/v1/reports/top-jobs", get(reports::top_jobs))
        .route("/api/v1/reports/top-variants", get(reports::top_variants))
        .route("/api/v1/reports/stats", get(reports::stats))
        .route("/api/v1/reports/alerts", get(reports::alerts))
        .route("/api/v1/reports/trend", get(reports::trend))
        .route("/api/v1/reports/outcomes", get(reports::outcomes))
        .route("/api/v1/history", get(history::history))
        .route("/api/v1/targets", get(targets::targets))
        .route("/api/v1/chain", get(chain::chain))
        .route("/api/v1/record", post(record::record))
        .route("/api/v1/recover", post(recover::recover))
        .route("/api/v1/recover/bulk", post(recover_bulk::recover_bulk))
        .route("/metrics", get(metrics::metrics))
        .merge(pages::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn(metrics::count_request))
        .with_state(ctx);
    let routes = if base_path.is_empty() {
        routes
    } else {
        Router::new().nest(&base_path, routes).fallback(not_found)
    };
    routes.layer(axum::middleware::map_response(security_headers))
}

async fn not_found() -> Error {
    Error::NotFound("no such path".into())
}

/// Headers every response carries: nothing may be framed, loaded from elsewhere or sniffed.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// Why the HTTP server may not start as configured.
#[derive(Debug, thiserror::Error)]
pub enum HttpConfigError {
    /// Without tokens every reader is anonymous: only this machine may connect.
    #[error(
        "--listen {0} is not a loopback address: serving beyond this machine needs a tokens \
         file (--tokens-file; make one with `retrylog token new NAME read|admin >> FILE`)"
    )]
    OpenWithoutTokens(SocketAddr),
    /// `--base-path` must look like `/retrylog`.
    #[error("invalid --base-path \"{0}\": it starts with / and does not end with one")]
    BasePath(String),
    /// `--listen` is not an address.
    #[error("invalid --listen \"{0}\": expected an address and port, e.g. 127.0.0.1:8080")]
    Listen(String),
    /// `--max-http-connections` above what the open-file limit leaves beside the pool.
    #[error(
        "--max-http-connections {requested} is more than the {available} connections the \
         open-file limit ({files}) leaves beside the database pool; raise the limit (systemd: \
         LimitNOFILE=) or ask for fewer"
    )]
    TooManyConnections {
        /// The cap asked for.
        requested: usize,
        /// What the limit leaves.
        available: usize,
        /// The process's open-file limit.
        files: u64,
    },
}

impl CallerMistake for HttpConfigError {
    fn is_caller_mistake(&self) -> bool {
        true
    }
}

/// Checks the listen address against the tokens, and the base path.
pub fn check_settings(
    listen: &str,
    has_tokens: bool,
    base_path: &str,
) -> Result<SocketAddr, HttpConfigError> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| HttpConfigError::Listen(listen.to_string()))?;
    if !has_tokens && !addr.ip().is_loopback() {
        return Err(HttpConfigError::OpenWithoutTokens(addr));
    }
    if !base_path.is_empty() && (!base_path.starts_with('/') || base_path.ends_with('/')) {
        return Err(HttpConfigError::BasePath(base_path.to_string()));
    }
    Ok(addr)
}
