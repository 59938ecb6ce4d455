//! The command line: every command and flag, documented where it is declared (that text is
//! what `retrylog --help` shows). Every clap `*Args` of the binary lives here (the reports'
//! in `cli/report.rs`); the commands in `cmd/` take them. The watchdog's settings are `config::WatchdogSettings`, flattened into
//! `serve`'s flags, because the library's watchdog takes them too.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use uuid::Uuid;

use crate::config::parse_duration;
use crate::event::RetryReason;
use crate::output::Format;

mod report;
mod targets;

pub use report::{
    AlertsArgs, OutcomesArgs, Report, ReportArgs, ReportOptions, StatsArgs, TopJobsArgs,
    TopVariantsArgs, TrendArgs, TrendFormat,
};
pub use targets::{FilterArgs, TargetsArgs, TargetsCommand};

/// Event-sourced retry history for job pipelines on PostgreSQL.
///
/// Every retry of a job or variant is an immutable event in `retry_history`; the
/// `retry_count` columns of `jobs` and `jobs_variants` are kept in step with it and can be
/// rebuilt (`replay`) and audited (`verify`) at any time. `migrate` (and `serve`, `grant`, on a
/// database that is behind) applies the migrations; `demo` runs in a scratch database of its
/// own; every other command only checks that the schema is current and needs no right to
/// change it.
///
/// The database: --database-url / DATABASE_URL, else the libpq variables (PGHOST, PGPORT,
/// PGUSER, PGDATABASE, ...) and the local socket, else a private PostgreSQL cluster that
/// retrylog starts from the installed binaries. Without a database name it uses `retrylog`.
/// Only `migrate` creates a database that does not exist (`serve` and `grant` create the
/// unnamed default `retrylog` too); every other command exits 69 on one.
///
/// Exit codes: 0 success; 1 verify found a mismatch; 2 a mistake in the input (bad id,
/// unknown reason or target, invalid JSON, a refused retry) or a role without the capability
/// the command needs (the message names the grant); 3 `report alerts` listed something; 69
/// no database reachable, or the one named does not exist; 70 any other failure. A closed
/// pipe (`| head`) ends a command quietly with 0.
#[derive(Debug, Parser)]
#[command(name = "retrylog", version, max_term_width = 100)]
pub struct Cli {
    /// PostgreSQL URL, e.g. postgres://user@host:5432/db. Never falls back when set.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// How long a command, or a request to serve, waits for a database connection before it
    /// gives up: the command exits 69, the API answers 503 with Retry-After (500ms, 5s, 30s).
    #[arg(long, env = "RETRYLOG_DB_TIMEOUT", global = true, hide_env_values = true,
          value_name = "DURATION", default_value = crate::connect::DEFAULT_DB_TIMEOUT,
          value_parser = parse_duration)]
    pub db_timeout: Duration,

    /// Where the private cluster lives when no server is reachable
    /// [default: /var/lib/retrylog for root, else $XDG_DATA_HOME/retrylog or ~/.local/share/retrylog].
    #[arg(long, env = "RETRYLOG_DATA_DIR", global = true, hide_env_values = true)]
    pub data_dir: Option<PathBuf>,

    /// Print tables at their full width even on a terminal (by default a table on a terminal
    /// is fitted to its width: headers wrapped, long cells elided, never an id; a table that
    /// cannot fit its ids becomes one record per row; pipes always get full values).
    #[arg(long, global = true)]
    pub wide: bool,

    /// Where reads (--read-url) and session work (--direct-url) connect, and the pooler.
    #[command(flatten)]
    pub routes: crate::config::DatabaseRoutes,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// How stderr is written: `serve --log-format json` makes every line of it a JSON object
    /// (the log, and the lines every command prints, see `cmd::notice`); everything else
    /// writes text.
    pub fn log_format(&self) -> LogFormat {
        match &self.command {
            Command::Serve(args) => args.log_format,
            _ => LogFormat::Text,
        }
    }
}

/// Whether raw arguments ask for `--log-format json`: for a command line clap refused, whose
/// error must then be a JSON line as well (a unit's settings with a typo, read by a journal
/// that expects JSON).
pub fn asks_for_json_log<I, S>(args: I) -> bool
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut previous_was_flag = false;
    for arg in args {
        let arg = arg.as_ref();
        if arg == "--log-format=json" || (previous_was_flag && arg == "json") {
            return true;
        }
        previous_was_flag = arg == "--log-format";
    }
    false
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the migrations, install the functions and projections, set the privileges.
    Migrate,
    /// Record one retry and print the stored event.
    Record(RecordArgs),
    /// Show a target's retry events in order, with the watchdog's notes where the retry limit
    /// stopped it; a job's history includes its variants'.
    History(HistoryArgs),
    /// Audit, trend and outcome reports: top-jobs, top-variants, stats, alerts, trend, outcomes.
    Report(ReportArgs),
    /// Browse the jobs and variants that were retried, each with its last retry, filtered by
    /// state (failed, running, stuck, retrying, needs_intervention, recovered, gave_up) and by
    /// the last retry's facts, a page at a time (--after/--before with the cursors it prints).
    Targets(TargetsCommand),
    /// Rebuild projections from the log: the retry_count columns and the trend rollup.
    Replay(ReplayArgs),
    /// Recompute the hash chains of the events since the last clean verify, check the counts
    /// against their head rows and the head rows against their verified chains for the streams
    /// walked and a rotating slice of the others (--slice), and the new events' ids, outcomes
    /// and open retries (--full: every event, every target, every whole-log check, the rollups
    /// and the closed partitions' digests); exit 1 on any mismatch.
    ///
    /// A clean verify run by the operator capability (or the owner) records where it got to,
    /// so the next reads only what is new; one that finds a mismatch records it and keeps the
    /// position. The table lists the mismatches (none when clean). --format json prints one
    /// object: clean (true or false), the scope (new or full), the events and streams checked,
    /// since_txid and up_to_txid, first_seq and last_seq, verified_before, the rotation's slice
    /// (rotation: after, through, streams, runs_per_round, wraps), recorded (advanced,
    /// failed, superseded, not_permitted), and the mismatches (an array of the table's rows);
    /// --format csv the mismatches' rows.
    Verify(VerifyArgs),
    /// Bring the trend rollup up to date once and exit (for cron); waits for no one.
    Project(ProjectArgs),
    /// Move every whole partition of the log older than a date to a file and drop it, keeping
    /// the audit: a JSON Lines file and a manifest per partition, recorded in the database, and
    /// each stream's last archived hash as the base the remaining chain verifies from. The
    /// schema owner's job (it detaches and drops partitions).
    Archive(ArchiveArgs),
    /// Show each projection's checkpoint, lag and runner.
    Status(FormatArg),
    /// Create the log's partitions that are due (the current one and `partitions_ahead` more),
    /// record the digests of closed ones and, with `--keep`, archive what is older, then exit,
    /// for cron; `serve` does the same under a lease. Prints what it created.
    Maintain(MaintainArgs),
    /// Run the service: the recovery watchdog, the asynchronous projector and the HTTP server
    /// (dashboard, JSON API, /metrics), until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Run a live sample pipeline that goes wrong on purpose, with the recovery watchdog
    /// recovering it, in a scratch database; then the retries, the targets at the limit and a
    /// verify.
    ///
    /// Runs in its own database, retrylog_demo (--database names another), created on the
    /// configured server and dropped at the end unless --keep; the configured database is never
    /// touched: not opened, not created (the demo connects to the server's maintenance database,
    /// postgres). Variants fail, the
    /// pipeline misses notifications and job completions on purpose, and a few flaky variants
    /// fail until they reach the retry limit; the watchdog of `serve` (stuck after 2s, sweeps
    /// every 1s, limit 3) recovers what it can. Each miss, retry and limit is shown as it
    /// happens. Exit 1 if verify is not clean. Ctrl-C ends the run early and still prints the
    /// summary.
    Demo(DemoArgs),
    /// Give an existing database role one capability in this cluster: writer (append through
    /// record_retry), operator (writer + force, replay, the projector), reader (every read
    /// command) or pipeline (the pipeline's own workers: read, insert and advance jobs and
    /// variants, never retry_count). Idempotent; prints the GRANT it ran. Run as the schema
    /// owner.
    Grant(GrantArgs),
    /// The private PostgreSQL cluster retrylog starts when nothing is configured: where it is,
    /// whether it runs; start or stop it.
    Local(LocalArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completions(CompletionsArgs),
    /// Print the man page (roff) on stdout, or write one page per command into a directory.
    Man(ManArgs),
    /// Recover one target by hand: change its status and record a manual_recovery event with
    /// your note, in one transaction, past the retry limit. Defaults: a failed, running or
    /// done variant goes to done at its step (the step re-runs); a running or failed job goes
    /// to done at the final step, back to running elsewhere. With the filters of `targets`
    /// instead of an id (`--state needs_intervention --step prepare`), every target they
    /// match, each with its own event; --dry-run lists them first.
    Recover(RecoverArgs),
    /// Make API tokens: `token new NAME read|admin >> FILE` appends the token's line to the
    /// tokens file (which keeps only its sha256) and shows the fresh token once, on stderr.
    Token(TokenArgs),
}

/// `retrylog local`.
#[derive(Debug, Args)]
pub struct LocalArgs {
    #[command(subcommand)]
    pub action: LocalAction,
}

/// What `retrylog local` does with the private cluster under --data-dir.
#[derive(Debug, Subcommand)]
pub enum LocalAction {
    /// Whether it runs, its pid, data directory, socket, port, log, and a URL to reach it.
    Status(FormatArg),
    /// Initialise it if needed and start it (commands do this themselves when they need it).
    Start,
    /// Stop it (fast shutdown: open sessions are ended); its data stays for the next start.
    Stop,
}

/// `retrylog completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `retrylog man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write retrylog.1 and one retrylog-COMMAND.1 page per command into this directory
    /// instead of printing retrylog.1.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// The command line with `--version` saying the schema version this binary expects
/// (`retrylog 0.1.0 (schema version 5)`): the last migration it carries.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let schema = crate::migrate::MIGRATOR
        .iter()
        .map(|migration| migration.version)
        .max()
        .unwrap_or(0);
    let version = format!("{} (schema version {schema})", env!("CARGO_PKG_VERSION"));
    // clap keeps &'static str; this runs once per process.
    Cli::command().version(&*Box::leak(version.into_boxed_str()))
}

/// Parses the process's arguments against [`command`], as `Cli::try_parse` does; `--help`
/// and `--version` come back as errors that print to stdout.
pub fn try_parse() -> Result<Cli, clap::Error> {
    use clap::FromArgMatches;
    let matches = command().try_get_matches()?;
    Cli::from_arg_matches(&matches)
}

/// `--format`, for every command that prints data.
#[derive(Debug, Args)]
pub struct FormatArg {
    /// Output format: a table for people (control, bidi and zero-width characters shown
    /// escaped), JSON exact for scripts, CSV for spreadsheets (formula-like text neutralised).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `retrylog record`.
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// The job retried, or the job the retried variant belongs to.
    #[arg(long, value_name = "UUID")]
    pub job_id: Uuid,

    /// The variant retried; omit for a job-level retry.
    #[arg(long, value_name = "UUID")]
    pub variant_id: Option<Uuid>,

    /// Why: stuck, failed or manual_recovery.
    #[arg(long, value_parser = RetryReason::parse)]
    pub reason: RetryReason,

    /// The step retried [default: the target's current_step].
    #[arg(long)]
    pub step: Option<String>,

    /// Who retried [default: cli:$USER, else cli: and the OS user name].
    #[arg(long)]
    pub actor: Option<String>,

    /// A JSON object with anything worth keeping (scenario, ticket, ...). The error that
    /// caused the retry goes in "error" (or "message"): the why of every listing shows it.
    #[arg(long, value_name = "JSON", value_parser = parse_detail)]
    pub detail: Option<serde_json::Value>,

    /// Idempotency key: recording the same event id again prints the original event.
    #[arg(long, value_name = "UUID")]
    pub event_id: Option<Uuid>,

    /// Refuse the retry when the target's retry_count has already reached this number (the
    /// database's own limit, set by `serve --max-retries`, applies too; the lower one wins).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(0..))]
    pub max_retries: Option<i32>,

    /// Record an operator's recovery of a target past the retry limit. Only with
    /// --reason manual_recovery; the event's detail keeps the limit it passed.
    #[arg(long, conflicts_with = "max_retries")]
    pub force: bool,

    /// Refuse unless this is the target's next attempt (optimistic concurrency).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
    pub expected_attempt: Option<i32>,

    #[command(flatten)]
    pub format: FormatArg,
}

/// `retrylog history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// A job: its own events and all of its variants' events.
    #[arg(long, value_name = "UUID", required_unless_present = "variant_id")]
    pub job_id: Option<Uuid>,

    /// A variant: its events.
    #[arg(long, value_name = "UUID", conflicts_with = "job_id")]
    pub variant_id: Option<Uuid>,

    /// Only events of this reason: stuck, failed or manual_recovery.
    #[arg(long, value_parser = RetryReason::parse)]
    pub reason: Option<RetryReason>,

    /// Only events of this step (exact match).
    #[arg(long)]
    pub step: Option<String>,

    /// Only events by this actor (exact match, e.g. cli:alice).
    #[arg(long)]
    pub actor: Option<String>,

    /// Only events that occurred at or after this time: a duration back (90s, 1h30m, 7d, 2w) or
    /// a timestamp (2026-11-01, 2026-11-01T12:00:00Z; UTC unless it has an offset).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,

    /// Only events that occurred at or before this time (same forms as --since).
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,

    /// The history as it stood then: only events recorded at or before this time (same forms
    /// as --since; durations in --since and --until then count back from it).
    #[arg(long, value_name = "WHEN")]
    pub as_of: Option<String>,

    #[command(flatten)]
    pub format: FormatArg,
}

/// `retrylog replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Print what would change and write nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Rebuild only this projection: retry_counts or retry_rollup [default: all].
    #[arg(long, value_name = "NAME", value_parser = parse_projection)]
    pub projection: Option<&'static crate::projection::Projection>,

    #[command(flatten)]
    pub format: FormatArg,
}

/// `retrylog verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Re-read every event from each stream's start, not only those since the last clean
    /// verify, and run the whole-log checks; catches a change to an event verified before
    /// and to a closed partition (docs/security.md).
    #[arg(long)]
    pub full: bool,

    /// Check an archive instead of the log: a directory of archives, a manifest or an events
    /// file, against the manifest and bases the database recorded; names any changed line.
    #[arg(long, value_name = "DIR_OR_FILE", conflicts_with = "full")]
    pub archive: Option<std::path::PathBuf>,

    /// Besides the streams its new events touched, a plain verify checks the counts and head
    /// rows of this many others, continuing in key order where the last clean one stopped:
    /// every target is checked again within ceil(streams / N) clean runs (--full: all at once).
    #[arg(
        long,
        value_name = "N",
        default_value_t = crate::verify_state::rotation::DEFAULT_SLICE,
        value_parser = clap::value_parser!(i64).range(1..),
        conflicts_with_all = ["full", "archive"]
    )]
    pub slice: i64,

    #[command(flatten)]
    pub format: FormatArg,
}

/// `retrylog archive`.
#[derive(Debug, Args)]
pub struct ArchiveArgs {
    /// Archive every partition whose whole range lies before this time (`2026-01-01`, any RFC
    /// 3339 time, or a duration back from now such as `400d`).
    #[arg(
        long,
        value_name = "DATE",
        required_unless_present = "keep",
        conflicts_with = "keep"
    )]
    pub before: Option<String>,

    /// The retention policy instead of a date: keep this many whole months before the
    /// current one (`13months`), archive everything older.
    #[arg(long, value_name = "Nmonths", value_parser = crate::archive::parse_keep)]
    pub keep: Option<u32>,

    /// The directory the files go to (created if missing).
    #[arg(long, value_name = "DIR")]
    pub to: std::path::PathBuf,

    #[command(flatten)]
    pub format: FormatArg,
}

/// The retention policy of the maintenance step (`maintain`, `serve`): off unless both are
/// given.
#[derive(Debug, Args)]
pub struct RetentionArgs {
    /// Keep this many whole months before the current one in the database (`13months`) and
    /// archive every older partition of the log, as `retrylog archive --keep` does; needs
    /// `--archive-to` and the schema owner. Off by default.
    #[arg(long = "keep", env = "RETRYLOG_KEEP", hide_env_values = true, value_name = "Nmonths",
          value_parser = crate::archive::parse_keep, requires = "archive_to")]
    pub keep_months: Option<u32>,

    /// The directory the retention policy's archive files go to (created if missing).
    #[arg(
        long,
        env = "RETRYLOG_ARCHIVE_TO",
        hide_env_values = true,
        value_name = "DIR",
        requires = "keep_months"
    )]
    pub archive_to: Option<std::path::PathBuf>,
}

impl RetentionArgs {
    /// The policy, when both flags are given.
    pub fn retention(&self) -> Option<crate::maintain::Retention> {
        crate::maintain::Retention::from_flags(self.keep_months, self.archive_to.clone())
    }
}

/// `retrylog maintain`.
#[derive(Debug, Args)]
pub struct MaintainArgs {
    #[command(flatten)]
    pub retention: RetentionArgs,

    #[command(flatten)]
    pub format: FormatArg,
}

/// `retrylog project`.
#[derive(Debug, Args)]
pub struct ProjectArgs {
    /// Roughly how many events one projector transaction applies.
    #[arg(long, default_value_t = crate::projector::DEFAULT_BATCH_EVENTS,
          value_parser = clap::value_parser!(i64).range(1..))]
    pub batch: i64,

    #[command(flatten)]
    pub format: FormatArg,
}

/// `retrylog serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub watchdog: crate::config::WatchdogSettings,

    /// Run only the projector, no watchdog (for an instance that must not retry anything).
    #[arg(long)]
    pub no_watchdog: bool,

    /// Roughly how many events one projector transaction applies.
    #[arg(long, env = "RETRYLOG_PROJECTOR_BATCH", hide_env_values = true, default_value_t = crate::projector::DEFAULT_BATCH_EVENTS,
          value_parser = clap::value_parser!(i64).range(1..))]
    pub projector_batch: i64,

    /// Every line on stderr as a JSON object instead of text: the log, the line naming the
    /// database, and an error serve stops on.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Where the HTTP API listens (address:port). Without a tokens file only a loopback
    /// address is allowed.
    #[arg(
        long,
        env = "RETRYLOG_LISTEN",
        hide_env_values = true,
        value_name = "ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: String,

    /// Serve no HTTP (a worker beside an HTTP-only replica).
    #[arg(long)]
    pub no_http: bool,

    /// Run a plain verify this often (1h, 30m) on one instance at a time (a lease row elects
    /// it); needs the operator capability. Off by default.
    #[arg(long, env = "RETRYLOG_VERIFY_EVERY", hide_env_values = true, value_name = "DURATION",
          value_parser = crate::config::parse_duration)]
    pub verify_every: Option<Duration>,

    #[command(flatten)]
    pub retention: RetentionArgs,

    /// How long an HTTP client may take to send a request's line and headers (from its first
    /// byte, or from the previous response on a kept-alive connection) before the connection
    /// is closed (5s, 30s).
    #[arg(long, env = "RETRYLOG_HEADER_TIMEOUT", hide_env_values = true, value_name = "DURATION",
          default_value = crate::http::DEFAULT_HEADER_TIMEOUT,
          value_parser = crate::config::parse_duration)]
    pub header_timeout: Duration,

    /// HTTP connections served at once; more wait in the listen backlog. Default: the
    /// open-file limit (raised to its hard maximum at start) less the database pool and 64.
    #[arg(long, env = "RETRYLOG_MAX_HTTP_CONNECTIONS", hide_env_values = true, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_http_connections: Option<u32>,

    /// The API tokens, one per line `NAME ROLE SHA256-HEX` (see `retrylog token new`); without
    /// it the API is read-only and loopback-only.
    #[arg(
        long,
        env = "RETRYLOG_TOKENS_FILE",
        hide_env_values = true,
        value_name = "FILE"
    )]
    pub tokens_file: Option<PathBuf>,

    /// Serve everything under this prefix (e.g. /retrylog), for a reverse proxy.
    #[arg(
        long,
        env = "RETRYLOG_BASE_PATH",
        hide_env_values = true,
        value_name = "PATH",
        default_value = ""
    )]
    pub base_path: String,
}

/// `retrylog demo`: the flags. What the command does is told by its help text, the doc of
/// [`Command::Demo`].
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Jobs the pipeline runs; they start one after another during the first half of the run.
    #[arg(long, default_value_t = 40, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub jobs: u32,

    /// Variants per job; the first (v0, creation_order 0) leads: the job's step follows it.
    #[arg(long, default_value_t = 4, value_name = "M",
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub variants: u32,

    /// How long the pipeline runs before the summary (20s, 1m).
    #[arg(long, default_value = "20s", value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Duration,

    /// Seed of every random choice [default: a random one, printed, so the run can be repeated].
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,

    /// The scratch database the demo creates, runs in and drops: lowercase letters, digits and
    /// _, at most 63, not starting with a digit. Another name lets two demos run on one server
    /// side by side, or keep one demo while running the next.
    #[arg(long, value_name = "NAME", default_value = crate::cmd::demo::DEMO_DATABASE,
          value_parser = parse_database_name)]
    pub database: String,

    /// Keep the demo's database at the end, to explore with the other commands.
    #[arg(long)]
    pub keep: bool,

    /// Drop a database of that name an earlier `demo --keep` left (ending its sessions);
    /// without it the demo refuses to start while that database exists.
    #[arg(long)]
    pub replace: bool,

    /// Output format of the summary.
    #[arg(long, value_enum, default_value_t = DemoFormat::Table)]
    pub format: DemoFormat,
}

/// How the summary is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DemoFormat {
    /// Sentences and tables for people.
    Table,
    /// One JSON object, for scripts.
    Json,
}

/// How `serve` writes its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Parses `demo --database`: a plain identifier, so that it needs no quoting in SQL and reads
/// back the same in a URL.
fn parse_database_name(name: &str) -> Result<String, String> {
    crate::config::parse_channel(name).map_err(|_| {
        format!(
            "invalid database name \"{}\": lowercase letters, digits and _, at most 63, not \
             starting with a digit",
            name.escape_debug()
        )
    })
}

/// Parses `--projection`.
fn parse_projection(name: &str) -> Result<&'static crate::projection::Projection, String> {
    crate::projection::find(name)
}

/// Parses `--detail`: it must be a JSON object.
pub(crate) fn parse_detail(text: &str) -> Result<serde_json::Value, String> {
    match serde_json::from_str(text) {
        Ok(value @ serde_json::Value::Object(_)) if crate::event::contains_nul(&value) => {
            Err("detail contains a NUL character (\\u0000), which PostgreSQL cannot store".into())
        }
        Ok(value @ serde_json::Value::Object(_)) => Ok(value),
        Ok(_) => Err("detail must be a JSON object, e.g. '{\"error\": \"timeout\"}'".into()),
        Err(error) => Err(format!("not valid JSON: {error}")),
    }
}

/// `retrylog grant`.
#[derive(Debug, Args)]
pub struct GrantArgs {
    /// writer, operator, reader or pipeline.
    #[arg(value_parser = crate::grant::Capability::parse)]
    pub capability: crate::grant::Capability,

    /// The existing role (usually a LOGIN role) that receives the capability.
    pub role: String,
}

/// The flags of a bulk recovery, which one target's flags exclude.
const BULK_ONLY: [&str; 12] = [
    "state",
    "kind",
    "step",
    "reason",
    "scenario",
    "actor",
    "since",
    "until",
    "min_retries",
    "q",
    "dry_run",
    "max",
];

/// `retrylog recover`.
#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// The job to recover.
    #[arg(long, value_name = "UUID", conflicts_with_all = BULK_ONLY)]
    pub job_id: Option<Uuid>,

    /// The variant to recover.
    #[arg(long, value_name = "UUID", conflicts_with = "job_id", conflicts_with_all = BULK_ONLY)]
    pub variant_id: Option<Uuid>,

    /// Many targets at once: every target `retrylog targets` lists with these filters, each
    /// recovered with its own event (at most --max; a larger match is refused with its count).
    #[command(flatten)]
    pub filter: crate::cli::FilterArgs,

    /// Only list what the filters match, with the attempt each was seen at: recover nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// The most targets the filters may match (1 to 500); more refuses the whole request.
    #[arg(long, value_name = "N", default_value_t = crate::recovery::bulk::MAX_TARGETS,
          value_parser = clap::value_parser!(i64).range(1..=crate::recovery::bulk::MAX_TARGETS))]
    pub max: i64,

    /// Why you recover it (required; kept in the event's detail.note).
    #[arg(long, value_name = "TEXT")]
    pub note: String,

    /// The status to set instead of the default: pending, running, done or failed (one
    /// target only).
    #[arg(long, value_name = "STATUS", conflicts_with_all = BULK_ONLY)]
    pub to_status: Option<String>,

    /// Idempotency key: the same request id again prints the first recovery's event and
    /// changes nothing (the event id is derived from it).
    #[arg(long, value_name = "TEXT", conflicts_with = "event_id")]
    pub request_id: Option<String>,

    /// The event's id, as an idempotency key of your own (one target only).
    #[arg(long, value_name = "UUID", conflicts_with_all = BULK_ONLY)]
    pub event_id: Option<Uuid>,

    /// Who recovers, the events' actor [default: cli:$USER]. (`--actor` is the targets'
    /// filter, as in `retrylog targets`.)
    #[arg(long = "by", value_name = "ACTOR")]
    pub by: Option<String>,

    /// The pipeline's ordered steps; the last is the final step, where a job goes to done.
    #[arg(long, env = "RETRYLOG_STEPS", hide_env_values = true, value_name = "STEP,...",
          default_value = crate::config::DEFAULT_STEPS)]
    pub steps: crate::config::Steps,

    #[command(flatten)]
    pub format: FormatArg,
}

/// `retrylog token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

/// What `token` does.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a fresh random token's tokens-file line on stdout, and the token (once: it is not
    /// stored) on stderr, so that `>> FILE` appends only the line.
    New(TokenNewArgs),
}

/// `retrylog token new`.
#[derive(Debug, Args)]
pub struct TokenNewArgs {
    /// The token's name: the actor of the events it records (one word).
    pub name: String,

    /// read: every read; admin: also record and recover.
    #[arg(value_enum)]
    pub role: crate::http::Role,
}
