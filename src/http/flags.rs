//! The API's query parameters are the CLI's flags: `?as_of=2h&limit=5` is parsed by the same
//! clap `*Args` as `--as-of 2h --limit 5`, so a parameter, its default, its validation and its
//! message cannot differ between the two doors.

use clap::{Args, FromArgMatches};

use super::Error;

/// Flags the API fixes itself: it always answers JSON, in the response.
const NOT_PARAMETERS: &[&str] = &["format", "output"];

/// Parses `params` as the flags of `A` (`as_of` → `--as-of`).
pub fn parse<A: Args + FromArgMatches>(params: &[(String, String)]) -> Result<A, Error> {
    let mut args = Vec::with_capacity(params.len());
    for (name, value) in params {
        if NOT_PARAMETERS.contains(&name.as_str()) || name.starts_with('-') {
            return Err(Error::BadRequest(format!("unknown parameter \"{name}\"")));
        }
        // `--name=value`: a value starting with '-' stays a value.
        args.push(format!("--{}={value}", name.replace('_', "-")));
    }
    let command = A::augment_args(clap::Command::new("api").no_binary_name(true));
    let matches = command
        .try_get_matches_from(args)
        .map_err(|error| Error::BadRequest(first_line(&error)))?;
    A::from_arg_matches(&matches).map_err(|error| Error::BadRequest(first_line(&error)))
}

/// clap's message without its `error: ` prefix and usage lines.
fn first_line(error: &clap::Error) -> String {
    let text = error.render().to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}
