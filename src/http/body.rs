//! Request bodies: JSON objects whose keys are the CLI's flags; a malformed body is a 400 that
//! says what is wrong (not axum's 422).

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::Error;

/// The body as `T`, or a 400 naming the problem.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes)
        .map_err(|error| Error::BadRequest(format!("invalid request body: {error}")))
}

/// A `detail`, checked as `--detail` is: a JSON object without NUL characters.
pub fn detail(value: Value) -> Result<Value, Error> {
    crate::cli::parse_detail(&value.to_string()).map_err(Error::BadRequest)
}
