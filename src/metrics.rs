//! What `/metrics` says, beside the flow (retry → store → projector → report/http): the
//! counters this process keeps as it works (the watchdog's retries and sweeps, refused
//! appends, HTTP requests) and a snapshot read from the database at each scrape (the log's
//! retries from the rollup, the targets needing intervention, the projector's lag, the last
//! clean verify and the mismatches of the last one recorded).
//!
//! The two kinds differ when several `serve` instances run: a process counter counts what this
//! instance did (sum it over instances); a database series is the same on every instance (take
//! one, or `max`). docs/metrics.md lists every series. Every label is bounded: kinds, reasons,
//! known scenarios, refusal causes, route templates, status classes — never an id.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use sqlx::PgConnection;
use std::sync::atomic::AtomicU64;

use crate::event::RetryEvent;
use crate::projector;
use crate::recovery::{ManualRecoveryError, Scenario, SweepSummary};
use crate::store::AppendError;

/// A retry's bounded labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    /// `job` or `variant`.
    pub kind: String,
    /// `stuck`, `failed` or `manual_recovery`.
    pub reason: String,
    /// A watchdog scenario, `none`, or `other` (detail.scenario is the caller's text).
    pub scenario: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabel {
    cause: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabel {
    scope: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    status_class: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

/// This process's counters.
struct ProcessMetrics {
    registry: Registry,
    watchdog_retries: Family<RetryLabels, Counter>,
    sweeps: Family<ScopeLabel, Counter>,
    sweep_seconds: Histogram,
    last_sweep: Gauge<f64, AtomicU64>,
    refused: Family<CauseLabel, Counter>,
    http_requests: Family<RouteLabels, Counter>,
    replica_conflicts: Counter,
}

static PROCESS: LazyLock<ProcessMetrics> = LazyLock::new(|| {
    let mut registry = Registry::default();
    let watchdog_retries = Family::<RetryLabels, Counter>::default();
    registry.register(
        "retrylog_watchdog_retries",
        "Retries this instance's watchdog recorded (sum over instances)",
        watchdog_retries.clone(),
    );
    let sweeps = Family::<ScopeLabel, Counter>::default();
    registry.register(
        "retrylog_watchdog_sweeps",
        "Sweeps this instance's watchdog finished, by scope (everything or signalled jobs)",
        sweeps.clone(),
    );
    let sweep_seconds = Histogram::new(exponential_buckets(0.001, 4.0, 9));
    registry.register(
        "retrylog_watchdog_sweep_duration_seconds",
        "How long this instance's sweeps took",
        sweep_seconds.clone(),
    );
    let last_sweep = Gauge::<f64, AtomicU64>::default();
    registry.register(
        "retrylog_watchdog_last_sweep_timestamp_seconds",
        "When this instance's watchdog last finished a sweep (Unix time; max over instances)",
        last_sweep.clone(),
    );
    let refused = Family::<CauseLabel, Counter>::default();
    registry.register(
        "retrylog_appends_refused",
        "Appends and recoveries this instance refused (API and watchdog), by cause",
        refused.clone(),
    );
    let http_requests = Family::<RouteLabels, Counter>::default();
    registry.register(
        "retrylog_http_requests",
        "HTTP requests this instance answered, by route template and status class",
        http_requests.clone(),
    );
    let replica_conflicts = Counter::default();
    registry.register(
        "retrylog_read_replica_conflicts",
        "Reads the read replica cancelled for a conflict with recovery, each read once more",
        replica_conflicts.clone(),
    );
    let build = Family::<VersionLabel, Gauge>::default();
    build
        .get_or_create(&VersionLabel {
            version: env!("CARGO_PKG_VERSION").to_string(),
        })
        .set(1);
    registry.register(
        "retrylog_build_info",
        "The running retrylog's version",
        build,
    );
    ProcessMetrics {
        registry,
        watchdog_retries,
        sweeps,
        sweep_seconds,
        last_sweep,
        refused,
        http_requests,
        replica_conflicts,
    }
});

/// A scenario as a bounded label: the watchdog's four, `none`, or `other`.
fn scenario_label(scenario: Option<&str>) -> String {
    match scenario {
        None | Some("") => "none".into(),
        Some(name) if Scenario::ALL.iter().any(|known| known.as_ref() == name) => name.into(),
        Some(_) => "other".into(),
    }
}

/// The labels of one event.
pub fn retry_labels(event: &RetryEvent) -> RetryLabels {
    RetryLabels {
        kind: event.target().kind().into(),
        reason: event.reason.to_string(),
        scenario: scenario_label(event.detail.get("scenario").and_then(|s| s.as_str())),
    }
}

/// Counts one finished sweep and its retries.
pub fn sweep_finished(everything: bool, took: Duration, summary: &SweepSummary) {
    let metrics = &*PROCESS;
    let scope = if everything { "everything" } else { "jobs" };
    metrics
        .sweeps
        .get_or_create(&ScopeLabel {
            scope: scope.into(),
        })
        .inc();
    metrics.sweep_seconds.observe(took.as_secs_f64());
    metrics
        .last_sweep
        .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
    for (_, event) in &summary.retried {
        metrics
            .watchdog_retries
            .get_or_create(&retry_labels(event))
            .inc();
    }
}

/// When this process's watchdog last finished a sweep; `None` before its first (or without one).
pub fn last_sweep() -> Option<chrono::DateTime<chrono::Utc>> {
    let seconds = PROCESS.last_sweep.get();
    (seconds > 0.0)
        .then(|| chrono::DateTime::from_timestamp_millis((seconds * 1000.0) as i64))
        .flatten()
}

/// Counts one refused append, by its cause.
pub fn append_refused(error: &AppendError) {
    let cause = match error {
        AppendError::InvalidInput(_) => "invalid_input",
        AppendError::UnknownTarget(_) => "unknown_target",
        AppendError::WrongJob(_) => "wrong_job",
        AppendError::LimitReached { .. } => "limit_reached",
        AppendError::EventIdReused(_) => "event_id_reused",
        AppendError::Conflict(_) => "conflict",
        AppendError::NotPermitted(_) => "not_permitted",
        AppendError::Database(_) => return,
    };
    refused(cause);
}

/// Counts one refused recovery by hand, by its cause.
pub fn recovery_refused(error: &ManualRecoveryError) {
    let cause = match error {
        ManualRecoveryError::EmptyNote | ManualRecoveryError::NoteTooLong(_) => "invalid_note",
        ManualRecoveryError::UnknownStatus(_) => "invalid_input",
        // An id of the other kind is an unknown target of the kind asked, as record counts it.
        ManualRecoveryError::UnknownTarget { .. } | ManualRecoveryError::WrongKind(_) => {
            "unknown_target"
        }
        ManualRecoveryError::NotRecoverable { .. } => "not_recoverable",
        ManualRecoveryError::Refused(append) => return append_refused(append),
        ManualRecoveryError::Database(_) => return,
    };
    refused(cause);
}

fn refused(cause: &str) {
    PROCESS
        .refused
        .get_or_create(&CauseLabel {
            cause: cause.into(),
        })
        .inc();
}

/// Counts one HTTP answer under its route template (`unmatched` for no route).
pub fn http_request(route: &str, status: u16) {
    PROCESS
        .http_requests
        .get_or_create(&RouteLabels {
            route: route.into(),
            status_class: format!("{}xx", status / 100),
        })
        .inc();
}

/// Counts one read the read replica cancelled for a recovery conflict (and that was read once
/// more).
pub fn replica_conflict() {
    PROCESS.replica_conflicts.inc();
}

/// The exposition (OpenMetrics text): this process's counters, then the database's snapshot,
/// then — with `--read-url` — the read replica's lag, measured on `replica`.
pub async fn render(
    conn: &mut PgConnection,
    replica: Option<&mut PgConnection>,
) -> Result<String, sqlx::Error> {
    let snapshot = database_snapshot(conn).await?;
    let mut text = String::new();
    encode_registry(&mut text, &PROCESS.registry).expect("writing to a String");
    encode_registry(&mut text, &snapshot).expect("writing to a String");
    if let Some(replica) = replica {
        let lag = crate::connect::replica_lag(replica).await?;
        encode_registry(&mut text, &replica_registry(lag)).expect("writing to a String");
    }
    encode_eof(&mut text).expect("writing to a String");
    Ok(text)
}

/// The series read from the database: the same on every instance. Each reads an index or the
/// rollup, never the whole log.
async fn database_snapshot(conn: &mut PgConnection) -> Result<Registry, sqlx::Error> {
    let mut registry = Registry::default();

    // 1. Retries in the log, from the rollup (as far as the projector got).
    let retries = Family::<RetryLabels, Counter>::default();
    let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT kind, reason::text, scenario, sum(retries)::bigint
           FROM retry_rollup GROUP BY 1, 2, 3",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (kind, reason, scenario, count) in rows {
        let labels = RetryLabels {
            kind,
            reason,
            scenario: scenario_label(Some(&scenario)),
        };
        retries.get_or_create(&labels).inc_by(count.max(0) as u64);
    }
    registry.register(
        "retrylog_log_retries",
        "Retries in the log by every door, from the trend rollup (same on every instance)",
        retries,
    );

    // 2. Targets with an open intervention note (the needs_intervention rows of alerts).
    let open = Family::<KindLabel, Gauge>::default();
    let rows = crate::intervention::open_counts(conn).await?;
    for (kind, count) in rows {
        open.get_or_create(&KindLabel { kind }).set(count);
    }
    registry.register(
        "retrylog_targets_needing_intervention",
        "Targets the retry limit stopped that no retry has changed since (same on every instance)",
        open,
    );

    // 3. The projector's lag.
    let lag = projector::lag(conn).await?;
    let events = Gauge::<i64>::default();
    events.set(lag.events_behind);
    registry.register(
        "retrylog_projector_lag_events",
        "Events the trend rollup has not applied yet (same on every instance)",
        events,
    );
    let seconds = Gauge::<f64, AtomicU64>::default();
    seconds.set(lag.seconds_behind);
    registry.register(
        "retrylog_projector_lag_seconds",
        "Age of the oldest event the rollup has not applied (same on every instance)",
        seconds,
    );

    // 4. Verify, from its state row: whichever instance or cron job ran it.
    let state = crate::verify_state::load(conn).await?;
    let last_success = Gauge::<f64, AtomicU64>::default();
    last_success.set(
        state
            .verified_at
            .map_or(0.0, |at| at.timestamp_millis() as f64 / 1000.0),
    );
    registry.register(
        "retrylog_verify_last_success_timestamp_seconds",
        "When a verify was last clean (Unix time; 0 if never; same on every instance)",
        last_success,
    );
    let mismatches = Gauge::<i64>::default();
    mismatches.set(i64::from(state.mismatches));
    registry.register(
        "retrylog_verify_mismatches",
        "Mismatches the last recorded verify found; 0 once one is clean (same on every instance)",
        mismatches,
    );
    Ok(registry)
}

/// The read replica's series (docs/metrics.md): the same on every instance that reads it.
fn replica_registry(lag: crate::connect::ReplicaLag) -> Registry {
    let mut registry = Registry::default();
    let standby = Gauge::<i64>::default();
    standby.set(i64::from(lag.in_recovery));
    registry.register(
        "retrylog_read_replica_in_recovery",
        "1 when --read-url is a hot standby, 0 when it names a primary",
        standby,
    );
    // A standby that has replayed no transaction since it started has no replay time: the
    // series is left out rather than reported as 0.
    if let Some(seconds) = lag.seconds {
        let gauge = Gauge::<f64, AtomicU64>::default();
        gauge.set(seconds);
        registry.register(
            "retrylog_read_replica_lag_seconds",
            "Age of the last transaction the read replica replayed; 0 while it streams and has \
             replayed all it received (an idle primary sends nothing to replay)",
            gauge,
        );
    }
    registry
}
