//! The pipeline rows a benchmark's retries target: running jobs and their done variants,
//! inserted set-based the way a pipeline inserts them (the appends' targets, the generated
//! logs' streams). `retrylog-bench recovery` seeds its own, richer pipeline in SQL.

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// How many variants share one job, in every generated pipeline.
pub const VARIANTS_PER_JOB: usize = 4;

/// The step of the generated rows and events.
pub const STEP: &str = "generate";

/// Jobs and their variants to create.
#[derive(Debug, Default)]
pub struct PipelineRows {
    pub jobs: Vec<Uuid>,
    /// Each job's `created_at`; empty: now().
    pub job_created: Vec<DateTime<Utc>>,
    pub variants: Vec<Uuid>,
    /// Each variant's job.
    pub owners: Vec<Uuid>,
    /// Each variant's `creation_order`.
    pub orders: Vec<i32>,
    /// Each variant's `created_at`; empty: now().
    pub variant_created: Vec<DateTime<Utc>>,
}

/// Rows one INSERT statement creates at most.
const PIPELINE_CHUNK: usize = 100_000;

/// Inserts running jobs and done variants at `STEP`, set-based, in one transaction. The
/// projector's next recount of the targets created counts them by `created_at`, as it does
/// the pipeline's own rows (a fresh database has counted nothing yet: the first recount
/// takes every row, whatever its `created_at`).
pub async fn insert_pipeline_rows(pool: &PgPool, rows: &PipelineRows) -> anyhow::Result<()> {
    // The part of an optional column (empty: every row gets the default) for rows `range`.
    fn part<T>(column: &[T], range: std::ops::Range<usize>) -> &[T] {
        if column.is_empty() {
            &[]
        } else {
            &column[range]
        }
    }
    let mut tx = pool.begin().await?;
    for start in (0..rows.jobs.len()).step_by(PIPELINE_CHUNK) {
        let range = start..(start + PIPELINE_CHUNK).min(rows.jobs.len());
        sqlx::query(
            "INSERT INTO jobs (job_id, status, current_step, created_at)
             SELECT id, 'running', $2, coalesce(created, now())
               FROM unnest($1::uuid[], $3::timestamptz[]) AS t(id, created)",
        )
        .bind(&rows.jobs[range.clone()])
        .bind(STEP)
        .bind(part(&rows.job_created, range))
        .execute(&mut *tx)
        .await
        .context("creating the bench jobs")?;
    }
    for start in (0..rows.variants.len()).step_by(PIPELINE_CHUNK) {
        let range = start..(start + PIPELINE_CHUNK).min(rows.variants.len());
        sqlx::query(
            "INSERT INTO jobs_variants
                    (job_variants_id, job_id, creation_order, status, current_step, created_at)
             SELECT v, j, o, 'done', $4, coalesce(created, now())
               FROM unnest($1::uuid[], $2::uuid[], $3::int4[], $5::timestamptz[])
                    AS t(v, j, o, created)",
        )
        .bind(&rows.variants[range.clone()])
        .bind(&rows.owners[range.clone()])
        .bind(&rows.orders[range.clone()])
        .bind(STEP)
        .bind(part(&rows.variant_created, range))
        .execute(&mut *tx)
        .await
        .context("creating the bench variants")?;
    }
    tx.commit().await?;
    Ok(())
}
