//! The README's "From Rust" example, as a program `cargo test` compiles, so the README cannot
//! show code that does not build: the lines between the README markers below are the README's
//! code block, word for word (the test `the_readme_rust_example_is_the_example_target` checks).
//!
//! Run it against a database with a failed variant:
//! `cargo run --example record_retry -- JOB_ID VARIANT_ID` (with DATABASE_URL set).

// README: begin
use retrylog::event::{NewRetry, RetryReason, Target};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

/// Sets a failed variant back to `done` and records the retry, in one transaction.
async fn retry_failed_variant(pool: &PgPool, job_id: Uuid, variant: Uuid) -> anyhow::Result<i32> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE jobs_variants SET status = 'done', updated_at = now() WHERE job_variants_id = $1",
    )
    .bind(variant)
    .execute(&mut *tx)
    .await?;
    let event = retrylog::store::append(
        &mut tx,
        &NewRetry::new(
            Target::Variant {
                job_id,
                job_variants_id: variant,
            },
            RetryReason::Failed,
            "recovery@host",
        )
        .with_status_change("failed", "done")
        .with_detail(json!({"scenario": "failed", "error": "CUDA out of memory"})),
    )
    .await?;
    tx.commit().await?;
    Ok(event.attempt)
}
// README: end

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")?;
    let mut ids = std::env::args().skip(1).map(|id| id.parse::<Uuid>());
    let (Some(job_id), Some(variant)) = (ids.next(), ids.next()) else {
        anyhow::bail!("usage: record_retry JOB_ID VARIANT_ID");
    };
    let pool = PgPool::connect(&url).await?;
    let attempt = retry_failed_variant(&pool, job_id?, variant?).await?;
    println!("recorded attempt {attempt}");
    Ok(())
}
