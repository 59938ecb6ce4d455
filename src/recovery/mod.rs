//! The recovery watchdog: where a running pipeline's retries come from. It finds stuck and
//! failed work in the pipeline tables, retries it, and records each retry through
//! `store::append` in the transaction that makes the state change; from there the retry flows
//! on like any other (store (log + inline projection) → projector → report/http).
//!
//! Four scenarios (docs/operations.md), each one SQL condition used twice: unlocked, to
//! detect candidates, and again for one target under `FOR NO KEY UPDATE SKIP LOCKED`, to
//! claim it. A retry is then:
//!
//! 1. claim: re-check the condition and lock the target's row, skipping a row another
//!    instance holds; a target no longer in the condition is left alone;
//! 2. limit: at the limit, note the target as needing intervention (once per retry_count)
//!    and change nothing;
//! 3. state change: touch the variant, set it back to done, or set the job done;
//! 4. append, with `expected_attempt` from what detection read, so a retry another instance
//!    recorded in between is a conflict, not a second retry;
//! 5. commit: the state change and its event land together or not at all.
//!
//! `run` drives it: a sweep of every managed job at start and every `sweep_every`, and a
//! sweep of the jobs a notification names as soon as it arrives. A sweep takes these steps
//! for up to `batch_size` candidates in one transaction ([`recover_batch`]); a target skipped
//! at its claim, noted at the limit or refused by the log changes nothing and undoes none of
//! the others, and every retried target's state change commits with its event.
//!
//! # Layout, in the order a retry is made
//!
//! - `sweep`: [`run`], the loop that listens and sweeps, and [`sweep`] itself;
//! - `scenario`: the four [`Scenario`]s, their SQL, and [`detect`];
//! - `claim`: [`recover_batch`], the five steps above for a batch of [`Candidate`]s, and
//!   [`recover`] for one; a target at the limit is noted through [`crate::intervention`].
//! - `error_column`: with `--error-column`, the pipeline's own error text, kept in each
//!   retry's `detail.error` ([`check_error_column`] at start, the capture in the claim);
//! - `manual`: [`recover_by_hand`], an operator's recovery of one target past the limit, with
//!   a note: the one operation behind `retrylog recover`, the API and the dashboard;
//! - `bulk`: [`bulk::recover_many`], that operation for every target a filter of the targets
//!   list matches, idempotent by request id.

pub mod bulk;
mod claim;
mod error_column;
mod manual;
mod scenario;
mod sweep;

pub use claim::{recover, recover_batch, BatchOutcomes, Outcome, RecoveryError};
pub use error_column::{check_error_column, ErrorColumnError, MAX_ERROR_CHARS};
pub use manual::{
    recover_by_hand, recover_expecting, request_event_id, ManualRecovery, ManualRecoveryError,
    ManualTarget, Recovered, MAX_NOTE_CHARS, STATUSES,
};
pub use scenario::{detect, Candidate, Scenario, Scope, DETECT_BATCH};
pub use sweep::{effective_limit, publish_settings, run, sweep, SweepSummary};
