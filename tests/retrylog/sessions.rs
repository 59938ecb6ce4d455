//! The dashboard's logins are server-side sessions: the cookie holds a random id, never the
//! token; logout revokes every copy of it; the expiry is the server's; a restart keeps them;
//! removing a token from the tokens file ends its sessions and its bearer use; a cross-site
//! login or logout is refused; the Bearer scheme is read in any case.

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use retrylog::http::{self, ApiContext, Tokens};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tower::ServiceExt;

use crate::fixtures::*;

/// The router over `pool` with the tokens of the file at `tokens`.
fn router_with(pool: &PgPool, tokens: &Path) -> Router {
    http::app(ApiContext {
        pool: pool.clone(),
        read: None,
        tokens: Some(Arc::new(Tokens::load(tokens).unwrap())),
        steps: retrylog::config::DEFAULT_STEPS.parse().unwrap(),
        base_path: String::new(),
        overview_cache: Default::default(),
        stuck_census: Default::default(),
    })
}

/// A response's status, its `Set-Cookie`, its `Location` and its body.
struct Answer {
    status: StatusCode,
    set_cookie: Option<String>,
    location: Option<String>,
    body: String,
}

async fn send(router: &Router, request: Request<Body>) -> Answer {
    let response = router.clone().oneshot(request).await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|value| value.to_str().unwrap().to_string())
    };
    let (set_cookie, location) = (header("set-cookie"), header("location"));
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        set_cookie,
        location,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// `POST /login` with `token`, from the dashboard's own page unless `headers` say otherwise.
async fn login(router: &Router, token: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = Request::post("/login")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("host", "retrylog.test");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(
        router,
        request.body(Body::from(format!("token={token}"))).unwrap(),
    )
    .await
}

/// A GET with `cookie` (`retrylog_session=…`) and nothing else.
async fn get_with_cookie(router: &Router, uri: &str, cookie: &str) -> Answer {
    let request = Request::get(uri)
        .header("cookie", cookie)
        .body(Body::empty());
    send(router, request.unwrap()).await
}

/// The `name=value` of a `Set-Cookie`.
fn cookie_of(answer: &Answer) -> String {
    let set = answer.set_cookie.as_deref().expect("a Set-Cookie");
    set.split(';').next().unwrap().to_string()
}

async fn sessions(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM retrylog_http_session")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn a_login_opens_a_session_whose_cookie_holds_a_random_id_not_the_token(pool: PgPool) {
    migrated(&pool).await;
    let app = router(&pool, true);

    let answer = login(&app, ADMIN, &[("sec-fetch-site", "same-origin")]).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    let set = answer.set_cookie.clone().unwrap();
    let id = cookie_of(&answer)
        .strip_prefix("retrylog_session=")
        .unwrap()
        .to_string();
    assert_eq!(id.len(), 64);
    assert!(!set.contains(ADMIN), "{set}");
    assert_eq!(
        set,
        format!("retrylog_session={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age=43200")
    );
    // The table holds the id's hash and the token's name and hash, never the id or the token.
    let (id_hash, name, token_hash, lifetime): (Vec<u8>, String, Vec<u8>, f64) = sqlx::query_as(
        "SELECT id_hash, token_name, token_hash,
                    extract(epoch FROM expires_at - created_at)::float8
               FROM retrylog_http_session",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(id_hash, Sha256::digest(id.as_bytes()).to_vec());
    assert_eq!(name, "ops-alice");
    assert_eq!(token_hash, Sha256::digest(ADMIN.as_bytes()).to_vec());
    assert_eq!(lifetime, 43200.0);
    let row: String = sqlx::query_scalar("SELECT to_jsonb(s)::text FROM retrylog_http_session s")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!row.contains(&id) && !row.contains(ADMIN), "{row}");

    // Behind a TLS proxy that says so, the cookie is Secure.
    let answer = login(&app, ADMIN, &[("x-forwarded-proto", "https")]).await;
    assert!(answer
        .set_cookie
        .unwrap()
        .ends_with("; Max-Age=43200; Secure"));
}

#[sqlx::test(migrations = false)]
async fn logout_revokes_every_copy_of_the_cookie_for_pages_and_api(pool: PgPool) {
    pipeline(&pool).await;
    let app = router(&pool, true);
    let cookie = cookie_of(&login(&app, ADMIN, &[]).await);
    let copy = cookie.clone();

    assert_eq!(
        get_with_cookie(&app, "/", &cookie).await.status,
        StatusCode::OK
    );
    let api = get_with_cookie(&app, "/api/v1/reports/stats", &cookie).await;
    assert_eq!(api.status, StatusCode::OK, "{}", api.body);

    let request = Request::post("/logout")
        .header("cookie", &cookie)
        .body(Body::empty())
        .unwrap();
    let out = send(&app, request).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(out.location.as_deref(), Some("/login"));
    assert!(out.set_cookie.unwrap().starts_with("retrylog_session=; "));

    // The copy a thief kept opens nothing any more.
    let page = get_with_cookie(&app, "/", &copy).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location.as_deref(), Some("/login"));
    let api = get_with_cookie(&app, "/api/v1/reports/stats", &copy).await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED);
    assert!(
        api.body.contains("the session expired or was logged out"),
        "{}",
        api.body
    );
}

#[sqlx::test(migrations = false)]
async fn a_session_survives_a_restart_and_ends_at_the_servers_expiry(pool: PgPool) {
    pipeline(&pool).await;
    let cookie = cookie_of(&login(&router(&pool, true), READER, &[]).await);

    // Another router over the same database: another instance, or serve restarted.
    let restarted = router(&pool, true);
    assert_eq!(
        get_with_cookie(&restarted, "/", &cookie).await.status,
        StatusCode::OK
    );
    sqlx::query("UPDATE retrylog_http_session SET expires_at = now() - interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();
    let api = get_with_cookie(&restarted, "/api/v1/reports/stats", &cookie).await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED);
}

#[sqlx::test(migrations = false)]
async fn removing_a_token_from_the_file_ends_its_sessions_and_its_bearer_use(pool: PgPool) {
    pipeline(&pool).await;
    let file = tokens_file();
    let app = router_with(&pool, &file);
    let reader = cookie_of(&login(&app, READER, &[]).await);
    let admin = cookie_of(&login(&app, ADMIN, &[]).await);
    let bearer = |token: &str| {
        Request::get("/api/v1/reports/stats")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(send(&app, bearer(READER)).await.status, StatusCode::OK);

    // The reader's line goes; the server looks at the file again within a second.
    let text = std::fs::read_to_string(&file).unwrap();
    let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("viewer ")).collect();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    std::fs::write(&file, kept.join("\n") + "\n").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    let refused = get_with_cookie(&app, "/api/v1/reports/stats", &reader).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(refused
        .body
        .contains("the session's token is no longer accepted"));
    assert_eq!(
        send(&app, bearer(READER)).await.status,
        StatusCode::UNAUTHORIZED
    );
    // The admin's line stayed, and so did its session.
    assert_eq!(
        get_with_cookie(&app, "/", &admin).await.status,
        StatusCode::OK
    );
    assert_eq!(send(&app, bearer(ADMIN)).await.status, StatusCode::OK);
}

#[sqlx::test(migrations = false)]
async fn a_cross_site_login_or_logout_is_refused_and_opens_no_session(pool: PgPool) {
    migrated(&pool).await;
    let app = router(&pool, true);
    for headers in [
        &[("sec-fetch-site", "cross-site")][..],
        &[("sec-fetch-site", "same-site")],
        &[("origin", "https://attacker.example")],
    ] {
        let answer = login(&app, ADMIN, headers).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{headers:?}");
        assert!(answer.set_cookie.is_none(), "{headers:?}");
        assert!(
            answer.body.contains("cross-site write refused"),
            "{}",
            answer.body
        );
    }
    assert_eq!(sessions(&pool).await, 0);
    // The dashboard's own form (same origin, or a browser that sends neither header) logs in.
    for headers in [
        &[
            ("sec-fetch-site", "same-origin"),
            ("origin", "http://retrylog.test"),
        ][..],
        &[("sec-fetch-site", "none")],
        &[],
    ] {
        let answer = login(&app, ADMIN, headers).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{headers:?}");
    }
    assert_eq!(sessions(&pool).await, 3);

    let cookie = cookie_of(&login(&app, ADMIN, &[]).await);
    let request = Request::post("/logout")
        .header("cookie", &cookie)
        .header("sec-fetch-site", "cross-site")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, request).await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        get_with_cookie(&app, "/", &cookie).await.status,
        StatusCode::OK
    );
}

#[sqlx::test(migrations = false)]
async fn the_bearer_scheme_is_read_in_any_case_and_no_other_scheme_is(pool: PgPool) {
    pipeline(&pool).await;
    let app = router(&pool, true);
    for (header, status) in [
        (format!("Bearer {READER}"), StatusCode::OK),
        (format!("bearer {READER}"), StatusCode::OK),
        (format!("BEARER  {READER}"), StatusCode::OK),
        (format!("Basic {READER}"), StatusCode::UNAUTHORIZED),
        (READER.to_string(), StatusCode::UNAUTHORIZED),
        ("Bearer not-a-token".to_string(), StatusCode::UNAUTHORIZED),
    ] {
        let request = Request::get("/api/v1/reports/stats")
            .header("authorization", &header)
            .body(Body::empty())
            .unwrap();
        assert_eq!(send(&app, request).await.status, status, "{header}");
    }
}
