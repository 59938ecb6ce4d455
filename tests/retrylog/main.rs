//! The integration suite: every invariant of the design, tested against a real PostgreSQL.
//!
//! Each test gets a database of its own from `#[sqlx::test(migrations = false)]`, created on
//! the server `DATABASE_URL` names and dropped when the test passes (a failing test keeps
//! its database for inspection; the next run drops it). The tests call
//! `retrylog::migrate::run` themselves, because the product's migrate also installs the
//! projections' functions, and some of them load a pre-retrylog pipeline schema first.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo test
//! ```
//!
//! The role must be a superuser (or own the test databases and be allowed to `CREATE
//! DATABASE`): the tamper tests disable the append-only guard the way an attacker with
//! those rights could.
//!
//! # Layout
//!
//! - `fixtures`: the migrated database, the ids of `tests/fixtures/*.sql`, the doors tests
//!   append through, and snapshots that prove a refused append wrote nothing.
//! - `migrations`: an empty database, the counter-only era, running migrate again, a
//!   database an earlier release migrated.
//! - `append`: one writer: numbering, idempotency, atomicity, every refused input.
//! - `concurrency`: many writers at once, through the Rust and the SQL doors.
//! - `integrity`: the append-only guard, tampering, `verify`.
//! - `chain`: one chain verdict in `verify`, the target page and `GET /api/v1/chain`, for
//!   clean, tampered, format-v1 and mixed streams; docs/architecture.md's by-hand recipe.
//! - `projector`: the asynchronous rollup projector: late commits, exactly-once, one runner.
//! - `replay`: rebuilding the counts, dry runs, replay while appends run.
//! - `cli`: the `retrylog` binary, its output and its exit codes.
//! - `commands`: exit 69, the line naming the database, `status`, `project`, `replay
//!   --projection`, `serve`'s refusals and SIGINT, a short `demo`.
//! - `reports`: `report top-jobs|top-variants|stats|alerts|trend`, windows, `--as-of`.
//! - `history`: the audit filters of `history` (reason, step, actor, since/until, as-of).
//! - `docs`: the README's Rust example (the example target) and shell lines, and
//!   docs/queries.md's examples, run as printed.
//! - `operator`: the operator's first hour: tables fitted to a terminal, the trend's rows
//!   with data, one duration grammar, the demo's kept database and hints, help, actor,
//!   `--version`, completions and man pages.
//! - `recovery`: the watchdog: each scenario and its near misses, the retry limit through
//!   every door, two watchdogs at once, rollback, notifications, reconnect, shutdown.
//! - `crash`: PostgreSQL killed (`pg_ctl -m immediate`) under 8 writers and `serve` on a
//!   private cluster: no acknowledged retry lost, serve recovers by itself, verify clean.
//! - `hostile`: generated hostile input (text, JSON, times) through the SQL door, the Rust
//!   door and the CLI: refused cleanly with nothing written, or every read still works.
//! - `security`: fresh LOGIN roles with one capability each (writer, operator, reader): what
//!   each may and may not do, forgery, shadowing, force, replay, read-only use, bounded keys
//!   and text, a projection that cannot advance.
//! - `footprint`: light on the pipeline: a failure retried within a second with `serve`
//!   running, pipeline writers that never wait on retrylog, the sweep and the pipeline's channel.
//! - `api`: the HTTP API's router: the CLI's rows and messages, tokens, roles, CSRF, record
//!   and recover, the OpenAPI document, the base path; `serve`'s HTTP settings.
//! - `dashboard`: the pages in headless Chromium (WebDriver): the overview and its chart,
//!   live updates, filters in the URL, the Recover flow and its refusal, dark mode.
//! - `metrics`: `/metrics` parsed by a Prometheus parser; values moving with retries, refusals,
//!   the projector and the watchdog; bounded labels.
//! - `manual`: `recover`, an operator's recovery by hand: defaults, the limit, the closed
//!   note, refusals that write nothing, idempotency by request id.
//! - `outcomes`: what became of each retry: every outcome from a real watchdog and a moving
//!   pipeline, `history`'s columns, `report outcomes` against hand-computed rows and as of T,
//!   replay and verify, one decision per retry under racing observers and writers.
//! - `odd_input`: numbers past jsonb's range refused at every door, the extremes a detail
//!   holds read back exactly; the JSON API's writes take only bodies declared JSON (415).
//! - `screens`: what a reader's terminal and spreadsheet receive: invisible and bidi
//!   characters refused by the text rule and escaped in every table and line, CSV cells a
//!   spreadsheet would evaluate neutralised.

mod api;
mod append;
mod chain;
mod cli;
mod commands;
mod concurrency;
mod crash;
mod dashboard;
mod docs;
mod fixtures;
mod footprint;
mod history;
mod hostile;
mod integrity;
mod manual;
mod metrics;
mod migrations;
mod odd_input;
mod operator;
mod outcomes;
mod projector;
mod recovery;
mod replay;
mod reports;
mod screens;
mod security;
