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
//!   append through, snapshots that prove a refused append wrote nothing, and database names
//!   of a test's own that are dropped when it ends.
//! - `temp` (`tests/common/temp.rs`): files and directories of a test's own, named
//!   `retrylog-test-…` and removed when it ends.
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
//! - `commands`: exit 69 (no server, or a named database only `migrate` creates), the line
//!   naming the database, `status`, `project`, `replay --projection`, `serve`'s refusals and
//!   SIGINT, a short `demo` that leaves no database behind.
//! - `reports`: `report top-jobs|top-variants|stats|alerts|trend`, windows, `--as-of`.
//! - `history`: the audit filters of `history` (reason, step, actor, since/until, as-of).
//! - `docs`: every `sh` and `sql` block of the README and docs/ not fenced `… illustration`,
//!   the README's Rust example (the example target), docs/queries.md's examples and its sample
//!   data, run as printed.
//! - `operator`: the operator's first hour: tables fitted to a terminal, the trend's rows
//!   with data, one duration grammar, the demo's kept database and hints, help, actor,
//!   `serve`'s JSON lines, `--version`, completions and man pages, `| head -1`.
//! - `recovery`: the watchdog: each scenario and its near misses, the retry limit through
//!   every door, two watchdogs at once, rollback, notifications, reconnect, shutdown.
//! - `crash`: PostgreSQL killed (`pg_ctl -m immediate`) under 8 writers and `serve` on a
//!   private cluster: no acknowledged retry lost, serve recovers by itself, verify clean.
//! - `outage`: the database stopped under `serve`: `/healthz` and `/readyz` within a second,
//!   reads and writes 503 with Retry-After within `--db-timeout`, a command's exit 69, and
//!   serve ready again by itself when the server returns.
//! - `hostile`: generated hostile input (text, JSON, times) through the SQL door, the Rust
//!   door and the CLI: refused cleanly with nothing written, or every read still works.
//! - `archive`: `retrylog archive` of the oldest of three months: the file and manifest, verify
//!   clean and counts kept after it, appends going on, `verify --archive` naming a changed or
//!   deleted line, a report that would need archived events refused, the owner's job only.
//! - `security`: fresh LOGIN roles with one capability each (writer, operator, reader): what
//!   each may and may not do, forgery, shadowing, force, replay, read-only use, bounded keys
//!   and text, a projection that cannot advance.
//! - `pipeline_capability`: `retrylog grant pipeline`: the pipeline's work allowed, every
//!   write of `retry_count` refused, the limit held, a new column covered at the next migrate.
//! - `footprint`: light on the pipeline: a failure retried within a second with `serve`
//!   running, pipeline writers that never wait on retrylog, the sweep and the pipeline's channel.
//! - `api`: the HTTP API's router: the CLI's rows and messages, tokens, roles, CSRF, record
//!   and recover, the OpenAPI document, the base path; `serve`'s HTTP settings.
//! - `sessions`: the dashboard's logins kept by the server: revoked by logout, expired by the
//!   server, ended with their token's line; login CSRF; the Bearer scheme in any case.
//! - `slow_clients`: a stalled request closed after `--header-timeout`; 20,000 stalled
//!   connections (`tests/slow_clients.py`) while health, the API and the watchdog answer.
//! - `doors`: the HTTP doors' exact answers: security headers, 409, `/metrics` behind a
//!   token, `Sec-Fetch-Site: none`, `serve --no-http` listening nowhere.
//! - `dashboard`: the pages in headless Chromium (WebDriver): the overview and its chart,
//!   live updates, filters in the URL, the Recover flow and its refusal, dark mode.
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
//! - `why`: each retry's why in words, from a real sweep of every scenario, a recovery and a
//!   record by hand, through `history`, the API and the dashboard; `--error-column`: the
//!   pipeline's error kept with its retry, hostile text bounded and escaped, a bad name
//!   refused at start.
//!
//! `/metrics` is tested in a binary of its own, tests/metrics.rs, which includes `fixtures`:
//! its process counters are asserted exactly, so no test of this binary may move them.

mod api;
mod append;
mod archive;
mod chain;
mod cli;
mod commands;
mod concurrency;
mod crash;
mod dashboard;
mod docs;
mod doors;
mod fixtures;
mod footprint;
mod history;
mod hostile;
mod integrity;
mod manual;
mod migrations;
mod odd_input;
mod operator;
mod outage;
mod outcomes;
mod pipeline_capability;
mod projector;
mod recovery;
mod replay;
mod reports;
mod screens;
mod security;
mod sessions;
mod slow_clients;
mod targets;
#[path = "../common/temp.rs"]
mod temp;
mod why;
