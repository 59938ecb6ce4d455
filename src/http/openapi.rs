//! `GET /api/v1/openapi.json`: the API described (hand-written in `openapi.json`, next to this
//! file). The suite checks that every documented path answers and every route is documented.

use axum::http::header;
use axum::response::IntoResponse;

/// The document, embedded in the binary.
pub const DOCUMENT: &str = include_str!("openapi.json");

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}
