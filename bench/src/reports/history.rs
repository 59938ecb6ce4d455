//! A variant's history measured: `store::load_variant_history_filtered` (what `retrylog
//! history --variant-id` runs) for random variants, each read timed on its own, beside one
//! indexed SELECT of the stream (`store::load_stream`); both must read the same events.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

use retrylog::event::Target;
use retrylog::store::{self, HistoryFilter};

use crate::figures::percentile;
use crate::progress;

/// A variant's history at one stage.
#[derive(Debug)]
pub struct HistoryFigure {
    pub variants: usize,
    /// Events read in all, over the sample.
    pub events: usize,
    pub ours: [Duration; 2],
    pub stream: [Duration; 2],
}

/// Reads the history of `count` random variants, each timed on its own, through the
/// command's function and through one SELECT of the stream, taking turns on one connection.
pub async fn measure_history(pool: &PgPool, count: u32) -> anyhow::Result<HistoryFigure> {
    let mut conn = pool.acquire().await?;
    let sample: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT job_variants_id, job_id FROM jobs_variants ORDER BY random() LIMIT $1",
    )
    .bind(i64::from(count))
    .fetch_all(&mut *conn)
    .await?;
    anyhow::ensure!(!sample.is_empty(), "no variant to read the history of");
    let filter = HistoryFilter::default();
    // Untimed: prepares both statements on this connection.
    let (variant, job) = sample[0];
    store::load_variant_history_filtered(&mut conn, variant, &filter).await?;
    store::load_stream(
        &mut conn,
        Target::Variant {
            job_id: job,
            job_variants_id: variant,
        },
    )
    .await?;

    let progress = progress::spinner();
    progress.set_message(format!("history of {} random variants", sample.len()));
    let mut ours = Vec::with_capacity(sample.len());
    let mut stream = Vec::with_capacity(sample.len());
    let mut events = 0;
    for (index, &(variant, job)) in sample.iter().enumerate() {
        let mut read = [Vec::new(), Vec::new()];
        for turn in 0..2 {
            if (turn + index) % 2 == 0 {
                let started = Instant::now();
                read[0] = store::load_variant_history_filtered(&mut conn, variant, &filter).await?;
                ours.push(started.elapsed());
            } else {
                let started = Instant::now();
                read[1] = store::load_stream(
                    &mut conn,
                    Target::Variant {
                        job_id: job,
                        job_variants_id: variant,
                    },
                )
                .await?;
                stream.push(started.elapsed());
            }
        }
        anyhow::ensure!(
            read[0] == read[1],
            "the history of variant {variant} differs from its stream"
        );
        events += read[0].len();
    }
    progress.finish_and_clear();
    Ok(HistoryFigure {
        variants: sample.len(),
        events,
        ours: [percentile(&mut ours, 0.50), percentile(&mut ours, 0.99)],
        stream: [percentile(&mut stream, 0.50), percentile(&mut stream, 0.99)],
    })
}
