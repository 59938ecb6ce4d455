//! `retrylog demo`: a small sample pipeline, retries of every reason through the Rust and SQL
//! doors, then the history, the counts and a clean verify.

use std::process::ExitCode;

use anyhow::Context;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::event::{NewRetry, RetryReason, Target};
use crate::output::{event_rows, Format, Rows};
use crate::{replay, store};

const STEPS: [&str; 4] = ["prepare", "generate", "segment", "iou_eval"];

pub async fn run(pool: &PgPool, format: Format) -> anyhow::Result<ExitCode> {
    // 1. A job running at `segment` with four variants: one done but lagging at `generate`,
    //    one failed at `segment`, two healthy. A second job waits at the final step.
    let job = Uuid::now_v7();
    let final_job = Uuid::now_v7();
    let variants: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    let final_variants: Vec<Uuid> = (0..2).map(|_| Uuid::now_v7()).collect();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO jobs (job_id, status, current_step) VALUES ($1, 'running', 'segment'),
                ($2, 'running', 'iou_eval')",
    )
    .bind(job)
    .bind(final_job)
    .execute(&mut *tx)
    .await
    .context("creating the sample jobs")?;
    let layout = [
        (variants[0], job, 0, "done", STEPS[1]),
        (variants[1], job, 1, "failed", STEPS[2]),
        (variants[2], job, 2, "running", STEPS[2]),
        (variants[3], job, 3, "running", STEPS[2]),
        (final_variants[0], final_job, 0, "done", STEPS[3]),
        (final_variants[1], final_job, 1, "done", STEPS[3]),
    ];
    for (variant, owner, order, status, step) in layout {
        sqlx::query(
            "INSERT INTO jobs_variants (job_variants_id, job_id, creation_order, status, current_step)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(variant)
        .bind(owner)
        .bind(order)
        .bind(status)
        .bind(step)
        .execute(&mut *tx)
        .await
        .context("creating the sample variants")?;
    }
    tx.commit().await?;
    eprintln!("demo: created job {job} (4 variants, at segment) and job {final_job} (at iou_eval)");

    // 2. Rust door: the lagging variant is touched so the pipeline advances it — the touch
    //    and the event commit together.
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE jobs_variants SET updated_at = now() WHERE job_variants_id = $1")
        .bind(variants[0])
        .execute(&mut *tx)
        .await?;
    let retry = NewRetry::new(
        Target::Variant {
            job_id: job,
            job_variants_id: variants[0],
        },
        RetryReason::Stuck,
        "demo:watchdog",
    )
    .with_step(STEPS[1])
    .with_status_change("done", "done")
    .with_detail(json!({"scenario": "lagging", "job_step": "segment", "variant_step": "generate"}));
    store::append(&mut tx, &retry).await?;
    tx.commit().await?;

    // 3. SQL door, as a Python/asyncpg listener would call it: the failed variant is set back
    //    to done at its step so the step re-runs, twice (it failed again after the first).
    for error in ["CUDA out of memory", "segmentation timed out"] {
        let mut tx = pool.begin().await?;
        sqlx::query(
            "UPDATE jobs_variants SET status = 'done', updated_at = now()
              WHERE job_variants_id = $1",
        )
        .bind(variants[1])
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "SELECT attempt FROM record_retry(
                 job_id => $1, job_variants_id => $2, reason => 'failed',
                 from_status => 'failed', to_status => 'done', actor => 'demo:python-listener',
                 detail => jsonb_build_object('scenario', 'failed', 'error', $3::text))",
        )
        .bind(job)
        .bind(variants[1])
        .bind(error)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE jobs_variants SET status = 'failed' WHERE job_variants_id = $1")
            .bind(variants[1])
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }

    // 4. Rust door again: the final-step job whose variants are all done is set done.
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE jobs SET status = 'done', updated_at = now() WHERE job_id = $1")
        .bind(final_job)
        .execute(&mut *tx)
        .await?;
    let retry = NewRetry::new(
        Target::Job { job_id: final_job },
        RetryReason::ManualRecovery,
        "demo:watchdog",
    )
    .with_status_change("running", "done")
    .with_detail(json!({"scenario": "final_step", "variants_done": 2}));
    store::append(&mut tx, &retry).await?;
    tx.commit().await?;

    // 5. A retry that must be refused: the failed variant already has 2 retries, limit 2.
    let mut tx = pool.begin().await?;
    let refused = store::append(
        &mut tx,
        &NewRetry::new(
            Target::Variant {
                job_id: job,
                job_variants_id: variants[1],
            },
            RetryReason::Failed,
            "demo:watchdog",
        )
        .with_max_retries(2),
    )
    .await;
    tx.rollback().await?;
    match refused {
        Err(error) if error.is_caller_error() => eprintln!("demo: refused as expected: {error}"),
        Err(error) => return Err(error.into()),
        Ok(event) => anyhow::bail!(
            "the limit did not hold: attempt {} was stored",
            event.attempt
        ),
    }

    // 6. What an operator sees.
    let mut conn = pool.acquire().await?;
    println!("\nHistory of job {job}:");
    let history = store::load_job_history(&mut conn, job).await?;
    event_rows(&history, format).print(format)?;
    println!("\nHistory of job {final_job}:");
    let history = store::load_job_history(&mut conn, final_job).await?;
    event_rows(&history, format).print(format)?;

    println!("\nretry_count now:");
    let counts: Vec<(String, Uuid, String, Option<String>, i32)> = sqlx::query_as(
        "SELECT 'job', job_id, status, current_step, retry_count FROM jobs WHERE job_id IN ($1, $2)
         UNION ALL
         SELECT 'variant', job_variants_id, status, current_step, retry_count
           FROM jobs_variants WHERE job_id IN ($1, $2)
         ORDER BY 1, 5 DESC",
    )
    .bind(job)
    .bind(final_job)
    .fetch_all(&mut *conn)
    .await?;
    let mut rows = Rows::new(&["kind", "id", "status", "current_step", "retry_count"]);
    for (kind, id, status, step, count) in counts {
        rows.push(vec![
            Value::from(kind),
            Value::from(id.to_string()),
            Value::from(status),
            step.map_or(Value::Null, Value::from),
            Value::from(count),
        ]);
    }
    rows.print(format)?;
    drop(conn);

    let report = replay::verify(pool, |_| {}).await?;
    if !report.is_clean() {
        for mismatch in &report.mismatches {
            eprintln!("demo: verify: {mismatch}");
        }
        anyhow::bail!("verify found {} mismatch(es)", report.mismatches.len());
    }
    println!(
        "\nverify: clean — {} events in {} streams, every hash link and retry_count matches the log",
        report.events, report.streams
    );
    Ok(ExitCode::SUCCESS)
}
