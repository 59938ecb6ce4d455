//! Request bodies: JSON objects whose keys are the CLI's flags, declared JSON by their
//! `Content-Type` (415 otherwise); a malformed body is a 400 that says what is wrong (not
//! axum's 422).

use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderMap;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::Error;

/// The body as `T`: a 415 unless `headers` declare it JSON, a 400 naming the problem unless
/// it is the JSON `T` expects.
pub fn parse<T: DeserializeOwned>(headers: &HeaderMap, bytes: &[u8]) -> Result<T, Error> {
    require_json(headers)?;
    serde_json::from_slice(bytes)
        .map_err(|error| Error::BadRequest(format!("invalid request body: {error}")))
}

/// A write's body must say it is JSON: `application/json`, with at most the parameter
/// `charset=utf-8` (JSON is UTF-8). `text/plain`, a form or no type at all is refused: a
/// client that sends one did not mean this API, and those are the types a cross-site HTML
/// form can send without asking.
fn require_json(headers: &HeaderMap) -> Result<(), Error> {
    let given = match headers.get(CONTENT_TYPE).map(|value| value.to_str()) {
        None => "none".to_string(),
        Some(Ok(text)) if is_json(text) => return Ok(()),
        Some(Ok(text)) => format!("\"{}\"", crate::text::escape(text, 100)),
        Some(Err(_)) => "a value that is not text".to_string(),
    };
    Err(Error::UnsupportedMediaType(format!(
        "the request body must be JSON with Content-Type: application/json (charset utf-8, if \
         any); got {given}"
    )))
}

/// Whether a `Content-Type` is `application/json`, with no parameter but `charset=utf-8`
/// (the names and values in any case, the charset quoted or not).
fn is_json(content_type: &str) -> bool {
    let mut parts = content_type.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
        && parts.map(str::trim).all(|parameter| {
            parameter.is_empty()
                || parameter.split_once('=').is_some_and(|(name, value)| {
                    name.trim().eq_ignore_ascii_case("charset")
                        && value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
                })
        })
}

/// A `detail`, checked as `--detail` is: a JSON object without NUL characters.
pub fn detail(value: Value) -> Result<Value, Error> {
    crate::cli::parse_detail(&value.to_string()).map_err(Error::BadRequest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_application_json_in_utf_8_is_json() {
        for json in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON;charset=\"UTF-8\"",
            "application/json;",
        ] {
            assert!(is_json(json), "{json}");
        }
        for other in [
            "",
            "text/plain",
            "text/plain; charset=utf-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonp",
            "application/json; charset=latin1",
            "application/json; boundary=x",
            "application/merge-patch+json",
        ] {
            assert!(!is_json(other), "{other}");
        }
    }
}
