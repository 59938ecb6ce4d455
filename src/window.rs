//! Time windows and instants as a user writes them (`30m`, `7d`, RFC 3339, `--as-of`): how
//! far back a read reaches and the moment it describes. At the reading end of the flow (retry →
//! store → projector → report/http): `report` and `history` resolve their time flags here.
//!
//! Every time a user gives is parsed here ([`TimeSpec`]), resolved in Rust and bound as a
//! parameter. Windows include their start (`>=`) and an as-of instant includes itself (`<=`).

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone, Utc};
use thiserror::Error;

use crate::error::CallerMistake;

/// Why a time flag cannot be used: always the user's mistake (exit code 2).
#[derive(Debug, Error)]
pub enum WindowError {
    /// A time flag is neither a duration nor a timestamp (exit code 2).
    #[error(
        "invalid {flag} \"{value}\": expected a duration like 7d, 12h, 30m or a timestamp like \
         2026-11-01T00:00:00Z"
    )]
    InvalidTime { flag: &'static str, value: String },
    /// A time flag parses but lies outside what PostgreSQL stores (exit code 2).
    #[error("invalid {flag} \"{value}\": {problem}")]
    TimeOutOfRange {
        flag: &'static str,
        value: String,
        problem: &'static str,
    },
    /// A duration in a unit the grammar refuses on purpose (`2y`), with its hint (exit code 2).
    #[error(
        "invalid {flag} \"{value}\": expected a duration like 7d, 12h, 30m or a timestamp like \
         2026-11-01T00:00:00Z; months and years vary in length; write days or weeks, e.g. 90d, \
         104w"
    )]
    CalendarUnit { flag: &'static str, value: String },
    /// Two time flags contradict each other, e.g. --since after --until (exit code 2).
    #[error("{0}")]
    EmptyRange(String),
}

impl WindowError {
    /// The field a form names the flag by (`since` for `--since`) and what is wrong with its
    /// value in the form's terms (`"7x" is not a duration or a time`), for a page that shows
    /// the refusal beside the field; `None` for two flags that contradict each other.
    pub fn in_form_terms(&self) -> Option<(String, String)> {
        let field = |flag: &str| flag.trim_start_matches('-').replace('-', "_");
        let shown = |value: &str| crate::text::escape(value, 40);
        match self {
            WindowError::InvalidTime { flag, value } => Some((
                field(flag),
                format!(
                    "\"{}\" is not a duration or a time (like 7d, 12h or 2026-11-01)",
                    shown(value)
                ),
            )),
            WindowError::TimeOutOfRange {
                flag,
                value,
                problem,
            } => Some((field(flag), format!("\"{}\": {problem}", shown(value)))),
            WindowError::CalendarUnit { flag, value } => Some((
                field(flag),
                format!(
                    "\"{}\": months and years vary in length; write days or weeks (90d, 104w)",
                    shown(value)
                ),
            )),
            WindowError::EmptyRange(_) => None,
        }
    }
}

impl CallerMistake for WindowError {
    /// Every variant is about the flags the caller gave.
    fn is_caller_mistake(&self) -> bool {
        true
    }
}

/// A time as a user writes it on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSpec {
    /// That long before the report's moment: `90s`, `30m`, `1h30m`, `7d`, `2w` (the grammar of
    /// `crate::duration`).
    Ago(Duration),
    /// This instant: `2026-11-01` (midnight UTC), `2026-11-01T12:00:00Z`, any RFC 3339 time;
    /// a date and time without an offset is UTC.
    At(DateTime<Utc>),
}

/// The longest duration a time flag accepts; far enough back for any log, near enough that
/// the instant stays inside PostgreSQL's range.
const LONGEST_AGO_DAYS: i64 = 100 * 366;

impl TimeSpec {
    /// Parses the value of `flag` (named in the error, e.g. `--since`).
    pub fn parse(flag: &'static str, text: &str) -> Result<Self, WindowError> {
        let invalid = || WindowError::InvalidTime {
            flag,
            value: text.to_string(),
        };
        let trimmed = text.trim();
        // One grammar with the watchdog's flags (`crate::duration`): 90s, 1h30m, 7d, 2w.
        match crate::duration::parse(trimmed) {
            Ok(ago) if ago <= std::time::Duration::from_secs(LONGEST_AGO_DAYS as u64 * 86_400) => {
                let millis = i64::try_from(ago.as_millis()).expect("bounded above");
                return Ok(TimeSpec::Ago(Duration::milliseconds(millis)));
            }
            Ok(_) | Err(crate::duration::DurationError::TooLong(_)) => {
                return Err(WindowError::TimeOutOfRange {
                    flag,
                    value: text.to_string(),
                    problem: "at most 100 years back",
                })
            }
            Err(crate::duration::DurationError::CalendarUnit(_)) => {
                return Err(WindowError::CalendarUnit {
                    flag,
                    value: text.to_string(),
                })
            }
            Err(crate::duration::DurationError::Invalid(_)) => {}
        }
        let at = parse_timestamp(trimmed).ok_or_else(invalid)?;
        if !(1..=9999).contains(&at.year()) {
            return Err(WindowError::TimeOutOfRange {
                flag,
                value: text.to_string(),
                problem: "the year must be between 1 and 9999",
            });
        }
        Ok(TimeSpec::At(at))
    }

    /// The instant this names, durations counted back from `moment`.
    pub fn resolve(self, moment: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            TimeSpec::Ago(duration) => moment - duration,
            TimeSpec::At(at) => at,
        }
    }
}

/// RFC 3339 (`T` or a space between date and time), a date and time without an offset (UTC),
/// or a bare date (midnight UTC).
fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.with_timezone(&Utc));
    }
    let with_t = text.replacen(' ', "T", 1);
    if let Ok(at) = DateTime::parse_from_rfc3339(&with_t) {
        return Some(at.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(&with_t, format) {
            return Some(Utc.from_utc_datetime(&naive));
        }
    }
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    Some(Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0)?))
}

/// The moment a report describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    /// Today's state, read now; the instant anchors relative windows (`--since 7d`).
    Now(DateTime<Utc>),
    /// The state reconstructed from the log as of this instant (`--as-of`).
    AsOf(DateTime<Utc>),
}

impl Moment {
    /// Today, or the instant `--as-of` names (a duration counts back from now).
    pub fn from_flag(as_of: Option<&str>) -> Result<Self, WindowError> {
        let now = Utc::now();
        Ok(match as_of {
            None => Moment::Now(now),
            Some(text) => Moment::AsOf(TimeSpec::parse("--as-of", text)?.resolve(now)),
        })
    }

    /// The instant relative windows count back from.
    pub fn time(self) -> DateTime<Utc> {
        match self {
            Moment::Now(at) | Moment::AsOf(at) => at,
        }
    }

    /// The as-of instant, `None` for today.
    pub fn as_of(self) -> Option<DateTime<Utc>> {
        match self {
            Moment::Now(_) => None,
            Moment::AsOf(at) => Some(at),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An RFC 3339 instant, for tests here and in the reports that take one.
    pub(crate) fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn durations_count_back_from_the_moment() {
        let moment = at("2026-11-08T12:00:00Z");
        for (text, expected) in [
            ("30m", "2026-11-08T11:30:00Z"),
            ("12h", "2026-11-08T00:00:00Z"),
            ("7d", "2026-11-01T12:00:00Z"),
            ("2w", "2026-10-25T12:00:00Z"),
            ("0d", "2026-11-08T12:00:00Z"),
            ("90s", "2026-11-08T11:58:30Z"),
            ("1h30m", "2026-11-08T10:30:00Z"),
            ("500ms", "2026-11-08T11:59:59.500Z"),
        ] {
            let spec = TimeSpec::parse("--since", text).unwrap();
            assert_eq!(spec.resolve(moment), at(expected), "{text}");
        }
    }

    #[test]
    fn timestamps_are_utc_unless_they_say_otherwise() {
        let moment = at("2030-01-01T00:00:00Z");
        for (text, expected) in [
            ("2026-11-01", "2026-11-01T00:00:00Z"),
            ("2026-11-01T12:00:00Z", "2026-11-01T12:00:00Z"),
            ("2026-11-01 12:00:00Z", "2026-11-01T12:00:00Z"),
            ("2026-11-01T12:00:00+02:00", "2026-11-01T10:00:00Z"),
            ("2026-11-01T12:00:00.250Z", "2026-11-01T12:00:00.250Z"),
            ("2026-11-01T12:00:00", "2026-11-01T12:00:00Z"),
            ("2026-11-01 12:00", "2026-11-01T12:00:00Z"),
        ] {
            let spec = TimeSpec::parse("--as-of", text).unwrap();
            assert_eq!(spec.resolve(moment), at(expected), "{text}");
        }
    }

    #[test]
    fn a_bad_time_names_the_flag_and_the_value() {
        for text in ["7x", "d", "7", "-7d", "yesterday", "2026-13-01", "7 d", ""] {
            let error = TimeSpec::parse("--since", text).unwrap_err();
            let message = error.to_string();
            // The caller's mistake: exit code 2.
            assert_eq!(
                crate::cmd::exit::code(&error.into()),
                crate::cmd::exit::USAGE
            );
            assert!(
                message.starts_with(&format!("invalid --since \"{text}\"")),
                "{message}"
            );
        }
        assert_eq!(
            TimeSpec::parse("--since", "7x").unwrap_err().to_string(),
            "invalid --since \"7x\": expected a duration like 7d, 12h, 30m or a timestamp like \
             2026-11-01T00:00:00Z"
        );
        let huge = TimeSpec::parse("--within", "99999999999w").unwrap_err();
        assert!(huge.to_string().contains("100 years"), "{huge}");
    }
}
