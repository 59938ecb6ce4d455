//! The retry event and its vocabulary — pure types and the hash chain, no I/O.
//!
//! A *target* is a job or one of its variants; each target's events form one stream whose
//! attempts run 1..n and whose hashes chain each event to the one before it.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Why a target was retried. Stored as the PostgreSQL enum `retry_reason`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
    strum::AsRefStr,
    strum::VariantNames,
    strum::EnumIter,
    sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
#[sqlx(type_name = "retry_reason", rename_all = "snake_case")]
pub enum RetryReason {
    /// The target stopped making progress (lagging or stale).
    Stuck,
    /// The target failed and is re-run.
    Failed,
    /// An operator, or the final-step recovery, moved the target on by hand.
    ManualRecovery,
}

impl RetryReason {
    /// Parses a reason, naming the bad value and the accepted ones on failure.
    pub fn parse(text: &str) -> Result<Self, String> {
        text.parse().map_err(|_| {
            format!("unknown retry reason \"{text}\" (expected stuck, failed or manual_recovery)")
        })
    }
}

/// A job or a variant: the owner of one event stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// A job-level stream (`job_variants_id` is NULL in the log).
    Job { job_id: Uuid },
    /// A variant's stream; a variant always names the job it belongs to.
    Variant { job_id: Uuid, job_variants_id: Uuid },
}

impl Target {
    /// Builds the target from the log's two columns.
    pub fn from_columns(job_id: Uuid, job_variants_id: Option<Uuid>) -> Self {
        match job_variants_id {
            None => Target::Job { job_id },
            Some(job_variants_id) => Target::Variant {
                job_id,
                job_variants_id,
            },
        }
    }

    /// The job this target belongs to (itself for a job).
    pub fn job_id(&self) -> Uuid {
        match *self {
            Target::Job { job_id } | Target::Variant { job_id, .. } => job_id,
        }
    }

    /// The variant id, `None` for a job-level target.
    pub fn job_variants_id(&self) -> Option<Uuid> {
        match *self {
            Target::Job { .. } => None,
            Target::Variant {
                job_variants_id, ..
            } => Some(job_variants_id),
        }
    }

    /// `job` or `variant`.
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Job { .. } => "job",
            Target::Variant { .. } => "variant",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Job { job_id } => write!(f, "job {job_id}"),
            Target::Variant {
                job_variants_id, ..
            } => write!(f, "variant {job_variants_id}"),
        }
    }
}

/// A retry to append. Build it with [`NewRetry::new`] and the `with_*` methods.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRetry {
    /// The stream the event joins.
    pub target: Target,
    /// Why the target was retried.
    pub reason: RetryReason,
    /// Who retried: a service instance, an operator, an API client.
    pub actor: String,
    /// The step retried; defaults to the target's `current_step` at append time.
    pub step: Option<String>,
    /// Scenario, error text, anything else; a JSON object of at most 16 KiB.
    pub detail: serde_json::Value,
    /// Idempotency key; a fresh one is generated when absent.
    pub event_id: Option<Uuid>,
    /// When the retry happened; defaults to the transaction's start.
    pub occurred_at: Option<DateTime<Utc>>,
    /// Status before the retry; defaults to the target's status at append time.
    pub from_status: Option<String>,
    /// Status the retry sets, when it sets one.
    pub to_status: Option<String>,
    /// Optimistic concurrency: refuse unless this is the stream's next attempt.
    pub expected_attempt: Option<i32>,
    /// Refuse when the target's retry_count has already reached this limit (the shared
    /// limit in `retrylog_settings` applies too; the lower one wins).
    pub max_retries: Option<i32>,
    /// An operator's `manual_recovery` past the limit: recorded, with the limit it passed in
    /// `detail.forced_past_limit`. Refused for any other reason.
    pub force: bool,
}

impl NewRetry {
    /// A retry of `target` for `reason` by `actor`, with every optional field unset.
    pub fn new(target: Target, reason: RetryReason, actor: impl Into<String>) -> Self {
        NewRetry {
            target,
            reason,
            actor: actor.into(),
            step: None,
            detail: serde_json::Value::Object(Default::default()),
            event_id: None,
            occurred_at: None,
            from_status: None,
            to_status: None,
            expected_attempt: None,
            max_retries: None,
            force: false,
        }
    }

    /// Sets the step retried.
    pub fn with_step(mut self, step: impl Into<String>) -> Self {
        self.step = Some(step.into());
        self
    }

    /// Sets the detail object.
    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }

    /// Sets the idempotency key.
    pub fn with_event_id(mut self, event_id: Uuid) -> Self {
        self.event_id = Some(event_id);
        self
    }

    /// Sets when the retry happened.
    pub fn with_occurred_at(mut self, occurred_at: DateTime<Utc>) -> Self {
        self.occurred_at = Some(occurred_at);
        self
    }

    /// Records the state change the retry makes.
    pub fn with_status_change(
        mut self,
        from_status: impl Into<String>,
        to_status: impl Into<String>,
    ) -> Self {
        self.from_status = Some(from_status.into());
        self.to_status = Some(to_status.into());
        self
    }

    /// Appends only if this is the stream's next attempt.
    pub fn with_expected_attempt(mut self, attempt: i32) -> Self {
        self.expected_attempt = Some(attempt);
        self
    }

    /// Appends only while the target's retry_count is below `limit`.
    pub fn with_max_retries(mut self, limit: i32) -> Self {
        self.max_retries = Some(limit);
        self
    }

    /// Lets an operator's `manual_recovery` past the retry limit.
    pub fn forced(mut self) -> Self {
        self.force = true;
        self
    }
}

/// Whether any key or string in `value` holds U+0000, which PostgreSQL's jsonb cannot store.
pub fn contains_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(text) => text.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(contains_nul),
        serde_json::Value::Object(fields) => fields
            .iter()
            .any(|(key, item)| key.contains('\0') || contains_nul(item)),
        _ => false,
    }
}

/// The most digits PostgreSQL's `numeric` — the type jsonb stores every JSON number as —
/// holds before the decimal point.
pub const NUMERIC_MAX_INTEGER_DIGITS: i64 = 131_072;
/// The most digits `numeric` holds after the decimal point.
pub const NUMERIC_MAX_SCALE: i64 = 16_383;

/// A number in a detail that PostgreSQL's jsonb cannot hold: the server would refuse the
/// whole value as `22003 value overflows numeric format`, naming neither.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{path} holds the number {number}, which PostgreSQL cannot store in jsonb (at most {} \
     digits before the decimal point and {} after)",
    NUMERIC_MAX_INTEGER_DIGITS,
    NUMERIC_MAX_SCALE
)]
pub struct NumberOutOfRange {
    /// Where in the detail, escaped and bounded: `detail.n`, `detail.list[2]`.
    pub path: String,
    /// The number's text, escaped and bounded (its length said when cut).
    pub number: String,
}

/// The first number in `detail` that PostgreSQL's jsonb cannot hold, if any. Read from the
/// number's text (serde_json's `arbitrary_precision` keeps every digit, and writes the
/// exponent as `e+200000`: the text the server is sent), by the rules of
/// PostgreSQL's numeric input: at most [`NUMERIC_MAX_INTEGER_DIGITS`] digits before the point
/// once leading zeros are gone, at most [`NUMERIC_MAX_SCALE`] after it as written (trailing
/// zeros count: `1.50e-16382` has a scale of 16,384), and an exponent below 1,073,741,823.
pub fn number_out_of_range(detail: &serde_json::Value) -> Option<NumberOutOfRange> {
    fn walk(value: &serde_json::Value, path: &mut String) -> Option<NumberOutOfRange> {
        match value {
            serde_json::Value::Number(number) => {
                let written = number.to_string();
                (!numeric_holds(&written)).then(|| NumberOutOfRange {
                    path: crate::text::escape(path, 120),
                    number: crate::text::escape(&written, 40),
                })
            }
            serde_json::Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let found = walk(item, path);
                path.truncate(len);
                found
            }),
            serde_json::Value::Object(fields) => fields.iter().find_map(|(key, item)| {
                let len = path.len();
                let plain =
                    !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if plain {
                    path.push('.');
                    path.push_str(key);
                } else {
                    path.push_str(&format!("[{}]", serde_json::Value::from(key.as_str())));
                }
                let found = walk(item, path);
                path.truncate(len);
                found
            }),
            _ => None,
        }
    }
    walk(detail, &mut String::from("detail"))
}

/// Whether PostgreSQL's numeric input accepts the JSON number written `text` (the JSON
/// grammar: `-? int frac? exp?`). Mirrors `set_var_from_str` and `make_result` of
/// PostgreSQL's numeric.c; a test holds it to the server, edge by edge. PostgreSQL 16 and
/// later also accept a zero with the exponent 1,073,741,823 exactly; this refuses it, as 15
/// does.
fn numeric_holds(text: &str) -> bool {
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (mantissa, exponent) = unsigned.split_once(['e', 'E']).unwrap_or((unsigned, "0"));
    let (integer, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let (negative, magnitude) = match exponent.as_bytes().first() {
        Some(b'-') => (true, &exponent[1..]),
        Some(b'+') => (false, &exponent[1..]),
        _ => (false, exponent),
    };
    // PostgreSQL stops reading an exponent at INT_MAX / 2: "value overflows numeric format".
    let magnitude = magnitude.trim_start_matches('0');
    if magnitude.len() > 10 {
        return false;
    }
    let magnitude: i64 = if magnitude.is_empty() {
        0
    } else {
        magnitude.parse().unwrap_or(i64::MAX)
    };
    if magnitude >= 1_073_741_823 {
        return false;
    }
    let exponent = if negative { -magnitude } else { magnitude };
    // The scale: the digits written after the point, less the exponent.
    if fraction.len() as i64 - exponent > NUMERIC_MAX_SCALE {
        return false;
    }
    // The digits before the point: from the first non-zero digit (none: the value is 0).
    match integer
        .bytes()
        .chain(fraction.bytes())
        .position(|d| d != b'0')
    {
        None => true,
        Some(first) => integer.len() as i64 - first as i64 + exponent <= NUMERIC_MAX_INTEGER_DIGITS,
    }
}

/// One stored event: a row of `retry_history`.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct RetryEvent {
    /// Global position in the log.
    pub seq: i64,
    /// Idempotency key.
    pub event_id: Uuid,
    pub job_id: Uuid,
    /// `None` for a job-level retry.
    pub job_variants_id: Option<Uuid>,
    pub reason: RetryReason,
    pub step: Option<String>,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    /// 1-based number of the retry within its target's stream.
    pub attempt: i32,
    pub actor: String,
    /// The database role that made the append (`session_user`); `None` for events recorded
    /// before migration 0006, which the hash's format v1 did not cover.
    pub db_role: Option<String>,
    /// Read back exactly as stored: serde_json keeps any number's digits
    /// (`arbitrary_precision`), so `1e400` is shown, not refused.
    pub detail: serde_json::Value,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    /// sha256 of the previous event's hash and this event's canonical bytes.
    #[serde(serialize_with = "serialize_hex")]
    pub hash: Vec<u8>,
}

impl RetryEvent {
    /// The stream this event belongs to.
    pub fn target(&self) -> Target {
        Target::from_columns(self.job_id, self.job_variants_id)
    }

    /// The hash as lowercase hex.
    pub fn hash_hex(&self) -> String {
        hex::encode(&self.hash)
    }
}

fn serialize_hex<S: serde::Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&hex::encode(bytes))
}

/// The hash that precedes attempt 1 of every stream.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// The fields an event's hash covers, borrowed from wherever they were read.
///
/// `detail_text` is PostgreSQL's text form of the stored `jsonb` (`detail::text`): jsonb
/// normalises key order and spacing, so that text is the canonical form of the detail.
#[derive(Debug, Clone, Copy)]
pub struct CanonicalEvent<'a> {
    pub event_id: Uuid,
    pub job_id: Uuid,
    pub job_variants_id: Option<Uuid>,
    pub reason: RetryReason,
    pub step: Option<&'a str>,
    pub from_status: Option<&'a str>,
    pub to_status: Option<&'a str>,
    pub attempt: i32,
    pub actor: &'a str,
    pub occurred_at: DateTime<Utc>,
    pub detail_text: &'a str,
    /// The appending role: `Some` selects format v2 (which covers it), `None` format v1.
    pub db_role: Option<&'a str>,
}

impl CanonicalEvent<'_> {
    /// The exact bytes the hash covers; the SQL functions `retry_event_canonical` (v1) and
    /// `retry_event_canonical_v2` build the same text. Fields are joined by `\n`; absent ones
    /// are empty; `occurred_at` is microseconds since the Unix epoch. v2 (an event with a
    /// `db_role`) has its own tag and the role last; v1's bytes never change.
    pub fn bytes(&self) -> Vec<u8> {
        let variant = self
            .job_variants_id
            .map(|id| id.to_string())
            .unwrap_or_default();
        let tag = match self.db_role {
            None => "retrylog-event-v1",
            Some(_) => "retrylog-event-v2",
        };
        let mut fields = vec![
            tag.to_string(),
            self.event_id.to_string(),
            self.job_id.to_string(),
            variant,
            self.reason.as_ref().to_string(),
            self.step.unwrap_or("").to_string(),
            self.from_status.unwrap_or("").to_string(),
            self.to_status.unwrap_or("").to_string(),
            self.attempt.to_string(),
            self.actor.to_string(),
            self.occurred_at.timestamp_micros().to_string(),
            self.detail_text.to_string(),
        ];
        fields.extend(self.db_role.map(str::to_string));
        fields.join("\n").into_bytes()
    }

    /// This event's hash given the previous hash of its stream.
    pub fn hash(&self, previous: &[u8]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(previous);
        hasher.update(self.bytes());
        hasher.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_past_numerics_range_are_found_by_path_and_the_edges_are_kept() {
        for held in [
            "0",
            "-0.0",
            "1e131071",
            "-9.99e131071",
            "0.1e131072",
            "0.0001e131075",
            "1e-16383",
            "0e-16383",
            "100e-2",
            "1E+3",
            "0e999999",
            "0e1073741822",
            "1e-0016383",
        ] {
            assert!(numeric_holds(held), "{held}");
        }
        for refused in [
            "1e200000",
            "1e131072",
            "10e131071",
            "-1e131072",
            "1.5e-16383",
            "1e-16384",
            "0e-16384",
            "0e1073741823",
            "0e9999999999",
            "1e99999999999999999999",
        ] {
            assert!(!numeric_holds(refused), "{refused}");
        }
        let detail: serde_json::Value =
            serde_json::from_str(r#"{"ok": 1e400, "runs": [1, {"n": -1e200000}]}"#).unwrap();
        assert_eq!(
            number_out_of_range(&detail).unwrap().to_string(),
            "detail.runs[1].n holds the number -1e+200000, which PostgreSQL cannot store in \
             jsonb (at most 131072 digits before the decimal point and 16383 after)"
        );
        let odd_key: serde_json::Value =
            serde_json::from_str("{\"a b\\u202e\": 1e-20000}").unwrap();
        assert_eq!(
            number_out_of_range(&odd_key).unwrap().path,
            "detail[\"a b\\u{202e}\"]"
        );
        assert_eq!(number_out_of_range(&serde_json::json!({"n": 1.5})), None);
    }

    #[test]
    fn reasons_round_trip_through_their_names() {
        for (text, reason) in [
            ("stuck", RetryReason::Stuck),
            ("failed", RetryReason::Failed),
            ("manual_recovery", RetryReason::ManualRecovery),
        ] {
            assert_eq!(RetryReason::parse(text), Ok(reason));
            assert_eq!(reason.to_string(), text);
        }
    }

    #[test]
    fn an_unknown_reason_is_named_in_the_error() {
        let err = RetryReason::parse("flaky").unwrap_err();
        assert!(err.contains("\"flaky\""), "{err}");
        assert!(err.contains("manual_recovery"), "{err}");
    }

    #[test]
    fn canonical_bytes_leave_absent_fields_empty() {
        let event_id = Uuid::nil();
        let job_id = Uuid::from_u128(1);
        let event = CanonicalEvent {
            event_id,
            job_id,
            job_variants_id: None,
            reason: RetryReason::ManualRecovery,
            step: Some("iou_eval"),
            from_status: Some("running"),
            to_status: None,
            attempt: 2,
            actor: "ops",
            occurred_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            detail_text: "{}",
            db_role: None,
        };
        let text = String::from_utf8(event.bytes()).unwrap();
        assert_eq!(
            text,
            format!(
                "retrylog-event-v1\n{event_id}\n{job_id}\n\nmanual_recovery\niou_eval\nrunning\n\n2\nops\n1700000000123456\n{{}}"
            )
        );
    }

    /// A v1 event with every optional field absent.
    fn bare_event() -> CanonicalEvent<'static> {
        CanonicalEvent {
            event_id: Uuid::nil(),
            job_id: Uuid::nil(),
            job_variants_id: None,
            reason: RetryReason::Stuck,
            step: None,
            from_status: None,
            to_status: None,
            attempt: 1,
            actor: "a",
            occurred_at: DateTime::from_timestamp_micros(0).unwrap(),
            detail_text: "{}",
            db_role: None,
        }
    }

    #[test]
    fn format_v2_tags_itself_and_covers_the_appending_role() {
        let v1 = bare_event();
        let v2 = CanonicalEvent {
            db_role: Some("pipeline"),
            ..v1
        };
        let text = String::from_utf8(v2.bytes()).unwrap();
        assert!(text.starts_with("retrylog-event-v2\n"), "{text}");
        assert!(text.ends_with("\n{}\npipeline"), "{text}");
        let other = CanonicalEvent {
            db_role: Some("intruder"),
            ..v1
        };
        assert_ne!(v2.hash(&GENESIS_HASH), other.hash(&GENESIS_HASH));
        assert_ne!(v1.hash(&GENESIS_HASH), v2.hash(&GENESIS_HASH));
    }

    #[test]
    fn a_hash_depends_on_the_previous_hash() {
        let event = bare_event();
        assert_ne!(event.hash(&GENESIS_HASH), event.hash(&[1; 32]));
    }
}
