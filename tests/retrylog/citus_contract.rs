//! The schema's side of running on Citus (docs/scale.md, "Citus"), checked from pg_catalog
//! after migrate. Citus is not installed here: this checks what a distributed layout by
//! `job_id` requires of the schema, not that it runs.
//!
//! Data-driven: a *per-target table* is any table of retrylog's schema with a `job_id` column
//! (a partition is checked through its parent), so a table added later is checked without
//! touching this file. Four rules:
//!
//! 1. every primary key, unique constraint and unique index of a per-target table includes
//!    `job_id` (Citus enforces uniqueness per shard only);
//! 2. every foreign key between per-target tables includes `job_id` on both sides, and no table
//!    without `job_id` references a per-target table (a reference table cannot point into a
//!    distributed one);
//! 3. a table keyed by an event's `seq` carries the event's `job_id` too, to be co-located
//!    with the log;
//! 4. no function writes several targets' rows in one statement: each INSERT, UPDATE or
//!    DELETE on a per-target table in a SQL or PL/pgSQL function of the schema either inserts
//!    one row (`VALUES`) with its `job_id`, or constrains `job_id` to one value — a parameter,
//!    `NEW`/`OLD`, or a variable the function declares (`job_id = ev.job_id`).
//!
//! Rule 4 reads the functions' source text, so it has limits, said here and in docs/scale.md:
//! it does not see dynamic SQL (`EXECUTE`), it does not follow a statement into a function it
//! calls (that function is checked on its own), an `OR` beside the `job_id` predicate or a
//! variable holding several ids would pass it, and it does not look at views, rules or the
//! Rust code's own statements (which are reads, or writes of retrylog's own state tables).
//!
//! Every exception is named below with its reason, and docs/scale.md repeats each reason word
//! for word (checked here); an exception that no longer applies fails the test too, so the
//! lists stay true.

use std::collections::BTreeSet;

use sqlx::PgPool;

use crate::fixtures::*;

/// Keys of per-target tables without `job_id`: (constraint or index, reason).
const KEYS_WITHOUT_JOB_ID: &[(&str, &str)] = &[
    (
        "jobs_variants_pkey",
        "the pipeline's own key (job_variants_id): on Citus the pipeline declares PRIMARY KEY (job_id, job_variants_id); every retrylog write names the variant's job",
    ),
    (
        "retry_event_id_pkey",
        "the idempotency key (event_id) is global across the log's partitions: on Citus PRIMARY KEY (job_id, event_id), so an event id is idempotent within its job only",
    ),
    (
        "retry_intervention_pkey",
        "a note keyed by its own seq: on Citus PRIMARY KEY (job_id, seq)",
    ),
    (
        "retry_failure_signal_pkey",
        "a failure signal's queue id: on Citus PRIMARY KEY (job_id, id)",
    ),
];

/// Tables keyed by an event's seq without the event's `job_id`: (table, reason).
const PER_EVENT_WITHOUT_JOB_ID: &[(&str, &str)] = &[(
    "retry_outcome",
    "an outcome is keyed by its event's seq alone: on Citus it needs the event's job_id column to be co-located with the log",
)];

/// Statements that write several targets' rows: (function, table, reason).
const MULTI_TARGET_WRITES: &[(&str, &str, &str)] = &[
    (
        "record_retries_set",
        "jobs",
        "a batch's set path writes all its rows in one statement per table: on Citus a multi-shard write (two-phase commit) unless the batch names one job's targets",
    ),
    (
        "record_retries_set",
        "jobs_variants",
        "a batch's set path writes all its rows in one statement per table: on Citus a multi-shard write (two-phase commit) unless the batch names one job's targets",
    ),
    (
        "record_retries_set",
        "retry_event_id",
        "a batch's set path writes all its rows in one statement per table: on Citus a multi-shard write (two-phase commit) unless the batch names one job's targets",
    ),
    (
        "record_retries_set",
        "retry_history",
        "a batch's set path writes all its rows in one statement per table: on Citus a multi-shard write (two-phase commit) unless the batch names one job's targets",
    ),
    (
        "record_retries_set",
        "retry_stream_head",
        "a batch's set path writes all its rows in one statement per table: on Citus a multi-shard write (two-phase commit) unless the batch names one job's targets",
    ),
    (
        "retry_counts_apply",
        "jobs_variants",
        "finds the variant by job_variants_id alone: on Citus it must also match job_id, or record_retry cannot run as a distributed function",
    ),
    (
        "retry_counts_rebuild",
        "jobs",
        "replay's rebuild of every drifting count: a multi-shard UPDATE joined on job_id",
    ),
    (
        "retry_counts_rebuild",
        "jobs_variants",
        "replay's rebuild of every drifting count: a multi-shard UPDATE joined on job_id",
    ),
    (
        "retry_open_rebuild",
        "retry_stream_head",
        "replay's rebuild of the open retries: multi-shard, co-located with the log",
    ),
    (
        "retry_history_maintain",
        "retry_history",
        "partition upkeep moves the events that landed in the DEFAULT partition into the partition made for them: a whole range, all targets, by design",
    ),
    (
        "retry_stream_head_rebuild",
        "retry_event_id",
        "replay's rebuild of the event ids from the log: multi-shard, co-located with the log",
    ),
    (
        "retry_stream_head_rebuild",
        "retry_stream_head",
        "replay's rebuild of the head rows from the log: multi-shard, co-located with the log",
    ),
    (
        "retry_outcome_observe",
        "retry_stream_head",
        "the watchdog decides many open retries per statement: multi-shard, co-located with the log",
    ),
    (
        "retry_rollup_apply",
        "retry_rollup_cell",
        "a projector batch: INSERT ... SELECT from the log's range, co-located by job_id",
    ),
    (
        "retry_rollup_apply",
        "retry_rollup_lowest",
        "a projector batch: INSERT ... SELECT from the log's range, co-located by job_id",
    ),
    (
        "retry_rollup_reset",
        "retry_rollup_cell",
        "replay empties the rollup's cells: a multi-shard DELETE",
    ),
    (
        "retry_rollup_reset",
        "retry_rollup_lowest",
        "replay empties the rollup's cells: a multi-shard DELETE",
    ),
];

/// The doc that states the contract and repeats every reason.
fn scale_doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/scale.md"))
        .expect("docs/scale.md is readable")
}

/// Found minus allowed, and allowed minus found, as one message (empty when they agree).
fn disagreement(what: &str, found: &BTreeSet<String>, allowed: &BTreeSet<String>) -> String {
    let new: Vec<_> = found.difference(allowed).collect();
    let stale: Vec<_> = allowed.difference(found).collect();
    let mut message = String::new();
    if !new.is_empty() {
        message += &format!("{what} breaking the Citus contract, not excepted: {new:?}\n");
    }
    if !stale.is_empty() {
        message += &format!("{what} excepted that no longer break it (drop them): {stale:?}\n");
    }
    message
}

/// The per-target tables: every table of the schema with a `job_id` column, parents only.
const PER_TARGET: &str = "
    SELECT c.oid FROM pg_class c
     WHERE c.relnamespace = current_schema()::regnamespace
       AND c.relkind IN ('r', 'p') AND NOT c.relispartition
       AND EXISTS (SELECT 1 FROM pg_attribute a
                    WHERE a.attrelid = c.oid AND a.attname = 'job_id' AND NOT a.attisdropped)";

#[sqlx::test(migrations = false)]
async fn every_unique_key_of_a_per_target_table_includes_job_id(pool: PgPool) {
    migrated(&pool).await;
    let per_target: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT c.oid::regclass::text FROM ({PER_TARGET}) t JOIN pg_class c ON c.oid = t.oid"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    for table in [
        "jobs",
        "jobs_variants",
        "retry_history",
        "verify_stream_head",
    ] {
        assert!(
            per_target.iter().any(|t| t == table),
            "{table} in {per_target:?}"
        );
    }
    // Unique indexes, whether a constraint backs them or not, named by the constraint if any.
    let found: BTreeSet<String> = sqlx::query_scalar(&format!(
        "SELECT coalesce(con.conname, i.indexrelid::regclass::text)
           FROM pg_index i
           LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.contype IN ('p', 'u')
          WHERE i.indisunique AND i.indrelid IN ({PER_TARGET})
            AND NOT EXISTS (
                SELECT 1 FROM pg_attribute a
                 WHERE a.attrelid = i.indrelid AND a.attname = 'job_id'
                   AND a.attnum = ANY (i.indkey::int2[]))"
    ))
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let allowed = KEYS_WITHOUT_JOB_ID
        .iter()
        .map(|(name, _)| name.to_string())
        .collect();
    let problems = disagreement("keys without job_id", &found, &allowed);
    assert!(problems.is_empty(), "{problems}");
}

#[sqlx::test(migrations = false)]
async fn every_foreign_key_between_per_target_tables_includes_job_id_on_both_sides(pool: PgPool) {
    migrated(&pool).await;
    let foreign_keys: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f'
            AND conrelid IN ({PER_TARGET}) AND confrelid IN ({PER_TARGET})"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        foreign_keys >= 1,
        "jobs_variants references jobs: the check sees it"
    );
    let broken: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT con.conname || ' on ' || con.conrelid::regclass::text
           FROM pg_constraint con
          WHERE con.contype = 'f' AND con.confrelid IN ({PER_TARGET})
            AND (con.conrelid NOT IN ({PER_TARGET})
                 OR NOT EXISTS (
                     SELECT 1
                       FROM unnest(con.conkey, con.confkey) AS k(own, referenced)
                       JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.own
                       JOIN pg_attribute r ON r.attrelid = con.confrelid AND r.attnum = k.referenced
                      WHERE a.attname = 'job_id' AND r.attname = 'job_id'))"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        broken.is_empty(),
        "foreign keys into a per-target table without job_id on both sides: {broken:?}"
    );
}

#[sqlx::test(migrations = false)]
async fn a_table_keyed_by_an_events_seq_carries_its_job_id(pool: PgPool) {
    migrated(&pool).await;
    let found: BTreeSet<String> = sqlx::query_scalar(&format!(
        "SELECT c.relname::text FROM pg_class c
          WHERE c.relnamespace = current_schema()::regnamespace
            AND c.relkind IN ('r', 'p') AND NOT c.relispartition
            AND c.oid NOT IN ({PER_TARGET})
            AND EXISTS (SELECT 1 FROM pg_attribute a
                         WHERE a.attrelid = c.oid AND a.attname = 'seq' AND NOT a.attisdropped)"
    ))
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let allowed = PER_EVENT_WITHOUT_JOB_ID
        .iter()
        .map(|(table, _)| table.to_string())
        .collect();
    let problems = disagreement("tables keyed by seq without job_id", &found, &allowed);
    assert!(problems.is_empty(), "{problems}");
}

/// A function's source as words and single punctuation marks, lower-cased, comments and
/// string literals dropped: `o.job_id = ev.job_id` is `["o.job_id", "=", "ev.job_id"]`.
fn tokens(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut chars = source.chars().peekable();
    let flush = |word: &mut String, out: &mut Vec<String>| {
        if !word.is_empty() {
            out.push(std::mem::take(word).to_lowercase());
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '-' if chars.peek() == Some(&'-') => {
                flush(&mut word, &mut out);
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '\'' => {
                flush(&mut word, &mut out);
                // A literal, '' inside it included: its text is never a table or a column.
                while let Some(c) = chars.next() {
                    if c == '\'' && chars.peek() != Some(&'\'') {
                        break;
                    }
                    if c == '\'' {
                        chars.next();
                    }
                }
                out.push("'literal'".into());
            }
            c if c.is_alphanumeric() || c == '_' || c == '.' || c == '$' => word.push(c),
            '"' => {}
            c => {
                flush(&mut word, &mut out);
                if !c.is_whitespace() {
                    out.push(c.to_string());
                }
            }
        }
    }
    flush(&mut word, &mut out);
    out
}

/// The names a statement may pin `job_id` to: the function's name and parameters, NEW and
/// OLD, `$n`, and the variables it declares (DECLARE … BEGIN) or loops over (FOR x IN).
fn single_values(function: &str, parameters: &[String], words: &[String]) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = parameters.iter().cloned().collect();
    names.extend([function.to_string(), "new".into(), "old".into()]);
    names.extend((1..=parameters.len().max(1)).map(|n| format!("${n}")));
    if let Some(start) = words.iter().position(|w| w == "declare") {
        let end = words
            .iter()
            .position(|w| w == "begin")
            .unwrap_or(words.len());
        let mut at_start = true;
        for word in &words[start + 1..end.max(start + 1)] {
            if at_start {
                names.insert(word.clone());
            }
            at_start = word == ";";
        }
    }
    for pair in words.windows(3) {
        if pair[0] == "for" && pair[2] == "in" {
            names.insert(pair[1].clone());
        }
    }
    names
}

/// The tables a statement writes: (`insert`/`update`/`delete`, table).
fn writes(statement: &[String]) -> Vec<(&'static str, String)> {
    let mut found = Vec::new();
    for (i, word) in statement.iter().enumerate() {
        let next = |n: usize| statement.get(i + n).map(String::as_str);
        let table = match (word.as_str(), next(1)) {
            ("insert", Some("into")) => next(2).map(|t| ("insert", t)),
            ("delete", Some("from")) => next(2).map(|t| ("delete", t)),
            // Not a lock clause (FOR [NO KEY] UPDATE) nor ON CONFLICT DO UPDATE.
            ("update", Some(t))
                if !matches!(
                    i.checked_sub(1).map(|p| statement[p].as_str()),
                    Some("for" | "key" | "do")
                ) =>
            {
                Some(("update", t))
            }
            _ => None,
        };
        if let Some((kind, table)) = table {
            let table = if table == "only" {
                next(3).unwrap_or_default()
            } else {
                table
            };
            found.push((kind, table.rsplit('.').next().unwrap_or(table).to_string()));
        }
    }
    found
}

/// Whether a statement writes one target's rows: one row of VALUES with its job_id, or a
/// `job_id = <single value>` predicate. A bare `job_id` is a column, never a value.
fn writes_one_target(statement: &[String], kind: &str, singles: &BTreeSet<String>) -> bool {
    if kind == "insert" {
        let values = statement.iter().any(|w| w == "values");
        let select = statement.iter().any(|w| w == "select");
        return values && !select && statement.iter().any(|w| w == "job_id");
    }
    let is_job_id = |w: &str| w == "job_id" || w.ends_with(".job_id");
    let one_value = |w: &str| w != "job_id" && singles.contains(w.split('.').next().unwrap_or(w));
    statement.windows(3).any(|w| {
        w[1] == "="
            && ((is_job_id(&w[0]) && one_value(&w[2])) || (is_job_id(&w[2]) && one_value(&w[0])))
    })
}

#[sqlx::test(migrations = false)]
async fn no_function_writes_several_targets_rows_in_one_statement(pool: PgPool) {
    migrated(&pool).await;
    let per_target: BTreeSet<String> = sqlx::query_scalar(&format!(
        "SELECT c.relname::text FROM pg_class c WHERE c.oid IN ({PER_TARGET})"
    ))
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let functions: Vec<(String, Vec<String>, String)> = sqlx::query_as(
        "SELECT p.proname::text, coalesce(p.proargnames, '{}')::text[], p.prosrc
           FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
          WHERE p.pronamespace = current_schema()::regnamespace
            AND l.lanname IN ('sql', 'plpgsql')",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(functions.iter().any(|(name, ..)| name == "record_retry"));

    let mut found = BTreeSet::new();
    let mut single_target_writes = 0;
    for (function, parameters, source) in &functions {
        let words = tokens(source);
        let parameters: Vec<String> = parameters.iter().map(|p| p.to_lowercase()).collect();
        let singles = single_values(function, &parameters, &words);
        for statement in words.split(|w| w == ";") {
            for (kind, table) in writes(statement) {
                if !per_target.contains(&table) {
                    continue;
                }
                if writes_one_target(statement, kind, &singles) {
                    single_target_writes += 1;
                } else {
                    found.insert(format!("{function} → {table}"));
                }
            }
        }
    }
    // The append path is seen, and seen as single-target: record_retry's insert into the log,
    // its open retry and the failure trigger's signal at least.
    assert!(single_target_writes >= 3, "{single_target_writes}");
    let allowed = MULTI_TARGET_WRITES
        .iter()
        .map(|(function, table, _)| format!("{function} → {table}"))
        .collect();
    let problems = disagreement("multi-target writes", &found, &allowed);
    assert!(problems.is_empty(), "{problems}");
}

#[test]
fn docs_scale_repeats_every_exception_and_its_reason() {
    let doc = scale_doc();
    let section = doc
        .split("\n## Citus")
        .nth(1)
        .expect("docs/scale.md has a ## Citus section");
    let section = section.split("\n## ").next().unwrap_or(section);
    assert!(
        section.contains("not been run on Citus"),
        "the section says plainly that it was not run on Citus"
    );
    let named = KEYS_WITHOUT_JOB_ID
        .iter()
        .chain(PER_EVENT_WITHOUT_JOB_ID)
        .copied()
        .chain(
            MULTI_TARGET_WRITES
                .iter()
                .map(|(function, _, reason)| (*function, *reason)),
        );
    for (name, reason) in named {
        assert!(
            section.contains(&format!("`{name}`")),
            "docs/scale.md's Citus section names `{name}`"
        );
        assert!(
            section.contains(reason),
            "docs/scale.md's Citus section gives the reason for {name} word for word: {reason}"
        );
    }
}

#[test]
fn the_statement_reader_tells_one_target_from_many() {
    let singles = |function: &str, source: &str| {
        let words = tokens(source);
        (single_values(function, &["job_id".into()], &words), words)
    };
    let (names, words) = singles(
        "f",
        "DECLARE ev record; n int; BEGIN DELETE FROM retry_open o WHERE o.job_id = ev.job_id; \
         UPDATE jobs_variants v SET retry_count = 0 WHERE v.job_variants_id = ev.x; \
         UPDATE jobs SET status = 'it''s; done' WHERE job_id = f.job_id; \
         UPDATE jobs j SET retry_count = d.n FROM d WHERE j.job_id = d.job_id; \
         INSERT INTO retry_open (job_id, seq) VALUES (ev.job_id, 1); \
         INSERT INTO retry_open SELECT * FROM x; \
         -- UPDATE jobs SET x = 1;\n \
         SELECT 1 FROM jobs FOR NO KEY UPDATE; END",
    );
    let verdicts: Vec<(String, bool)> = words
        .split(|w| w == ";")
        .flat_map(|statement| {
            writes(statement)
                .into_iter()
                .map(|(kind, table)| (table, writes_one_target(statement, kind, &names)))
                .collect::<Vec<_>>()
        })
        .collect();
    let expected: Vec<(String, bool)> = [
        ("retry_open", true),
        ("jobs_variants", false),
        ("jobs", true),
        ("jobs", false),
        ("retry_open", true),
        ("retry_open", false),
    ]
    .into_iter()
    .map(|(t, v)| (t.to_string(), v))
    .collect();
    assert_eq!(verdicts, expected);
}
