//! The API's query parameters are the CLI's flags: `?as_of=2h&limit=5` is parsed by the same
//! clap `*Args` as `--as-of 2h --limit 5`, so a parameter, its default and its validation
//! cannot differ between the two doors.
//!
//! The messages can, and do: the API names its query parameters and JSON keys, never a flag.
//! clap's refusals are told again from their parts ([`in_parameter_terms`]: `invalid value '0'
//! for 'limit'`, not `for '--limit <LIMIT>'`), and every other message the library writes in
//! the CLI's terms has each `--flag-name` read as `flag_name` on its way out
//! ([`parameter_terms`]): every parameter and JSON key of the API is its flag's name with `_`
//! for `-` (`--as-of` is `as_of`, `--variant-id` is `variant_id`).

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, FromArgMatches};

use super::Error;

/// Flags the API fixes itself: it always answers JSON, in the response.
const NOT_PARAMETERS: &[&str] = &["format", "output"];

/// Why parameters could not be read as flags: the API's message, and for a page's form the
/// parameter, the value and what is wrong with it, when clap says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The API's message (`invalid value '0' for 'limit': …`).
    pub message: String,
    /// The parameter refused, when one is.
    pub parameter: Option<String>,
    /// What is wrong with its value, in a form's terms (`"year" is not one of hour, day,
    /// week`); `None` when the parameter itself is (unknown, repeated).
    pub problem: Option<String>,
}

impl From<Refusal> for Error {
    fn from(refusal: Refusal) -> Self {
        Error::BadRequest(refusal.message)
    }
}

/// Parses `params` as the flags of `A` (`as_of` → `--as-of`).
pub fn parse<A: Args + FromArgMatches>(params: &[(String, String)]) -> Result<A, Error> {
    Ok(try_parse(params)?)
}

/// [`parse`], saying which parameter was refused and why: for a page, which shows the
/// refusal beside the field.
pub fn try_parse<A: Args + FromArgMatches>(params: &[(String, String)]) -> Result<A, Refusal> {
    let mut args = Vec::with_capacity(params.len());
    for (name, value) in params {
        if NOT_PARAMETERS.contains(&name.as_str()) || name.starts_with('-') {
            return Err(Refusal {
                message: format!("unknown parameter \"{name}\""),
                parameter: Some(name.clone()),
                problem: None,
            });
        }
        // A NUL can come only through a URL (a command line cannot hold one), and PostgreSQL
        // refuses it in every text it is given: the parameter's mistake, said as such.
        if value.contains('\0') {
            return Err(Refusal {
                message: format!("invalid {name}: it holds a NUL character (%00)"),
                parameter: Some(name.clone()),
                problem: None,
            });
        }
        // `--name=value`: a value starting with '-' stays a value.
        args.push(format!("--{}={value}", name.replace('_', "-")));
    }
    // No --help: `?help=1` is an unknown parameter like any other. Built, so that its flags
    // can be shown as clap's messages show them.
    let mut command = A::augment_args(
        clap::Command::new("api")
            .no_binary_name(true)
            .disable_help_flag(true),
    );
    command.build();
    let refusal = |error: clap::Error| Refusal {
        message: in_parameter_terms(&error, &command),
        parameter: parameters(error.get(ContextKind::InvalidArg))
            .into_iter()
            .next(),
        problem: value_problem(&error),
    };
    let matches = command
        .clone()
        .try_get_matches_from(args)
        .map_err(refusal)?;
    A::from_arg_matches(&matches).map_err(refusal)
}

/// What is wrong with the value clap refused, in a form's terms: `"year" is not one of hour,
/// day, week`, `"0" is not in 1..2147483647`; `None` when clap refused no value.
fn value_problem(error: &clap::Error) -> Option<String> {
    let Some(ContextValue::String(value)) = error.get(ContextKind::InvalidValue) else {
        return None;
    };
    let shown = crate::text::escape(value, 40);
    if let Some(ContextValue::Strings(valid)) = error.get(ContextKind::ValidValue) {
        return Some(format!("\"{shown}\" is not one of {}", valid.join(", ")));
    }
    let why = std::error::Error::source(error)
        .map(|source| source.to_string())
        .unwrap_or_else(|| "is not valid".into());
    // A validator's message often starts with the value (`0 is not in 1..=2147483647`); a
    // range open above reads as a lower bound.
    let Some(rest) = why.strip_prefix(value.as_str()) else {
        return Some(format!("\"{shown}\" is not valid: {why}"));
    };
    let lower_bound = rest
        .strip_prefix(" is not in ")
        .and_then(|range| range.split_once(".."))
        .filter(|(_, upper)| {
            let upper = upper.trim_start_matches('=');
            [
                i32::MAX.to_string(),
                i64::MAX.to_string(),
                u32::MAX.to_string(),
            ]
            .iter()
            .any(|max| max == upper)
        })
        .map(|(lower, _)| lower.to_string());
    Some(match lower_bound {
        Some(lower) => format!("\"{shown}\" is less than {lower}"),
        None => format!("\"{shown}\"{rest}"),
    })
}

/// A flag as clap names it (`--limit <LIMIT>`, `--non-empty`) as the parameter (`limit`).
fn parameter(flag: &str) -> String {
    flag.trim_start_matches('-')
        .split([' ', '='])
        .next()
        .unwrap_or_default()
        .replace('-', "_")
}

/// The flags a context value of clap's error names, as parameters.
fn parameters(value: Option<&ContextValue>) -> Vec<String> {
    match value {
        Some(ContextValue::String(flag)) => vec![parameter(flag)],
        Some(ContextValue::Strings(flags)) => flags.iter().map(|flag| parameter(flag)).collect(),
        _ => Vec::new(),
    }
}

/// clap's refusal of the flags `command` took, in the API's terms: the parameters named as
/// such, on one line, without clap's usage and tips.
pub fn in_parameter_terms(error: &clap::Error, command: &clap::Command) -> String {
    match error.kind() {
        ErrorKind::UnknownArgument => {
            let given = parameters(error.get(ContextKind::InvalidArg)).join(", ");
            let similar = parameters(error.get(ContextKind::SuggestedArg));
            match similar.first() {
                Some(similar) => {
                    format!("unknown parameter \"{given}\" (a similar one exists: {similar})")
                }
                None => format!("unknown parameter \"{given}\""),
            }
        }
        ErrorKind::MissingRequiredArgument => {
            let missing = parameters(error.get(ContextKind::InvalidArg));
            format!("missing parameter: {}", missing.join(", "))
        }
        _ => {
            // clap's first paragraph, then each flag it names (as clap shows it, quoted:
            // `'--limit <LIMIT>'`) as its parameter. Only those: the value quoted beside it is
            // the caller's and stays as sent (`invalid value '--x' for 'bucket'`).
            let text = error.render().to_string();
            let mut line = text
                .lines()
                .take_while(|line| !line.trim().is_empty())
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ");
            line = line
                .strip_prefix("error: ")
                .map(str::to_string)
                .unwrap_or(line);
            let mut shown: Vec<(String, String)> = command
                .get_arguments()
                .filter(|arg| arg.get_long().is_some())
                .map(|arg| (arg.to_string(), parameter(&arg.to_string())))
                .collect();
            // `--since <WHEN>` before `--since`.
            shown.sort_by_key(|(flag, _)| std::cmp::Reverse(flag.len()));
            for (flag, parameter) in shown {
                line = line.replace(&format!("'{flag}'"), &format!("'{parameter}'"));
            }
            line.replace("the argument '", "the parameter '")
        }
    }
}

/// `text` with each `--flag-name` read as the parameter or key `flag_name`, except inside a
/// quoted value (`"…"`, which may hold anything a caller sent) and inside backquotes (a
/// command quoted as it is typed).
pub fn parameter_terms(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let (mut quoted, mut backquoted) = (false, false);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' if quoted => {
                out.push(c);
                if let Some(next) = chars.get(i + 1) {
                    out.push(*next);
                }
                i += 2;
                continue;
            }
            '"' if !backquoted => quoted = !quoted,
            '`' if !quoted => backquoted = !backquoted,
            '-' if !quoted
                && !backquoted
                && chars.get(i + 1) == Some(&'-')
                && chars.get(i + 2).is_some_and(|c| c.is_ascii_lowercase())
                && (i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '-')) =>
            {
                let mut end = i + 2;
                while end < chars.len() && (chars[end].is_ascii_alphanumeric() || chars[end] == '-')
                {
                    end += 1;
                }
                let name: String = chars[i + 2..end].iter().collect();
                out.push_str(&name.replace('-', "_"));
                i = end;
                continue;
            }
            _ => {}
        }
        out.push(c);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_read_as_parameters_but_not_in_quoted_values_or_commands() {
        for (cli, api) in [
            (
                "invalid --since \"7x\": expected a duration",
                "invalid since \"7x\": expected a duration",
            ),
            (
                "a recovery needs a note saying why (--note): it is empty",
                "a recovery needs a note saying why (note): it is empty",
            ),
            (
                "0a00 is a job, not a variant: use --job-id",
                "0a00 is a job, not a variant: use job_id",
            ),
            (
                "--since 2026-02-01 is after --until 2026-01-01",
                "since 2026-02-01 is after until 2026-01-01",
            ),
            (
                "unknown step \"--not-a-flag\" (see `retrylog history --step`)",
                "unknown step \"--not-a-flag\" (see `retrylog history --step`)",
            ),
            (
                "quoted \"a \\\" --b\" then --c-d",
                "quoted \"a \\\" --b\" then c_d",
            ),
            ("a range 1--2 and x--y stay", "a range 1--2 and x--y stay"),
        ] {
            assert_eq!(parameter_terms(cli), api, "{cli}");
        }
    }

    /// clap's refusal of `params` as `report top-jobs`' and `history`'s flags.
    fn refusal(params: &[(&str, &str)], history: bool) -> String {
        let params: Vec<(String, String)> = params
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        let error = if history {
            parse::<crate::cli::HistoryArgs>(&params).map(|_| ())
        } else {
            parse::<crate::cli::TopJobsArgs>(&params).map(|_| ())
        };
        match error {
            Err(Error::BadRequest(message)) => message,
            other => panic!("{params:?}: {other:?}"),
        }
    }

    #[test]
    fn clap_refusals_name_the_parameters_not_the_flags() {
        assert_eq!(
            refusal(&[("limit", "0")], false),
            "invalid value '0' for 'limit': 0 is not in 1..9223372036854775807"
        );
        assert_eq!(
            refusal(&[("limt", "3")], false),
            "unknown parameter \"limt\" (a similar one exists: limit)"
        );
        assert_eq!(
            refusal(&[("help", "1")], false),
            "unknown parameter \"help\""
        );
        assert_eq!(
            refusal(&[("limit", "1"), ("limit", "2")], false),
            "the parameter 'limit' cannot be used multiple times"
        );
        // The caller's value stays as sent, flag-like or not.
        let value = refusal(&[("reason", "--stuck")], true);
        assert!(
            value.starts_with("invalid value '--stuck' for 'reason'"),
            "{value}"
        );
        let both = refusal(
            &[
                ("job_id", "0a000000-0000-4000-8000-000000000000"),
                ("variant_id", "0a000000-0000-4000-8000-000000000002"),
            ],
            true,
        );
        assert_eq!(
            both,
            "the parameter 'job_id' cannot be used with 'variant_id'"
        );
        assert_eq!(refusal(&[], true), "missing parameter: job_id");
        let bad = refusal(&[("reason", "bored")], true);
        assert!(
            bad.starts_with("invalid value 'bored' for 'reason'"),
            "{bad}"
        );
        assert!(!bad.contains("--"), "{bad}");
    }
}
