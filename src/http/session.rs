//! The dashboard's logins, as server-side sessions in `retrylog_http_session` (migration
//! 0013): the cookie holds a random session id, the table its sha256, the token it stands for,
//! its expiry and its revocation — so logout revokes it for every copy of the cookie, the
//! expiry is the server's, every `serve` instance agrees and a restart keeps them.

use axum::http::request::Parts;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

/// The cookie a login sets.
pub const COOKIE: &str = "retrylog_session";

/// How long a session lasts: a working day.
pub const LIFETIME_SECONDS: u32 = 12 * 3600;

/// Opens a session for the token `token_name` (whose sha256 is `token_hash`); returns its id,
/// the cookie's value. Sessions expired for a day are deleted on the way.
pub async fn open(
    pool: &PgPool,
    token_name: &str,
    token_hash: &[u8; 32],
) -> Result<String, sqlx::Error> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let id = hex::encode(bytes);
    // A transaction of its own, committed before the cookie is set: behind a transaction
    // pooler a lone statement would commit only as its connection goes back to the pool.
    let mut tx = pool.begin().await?;
    sqlx::query(
        "WITH gone AS (DELETE FROM retrylog_http_session
                        WHERE expires_at < now() - interval '1 day')
         INSERT INTO retrylog_http_session (id_hash, token_name, token_hash, expires_at)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
    )
    .bind(&hash(&id)[..])
    .bind(token_name)
    .bind(&token_hash[..])
    .bind(f64::from(LIFETIME_SECONDS))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// The sha256 of the token the session `id` stands for, if it is neither expired nor revoked.
pub async fn token_of(pool: &PgPool, id: &str) -> Result<Option<[u8; 32]>, sqlx::Error> {
    let token: Option<Vec<u8>> = sqlx::query_scalar(
        "SELECT token_hash FROM retrylog_http_session
          WHERE id_hash = $1 AND revoked_at IS NULL AND expires_at > now()",
    )
    .bind(&hash(id)[..])
    .fetch_optional(pool)
    .await?;
    Ok(token.and_then(|bytes| bytes.try_into().ok()))
}

/// Revokes the session `id` (logout); a revoked or unknown one is left as it is.
pub async fn revoke(pool: &PgPool, id: &str) -> Result<(), sqlx::Error> {
    // Committed before the answer, as a login is (see `open`).
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE retrylog_http_session SET revoked_at = now()
          WHERE id_hash = $1 AND revoked_at IS NULL",
    )
    .bind(&hash(id)[..])
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The session id the request's cookie holds, if any.
pub fn id_of(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE && !value.is_empty()).then(|| value.to_string())
        })
}

/// The `Set-Cookie` value that holds `id` (or, with `None`, clears the cookie): HttpOnly, so
/// no script reads it; SameSite=Strict, so no other site's request carries it; scoped to the
/// dashboard's `path`; Secure when the request came over TLS through a proxy that says so
/// (`X-Forwarded-Proto: https`: `serve` itself speaks plain HTTP).
pub fn set_cookie(parts: &Parts, path: &str, id: Option<&str>) -> String {
    let secure = parts
        .headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"));
    let (value, max_age) = match id {
        Some(id) => (id, LIFETIME_SECONDS),
        None => ("", 0),
    };
    format!(
        "{COOKIE}={value}; HttpOnly; SameSite=Strict; Path={path}; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    )
}

fn hash(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}
