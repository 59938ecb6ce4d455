//! Who may do what over HTTP. Tokens live in a file, one per line `NAME ROLE SHA256-HEX`, so
//! the file holds no secret; a request carries `Authorization: Bearer TOKEN`. A `read` token
//! reads; an `admin` token also records and recovers, and its name becomes the event's actor.
//! With no tokens file the server is read-only (and `serve` binds only to loopback).
//!
//! The dashboard's login opens a server-side session (`session.rs`) whose id the cookie holds;
//! a request without an Authorization header is accepted by its session while the session is
//! live and its token is still in the file. The file is reread when it changes (checked at
//! most once a second), so removing a line ends its token's bearer use and its sessions.
//!
//! A write from a browser, the login included, must come from the server's own pages: a
//! `Sec-Fetch-Site` other than `same-origin`/`none`, or an `Origin` that is not the `Host`, is
//! refused (CSRF).

use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, HOST, ORIGIN};
use axum::http::request::Parts;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{session, ApiContext, Error};
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

/// The tokens the server accepts: the file's lines, reread when the file changes.
#[derive(Debug)]
pub struct Tokens {
    /// The tokens file.
    path: PathBuf,
    /// Its lines as last read, and when the file was last looked at.
    loaded: RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    tokens: Vec<Token>,
    /// The file's modification time when it was read.
    modified: Option<SystemTime>,
    /// When the file's modification time was last compared.
    checked: Instant,
}

/// How often a request may make the server look at the tokens file.
const RECHECK: Duration = Duration::from_secs(1);

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
    #[error(
        "invalid token name \"{}\": 1 to 64 characters, no blanks, control, bidi or zero-width \
         characters",
        crate::text::escape(.0, 64)
    )]
    Name(String),
}

impl CallerMistake for TokensError {
    fn is_caller_mistake(&self) -> bool {
        true
    }
}

/// A name is a single word: it is the token file's first field and an event's actor, so it
/// follows the text rule of every actor (no control, bidi or zero-width character).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= 64
        && !name
            .chars()
            .any(|c| c.is_whitespace() || crate::text::is_refused(c))
}

impl Tokens {
    /// Reads a tokens file; blank lines and lines starting with `#` are skipped.
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        let modified = modified(path);
        let tokens = read_tokens(path)?;
        Ok(Tokens {
            path: path.to_path_buf(),
            loaded: RwLock::new(Loaded {
                tokens,
                modified,
                checked: Instant::now(),
            }),
        })
    }

    /// Rereads the file if it changed since it was read (looked at once a second at most).
    /// A file that no longer reads keeps the tokens it had, and says why in the log.
    fn refresh(&self) {
        {
            let loaded = self.loaded.read().expect("never poisoned");
            if loaded.checked.elapsed() < RECHECK {
                return;
            }
        }
        let mut loaded = self.loaded.write().expect("never poisoned");
        if loaded.checked.elapsed() < RECHECK {
            return;
        }
        loaded.checked = Instant::now();
        let modified = modified(&self.path);
        if modified == loaded.modified {
            return;
        }
        match read_tokens(&self.path) {
            Ok(tokens) => {
                tracing::info!(path = %self.path.display(), tokens = tokens.len(), "tokens file reread");
                loaded.tokens = tokens;
                loaded.modified = modified;
            }
            Err(error) => tracing::error!(
                error = format!("{:#}", anyhow::Error::new(error)),
                "the tokens file changed and does not read: keeping the tokens it had"
            ),
        }
    }

    /// The token's name and role, comparing its hash with every line in constant time.
    fn find(&self, token: &str) -> Option<(String, Role)> {
        self.find_hash(&Sha256::digest(token.as_bytes()).into())
    }

    /// The name and role of the token whose sha256 is `hash`, in constant time per line.
    fn find_hash(&self, hash: &[u8; 32]) -> Option<(String, Role)> {
        self.refresh();
        let loaded = self.loaded.read().expect("never poisoned");
        let mut found = None;
        for entry in &loaded.tokens {
            if bool::from(entry.hash.ct_eq(hash)) {
                found = Some((entry.name.clone(), entry.role));
            }
        }
        found
    }
}

/// The file's modification time, if it can be read.
fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
}

/// The lines of a tokens file.
fn read_tokens(path: &Path) -> Result<Vec<Token>, TokensError> {
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
            return Err(bad(format!(
                "invalid name \"{}\"",
                crate::text::escape(name, 64)
            )));
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
    Ok(tokens)
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

/// The token's name and role, from `Authorization: Bearer TOKEN` (the scheme in any case) or
/// else from the session cookie; `None` when the server has no tokens (read-only).
pub async fn authenticate(
    parts: &Parts,
    state: &ApiContext,
) -> Result<Option<(String, Role)>, Error> {
    let Some(tokens) = &state.tokens else {
        return Ok(None);
    };
    if let Some(header) = parts.headers.get(AUTHORIZATION) {
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or_else(|| Error::Unauthorized("the Authorization header is not Bearer".into()))?;
        return tokens
            .find(token)
            .map(Some)
            .ok_or_else(|| Error::Unauthorized("unknown token".into()));
    }
    let id = session::id_of(parts)
        .ok_or_else(|| Error::Unauthorized("missing Authorization: Bearer token".into()))?;
    let token = session::token_of(&state.pool, &id)
        .await?
        .ok_or_else(|| Error::Unauthorized("the session expired or was logged out".into()))?;
    tokens
        .find_hash(&token)
        .map(Some)
        .ok_or_else(|| Error::Unauthorized("the session's token is no longer accepted".into()))
}

impl Tokens {
    /// The name, role and sha256 of `token`, for the login form.
    pub fn login(&self, token: &str) -> Option<(String, Role, [u8; 32])> {
        let hash: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        self.find_hash(&hash).map(|(name, role)| (name, role, hash))
    }
}

impl FromRequestParts<ApiContext> for Reader {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &ApiContext) -> Result<Self, Error> {
        let name = authenticate(parts, state)
            .await?
            .map_or_else(|| "anonymous".into(), |(n, _)| n);
        Ok(Reader { name })
    }
}

impl FromRequestParts<ApiContext> for Admin {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &ApiContext) -> Result<Self, Error> {
        refuse_cross_site(parts)?;
        match authenticate(parts, state).await? {
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
pub fn refuse_cross_site(parts: &Parts) -> Result<(), Error> {
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
