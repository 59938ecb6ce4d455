//! The dashboard in a real browser: headless Chromium driven through chromedriver (WebDriver,
//! `fantoccini`), against the router served on a free port. The overview with data and a drawn
//! chart; a retry recorded through SQL showing up without a reload; filters in the URL, and a
//! bad one refused beside its field; the Recover flow as an admin and its refusal for a read
//! token; dark mode; no console errors.
//!
//! `RETRYLOG_SCREENSHOTS=1` also saves the README's pictures under docs/screenshots/.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use retrylog::http::{self, ApiContext, Tokens};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::{watch, Semaphore, SemaphorePermit};

use crate::fixtures::*;

/// One browser at a time: each is heavy, and the suite shares two cores.
static ONE_BROWSER: Semaphore = Semaphore::const_new(1);

/// The dashboard served on a free loopback port until dropped.
pub(crate) struct Served {
    pub(crate) base: String,
    stop: watch::Sender<bool>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

pub(crate) async fn serve(pool: &PgPool) -> Served {
    let ctx = ApiContext {
        pool: pool.clone(),
        read: None,
        tokens: Some(Arc::new(Tokens::load(&tokens_file()).unwrap())),
        steps: retrylog::config::DEFAULT_STEPS.parse().unwrap(),
        base_path: String::new(),
        overview_cache: Default::default(),
        stuck_census: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = watch::channel(false);
    let limits = http::Limits {
        header_timeout: std::time::Duration::from_secs(10),
        max_connections: 256,
    };
    tokio::spawn(http::serve(listener, http::app(ctx), limits, stopped));
    Served { base, stop }
}

/// A headless Chromium with its own chromedriver.
pub(crate) struct Browser {
    pub(crate) client: Client,
    _driver: tokio::process::Child,
    _turn: SemaphorePermit<'static>,
}

/// The browser's console, read through chromedriver's log endpoint.
#[derive(Debug)]
struct ConsoleLog;

impl fantoccini::wd::WebDriverCompatibleCommand for ConsoleLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (::http::Method, Option<String>) {
        (::http::Method::POST, Some(r#"{"type": "browser"}"#.into()))
    }
}

impl Browser {
    pub(crate) async fn open(dark: bool) -> Browser {
        let turn = ONE_BROWSER.acquire().await.unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver runs (Debian: apt-get install chromium chromium-driver)");
        let mut args = vec![
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1280,1100",
        ];
        if dark {
            args.push("--blink-settings=preferredColorScheme=0");
        }
        let capabilities = json!({
            "goog:chromeOptions": {"args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => break client,
                Err(error) => {
                    assert!(
                        Instant::now() < deadline,
                        "chromedriver never answered: {error}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        Browser {
            client,
            _driver: driver,
            _turn: turn,
        }
    }

    pub(crate) async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    pub(crate) async fn login(&self, served: &Served, token: &str) {
        self.goto(&format!("{}/login", served.base)).await;
        let field = self.client.find(Locator::Id("token")).await.unwrap();
        field.send_keys(token).await.unwrap();
        field.send_keys("\u{E007}").await.unwrap(); // Enter
        self.wait_for_url(|url| url.ends_with('/')).await;
    }

    /// The text of the element `css` selects, read in one script call: the live refresh may
    /// replace the element between a find and a read.
    pub(crate) async fn text(&self, css: &str) -> String {
        let text = self
            .client
            .execute(
                "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
                vec![json!(css)],
            )
            .await
            .unwrap();
        text.as_str()
            .unwrap_or_else(|| panic!("no element {css}"))
            .trim()
            .to_string()
    }

    /// Sets a mark of the test's own on the page's `window`; returns it for
    /// [`Browser::window_is_marked`].
    async fn mark_the_window(&self) -> String {
        let mark = uuid::Uuid::new_v4().to_string();
        self.client
            .execute(
                "window.__retrylogTestMark = arguments[0];",
                vec![json!(mark)],
            )
            .await
            .unwrap();
        mark
    }

    /// Whether the page's `window` still holds `mark`: only the same page, never reloaded.
    async fn window_is_marked(&self, mark: String) -> bool {
        let found = self
            .client
            .execute("return window.__retrylogTestMark ?? null;", vec![])
            .await
            .unwrap();
        found == json!(mark)
    }

    pub(crate) async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.unwrap().len()
    }

    pub(crate) async fn url(&self) -> String {
        self.client.current_url().await.unwrap().to_string()
    }

    pub(crate) async fn wait_for_url(&self, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let url = self.url().await;
            if done(&url) {
                return;
            }
            assert!(Instant::now() < deadline, "the page never got there: {url}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The console's errors and warnings so far (CSP violations, failed loads, exceptions).
    pub(crate) async fn console_problems(&self) -> Vec<String> {
        let log = self.client.issue_cmd(ConsoleLog).await.unwrap();
        log.as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter(|entry| matches!(entry["level"].as_str(), Some("SEVERE" | "WARNING")))
                    .map(|entry| entry["message"].to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) async fn assert_no_console_problems(&self) {
        let problems = self.console_problems().await;
        assert!(problems.is_empty(), "the console says: {problems:#?}");
    }

    /// Saves a screenshot under docs/screenshots when RETRYLOG_SCREENSHOTS is set.
    pub(crate) async fn screenshot(&self, name: &str) {
        if std::env::var_os("RETRYLOG_SCREENSHOTS").is_none() {
            return;
        }
        let png = self.client.screenshot().await.unwrap();
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/screenshots");
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(format!("{dir}/{name}.png"), png).unwrap();
    }

    pub(crate) async fn close(self) {
        self.client.close().await.unwrap();
    }
}

/// Retries to every kind of target, applied to the rollup, and variant A2 at the limit.
pub(crate) async fn busy_pipeline(pool: &PgPool) {
    pipeline(pool).await;
    append_n(pool, variant(JOB_A, VARIANT_A1), 2).await;
    append_ok(pool, &retry(job(JOB_B))).await;
    a2_needs_intervention(pool).await;
    retrylog::projector::catch_up_once(pool, 1000)
        .await
        .unwrap();
}

#[sqlx::test(migrations = false)]
async fn the_overview_renders_its_counts_and_a_drawn_chart_without_console_errors(pool: PgPool) {
    busy_pipeline(&pool).await;
    // Job B reaches done: its retry is observed recovered, and the chart draws it.
    sqlx::query("UPDATE jobs SET status = 'done' WHERE job_id = $1")
        .bind(JOB_B)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("SELECT retry_outcome_observe(ARRAY['prepare','generate','segment','iou_eval'], 'test', NULL)")
        .execute(&pool)
        .await
        .unwrap();
    retrylog::projector::catch_up_once(&pool, 1000)
        .await
        .unwrap();
    let served = serve(&pool).await;
    let browser = Browser::open(false).await;
    browser.login(&served, READER).await;
    assert_eq!(browser.text("#last-hour").await, "6");
    assert_eq!(browser.text("#last-week").await, "6");
    // The chart is drawn: one line per group, and its points.
    assert!(browser.count("#chart svg path").await >= 2);
    assert!(browser.count("#chart svg circle").await >= 2);
    // The job's recovered retry: a dashed line in the job's colour, and the legend's totals.
    assert_eq!(browser.count("#chart svg path.recovered").await, 1);
    assert!(browser.text("#chart").await.contains("job (1 / 1)"));
    assert!(browser
        .text("#latest")
        .await
        .contains("variant 0a000000-0000-4000-8000-000000000002"));
    browser.screenshot("overview-light").await;
    browser
        .goto(&format!("{}/targets/job/{JOB_A}", served.base))
        .await;
    assert_eq!(browser.text("#chain").await, "no events of its own");
    assert!(
        browser
            .text("#variant-chains")
            .await
            .starts_with("2 variant chains intact ("),
        "A1's and A2's chains"
    );
    assert!(browser.text("main").await.contains("Variants"));
    browser.screenshot("target-light").await;
    browser.assert_no_console_problems().await;
    browser.close().await;
}

#[sqlx::test(migrations = false)]
async fn a_retry_recorded_through_sql_appears_on_the_open_overview_within_2_s(pool: PgPool) {
    busy_pipeline(&pool).await;
    let served = serve(&pool).await;
    let browser = Browser::open(false).await;
    browser.login(&served, READER).await;
    assert!(!browser.text("#latest").await.contains("sql-door"));
    // A mark on this page's window: a reload or a navigation gives the page a new window
    // object without it, where the URL alone would look the same after a reload.
    let page = browser.mark_the_window().await;
    let mut conn = pool.acquire().await.unwrap();
    record_via_sql(&mut conn, variant(JOB_B, VARIANT_B1), "stuck")
        .await
        .unwrap();
    let recorded = Instant::now();
    let latest = loop {
        let latest = browser.text("#latest").await;
        if latest.contains("sql-door") {
            break latest;
        }
        assert!(
            recorded.elapsed() < Duration::from_secs(2),
            "the retry did not appear within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The new row is the retry just recorded: the variant, its reason, the SQL door.
    let row = latest
        .lines()
        .find(|line| line.contains("sql-door"))
        .unwrap();
    assert!(row.contains("stuck"), "{row}");
    assert!(row.contains(&VARIANT_B1.to_string()), "{row}");
    assert!(
        browser.window_is_marked(page).await,
        "the page was reloaded or left: its window lost the mark"
    );
    assert!(browser.url().await.ends_with('/'), "no navigation");
    browser.assert_no_console_problems().await;
    browser.close().await;
}

#[sqlx::test(migrations = false)]
async fn a_filter_changes_the_url_and_a_reload_keeps_it(pool: PgPool) {
    busy_pipeline(&pool).await;
    let served = serve(&pool).await;
    let browser = Browser::open(false).await;
    browser.login(&served, READER).await;
    assert!(browser
        .text("#chart")
        .await
        .contains("Retries per day by kind"));
    let select = browser.client.find(Locator::Id("bucket")).await.unwrap();
    select.select_by_value("hour").await.unwrap();
    browser
        .wait_for_url(|url| url.contains("bucket=hour"))
        .await;
    browser.client.refresh().await.unwrap();
    assert!(browser.url().await.contains("bucket=hour"));
    let selected = browser
        .client
        .find(Locator::Css("#bucket option[selected]"))
        .await
        .unwrap()
        .attr("value")
        .await
        .unwrap();
    assert_eq!(selected.as_deref(), Some("hour"));
    assert!(browser
        .text("#chart")
        .await
        .contains("Retries per hour by kind"));
    browser.assert_no_console_problems().await;
    browser.close().await;
}

/// A filter the page cannot use keeps the page: `?since=7x` shows the overview's form as
/// typed with the refusal beside the field, in the page's terms, and 400 — not a bare error
/// page; the fixed filter brings the overview back. The alerts' filters likewise.
#[sqlx::test(migrations = false)]
async fn a_bad_filter_keeps_the_page_with_its_form_and_the_error_beside_the_field(pool: PgPool) {
    busy_pipeline(&pool).await;
    let router = router(&pool, false);
    for (uri, status) in [
        ("/?since=7x", 400),
        ("/?bucket=year", 400),
        ("/alerts?within=soon", 400),
        ("/alerts?min=0", 400),
        ("/?since=2d", 200),
    ] {
        let answer = call(&router, uri, None, None, &[]).await;
        assert_eq!(answer.status.as_u16(), status, "{uri}");
        let kind = answer.headers["content-type"].to_str().unwrap();
        assert!(kind.starts_with("text/html"), "{uri}: {kind}");
    }

    let served = serve(&pool).await;
    let browser = Browser::open(false).await;
    browser.login(&served, READER).await;
    // Typed and changed as a user does: the page's script submits the form on a change.
    let type_since = |value: &'static str| {
        browser.client.execute(
            "const field = document.getElementById('since'); field.value = arguments[0];
             field.dispatchEvent(new Event('change', { bubbles: true }));",
            vec![json!(value)],
        )
    };
    type_since("7x").await.unwrap();
    browser.wait_for_url(|url| url.contains("since=7x")).await;
    // The page, its form as typed, and the refusal beside the field it is about.
    assert_eq!(browser.count("#error").await, 0, "not the error page");
    assert_eq!(
        browser.text("#since-error").await,
        "since: \"7x\" is not a duration or a time (like 7d, 12h or 2026-11-01)"
    );
    let beside = browser
        .client
        .execute(
            "const field = document.getElementById('since');
             return [field.value, field.getAttribute('aria-describedby'),
                     field.closest('label').nextElementSibling.id,
                     document.querySelectorAll('#bucket, #by').length];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(beside, json!(["7x", "since-error", "since-error", 2]));
    // Fixed, the overview is back, chart and all.
    type_since("2d").await.unwrap();
    browser.wait_for_url(|url| url.contains("since=2d")).await;
    assert_eq!(browser.count("#since-error").await, 0);
    assert!(browser
        .text("#chart")
        .await
        .contains("Retries per day by kind"));

    for (path, field, message) in [
        (
            "/?bucket=year",
            "bucket",
            "bucket: \"year\" is not one of hour, day, week",
        ),
        (
            "/alerts?within=soon",
            "within",
            "within: \"soon\" is not a duration or a time (like 7d, 12h or 2026-11-01)",
        ),
        ("/alerts?min=0", "min", "min: \"0\" is less than 1"),
    ] {
        browser.goto(&format!("{}{path}", served.base)).await;
        assert_eq!(
            browser.count("#error").await,
            0,
            "{path}: not the error page"
        );
        assert_eq!(
            browser.text(&format!("#{field}-error")).await,
            message,
            "{path}"
        );
    }
    browser.close().await;
}

#[sqlx::test(migrations = false)]
async fn the_recover_flow_changes_the_state_writes_one_event_with_the_note_and_the_tokens_name(
    pool: PgPool,
) {
    busy_pipeline(&pool).await;
    let served = serve(&pool).await;
    let browser = Browser::open(false).await;
    browser.login(&served, ADMIN).await;
    browser.goto(&format!("{}/alerts", served.base)).await;
    assert!(browser
        .text("#alerts")
        .await
        .contains(&VARIANT_A2.to_string()));
    browser.screenshot("alerts-light").await;
    let events_before = event_count(&pool).await;
    browser
        .client
        .find(Locator::Css("#alerts details.recover summary"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let form = browser
        .client
        .form(Locator::Css("#alerts details.recover form"))
        .await
        .unwrap();
    browser
        .client
        .find(Locator::Css("#alerts details.recover textarea"))
        .await
        .unwrap()
        .send_keys("input file replaced")
        .await
        .unwrap();
    browser
        .client
        .find(Locator::Css("#alerts details.recover input[name=confirm]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    form.submit().await.unwrap();
    browser
        .wait_for_url(|url| url.contains(&format!("/targets/variant/{VARIANT_A2}")))
        .await;
    assert_eq!(browser.text("#status").await, "done");
    let timeline = browser.text("#timeline").await;
    assert!(
        timeline.contains("input file replaced") && timeline.contains("ops-alice"),
        "{timeline}"
    );

    assert_eq!(event_count(&pool).await, events_before + 1);
    let (actor, note, from, to): (String, String, String, String) = sqlx::query_as(
        "SELECT actor, detail->>'note', from_status, to_status FROM retry_history
          WHERE reason = 'manual_recovery'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (actor.as_str(), note.as_str()),
        ("ops-alice", "input file replaced")
    );
    assert_eq!((from.as_str(), to.as_str()), ("failed", "done"));
    browser.goto(&format!("{}/alerts", served.base)).await;
    assert!(!browser
        .text("#alerts")
        .await
        .contains(&VARIANT_A2.to_string()));
    browser.assert_no_console_problems().await;
    browser.close().await;
}

#[sqlx::test(migrations = false)]
async fn a_tampered_variant_shows_its_broken_chain_in_an_alert_card_and_on_its_job(pool: PgPool) {
    busy_pipeline(&pool).await;
    let mut tx = pool.begin().await.unwrap();
    sqlx::raw_sql(&format!(
        "SET LOCAL session_replication_role = replica;
         UPDATE retry_history SET actor = 'mallory'
          WHERE job_variants_id = '{VARIANT_A1}' AND attempt = 2"
    ))
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let served = serve(&pool).await;
    let browser = Browser::open(false).await;
    browser.login(&served, READER).await;

    browser
        .goto(&format!("{}/targets/variant/{VARIANT_A1}", served.base))
        .await;
    assert!(browser
        .text("#chain")
        .await
        .starts_with("broken at attempt 2 (event seq 2: stored hash "));
    assert_eq!(browser.count(".card.alert #chain").await, 1);
    browser.screenshot("target-broken-light").await;
    browser
        .goto(&format!("{}/targets/job/{JOB_A}", served.base))
        .await;
    assert_eq!(
        browser.text("#variant-chains").await,
        "1 variant chain intact, 1 broken"
    );
    assert_eq!(browser.count(".card.alert .broken-chain a").await, 1);
    browser.assert_no_console_problems().await;
    browser.close().await;
}

#[sqlx::test(migrations = false)]
async fn a_read_token_sees_no_recover_button_and_its_post_is_refused(pool: PgPool) {
    busy_pipeline(&pool).await;
    let served = serve(&pool).await;
    let browser = Browser::open(false).await;
    browser.login(&served, READER).await;
    browser.goto(&format!("{}/alerts", served.base)).await;
    assert!(browser
        .text("#alerts")
        .await
        .contains(&VARIANT_A2.to_string()));
    assert_eq!(browser.count("details.recover").await, 0);
    let before = snapshot(&pool).await;
    // The same POST the form would make, from the page itself (its cookie, same origin).
    let status = browser
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const body = new URLSearchParams({kind: 'variant', id: arguments[0],
                 note: 'sneaky', confirm: 'yes', request_id: 'r1'});
             fetch('/ui/recover', {method: 'POST', body, credentials: 'same-origin'})
                 .then(r => done(r.status));",
            vec![json!(VARIANT_A2.to_string())],
        )
        .await
        .unwrap();
    assert_eq!(status, json!(403));
    assert_eq!(snapshot(&pool).await, before);
    browser.close().await;
}

#[sqlx::test(migrations = false)]
async fn the_pages_follow_the_systems_dark_mode(pool: PgPool) {
    busy_pipeline(&pool).await;
    let served = serve(&pool).await;
    let background = "return getComputedStyle(document.body).backgroundColor;";
    for (dark, colour) in [(false, "rgb(255, 255, 255)"), (true, "rgb(17, 22, 27)")] {
        let browser = Browser::open(dark).await;
        browser.login(&served, ADMIN).await;
        assert_eq!(
            browser.client.execute(background, vec![]).await.unwrap(),
            json!(colour)
        );
        if dark {
            browser.screenshot("overview-dark").await;
            browser.goto(&format!("{}/alerts", served.base)).await;
            browser.screenshot("alerts-dark").await;
            browser
                .goto(&format!("{}/targets/job/{JOB_A}", served.base))
                .await;
            browser.screenshot("target-dark").await;
        }
        browser.assert_no_console_problems().await;
        browser.close().await;
    }
}

#[sqlx::test(migrations = false)]
async fn the_targets_page_takes_its_state_from_the_url_and_pages_forward_and_back(pool: PgPool) {
    crate::targets::targets_log(&pool).await;
    let served = serve(&pool).await;
    let browser = Browser::open(false).await;
    browser.login(&served, READER).await;
    browser
        .goto(&format!("{}/targets?state=running&limit=1", served.base))
        .await;
    let selected = browser
        .client
        .find(Locator::Css("#state option[selected]"))
        .await
        .unwrap()
        .attr("value")
        .await
        .unwrap();
    assert_eq!(selected.as_deref(), Some("running"));
    assert_eq!(browser.text("#count").await, "3 matching");
    // state=running, newest last retry first: variant B1, job B, job A, one per page.
    let expected = [VARIANT_B1, JOB_B, JOB_A];
    let first_id = || async { browser.text("main table tbody tr td:nth-child(2)").await };
    // A click loads the next page: wait until its row shows (the URL alone may already match).
    let shows = |id: uuid::Uuid| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        while first_id().await != id.to_string() {
            assert!(Instant::now() < deadline, "the page never showed {id}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert_eq!(first_id().await, expected[0].to_string());
    assert_eq!(
        browser.count("#previous").await,
        0,
        "the first page has no Previous"
    );
    for id in &expected[1..] {
        browser
            .client
            .find(Locator::Id("next"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        shows(*id).await;
        let url = browser.url().await;
        assert!(
            url.contains("state=running") && url.contains("limit=1"),
            "{url}"
        );
    }
    assert_eq!(browser.count("#next").await, 0, "the last page has no Next");
    for id in expected[..2].iter().rev() {
        browser
            .client
            .find(Locator::Id("previous"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        shows(*id).await;
        let url = browser.url().await;
        assert!(
            url.contains("state=running") && url.contains("before="),
            "{url}"
        );
    }
    assert_eq!(
        browser.count("#previous").await,
        0,
        "back on the first page"
    );
    // The id links to its target page, whole.
    let link = browser
        .client
        .find(Locator::Css("main table tbody tr td:nth-child(2) a"))
        .await
        .unwrap()
        .attr("href")
        .await
        .unwrap();
    assert_eq!(link, Some(format!("/targets/variant/{VARIANT_B1}")));
    browser.screenshot("targets").await;
    browser.assert_no_console_problems().await;
    browser.close().await;
}
