//! The one duration grammar of every flag that takes a length of time: the watchdog's
//! `--stuck-after` and `--sweep-every` ([`config`](crate::config)), `demo --duration`, and the
//! durations back of the readers' `--since`, `--until`, `--within` and `--as-of`
//! ([`window`](crate::window)). Around the flow (retry → store → projector → report/http):
//! it only turns what a user typed into a `Duration`.
//!
//! A duration is one or more parts, each a whole number and a unit, largest first or not,
//! without spaces: `500ms`, `90s`, `5m`, `1h30m`, `12h`, `7d`, `2w`, `1d12h`. The units are `ms`,
//! `s`, `m` (minutes), `h`, `d` (24 hours) and `w` (7 days). Months and years are not units:
//! their length varies, so `2y` is refused with a hint to write days or weeks. docs/queries.md
//! ("Durations and times") documents this grammar, once.

use std::time::Duration;

/// The units, longest spelling first so that `ms` is not read as `m` followed by `s`.
const UNITS: &[(&str, u64)] = &[
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
    ("w", 604_800_000),
];

/// What is wrong with a duration a user wrote; the message names the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not the grammar: a missing number or unit, an unknown unit, spaces, a sign.
    #[error(
        "invalid duration \"{0}\": write a number and a unit (ms, s, m, h, d, w), e.g. 500ms, \
         90s, 1h30m, 7d"
    )]
    Invalid(String),
    /// `y` or `M`: units whose length varies.
    #[error(
        "invalid duration \"{0}\": months and years vary in length; write days or weeks, e.g. \
         90d, 104w"
    )]
    CalendarUnit(String),
    /// More than the millisecond count fits (about 584 million years).
    #[error("invalid duration \"{0}\": too long")]
    TooLong(String),
}

/// Parses a duration of the grammar in the module docs (surrounding whitespace is ignored).
/// Zero (`0s`) is a duration; callers that need a positive one say so themselves.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let trimmed = text.trim();
    let invalid = || DurationError::Invalid(text.to_string());
    if trimmed.is_empty() {
        return Err(invalid());
    }
    let mut rest = trimmed;
    let mut millis: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(invalid());
        }
        let amount: u64 = rest[..digits]
            .parse()
            .map_err(|_| DurationError::TooLong(text.to_string()))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        let Some((_, unit_millis)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(if matches!(unit, "y" | "M" | "mo") {
                DurationError::CalendarUnit(text.to_string())
            } else {
                invalid()
            });
        };
        rest = &rest[unit_len..];
        millis = amount
            .checked_mul(*unit_millis)
            .and_then(|part| millis.checked_add(part))
            .ok_or_else(|| DurationError::TooLong(text.to_string()))?;
    }
    Ok(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_and_their_sums_read_as_written() {
        for (text, millis) in [
            ("500ms", 500),
            ("90s", 90_000),
            ("5m", 300_000),
            ("1h30m", 5_400_000),
            ("12h", 43_200_000),
            ("7d", 604_800_000),
            ("2w", 1_209_600_000),
            ("1d12h", 129_600_000),
            ("1m30s500ms", 90_500),
            (" 30s ", 30_000),
            ("0s", 0),
        ] {
            assert_eq!(parse(text), Ok(Duration::from_millis(millis)), "{text}");
        }
    }

    #[test]
    fn anything_else_is_refused_naming_the_text() {
        for text in [
            "",
            "7",
            "d",
            "7x",
            "-7d",
            "7 d",
            "1h 30m",
            "1.5h",
            "h1",
            "5 parsecs",
        ] {
            let error = parse(text).unwrap_err();
            assert_eq!(error, DurationError::Invalid(text.to_string()), "{text}");
            assert!(error.to_string().contains(&format!("\"{text}\"")));
        }
        assert_eq!(parse("2y"), Err(DurationError::CalendarUnit("2y".into())));
        assert_eq!(
            parse("99999999999999w"),
            Err(DurationError::TooLong("99999999999999w".into()))
        );
    }
}
