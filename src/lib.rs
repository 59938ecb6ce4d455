//! retrylog — an event-sourced retry history for job pipelines on PostgreSQL.
//!
//! Every retry of a job or of a variant is one immutable row of `retry_history`. The append
//! (`store::append`, or the SQL function `record_retry` it calls) validates the retry, locks
//! the target, numbers the attempt, chains the event's hash to its stream, and applies the
//! `retry_count` projection — all in the caller's transaction, so the event commits with the
//! state change it records. Everything derived from the log can be rebuilt (`replay`) and
//! audited (`verify`). Reports read the counts, the log, and a rollup that an asynchronous
//! projector keeps from the log without ever skipping a late-committing event. The recovery
//! watchdog inside `serve` is what produces retries in a running pipeline: it finds stuck and
//! failed work, changes its state and appends the event in one transaction.
//!
//! # Layout, in the order a retry flows
//!
//! - [`recovery`]: the watchdog that produces retries — its four scenarios and detection
//!   (`recovery/scenario.rs`), the claim → limit → state change → append transaction
//!   (`recovery/claim.rs`), its sweep and listen loop (`recovery/sweep.rs`); [`config`]: its
//!   settings, each a flag and an environment variable; [`shutdown`]: how the service's loops
//!   stop. Retries made by hand come in through `retrylog record` ([`cmd`]) instead, and an
//!   operator's recovery of a target through `recovery::recover_by_hand` (`retrylog recover`).
//! - [`intervention`]: where the limit stops the watchdog, the note it writes instead of a
//!   retry, and reads of the notes for `history` and `report alerts`.
//! - [`event`]: the retry event, its reason and target, the hash chain — pure types.
//! - [`store`]: the one write path into the log (`append`) and the reads of streams.
//! - [`outcome`]: what became of each retry — decided by the next retry, the limit's note, or
//!   the watchdog's observation of the pipeline's rows — read back for `history`.
//! - [`projection`]: runs `projections/*.sql`: inline apply, drift, rebuild.
//! - [`projector`]: the asynchronous projector that keeps the trend rollup up with the log.
//! - [`replay`]: rebuild every projection; verify chains and counts.
//! - [`chain`]: the one hash chain check, a walk over streams in attempt order: `verify` walks
//!   every stream with it, the target page and `GET /api/v1/chain` one target's.
//! - [`verify_state`]: what `verify` has verified (a txid position, each stream's head), so a
//!   plain `verify` reads only what is new; `serve --verify-every`'s lease.
//! - [`window`]: the time flags the readers take (`30m`, `7d`, RFC 3339, `--as-of`), their
//!   durations in the one grammar of [`duration`], which the watchdog's settings use too.
//! - [`report`]: the read-only audit reports (`report/audit.rs`: top targets, stats, alerts),
//!   the trend from the rollup (`report/trend.rs`) and the outcomes from theirs
//!   (`report/outcomes.rs`), with their `--as-of` reconstructions from the log.
//! - [`targets`]: the targets list (`retrylog targets`, `GET /api/v1/targets`, the Targets
//!   page): every retried job and variant with its last retry, by state, a keyset page at a time.
//! - [`http`]: the HTTP API and the dashboard inside `serve`, over the same report rows and
//!   write operations as the CLI, with tokens and roles (`http/pages/`, `templates/`,
//!   `assets/`); [`metrics`]: what `/metrics` exposes.
//! - [`cli`]: every command and flag of the `retrylog` binary; [`cmd`]: one file per command;
//!   [`output`]: tables, JSON and CSV; [`why`]: each retry's why in words, the `why` column
//!   of every listing of retries.
//!
//! Around the flow: [`connect`] finds the database (DATABASE_URL, libpq defaults, a private
//! cluster: `connect/cluster.rs`); [`scratch`] makes throwaway databases on the same server,
//! for `demo` and the benchmark; and [`migrate`] installs the schema (`migrations/`), then the
//! live SQL functions (`sql/`: `record_retry` and the hash chain) and the projections'
//! functions, before any retry is made.
//!
//! Errors: every library error answers [`error::CallerMistake`] (the caller's mistake or a
//! fault); every SQLSTATE the code matches on is named in [`sqlstate`]; the binary's exit codes
//! live in `cmd/exit.rs`.
//!
//! Who may do what: [`grant`] gives a database role one capability (writer, operator,
//! reader; docs/security.md); [`text`] escapes what the binary prints about refused values.
//!
//! The benchmark is a crate of its own in the workspace (`bench/`, the `retrylog-bench`
//! binary) that uses only this library's public API.

pub mod archive;
pub mod chain;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod connect;
pub mod duration;
pub mod error;
pub mod event;
pub mod grant;
pub mod http;
pub mod intervention;
pub mod maintain;
pub mod metrics;
pub mod migrate;
pub mod outcome;
pub mod output;
pub mod projection;
pub mod projector;
pub mod recovery;
pub mod replay;
pub mod report;
pub mod scratch;
pub mod shutdown;
pub mod sqlstate;
pub mod store;
pub mod targets;
pub mod text;
pub mod verify_state;
pub mod why;
pub mod window;
