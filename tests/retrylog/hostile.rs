//! Hostile input, generated: arbitrary text (controls, bidi overrides, zero-width characters,
//! long, NUL), arbitrary JSON in `detail` (deep, huge and tiny numbers) and extreme times,
//! through the SQL door, the Rust door and the CLI. Every case is either refused as the caller's mistake with
//! nothing written, or accepted — and then the events still read back, the rollup still
//! projects, the trend still reports, and verify is clean.
//!
//! The cases come from proptest's strategies with a fixed seed (reproducible in CI; a failing
//! case is printed whole). About 2,200 cases in all.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use retrylog::error::CallerMistake;
use retrylog::event::{RetryReason, Target};
use retrylog::projector;
use retrylog::report::{self, Bucket, GroupBy, TrendQuery};
use retrylog::store;
use retrylog::window::Moment;
use serde_json::Value;
use sqlx::PgPool;

use crate::fixtures::*;

/// Characters a hostile caller likes: controls, separators, bidi marks, zero-width ones,
/// quotes, wide ones.
fn nasty_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => proptest::char::range(' ', '~'),
        1 => proptest::char::range('\u{1}', '\u{1f}'),
        1 => proptest::char::range('\u{7f}', '\u{9f}'),
        1 => prop::sample::select(vec![
            '\u{0}', '\u{61c}', '\u{200e}', '\u{200f}', '\u{2028}', '\u{2029}', '\u{202a}',
            '\u{202e}', '\u{2066}', '\u{2069}', '\u{200b}', '\u{2060}', '\u{feff}', '"', '\\',
            '\'', '%', 'é', '界', '😀',
        ]),
        1 => any::<char>(),
    ]
}

/// Text from empty to well past every bound (200 characters).
fn nasty_text() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => proptest::collection::vec(nasty_char(), 0..24).prop_map(String::from_iter),
        1 => (nasty_char(), 150usize..400).prop_map(|(c, n)| std::iter::repeat_n(c, n).collect()),
        // Most fields of most cases are ordinary, so that enough cases are accepted.
        12 => "[a-zA-Z0-9_ .:é界-]{1,40}",
    ]
}

/// A JSON number as text, from the ordinary to far outside f64 (1e400, 1e-400).
fn nasty_number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        (1u32..99, -999i32..999).prop_map(|(m, e)| format!("{m}e{e}")),
        "[1-9][0-9]{0,60}\\.[0-9]{1,40}",
    ]
}

/// JSON values: leaves, and containers nested up to ~100 levels (over the bound of 63).
fn nasty_json() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        nasty_number(),
        nasty_text().prop_map(|text| serde_json::to_string(&text).unwrap()),
    ];
    let nested = leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4)
                .prop_map(|items| format!("[{}]", items.join(","))),
            proptest::collection::vec((nasty_text(), inner), 0..4).prop_map(|fields| {
                let fields: Vec<String> = fields
                    .into_iter()
                    .map(|(key, value)| format!("{}:{value}", serde_json::to_string(&key).unwrap()))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    });
    prop_oneof![
        4 => nested,
        1 => (1usize..100).prop_map(|depth| format!("{}1{}", "[".repeat(depth), "]".repeat(depth))),
    ]
}

/// A detail: usually an object (with a scenario), sometimes anything else.
fn nasty_detail() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        1 => Just(None),
        4 => (nasty_text(), nasty_json(), nasty_text()).prop_map(|(scenario, value, key)| {
            Some(format!(
                "{{\"scenario\":{},{}:{value}}}",
                serde_json::to_string(&scenario).unwrap(),
                serde_json::to_string(&key).unwrap()
            ))
        }),
        1 => nasty_json().prop_map(Some),
    ]
}

/// Times from 4713 BC to far in the future, and near now.
fn nasty_time() -> impl Strategy<Value = Option<DateTime<Utc>>> {
    let now = Utc::now();
    prop_oneof![
        8 => Just(None),
        2 => (-86_400i64 * 365 * 30..600).prop_map(move |s| Some(now + Duration::seconds(s))),
        1 => (-210_000_000_000_000_000i64..8_000_000_000_000_000)
            .prop_map(DateTime::from_timestamp_micros),
    ]
}

/// One generated append.
#[derive(Debug, Clone)]
struct Case {
    target: usize,
    step: Option<String>,
    actor: String,
    from_status: Option<String>,
    to_status: Option<String>,
    detail: Option<String>,
    occurred_at: Option<DateTime<Utc>>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        0usize..TARGETS.len(),
        proptest::option::of(nasty_text()),
        nasty_text(),
        proptest::option::of(nasty_text()),
        proptest::option::of(nasty_text()),
        nasty_detail(),
        nasty_time(),
    )
        .prop_map(
            |(target, step, actor, from_status, to_status, detail, occurred_at)| Case {
                target,
                step,
                actor,
                from_status,
                to_status,
                detail,
                occurred_at,
            },
        )
}

const TARGETS: [Target; 3] = [
    Target::Job { job_id: JOB_A },
    Target::Variant {
        job_id: JOB_A,
        job_variants_id: VARIANT_A1,
    },
    Target::Variant {
        job_id: JOB_B,
        job_variants_id: VARIANT_B1,
    },
];

/// `n` cases from a fixed seed.
fn cases(n: usize, seed: u8) -> Vec<Case> {
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]),
    );
    let strategy = case();
    (0..n)
        .map(|_| strategy.new_tree(&mut runner).expect("a case").current())
        .collect()
}

/// What every accepted case must leave working: the target's history reads back (also with
/// huge numbers), the rollup projects, today's trend reports by scenario and by step.
async fn reads_still_work(pool: &PgPool, case: &Case) {
    let mut conn = pool.acquire().await.unwrap();
    store::load_stream(&mut conn, TARGETS[case.target])
        .await
        .unwrap_or_else(|error| panic!("history after {case:?}: {error}"));
    projector::catch_up(&mut conn, 1000)
        .await
        .unwrap_or_else(|error| panic!("project after {case:?}: {error}"));
    for by in [GroupBy::Scenario, GroupBy::Step] {
        let moment = Moment::Now(Utc::now());
        let query = TrendQuery {
            bucket: Bucket::Day,
            by,
            since: Utc::now() - Duration::days(2),
        };
        report::trend(&mut conn, query, moment)
            .await
            .unwrap_or_else(|error| panic!("trend after {case:?}: {error}"));
    }
}

/// Counts the cases of one door and checks what each outcome leaves behind: an accepted case
/// leaves every read working, a refused one wrote nothing; every 100 cases and at the end,
/// verify is clean.
#[derive(Default)]
struct Tally {
    accepted: usize,
    refused: usize,
}

impl Tally {
    /// `refusal`: `None` when the door accepted the case, else why it was refused.
    async fn judge(&mut self, pool: &PgPool, case: &Case, before: i64, refusal: Option<String>) {
        match refusal {
            None => {
                self.accepted += 1;
                reads_still_work(pool, case).await;
            }
            Some(why) => {
                self.refused += 1;
                let after = event_count(pool).await;
                assert_eq!(
                    before, after,
                    "{case:?} was refused ({why}) and wrote something"
                );
            }
        }
        if (self.accepted + self.refused).is_multiple_of(100) {
            assert_verify_clean(pool).await;
        }
    }

    /// Both outcomes must have been seen often enough for the run to mean something.
    async fn finish(self, pool: &PgPool) {
        assert_verify_clean(pool).await;
        let Tally { accepted, refused } = self;
        assert!(
            accepted > 100 && refused > 100,
            "{accepted} accepted, {refused} refused"
        );
    }
}

#[sqlx::test(migrations = false)]
async fn generated_appends_through_the_sql_door_are_refused_cleanly_or_leave_every_read_working(
    pool: PgPool,
) {
    pipeline(&pool).await;
    lift_retry_limit(&pool).await;
    let mut tally = Tally::default();
    for case in cases(1000, 9) {
        let target = TARGETS[case.target];
        let before = event_count(&pool).await;
        let result = sqlx::query(
            "SELECT seq FROM record_retry(job_id => $1, job_variants_id => $2, reason => 'failed',
                    step => $3, actor => $4, from_status => $5, to_status => $6,
                    detail => $7::text::jsonb, occurred_at => $8)",
        )
        .bind(target.job_id())
        .bind(target.job_variants_id())
        .bind(&case.step)
        .bind(&case.actor)
        .bind(&case.from_status)
        .bind(&case.to_status)
        .bind(&case.detail)
        .bind(case.occurred_at)
        .execute(&pool)
        .await;
        let refusal = result.err().map(|error| {
            let code = database_error(&error).0;
            // Invalid input (22023), a malformed JSON text or a NUL (22P02, 22P05, 22021),
            // a number or a nesting jsonb cannot hold (22003, 54001): the caller's.
            assert!(
                ["22023", "22P02", "22P05", "22021", "22003", "54001"].contains(&code.as_str()),
                "{case:?} was refused as a fault: {error}"
            );
            error.to_string()
        });
        tally.judge(&pool, &case, before, refusal).await;
    }
    tally.finish(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn generated_appends_through_the_rust_door_are_refused_cleanly_or_leave_every_read_working(
    pool: PgPool,
) {
    pipeline(&pool).await;
    lift_retry_limit(&pool).await;
    let mut tally = Tally::default();
    for case in cases(1000, 17) {
        // The Rust door takes a serde_json::Value: a detail it cannot parse never gets there.
        let detail = match &case.detail {
            None => Value::Object(Default::default()),
            Some(text) => match serde_json::from_str(text) {
                Ok(detail) => detail,
                Err(_) => continue,
            },
        };
        let mut next = retry(TARGETS[case.target]).with_detail(detail);
        next.reason = RetryReason::Failed;
        next.actor = case.actor.clone();
        next.step = case.step.clone();
        next.from_status = case.from_status.clone();
        next.to_status = case.to_status.clone();
        next.occurred_at = case.occurred_at;
        let before = event_count(&pool).await;
        let refusal = append(&pool, &next).await.err().map(|error| {
            assert!(
                error.is_caller_mistake(),
                "{case:?} was refused as a fault: {error:?}"
            );
            let message = error.to_string();
            assert!(
                !message.chars().any(retrylog::text::is_refused) && message.len() < 1_000,
                "the refusal quotes a bounded, escaped excerpt: {message:?}"
            );
            message
        });
        tally.judge(&pool, &case, before, refusal).await;
    }
    tally.finish(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn generated_arguments_to_retrylog_record_including_non_utf8_exit_0_or_2_and_reads_work(
    pool: PgPool,
) {
    pipeline(&pool).await;
    lift_retry_limit(&pool).await;
    let url = database_url(&pool).await;
    for (i, case) in cases(120, 33).into_iter().enumerate() {
        let target = TARGETS[case.target];
        let mut args: Vec<OsString> = vec![
            "--database-url".into(),
            url.clone().into(),
            "record".into(),
            "--job-id".into(),
            target.job_id().to_string().into(),
            "--reason".into(),
            "stuck".into(),
            "--actor".into(),
        ];
        // Every third case: the actor's bytes are not UTF-8.
        let actor: OsString = if i % 3 == 0 {
            let mut bytes = case.actor.replace('\0', "").into_bytes();
            bytes.extend([0xff, 0xfe]);
            OsString::from_vec(bytes)
        } else {
            case.actor.replace('\0', "").into()
        };
        args.push(actor);
        if let Some(variant) = target.job_variants_id() {
            args.extend(["--variant-id".into(), variant.to_string().into()]);
        }
        if let Some(step) = &case.step {
            args.extend(["--step".into(), step.replace('\0', "").into()]);
        }
        if let Some(detail) = &case.detail {
            args.extend(["--detail".into(), detail.replace('\0', "").into()]);
        }
        let before = event_count(&pool).await;
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_retrylog"))
            .args(&args)
            .env_remove("DATABASE_URL")
            .env_remove("RETRYLOG_LOG")
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        match output.status.code() {
            Some(0) => assert_eq!(before + 1, event_count(&pool).await),
            Some(2) => {
                assert_eq!(before, event_count(&pool).await, "{case:?} wrote something");
                assert!(
                    !stderr
                        .chars()
                        .any(|c| c != '\n' && retrylog::text::is_refused(c)),
                    "stderr carries a raw control or bidi character: {stderr:?}"
                );
            }
            other => panic!("{case:?}: exit {other:?}: {stderr}"),
        }
    }
    for args in [
        vec![
            "history",
            "--job-id",
            "0a000000-0000-4000-8000-000000000000",
            "--format",
            "json",
        ],
        vec![
            "history",
            "--job-id",
            "0b000000-0000-4000-8000-000000000000",
            "--format",
            "json",
        ],
        vec!["project"],
        vec!["report", "trend", "--since", "1d", "--by", "scenario"],
        vec!["verify"],
    ] {
        let run = retrylog(&pool, &args).await;
        assert_eq!(run.code, Some(0), "{args:?}: {run:#?}");
    }
}
