//! The pipeline capability (`retrylog grant pipeline ROLE`, migration 0014): a role holding
//! exactly it does the pipeline's work on jobs and jobs_variants, and every way of writing
//! `retry_count` — the way past the retry limit the old documented grants left open — is
//! refused and writes nothing.

use retrylog::grant::Capability::Pipeline;
use sqlx::PgPool;

use crate::fixtures::*;
use crate::security::{assert_denied, TestRole};

const NEW_JOB: &str = "0f000000-0000-4000-8000-000000000000";
const NEW_VARIANT: &str = "0f000000-0000-4000-8000-000000000001";

#[sqlx::test(migrations = false)]
async fn a_pipeline_role_inserts_advances_and_fails_its_rows(pool: PgPool) {
    pipeline(&pool).await;
    let worker = TestRole::create(&pool, &[Pipeline]).await;

    sqlx::raw_sql(&format!(
        "INSERT INTO jobs (job_id, status, current_step) VALUES ('{NEW_JOB}', 'running', 'prepare');
         INSERT INTO jobs_variants (job_variants_id, job_id, creation_order, status, current_step)
         VALUES ('{NEW_VARIANT}', '{NEW_JOB}', 1, 'running', 'prepare');
         UPDATE jobs_variants SET status = 'done', current_step = 'generate', updated_at = now()
          WHERE job_variants_id = '{NEW_VARIANT}';
         UPDATE jobs SET updated_at = now() WHERE job_id = '{NEW_JOB}';
         UPDATE jobs_variants SET status = 'failed' WHERE job_variants_id = '{NEW_VARIANT}';"
    ))
    .execute(&worker.pool)
    .await
    .expect("the pipeline's own statements");
    let (status, step, count): (String, String, i32) = sqlx::query_as(&format!(
        "SELECT status, current_step, retry_count FROM jobs_variants
          WHERE job_variants_id = '{NEW_VARIANT}'"
    ))
    .fetch_one(&worker.pool)
    .await
    .unwrap();
    assert_eq!(
        (status.as_str(), step.as_str(), count),
        ("failed", "generate", 0)
    );
    // The failure left its signal for the watchdog, through the owner's trigger.
    let signals: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM retry_failure_signal WHERE job_id = '{NEW_JOB}'"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(signals, 1);
}

#[sqlx::test(migrations = false)]
async fn a_pipeline_role_can_set_no_retry_count_and_the_limit_holds(pool: PgPool) {
    pipeline(&pool).await;
    let worker = TestRole::create(&pool, &[Pipeline]).await;
    let before = snapshot(&pool).await;

    assert_denied(
        &worker.pool,
        &[
            &format!(
                "INSERT INTO jobs (job_id, status, retry_count) VALUES ('{NEW_JOB}', 'running', -1000)"
            ),
            &format!(
                "INSERT INTO jobs_variants (job_variants_id, job_id, creation_order, status,
                                            retry_count)
                 VALUES ('{NEW_VARIANT}', '0a000000-0000-4000-8000-000000000000', 9, 'running',
                         -1000)"
            ),
            "UPDATE jobs_variants SET retry_count = -1000",
            "UPDATE jobs SET retry_count = retry_count - 1000",
            "INSERT INTO jobs (job_id, status) VALUES ('0a000000-0000-4000-8000-000000000000', 'running')
             ON CONFLICT (job_id) DO UPDATE SET retry_count = -1000",
            // Setting a count back by deleting the row and inserting it again.
            "DELETE FROM jobs_variants WHERE job_variants_id = '0a000000-0000-4000-8000-000000000002'",
            "TRUNCATE jobs_variants",
            // What names a row and its creation stays as it was.
            "UPDATE jobs_variants SET job_id = '0b000000-0000-4000-8000-000000000000'",
            "UPDATE jobs SET created_at = now()",
            // Nothing of retrylog's.
            "SELECT * FROM record_retry(job_id => '0a000000-0000-4000-8000-000000000000',
                                        reason => 'stuck')",
            "SELECT count(*) FROM retry_history",
            "UPDATE retrylog_settings SET max_retries = NULL",
            "ALTER TABLE jobs DISABLE TRIGGER ALL",
        ],
    )
    .await;
    {
        let mut conn = worker.pool.acquire().await.unwrap();
        let copy = conn
            .copy_in_raw("COPY jobs (job_id, status, retry_count) FROM STDIN")
            .await
            .map(|_| ());
        assert!(copy.is_err(), "COPY into retry_count is refused");
    }
    assert_eq!(snapshot(&pool).await, before, "nothing was written");

    // A2 failed in the fixture: the limit counts its retries from 0, as the log does.
    let a2 = variant(JOB_A, VARIANT_A2);
    for _ in 0..3 {
        append_ok(&pool, &retry(a2)).await;
    }
    let refused = append(&pool, &retry(a2)).await.unwrap_err();
    assert!(
        refused.to_string().contains("retry limit reached"),
        "{refused}"
    );
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn a_column_the_pipeline_adds_is_its_roles_at_the_next_migrate(pool: PgPool) {
    pipeline(&pool).await;
    let worker = TestRole::create(&pool, &[Pipeline]).await;
    sqlx::query("ALTER TABLE jobs_variants ADD COLUMN last_error text")
        .execute(&pool)
        .await
        .unwrap();
    let update = "UPDATE jobs_variants SET last_error = 'CUDA out of memory'";
    assert_denied(&worker.pool, &[update]).await;

    migrated(&pool).await;
    sqlx::query(update)
        .execute(&worker.pool)
        .await
        .expect("the new column is the pipeline's after migrate");
    assert_denied(&worker.pool, &["UPDATE jobs_variants SET retry_count = 0"]).await;
}

#[sqlx::test(migrations = false)]
async fn retrylog_grant_pipeline_makes_the_role_a_member_and_says_so(pool: PgPool) {
    migrated(&pool).await;
    let worker = TestRole::create(&pool, &[]).await;
    let run = retrylog(&pool, &["grant", "pipeline", &worker.name]).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(
        run.stdout
            .contains(&format!("GRANT retrylog_pipeline TO {}", worker.name)),
        "{run:#?}"
    );
    let run = retrylog(&pool, &["grant", "pipeline", "retrylog_pipeline"]).await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(run.stderr.contains("is a capability role"), "{run:#?}");
}
