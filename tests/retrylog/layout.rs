//! The dashboard's layout promises, measured in headless Chromium on every page the dashboard
//! serves, at a desktop's 1400×1000 and a phone's 390×844, in light and in dark mode: nothing
//! leaves the viewport sideways except inside a box that scrolls (`overflow-x: auto|scroll`),
//! no two tables overlap, the page itself never scrolls sideways, buttons and the search box
//! keep their size, and each alert keeps its count, its why and its Recover in view. The
//! sizes and the colour scheme are set through chromedriver's DevTools door
//! (`Emulation.setDeviceMetricsOverride`, `Emulation.setEmulatedMedia`), so one browser walks
//! every combination.
//!
//! Each check is one script run in the page that returns its offenders, each named by its
//! path from `body` and its box; the test asserts the list is empty and prints it otherwise.
//!
//! `RETRYLOG_SCREENSHOTS=1` also saves each page at each size and scheme under
//! docs/screenshots/ (`{page}-{desktop|phone}-{light|dark}.png`).

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::dashboard::{busy_pipeline, serve, Browser};
use crate::fixtures::*;

/// A DevTools command through chromedriver (`goog/cdp/execute`).
#[derive(Debug)]
struct DevTools {
    command: &'static str,
    params: Value,
}

impl fantoccini::wd::WebDriverCompatibleCommand for DevTools {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (::http::Method, Option<String>) {
        let body = json!({"cmd": self.command, "params": self.params});
        (::http::Method::POST, Some(body.to_string()))
    }
}

/// A viewport the layout is promised at.
#[derive(Debug, Clone, Copy)]
struct Size {
    name: &'static str,
    width: u32,
    height: u32,
    /// A phone: the page's `<meta name="viewport">` applies.
    mobile: bool,
}

const DESKTOP: Size = Size {
    name: "desktop",
    width: 1400,
    height: 1000,
    mobile: false,
};
const PHONE: Size = Size {
    name: "phone",
    width: 390,
    height: 844,
    mobile: true,
};

/// Sets the browser's viewport and colour scheme for the pages it loads next.
async fn emulate(browser: &Browser, size: Size, dark: bool) {
    let devtools = |command, params| DevTools { command, params };
    browser
        .client
        .issue_cmd(devtools(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": size.width, "height": size.height, "deviceScaleFactor": 1,
                   "mobile": size.mobile}),
        ))
        .await
        .unwrap();
    let scheme = if dark { "dark" } else { "light" };
    browser
        .client
        .issue_cmd(devtools(
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme", "value": scheme}]}),
        ))
        .await
        .unwrap();
}

/// The script that lists what breaks the layout on the page as it is shown. `arguments[0]`:
/// whether to check each alert's count, why and Recover (an admin's alerts page).
const OFFENDERS: &str = r#"
const admin_alerts = arguments[0];
const vw = document.documentElement.clientWidth;
// By attribute: a form's `.id` is its input named "id".
const name = e => { const id = e.getAttribute('id'), classes = (e.getAttribute('class') || '').trim();
    return e.tagName.toLowerCase() + (id ? '#' + id : '')
        + (classes ? '.' + classes.split(/\s+/).join('.') : '')
        + (e.dataset && e.dataset.label ? '[' + e.dataset.label + ']' : ''); };
const path = e => { const parts = [];
    for (let a = e; a && a !== document.body; a = a.parentElement) parts.unshift(name(a));
    return parts.join(' > '); };
const scroller = e => { for (let a = e.parentElement; a && a !== document.documentElement; a = a.parentElement) {
    const o = getComputedStyle(a).overflowX; if (o === 'auto' || o === 'scroll') return a; }
    return null; };
const box = r => `${Math.round(r.left)}..${Math.round(r.right)} × ${Math.round(r.top)}..${Math.round(r.bottom)}`;
const shown = e => { const r = e.getBoundingClientRect();
    return r.width > 0 && r.height > 0 && getComputedStyle(e).visibility !== 'hidden'; };
// What of `e` can be seen: its box cut by every ancestor that clips.
const visible = e => { const r = e.getBoundingClientRect();
    let v = {left: r.left, right: r.right, top: r.top, bottom: r.bottom};
    for (let a = e.parentElement; a && a !== document.documentElement; a = a.parentElement) {
        if (getComputedStyle(a).overflowX === 'visible') continue;
        const q = a.getBoundingClientRect();
        v = {left: Math.max(v.left, q.left), right: Math.min(v.right, q.right),
             top: Math.max(v.top, q.top), bottom: Math.min(v.bottom, q.bottom)}; }
    return v; };
const offenders = [];
if (document.documentElement.scrollWidth > vw + 1)
    offenders.push(`the page scrolls sideways: ${document.documentElement.scrollWidth} px wide in ${vw}`);
// Only the outermost of an offending subtree is named (its children follow it out).
const out = new Set();
for (const e of document.body.querySelectorAll('*')) {
    if (!shown(e)) continue;
    // An SVG's inside is drawn within the SVG's own box, which is checked.
    if (e.closest('svg') && e.tagName.toLowerCase() !== 'svg') continue;
    const r = e.getBoundingClientRect();
    if ((r.left < -1 || r.right > vw + 1) && !scroller(e)) {
        out.add(e);
        if (!out.has(e.parentElement))
            offenders.push(`${path(e)} leaves the viewport (0..${vw}): ${box(r)}`);
    }
}
const tables = [...document.querySelectorAll('table')].filter(shown);
for (let i = 0; i < tables.length; i++) for (let j = i + 1; j < tables.length; j++) {
    const a = visible(tables[i]), b = visible(tables[j]);
    if (Math.min(a.right, b.right) - Math.max(a.left, b.left) > 1
        && Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top) > 1)
        offenders.push(`${path(tables[i])} overlaps ${path(tables[j])}: ${box(a)} and ${box(b)}`);
}
// A button, a summary or the search box squeezed below its content.
for (const e of document.querySelectorAll('button, summary, input[type=search], select')) {
    if (!shown(e)) continue;
    if (e.scrollWidth > e.clientWidth + 1)
        offenders.push(`${path(e)} is squeezed: its content is ${e.scrollWidth} px in ${e.clientWidth}`);
}
const search = document.querySelector('header .search input');
if (search && search.getBoundingClientRect().width < 160)
    offenders.push(`the search box shrank to ${Math.round(search.getBoundingClientRect().width)} px`);
if (admin_alerts) {
    const rows = [...document.querySelectorAll('#alerts tbody tr')];
    if (rows.length === 0) offenders.push('no alert rows to check');
    for (const [n, row] of rows.entries()) {
        for (const css of ['td[data-label=retry_count]', 'td[data-label=why]', 'details.recover summary']) {
            const e = row.querySelector(css);
            if (!e || !shown(e)) { offenders.push(`alert ${n + 1}: no ${css} shown`); continue; }
            const r = e.getBoundingClientRect(), v = visible(e);
            if (r.left < -1 || r.right > vw + 1 || v.right - v.left < r.width - 1)
                offenders.push(`alert ${n + 1}: ${css} is out of view: ${box(r)}, seen ${box(v)}, viewport 0..${vw}`);
        }
    }
}
return offenders;
"#;

/// The offenders on the page as shown now, then with every `<details>` open.
async fn offenders(browser: &Browser, admin_alerts: bool) -> Vec<String> {
    let run = || async {
        let found = browser
            .client
            .execute(OFFENDERS, vec![json!(admin_alerts)])
            .await
            .unwrap();
        serde_json::from_value::<Vec<String>>(found).unwrap()
    };
    let mut found = run().await;
    browser
        .client
        .execute(
            "document.querySelectorAll('details').forEach(d => d.open = true);",
            vec![],
        )
        .await
        .unwrap();
    found.extend(
        run()
            .await
            .into_iter()
            .map(|o| format!("(details open) {o}")),
    );
    found
}

/// A retry whose detail holds what wraps badly: an unbroken error of 300 characters, a long
/// note, a nested object.
async fn a_retry_with_a_long_detail(pool: &PgPool) {
    let mut long = retry(variant(JOB_A, VARIANT_A1));
    long.detail = json!({
        "error": "E".repeat(300),
        "message": "the input file /data/batches/2026-11/segment-0042/frames.tar could not be \
                    read after the network share dropped; the pipeline retried the step",
        "context": {"host": "worker-7", "attempts": [1, 2, 3], "env": {"GPU": "A100"}},
    });
    append_ok(pool, &long).await;
}

#[sqlx::test(migrations = false)]
async fn every_page_fits_a_desktop_and_a_phone_in_light_and_dark(pool: PgPool) {
    busy_pipeline(&pool).await;
    a_retry_with_a_long_detail(&pool).await;
    let served = serve(&pool).await;
    let browser = Browser::open(false).await;
    let base = &served.base;
    // (name, path, whether it is an admin's alerts page, whether docs/ shows it)
    let pages = [
        ("overview", "/".to_string(), false, true),
        ("alerts", "/alerts".to_string(), true, true),
        ("targets", "/targets".to_string(), false, true),
        // Read from the stuck census: the line saying when it was taken.
        (
            "targets-stuck",
            "/targets?state=stuck".to_string(),
            false,
            false,
        ),
        ("target-job", format!("/targets/job/{JOB_A}"), false, true),
        (
            "target-variant",
            format!("/targets/variant/{VARIANT_A1}"),
            false,
            true,
        ),
        (
            "target-refused",
            format!("/targets/job/{JOB_A}?reason=stuck&since=7x"),
            false,
            false,
        ),
        ("overview-refused", "/?since=7x".to_string(), false, false),
        (
            "error",
            "/targets/job/00000000-0000-4000-8000-00000000dead".to_string(),
            false,
            false,
        ),
    ];
    let mut failures = Vec::new();
    for size in [DESKTOP, PHONE] {
        for dark in [false, true] {
            emulate(&browser, size, dark).await;
            let scheme = if dark { "dark" } else { "light" };
            // The login page, as a visitor without a session sees it.
            browser.client.delete_all_cookies().await.unwrap();
            browser.goto(&format!("{base}/login")).await;
            let seen = browser
                .client
                .execute(
                    "return [window.innerWidth, matchMedia('(prefers-color-scheme: dark)').matches];",
                    vec![],
                )
                .await
                .unwrap();
            assert_eq!(seen, json!([size.width, dark]), "the emulation holds");
            for offender in offenders(&browser, false).await {
                failures.push(format!("{} {scheme} login: {offender}", size.name));
            }
            browser
                .screenshot(&format!("login-{}-{scheme}", size.name))
                .await;
            browser.login(&served, ADMIN).await;
            for (name, path, admin_alerts, pictured) in &pages {
                browser.goto(&format!("{base}{path}")).await;
                if *pictured {
                    browser
                        .screenshot(&format!("{name}-{}-{scheme}", size.name))
                        .await;
                }
                for offender in offenders(&browser, *admin_alerts).await {
                    failures.push(format!("{} {scheme} {name}: {offender}", size.name));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} layout offenders:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The refused and the unknown pages answer 400 and 404 on purpose, which the console
    // logs; nothing else may be there (a CSP violation, a script error).
    let unexpected: Vec<String> = browser
        .console_problems()
        .await
        .into_iter()
        .filter(|problem| {
            !(problem.contains("since=7x") || problem.contains("00000000dead"))
                || !problem.contains("Failed to load resource")
        })
        .collect();
    assert!(unexpected.is_empty(), "the console says: {unexpected:#?}");
    browser.close().await;
}

/// The chart is drawn in the page's colours: its background is the page's, light and dark,
/// and its text is the page's ink, never the standalone file's dark grey on a dark page.
#[sqlx::test(migrations = false)]
async fn the_chart_takes_the_pages_colours_in_dark_mode(pool: PgPool) {
    busy_pipeline(&pool).await;
    let served = serve(&pool).await;
    let browser = Browser::open(false).await;
    browser.login(&served, READER).await;
    let colours = "const svg = document.querySelector('#chart svg');
        return [getComputedStyle(document.body).backgroundColor,
                getComputedStyle(svg.querySelector('.chart-bg')).fill,
                getComputedStyle(document.body).color,
                getComputedStyle(svg.querySelector('text.chart-ink')).fill];";
    for (dark, background, ink) in [
        (false, "rgb(255, 255, 255)", "rgb(34, 34, 34)"),
        (true, "rgb(17, 22, 27)", "rgb(227, 232, 237)"),
    ] {
        emulate(&browser, DESKTOP, dark).await;
        browser.goto(&format!("{}/", served.base)).await;
        let seen = browser.client.execute(colours, vec![]).await.unwrap();
        assert_eq!(
            (&seen[0], &seen[1]),
            (&json!(background), &json!(background)),
            "dark {dark}: the chart's background is the page's: {seen}"
        );
        assert_eq!(seen[3], json!(ink), "dark {dark}: the chart's text: {seen}");
    }
    browser.assert_no_console_problems().await;
    browser.close().await;
}
