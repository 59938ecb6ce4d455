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
//! # Layout
//!
//! - [`event`]: the retry event, its reason and target, the hash chain — pure types.
//! - [`store`]: the one write path into the log (`append`) and the reads of streams.
//! - [`projection`]: runs `projections/*.sql`: inline apply, drift, rebuild.
//! - [`projector`]: the asynchronous projector that keeps the trend rollup up with the log.
//! - [`replay`]: rebuild every projection; verify chains and counts.
//! - [`recovery`]: the watchdog's four scenarios, the retry limit, its sweep and listen loop;
//!   [`config`]: its settings, each a flag and an environment variable; [`shutdown`]: how
//!   the service's loops stop.
//! - [`report`]: the read-only audit and trend queries (top targets, stats, alerts, the
//!   trend from the rollup) and their `--as-of` reconstructions from the log.
//! - [`migrate`]: the schema (`migrations/`) and the projections' functions.
//! - [`connect`]: finds the database (DATABASE_URL, libpq defaults, a private cluster);
//!   [`scratch`]: throwaway databases on the same server, for `demo` and the benchmark.
//! - [`cli`]: every command and flag of the `retrylog` binary; [`cmd`]: one file per command;
//!   [`output`]: tables, JSON and CSV.
//!
//! The benchmark is a crate of its own in the workspace (`bench/`, the `retrylog-bench`
//! binary) that uses only this library's public API.

pub mod cli;
pub mod cmd;
pub mod config;
pub mod connect;
pub mod event;
pub mod migrate;
pub mod output;
pub mod projection;
pub mod projector;
pub mod recovery;
pub mod replay;
pub mod report;
pub mod scratch;
pub mod shutdown;
pub mod store;
