//! The watchdog's settings, and where the database's reads and session work go: each one a
//! flag and an environment variable, with its default and its validation here and nowhere
//! else. `serve --help` shows them as they are declared.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// The steps a pipeline runs, in order, when `RETRYLOG_STEPS` is not set.
pub const DEFAULT_STEPS: &str = "prepare,generate,segment,iou_eval";
/// Automatic retries per target before it needs a human.
pub const DEFAULT_MAX_RETRIES: i32 = 3;
/// How long a done variant (or a finished job) may sit still before it counts as stuck.
pub const DEFAULT_STUCK_AFTER: &str = "5m";
/// How often the watchdog sweeps for what no notification reveals.
pub const DEFAULT_SWEEP_EVERY: &str = "30s";
/// The channel the failure trigger notifies (migration 0005 installs it with this name).
pub const DEFAULT_CHANNEL: &str = "retrylog_pipeline";
/// Candidates a sweep retries per transaction.
pub const DEFAULT_BATCH_SIZE: u16 = 100;

/// What the recovery watchdog manages and how eagerly it retries.
#[derive(Debug, Clone, Args)]
pub struct WatchdogSettings {
    /// The ordered, comma-separated steps the watchdog manages; the last is the final,
    /// job-wide step. Rows at any other step are never touched.
    #[arg(long, env = "RETRYLOG_STEPS", hide_env_values = true, value_name = "STEP,...", default_value = DEFAULT_STEPS)]
    pub steps: Steps,

    /// Automatic retries per target; at this count the target is marked as needing manual
    /// intervention instead. Also the limit every door enforces (written to the database).
    #[arg(long, env = "RETRYLOG_MAX_RETRIES", hide_env_values = true, value_name = "N", default_value_t = DEFAULT_MAX_RETRIES,
          value_parser = clap::value_parser!(i32).range(0..))]
    pub max_retries: i32,

    /// How long a done variant, or a job whose variants all finished, may sit without an
    /// update before it counts as stuck (90s, 5m, 1h30m).
    #[arg(long, env = "RETRYLOG_STUCK_AFTER", hide_env_values = true, value_name = "DURATION",
          default_value = DEFAULT_STUCK_AFTER, value_parser = parse_duration)]
    pub stuck_after: Duration,

    /// How often to sweep every managed job, besides reacting to failures (500ms, 30s, 5m).
    #[arg(long, env = "RETRYLOG_SWEEP_EVERY", hide_env_values = true, value_name = "DURATION",
          default_value = DEFAULT_SWEEP_EVERY, value_parser = parse_duration)]
    pub sweep_every: Duration,

    /// This instance's name: the actor of every retry it records [default: host:pid].
    #[arg(long, env = "RETRYLOG_INSTANCE", hide_env_values = true, value_name = "NAME", default_value_t = default_instance(),
          hide_default_value = true, value_parser = parse_instance)]
    pub instance: String,

    /// The channel the failure trigger on jobs/jobs_variants notifies, for whatever listens
    /// (the watchdog reads the failure signals instead); set it when the pipeline already uses
    /// the default name (written to the database).
    #[arg(long, env = "RETRYLOG_CHANNEL", hide_env_values = true, value_name = "NAME", default_value = DEFAULT_CHANNEL,
          value_parser = parse_channel)]
    pub channel: String,

    /// The pipeline's own change channel, if it has one: the watchdog listens there and
    /// sweeps the job each notification's JSON `job_id` names (anything else: every job).
    /// Listening costs the pipeline's notifying writes a few percent.
    #[arg(long, env = "RETRYLOG_PIPELINE_CHANNEL", hide_env_values = true, value_name = "NAME",
          value_parser = parse_channel)]
    pub pipeline_channel: Option<String>,

    /// A text column of jobs and/or jobs_variants where the pipeline keeps a row's last error:
    /// each retry keeps the target's value then in its detail.error (its first 1000
    /// characters, control, bidi and zero-width characters escaped). Checked at start: serve
    /// refuses a name neither table has as text.
    #[arg(long, env = "RETRYLOG_ERROR_COLUMN", hide_env_values = true, value_name = "NAME",
          value_parser = parse_column)]
    pub error_column: Option<String>,

    /// Candidates a sweep retries per transaction (1 to 1000): one commit for the batch, and
    /// a target skipped, noted at the limit or refused undoes none of the others.
    #[arg(long, env = "RETRYLOG_BATCH_SIZE", hide_env_values = true, value_name = "N",
          default_value_t = DEFAULT_BATCH_SIZE, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub batch_size: u16,
}

impl Default for WatchdogSettings {
    fn default() -> Self {
        WatchdogSettings {
            steps: DEFAULT_STEPS.parse().expect("the default steps are valid"),
            max_retries: DEFAULT_MAX_RETRIES,
            stuck_after: parse_duration(DEFAULT_STUCK_AFTER).expect("a valid default"),
            sweep_every: parse_duration(DEFAULT_SWEEP_EVERY).expect("a valid default"),
            instance: default_instance(),
            channel: DEFAULT_CHANNEL.to_string(),
            pipeline_channel: None,
            error_column: None,
            batch_size: DEFAULT_BATCH_SIZE,
        }
    }
}

/// Where reads, and the work that needs a session of its own, connect: beside `DATABASE_URL`,
/// for every command (docs/scale.md says what runs where).
#[derive(Debug, Clone, Default, Args)]
pub struct DatabaseRoutes {
    /// A hot standby of the database (streaming replication) for the reads: reports,
    /// history, targets, status, and serve's pages and API reads. Writes, sessions, the
    /// watchdog, the projector and migrate stay on DATABASE_URL. Its schema must be current.
    #[arg(
        long,
        env = "RETRYLOG_READ_URL",
        global = true,
        hide_env_values = true,
        value_name = "URL"
    )]
    pub read_url: Option<String>,

    /// What stands between retrylog and DATABASE_URL (and --read-url): `none`, or
    /// `transaction` for a pooler in transaction mode (pgbouncer pool_mode = transaction),
    /// where each connection checkout runs as one transaction and no statement outlives it.
    #[arg(long, env = "RETRYLOG_POOLER", global = true, hide_env_values = true, value_enum,
          default_value_t = Pooler::None)]
    pub pooler: Pooler,

    /// A direct (unpooled) URL of the primary, for what needs a session of its own behind a
    /// transaction pooler: migrate (a session lock), the projector (a lease named by its
    /// session) and the watchdog (LISTEN). Required by serve and migrate with --pooler
    /// transaction.
    #[arg(
        long,
        env = "RETRYLOG_DIRECT_URL",
        global = true,
        hide_env_values = true,
        value_name = "URL"
    )]
    pub direct_url: Option<String>,
}

/// What stands between retrylog and PostgreSQL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Pooler {
    /// Nothing, or a pooler in session mode: a connection is one session.
    #[default]
    None,
    /// A pooler in transaction mode: a server session is ours only inside a transaction.
    Transaction,
}

/// Work that needs a session of its own, asked for through a transaction pooler without
/// `--direct-url`.
#[derive(Debug, thiserror::Error)]
#[error(
    "retrylog {0} on a session of its own, which a transaction pooler (--pooler transaction) \
     does not keep: give the primary's direct URL with --direct-url (RETRYLOG_DIRECT_URL)"
)]
pub struct NeedsDirectUrl(pub &'static str);

impl crate::error::CallerMistake for NeedsDirectUrl {
    fn is_caller_mistake(&self) -> bool {
        true
    }
}

/// The managed steps, in pipeline order: non-empty, each named once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Steps(Vec<String>);

impl Steps {
    /// The names in order, as the detection queries bind them.
    pub fn names(&self) -> &[String] {
        &self.0
    }

    /// The final, job-wide step.
    pub fn last(&self) -> &str {
        self.0.last().expect("Steps is never empty")
    }
}

impl FromStr for Steps {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut names: Vec<String> = Vec::new();
        for name in text.split(',').map(str::trim) {
            if name.is_empty() {
                return Err(format!("empty step name in \"{text}\""));
            }
            // A step is stored as the events' step: the log's text rule, checked at startup.
            if name.len() > 200 || name.chars().any(crate::text::is_refused) {
                return Err(format!(
                    "invalid step \"{}\": at most 200 characters, no control, bidirectional or \
                     zero-width characters",
                    crate::text::escape(name, 40)
                ));
            }
            if names.iter().any(|known| known == name) {
                return Err(format!("step \"{name}\" is listed twice"));
            }
            names.push(name.to_string());
        }
        Ok(Steps(names))
    }
}

impl fmt::Display for Steps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// Parses a positive duration in the one grammar of every flag (`crate::duration`): `500ms`,
/// `30s`, `5m`, `1h30m`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    match crate::duration::parse(text) {
        Ok(duration) if duration.is_zero() => {
            Err(format!("\"{text}\" is zero; give a positive duration"))
        }
        Ok(duration) => Ok(duration),
        Err(error) => Err(error.to_string()),
    }
}

/// `host:pid`, so two instances on one host still tell their retries apart.
pub fn default_instance() -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    format!("{host}:{}", std::process::id())
}

/// The instance name is stored as the actor: the log's rules for actors apply.
fn parse_instance(text: &str) -> Result<String, String> {
    let name = text.trim();
    if name.is_empty() || name.len() > 200 || name.chars().any(crate::text::is_refused) {
        return Err(format!(
            "invalid instance name \"{}\": 1 to 200 characters, no control, bidirectional or \
             zero-width characters",
            crate::text::escape(text, 40)
        ));
    }
    Ok(name.to_string())
}

/// A column name as PostgreSQL stores it: 1 to 63 bytes (longer names are cut by the server),
/// none of the characters the text rule refuses. Whether the tables have it is checked at
/// start (`recovery::check_error_column`); the name is only ever bound as a value.
fn parse_column(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > 63 || text.chars().any(crate::text::is_refused) {
        return Err(format!(
            "invalid column name \"{}\": 1 to 63 bytes, no control, bidirectional or \
             zero-width characters",
            crate::text::escape(text, 63)
        ));
    }
    Ok(text.to_string())
}

/// A channel name LISTEN and the trigger agree on without quoting: lowercase letters, digits
/// and underscores, at most 63 characters, not starting with a digit.
pub fn parse_channel(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !text.as_bytes()[0].is_ascii_digit();
    if valid {
        Ok(text.to_string())
    } else {
        Err(format!(
            "invalid channel \"{}\": lowercase letters, digits and _, at most 63, not starting \
             with a digit",
            text.escape_debug()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_keep_their_order_and_the_last_is_final() {
        let steps: Steps = " prepare, generate ,iou_eval".parse().unwrap();
        assert_eq!(steps.names(), ["prepare", "generate", "iou_eval"]);
        assert_eq!(steps.last(), "iou_eval");
        assert_eq!(steps.to_string(), "prepare,generate,iou_eval");
    }

    #[test]
    fn steps_refuse_blanks_and_repeats_naming_them() {
        assert_eq!(
            "a,,b".parse::<Steps>().unwrap_err(),
            "empty step name in \"a,,b\""
        );
        assert_eq!(
            "a,b,a".parse::<Steps>().unwrap_err(),
            "step \"a\" is listed twice"
        );
        assert!("".parse::<Steps>().is_err());
    }

    #[test]
    fn steps_and_instance_names_follow_the_logs_text_rule() {
        assert_eq!(
            "prepare,gen\u{200b}erate".parse::<Steps>().unwrap_err(),
            "invalid step \"gen\\u{200b}erate\": at most 200 characters, no control, \
             bidirectional or zero-width characters"
        );
        assert!("seg\u{202e}tnem".parse::<Steps>().is_err());
        assert!(parse_instance("host\u{2066}:1").is_err());
        assert!(parse_instance("host:1").is_ok());
    }

    #[test]
    fn an_error_column_is_any_name_postgresql_keeps_whole_without_refused_characters() {
        assert_eq!(parse_column("last_error"), Ok("last_error".into()));
        assert_eq!(parse_column("Last Error"), Ok("Last Error".into()));
        assert_eq!(
            parse_column("err\u{202e}").unwrap_err(),
            "invalid column name \"err\\u{202e}\": 1 to 63 bytes, no control, bidirectional \
             or zero-width characters"
        );
        assert!(parse_column("").is_err());
        assert!(parse_column(&"é".repeat(32)).is_err(), "64 bytes");
        assert!(parse_column(&"e".repeat(63)).is_ok());
    }

    #[test]
    fn durations_read_seconds_minutes_and_hours() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("0s").unwrap_err().contains("zero"));
        assert!(parse_duration("5 parsecs")
            .unwrap_err()
            .contains("\"5 parsecs\""));
    }

    #[test]
    fn channels_are_plain_lowercase_identifiers() {
        assert!(parse_channel("retrylog_pipeline").is_ok());
        assert!(parse_channel("Jobs").is_err());
        assert!(parse_channel("9jobs").is_err());
        assert!(parse_channel("jobs changed").is_err());
        assert!(parse_channel(&"x".repeat(64)).is_err());
    }

    #[test]
    fn the_defaults_are_the_documented_ones() {
        let settings = WatchdogSettings::default();
        assert_eq!(settings.steps.to_string(), DEFAULT_STEPS);
        assert_eq!(settings.max_retries, 3);
        assert_eq!(settings.stuck_after, Duration::from_secs(300));
        assert_eq!(settings.sweep_every, Duration::from_secs(30));
        assert_eq!(settings.error_column, None);
        assert!(settings
            .instance
            .ends_with(&format!(":{}", std::process::id())));
    }
}
