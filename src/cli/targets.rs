//! `retrylog targets`' flags, which are also `GET /api/v1/targets`' and the Targets page's
//! query parameters (`http/flags.rs` parses them with this struct): one validation for the
//! three doors. The filters alone ([`FilterArgs`]) are also `retrylog recover`'s, the keys of
//! `POST /api/v1/recover/bulk`'s `filter` and the bulk recovery form's: what a listing shows
//! is what a bulk recovery acts on.

use std::time::Duration;

use clap::Args;

use crate::config::{parse_duration, Steps, DEFAULT_STEPS, DEFAULT_STUCK_AFTER};
use crate::event::RetryReason;
use crate::output::Format;
use crate::targets::{Cursor, Kind, Sort, State, DEFAULT_LIMIT, MAX_LIMIT};

/// The filters of a targets listing: which targets, in any order.
#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// Only targets in this state: failed or running (the target's status), stuck (a watchdog
    /// scenario would pick it up now), retrying (its last retry is still open),
    /// needs_intervention (the retry limit stopped it, as in `report alerts`), recovered or
    /// gave_up (its last retry's outcome).
    #[arg(long, value_enum)]
    pub state: Option<State>,

    /// Only jobs or only variants.
    #[arg(long, value_enum)]
    pub kind: Option<Kind>,

    /// Only targets whose last retry was at this step (exact match).
    #[arg(long)]
    pub step: Option<String>,

    /// Only targets whose last retry had this reason: stuck, failed or manual_recovery.
    #[arg(long, value_parser = RetryReason::parse)]
    pub reason: Option<RetryReason>,

    /// Only targets whose last retry came from this watchdog scenario (failed, lagging, stale,
    /// final_step; its detail.scenario).
    #[arg(long)]
    pub scenario: Option<String>,

    /// Only targets whose last retry was by this actor (exact match, e.g. cli:alice).
    #[arg(long)]
    pub actor: Option<String>,

    /// Only targets whose last retry occurred at or after this time: a duration back (90s,
    /// 1h30m, 7d, 2w) or a timestamp (2026-11-01, 2026-11-01T12:00:00Z).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,

    /// Only targets whose last retry occurred at or before this time (same forms as --since).
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,

    /// Only targets retried at least this many times.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
    pub min_retries: Option<i32>,

    /// Only targets whose last retry's error text (detail.error, detail.message) or note
    /// (detail.note) contains this text, ignoring case.
    #[arg(long, value_name = "TEXT")]
    pub q: Option<String>,

    /// How long a target may sit still before `--state stuck` counts it (the watchdog's
    /// --stuck-after; 90s, 5m, 1h30m).
    #[arg(long, env = "RETRYLOG_STUCK_AFTER", hide_env_values = true, value_name = "DURATION",
          default_value = DEFAULT_STUCK_AFTER, value_parser = parse_duration)]
    pub stuck_after: Duration,
}

impl FilterArgs {
    /// Whether any filter is given (`--stuck-after` alone filters nothing).
    pub fn any(&self) -> bool {
        self.state.is_some()
            || self.kind.is_some()
            || self.step.is_some()
            || self.reason.is_some()
            || self.scenario.is_some()
            || self.actor.is_some()
            || self.since.is_some()
            || self.until.is_some()
            || self.min_retries.is_some()
            || self.q.is_some()
    }
}

/// The filters, order and page of a targets listing.
#[derive(Debug, Clone, Args)]
pub struct TargetsArgs {
    #[command(flatten)]
    pub filter: FilterArgs,

    /// The order, descending: last_retry (most recent last retry first) or retry_count (most
    /// retried first).
    #[arg(long, value_enum, default_value_t = Sort::LastRetry)]
    pub sort: Sort,

    /// Rows per page (at most 500).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_LIMIT,
          value_parser = clap::value_parser!(i64).range(1..=MAX_LIMIT))]
    pub limit: i64,

    /// The next page: the `next` cursor a previous page gave.
    #[arg(long, value_name = "CURSOR", value_parser = Cursor::parse, conflicts_with = "before")]
    pub after: Option<Cursor>,

    /// The previous page: the `previous` cursor a page gave.
    #[arg(long, value_name = "CURSOR", value_parser = Cursor::parse)]
    pub before: Option<Cursor>,

    /// Output format. JSON prints one object: rows, next, previous, count, count_exact.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `retrylog targets`: the listing's flags and the steps `--state stuck` needs (the server
/// knows its own, so they are no API parameter).
#[derive(Debug, Args)]
pub struct TargetsCommand {
    #[command(flatten)]
    pub args: TargetsArgs,

    /// The watchdog's steps, in order, for --state stuck (its --steps).
    #[arg(long, env = "RETRYLOG_STEPS", hide_env_values = true, value_name = "STEP,...",
          default_value = DEFAULT_STEPS)]
    pub steps: Steps,
}
