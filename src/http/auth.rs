//! Who may do what over HTTP. Tokens live in a file, one per line `NAME ROLE SHA256-HEX`, so
//! the file holds no secret; a request carries `Authorization: Bearer TOKEN`. A `read` token
//! reads; an `admin` token also records and recovers, and its name becomes the event's actor.
//! With no tokens file the server is read-only (and `serve` binds only to loopback).
//!
//! The dashboard's login form stores the token in an HttpOnly, SameSite=Strict cookie
//! ([`COOKIE`]), read when a request has no Authorization header.
//!
//! A write from a browser must come from the server's own pages: a `Sec-Fetch-Site` other than
//! `same-origin`/`none`, or an `Origin` that is not the `Host`, is refused (CSRF).

use std::path::Path;

use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, HOST, ORIGIN};
use axum::http::request::Parts;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ApiContext, Error};
use crate::error::CallerMistake;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, strum::Display, strum::EnumString)]
#[strum(serialize_all = "snake_case")]
pub enum Role {
    /// Every read: pages, reports, history, metrics.
    Read,
    /// Reads, and the writes: record and recover.
    Admin,
}

/// One line of the tokens file.
#[derive(Debug, Clone)]
struct Token {
    /// Who: the actor of the events this token records.
    name: String,
    role: Role,
    /// sha256 of the token: the file never holds the token itself.
    hash: [u8; 32],
}

/// The tokens the server accepts.
#[derive(Debug, Clone, Default)]
pub struct Tokens(Vec<Token>);

/// Why the tokens file could not be used, or why a token cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("reading the tokens file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tokens file {path}, line {line}: {message} (expected NAME ROLE SHA256-HEX)")]
    Line {
        path: String,
        line: usize,
        message: String,
    },
    #[error("tokens file {0} holds no token")]
    Empty(String),
    #[error("invalid token name \"{0}\": 1 to 64 characters, no blanks or control characters")]
    Name(String),
}

impl CallerMistake for TokensError {
    fn is_caller_mistake(&self) -> bool {
        true
    }
}

/// A name is a single word: it is the token file's first field and an event's actor.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= 64
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl Tokens {
    /// Reads a tokens file; blank lines and lines starting with `#` are skipped.
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: shown.clone(),
            source,
        })?;
        let mut tokens = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |message: String| TokensError::Line {
                path: shown.clone(),
                line: index + 1,
                message,
            };
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, role, hash] = fields[..] else {
                return Err(bad(format!("{} fields", fields.len())));
            };
            if !valid_name(name) {
                return Err(bad(format!("invalid name \"{name}\"")));
            }
            let role: Role = role
                .parse()
                .map_err(|_| bad(format!("unknown role \"{role}\" (expected read or admin)")))?;
            let hash: [u8; 32] = hex::decode(hash)
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or_else(|| bad("the hash is not 64 hex digits".into()))?;
            tokens.push(Token {
                name: name.to_string(),
                role,
                hash,
            });
        }
        if tokens.is_empty() {
            return Err(TokensError::Empty(shown));
        }
        Ok(Tokens(tokens))
    }

    /// The token's name and role, comparing its hash with every line in constant time.
    fn find(&self, token: &str) -> Option<(&str, Role)> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for entry in &self.0 {
            if bool::from(entry.hash.ct_eq(&hash)) {
                found = Some((entry.name.as_str(), entry.role));
            }
        }
        found
    }
}

/// A fresh random token for `name` and the tokens-file line that accepts it.
pub fn new_token(name: &str, role: Role) -> Result<(String, String), TokensError> {
    if !valid_name(name) {
        return Err(TokensError::Name(name.to_string()));
    }
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    let line = format!(
        "{name} {role} {}",
        hex::encode(Sha256::digest(token.as_bytes()))
    );
    Ok((token, line))
}

/// The caller of a read: a token's name, or `anonymous` when the server has no tokens.
#[derive(Debug, Clone)]
pub struct Reader {
    pub name: String,
}

/// The caller of a write: an `admin` token's name, on a same-origin request.
#[derive(Debug, Clone)]
pub struct Admin {
    pub name: String,
}

/// The cookie the dashboard's login sets.
pub const COOKIE: &str = "retrylog_token";

/// The token's name and role; `None` when the server has no tokens (read-only).
pub fn authenticate(parts: &Parts, state: &ApiContext) -> Result<Option<(String, Role)>, Error> {
    let Some(tokens) = &state.tokens else {
        return Ok(None);
    };
    let token = match parts.headers.get(AUTHORIZATION) {
        Some(header) => header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| Error::Unauthorized("the Authorization header is not Bearer".into()))?
            .to_string(),
        None => cookie(parts)
            .ok_or_else(|| Error::Unauthorized("missing Authorization: Bearer token".into()))?,
    };
    let (name, role) = tokens
        .find(token.trim())
        .ok_or_else(|| Error::Unauthorized("unknown token".into()))?;
    Ok(Some((name.to_string(), role)))
}

/// The token the login cookie holds, if any.
fn cookie(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then(|| value.to_string())
        })
}

impl Tokens {
    /// The role of `token`, for the login form.
    pub fn role_of(&self, token: &str) -> Option<(String, Role)> {
        self.find(token.trim())
            .map(|(name, role)| (name.to_string(), role))
    }
}

impl FromRequestParts<ApiContext> for Reader {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &ApiContext) -> Result<Self, Error> {
        let name = authenticate(parts, state)?.map_or_else(|| "anonymous".into(), |(n, _)| n);
        Ok(Reader { name })
    }
}

impl FromRequestParts<ApiContext> for Admin {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &ApiContext) -> Result<Self, Error> {
        refuse_cross_site(parts)?;
        match authenticate(parts, state)? {
            None => Err(Error::Forbidden(
                "writes are off: the server has no tokens file (read-only)".into(),
            )),
            Some((name, Role::Admin)) => Ok(Admin { name }),
            Some((name, Role::Read)) => Err(Error::Forbidden(format!(
                "token {name} has the read role; recording and recovering need admin"
            ))),
        }
    }
}

/// Refuses a write a browser sends from another site.
fn refuse_cross_site(parts: &Parts) -> Result<(), Error> {
    let header = |name| {
        parts
            .headers
            .get(name)
            .map(|value| value.to_str().unwrap_or("?"))
    };
    if let Some(site) = header("sec-fetch-site") {
        if !matches!(site, "same-origin" | "none") {
            return Err(Error::Forbidden(format!(
                "cross-site write refused (Sec-Fetch-Site: {site})"
            )));
        }
    }
    if let Some(origin) = header(ORIGIN.as_str()) {
        let origin_host = origin.split_once("://").map(|(_, host)| host);
        if origin_host.is_none() || origin_host != header(HOST.as_str()) {
            return Err(Error::Forbidden(format!(
                "cross-site write refused (Origin: {origin})"
            )));
        }
    }
    Ok(())
}
