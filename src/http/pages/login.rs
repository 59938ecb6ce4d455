//! `GET|POST /login`, `POST /logout`: the dashboard's token form. A valid token is kept in an
//! HttpOnly, SameSite=Strict cookie scoped to the dashboard's path, so scripts cannot read it
//! and no other site's request carries it.

use askama::Template;
use axum::extract::{Form, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::{render, Chrome, Viewer};
use crate::http::auth::COOKIE;
use crate::http::ApiContext;

/// How long the cookie lasts: a working day.
const COOKIE_SECONDS: u32 = 12 * 3600;

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

pub async fn login(State(ctx): State<ApiContext>, Form(form): Form<LoginForm>) -> Response {
    let known = ctx
        .tokens
        .as_ref()
        .and_then(|tokens| tokens.role_of(&form.token));
    if known.is_none() {
        let page = Page {
            page: Chrome::new(&ctx, &anonymous(), "Log in"),
            message: "Unknown token.".into(),
        };
        return (StatusCode::UNAUTHORIZED, render(&page)).into_response();
    }
    let path = cookie_path(&ctx);
    let cookie = format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path={path}; Max-Age={COOKIE_SECONDS}",
        form.token.trim()
    );
    (
        [(header::SET_COOKIE, cookie)],
        Redirect::to(&format!("{}/", ctx.base_path)),
    )
        .into_response()
}

pub async fn logout(State(ctx): State<ApiContext>) -> Response {
    let cookie = format!(
        "{COOKIE}=; HttpOnly; SameSite=Strict; Path={}; Max-Age=0",
        cookie_path(&ctx)
    );
    (
        [(header::SET_COOKIE, cookie)],
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
