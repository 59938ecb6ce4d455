//! `GET|POST /login`, `POST /logout`: the dashboard's token form. A valid token opens a
//! server-side session (`http/session.rs`) whose id the cookie holds — HttpOnly, SameSite=
//! Strict, scoped to the dashboard's path — and logout revokes it. Both posts follow the
//! cross-site rule of every write: another site can neither log a browser into its own
//! identity nor out.

use askama::Template;
use axum::extract::{Form, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::{render, Chrome, Viewer};
use crate::http::auth::refuse_cross_site;
use crate::http::{session, ApiContext, Error};

#[derive(Template)]
#[template(path = "login.html")]
struct Page {
    page: Chrome,
    message: String,
}

fn anonymous() -> Viewer {
    Viewer {
        name: None,
        admin: false,
    }
}

pub async fn form(State(ctx): State<ApiContext>) -> Response {
    let message = if ctx.tokens.is_none() {
        "This server has no tokens file: the dashboard is read-only and needs no login."
    } else {
        ""
    };
    let page = Page {
        page: Chrome::new(&ctx, &anonymous(), "Log in"),
        message: message.into(),
    };
    render(&page).into_response()
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    token: String,
}

pub async fn login(
    State(ctx): State<ApiContext>,
    parts: Parts,
    Form(form): Form<LoginForm>,
) -> Response {
    if let Err(refused) = refuse_cross_site(&parts) {
        return refusal(&ctx, StatusCode::FORBIDDEN, &refused.to_string());
    }
    let known = ctx
        .tokens
        .as_ref()
        .and_then(|tokens| tokens.login(&form.token));
    let Some((name, _, token_hash)) = known else {
        return refusal(&ctx, StatusCode::UNAUTHORIZED, "Unknown token.");
    };
    let id = match session::open(&ctx.pool, &name, &token_hash).await {
        Ok(id) => id,
        Err(error) => return Error::from(error).into_response(),
    };
    (
        [(
            header::SET_COOKIE,
            session::set_cookie(&parts, &cookie_path(&ctx), Some(&id)),
        )],
        Redirect::to(&format!("{}/", ctx.base_path)),
    )
        .into_response()
}

/// The login form again, with why the login was refused.
fn refusal(ctx: &ApiContext, status: StatusCode, message: &str) -> Response {
    let page = Page {
        page: Chrome::new(ctx, &anonymous(), "Log in"),
        message: message.into(),
    };
    (status, render(&page)).into_response()
}

/// Revokes the session (every copy of its cookie stops working) and clears the cookie.
pub async fn logout(State(ctx): State<ApiContext>, parts: Parts) -> Response {
    if let Err(refused) = refuse_cross_site(&parts) {
        return refused.into_response();
    }
    if let Some(id) = session::id_of(&parts) {
        if let Err(error) = session::revoke(&ctx.pool, &id).await {
            return Error::from(error).into_response();
        }
    }
    (
        [(
            header::SET_COOKIE,
            session::set_cookie(&parts, &cookie_path(&ctx), None),
        )],
        Redirect::to(&format!("{}/login", ctx.base_path)),
    )
        .into_response()
}

fn cookie_path(ctx: &ApiContext) -> String {
    if ctx.base_path.is_empty() {
        "/".into()
    } else {
        ctx.base_path.clone()
    }
}
