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
//!   of a test's own that are dropped when it ends; waiting for a condition of the database.
//! - `serving`: a real `retrylog serve` over TCP: started with the tests' tokens, its log
//!   kept, requests on fresh connections, its watchdog's first sweep and a failure's retry.
//! - `temp` (`tests/common/temp.rs`): files and directories of a test's own, named
//!   `retrylog-test-…` and removed when it ends.
//! - `migrations`: an empty database, the counter-only era, running migrate again, a
//!   database an earlier release migrated.
//! - `append`: one writer: numbering, idempotency, atomicity, every refused input.
//! - `concurrency`: many writers at once, through the Rust and the SQL doors.
//! - `batch`: the batch door (`record_retries`, `store::append_many`): refusals naming the
//!   row, consecutive attempts in the caller's order, concurrent batches, the writer
//!   capability, the largest batch read back.
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
//! - `doors`: the HTTP doors' exact answers: security headers, 409, `/metrics` behind a
//!   token, `Sec-Fetch-Site: none`, `serve --no-http` listening nowhere.
//! - `dashboard`: the pages in headless Chromium (WebDriver): the overview and its chart,
//!   live updates, filters in the URL, the Recover flow and its refusal, dark mode.
//! - `layout`: every page in headless Chromium at 1400×1000 and 390×844, light and dark:
//!   nothing leaves the viewport sideways outside a scroll box, no two tables overlap, the
//!   alerts keep count, why and Recover in view, the chart takes the page's colours.
//! - `timeline`: the target page's timeline filters from the URL (the same rows as
//!   `GET /api/v1/history`), a bad one beside its field, each attempt's outcome and why, the
//!   detail's key/values whole.
//! - `manual`: `recover`, an operator's recovery by hand: defaults, the limit, the closed
//!   note, refusals that write nothing, idempotency by request id.
//! - `partitions`: the partitioned log: partitions ahead, the DEFAULT safety net and its
//!   repair, the TRUNCATE guard per partition, the maintenance lease, a stream across two
//!   partitions from its head row.
//! - `outcomes`: what became of each retry: every outcome from a real watchdog and a moving
//!   pipeline, `history`'s columns, `report outcomes` against hand-computed rows and as of T,
//!   replay and verify, one decision per retry under racing observers and writers.
//! - `odd_input`: numbers past jsonb's range refused at every door, the extremes a detail
//!   holds read back exactly; the JSON API's writes take only bodies declared JSON (415).
//! - `screens`: what a reader's terminal and spreadsheet receive: invisible and bidi
//!   characters refused by the text rule and escaped in every table and line, CSV cells a
//!   spreadsheet would evaluate neutralised.
//! - `replica`: `--read-url` on a streaming standby of a private primary
//!   (`tests/common/standby.rs`): reads from the standby, writes to the primary, its schema
//!   checked, its lag on `/metrics`, a real recovery conflict read once more, then 503.
//! - `pooler`: through a real pgbouncer in transaction mode (`tests/common/pgbouncer.rs`): the
//!   commands, serve's API, concurrent appends, a grant committed, `--direct-url` asked for.
//! - `why`: each retry's why in words, from a real sweep of every scenario, a recovery and a
//!   record by hand, through `history`, the API and the dashboard; `--error-column`: the
//!   pipeline's error kept with its retry, hostile text bounded and escaped, a bad name
//!   refused at start.
//! - `bulk`: `recover --state …` and `POST /api/v1/recover/bulk`: hand-computed matches, a
//!   dry run, idempotency by request id under concurrent duplicates, the max refusal, a target
//!   changed since the preview, the rights of each role and token.
//! - `citus_contract`: the schema's side of running on Citus, from pg_catalog: every key and
//!   foreign key of a per-target table (one with `job_id`) includes `job_id`, and no function
//!   writes several targets' rows in one statement, but for the named exceptions.
//! - `verify_incremental`: a plain `verify` reads what is new since the last clean one, `--full`
//!   everything: what each catches, the position under concurrent appenders and late commits,
//!   who may advance it, `serve --verify-every` and its metrics.
//!
//! `/metrics` is tested in a binary of its own, tests/metrics.rs, which includes `fixtures`:
//! its process counters are asserted exactly, so no test of this binary may move them. The
//! slow-client floods are in tests/slow_clients.rs, which includes `fixtures` and `serving`:
//! they time answers to the millisecond under 20,000 connections, so they run with no other
//! test beside them.

mod api;
mod append;
mod archive;
mod batch;
mod bulk;
mod chain;
mod citus_contract;
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
mod layout;
mod manual;
mod migrations;
mod odd_input;
mod operator;
mod outage;
mod outcomes;
mod partitions;
#[path = "../common/pgbouncer.rs"]
mod pgbouncer;
mod pipeline_capability;
mod pooler;
mod projector;
mod recovery;
mod replay;
mod replica;
mod reports;
mod screens;
mod security;
mod serving;
mod sessions;
#[path = "../common/standby.rs"]
mod standby;
mod targets;
#[path = "../common/temp.rs"]
mod temp;
mod timeline;
mod verify_incremental;
mod why;
