//! The watchdog's loop, before any retry exists (it produces the retries that flow into store →
//! projector → report/http): a sweep at start, every `sweep_every` and whenever a failure signal
//! (or a notification on the pipeline's own channel) names a job; each sweep detects every
//! scenario's candidates and retries them in batches of `batch_size`, one transaction each.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Serialize;
use sqlx::postgres::{PgListener, PgNotification};
use sqlx::{PgConnection, PgPool};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::instrument::WithSubscriber;
use uuid::Uuid;

use super::claim::{recover_batch, Outcome, RecoveryError};
use super::scenario::{detect, Candidate, Scenario, Scope, DETECT_BATCH};
use crate::config::WatchdogSettings;
use crate::event::RetryEvent;
use crate::shutdown;

/// What one sweep did, per scenario.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SweepSummary {
    /// Candidates detection found.
    pub detected: usize,
    /// Retries recorded, by scenario.
    pub retried: Vec<(Scenario, RetryEvent)>,
    /// Targets newly noted as needing intervention.
    pub noted: usize,
    /// Candidates left alone (see [`Outcome::Skipped`]).
    pub skipped: usize,
    /// Candidates whose transaction failed and rolled back.
    pub failed: usize,
    /// Earlier retries within the scope whose target has moved on since: decided recovered.
    pub recovered: i64,
}

/// Decides `recovered` for every open retry within `scope` whose target moved on
/// ([`crate::outcome::observe`]); returns how many. A sweep does this first, so a target that
/// moved on and got stuck again is not called retried again.
pub async fn observe_outcomes(
    conn: &mut PgConnection,
    settings: &WatchdogSettings,
    scope: &Scope,
) -> Result<i64, sqlx::Error> {
    let jobs = match scope {
        Scope::Everything => None,
        Scope::Jobs(jobs) => Some(jobs.as_slice()),
    };
    crate::outcome::observe(conn, settings.steps.names(), &settings.instance, jobs).await
}

/// The limit in force: the shared one in `retrylog_settings` or this instance's, the lower.
pub async fn effective_limit(
    conn: &mut PgConnection,
    settings: &WatchdogSettings,
) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT least(max_retries, $1) FROM retrylog_settings")
        .bind(settings.max_retries)
        .fetch_one(conn)
        .await
}

/// Detects and handles every scenario within `scope`, `batch_size` candidates per
/// transaction. Stops early, between two batches, when `shutdown` turns true; a transaction
/// in flight always finishes first.
pub async fn sweep(
    pool: &PgPool,
    settings: &WatchdogSettings,
    scope: &Scope,
    shutdown: &watch::Receiver<bool>,
) -> Result<SweepSummary, RecoveryError> {
    let lost = RecoveryError::ConnectionLost;
    let mut summary = SweepSummary::default();
    // Waiting for a connection while the database is down ends when stopping is requested.
    let mut stop = shutdown.clone();
    let Some(conn) = shutdown::unless_requested(pool.acquire(), &mut stop).await else {
        return Ok(summary);
    };
    // One connection serves the whole sweep: it handles one batch at a time.
    let mut conn = conn.map_err(lost)?;
    let limit = effective_limit(&mut conn, settings).await.map_err(lost)?;
    summary.recovered = observe_outcomes(&mut conn, settings, scope)
        .await
        .map_err(lost)?;
    for scenario in Scenario::ALL {
        loop {
            let candidates = detect(&mut conn, scenario, settings, scope, DETECT_BATCH)
                .await
                .map_err(lost)?;
            summary.detected += candidates.len();
            let mut progressed = false;
            for batch in candidates.chunks(usize::from(settings.batch_size.max(1))) {
                if *shutdown.borrow() {
                    return Ok(summary);
                }
                let outcomes = recover_batch(&mut conn, scenario, batch, settings, limit).await?;
                for (candidate, outcome) in batch.iter().zip(outcomes) {
                    progressed |= tally(&mut summary, scenario, candidate, outcome);
                }
            }
            // A full batch may hide more candidates; stop when a round made no progress, so
            // rows another instance holds are not polled in a loop.
            if (candidates.len() as i64) < DETECT_BATCH || !progressed {
                break;
            }
        }
    }
    Ok(summary)
}

/// Counts one candidate's outcome in `summary`; true when it changed something (a retry, a
/// first note at the limit).
fn tally(
    summary: &mut SweepSummary,
    scenario: Scenario,
    candidate: &Candidate,
    outcome: Result<Outcome, RecoveryError>,
) -> bool {
    match outcome {
        Ok(Outcome::Retried(event)) => {
            summary.retried.push((scenario, *event));
            true
        }
        Ok(Outcome::AtLimit { noted }) => {
            summary.noted += usize::from(noted);
            noted
        }
        Ok(Outcome::Skipped(why)) => {
            tracing::debug!(target = %candidate.target(), %scenario, why, "skipped");
            summary.skipped += 1;
            false
        }
        Err(error) => {
            if let RecoveryError::Refused { source, .. } = &error {
                crate::metrics::append_refused(source);
            }
            tracing::error!(%scenario, error = %error, cause = %error_cause(&error),
                            "retry rolled back");
            summary.failed += 1;
            false
        }
    }
}

/// Writes this instance's limit and channel where every door and the trigger read them, and
/// says when that changed what another instance (or the migration's default) had set.
pub async fn publish_settings(
    pool: &PgPool,
    settings: &WatchdogSettings,
) -> Result<(), sqlx::Error> {
    let previous: Option<(Option<i32>, String)> = sqlx::query_as(
        "UPDATE retrylog_settings s
            SET max_retries = $1, notify_channel = $2, updated_at = now(), updated_by = $3
           FROM (SELECT max_retries, notify_channel FROM retrylog_settings FOR UPDATE) old
          WHERE (old.max_retries, old.notify_channel) IS DISTINCT FROM ($1, $2)
         RETURNING old.max_retries, old.notify_channel",
    )
    .bind(settings.max_retries)
    .bind(&settings.channel)
    .bind(&settings.instance)
    .fetch_optional(pool)
    .await?;
    if let Some((max_retries, channel)) = previous {
        tracing::info!(
            max_retries = settings.max_retries,
            previous_max_retries = max_retries,
            channel = %settings.channel,
            previous_channel = %channel,
            "updated the shared settings every door reads"
        );
    }
    Ok(())
}

/// What woke the watchdog.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Wake {
    /// A row of this job changed.
    Job(Uuid),
    /// Something changed that a job id does not describe, or notifications may have been
    /// lost (the listener reconnected): look at everything.
    Everything,
}

/// How often the watchdog reads the failure signals (migration 0012): a failed target is
/// retried within about this long of its failure committing, plus its sweep.
const FAILURE_POLL: Duration = Duration::from_millis(250);

/// Jobs named by one wake-up round; past this many, one sweep of everything is cheaper.
const MOST_JOBS_PER_WAKE: usize = 1000;

/// Runs the watchdog until `shutdown` turns true: sweeps at start and every `sweep_every`,
/// sweeps the jobs the failure signals name as they appear (and those the pipeline's own
/// channel names, if it listens there), and reconnects with back-off when the database goes
/// away. Errors are logged, never returned.
pub async fn run(pool: PgPool, settings: WatchdogSettings, mut shutdown: watch::Receiver<bool>) {
    let (wake_tx, mut wake_rx) = mpsc::unbounded_channel();
    // The helpers log through whatever subscriber the caller runs `run` under. No LISTEN but
    // on the pipeline's channel: PostgreSQL wakes every listener in the database at the commit
    // of every notifying transaction, whatever its channel (migration 0012).
    let mut helpers = vec![tokio::spawn(
        poll_failures(pool.clone(), wake_tx.clone(), shutdown.clone()).with_current_subscriber(),
    )];
    if let Some(channel) = settings.pipeline_channel.clone() {
        helpers.push(tokio::spawn(
            listen(pool.clone(), channel, wake_tx, shutdown.clone()).with_current_subscriber(),
        ));
    }
    tracing::info!(
        instance = %settings.instance,
        steps = %settings.steps,
        max_retries = settings.max_retries,
        stuck_after = ?settings.stuck_after,
        sweep_every = ?settings.sweep_every,
        channel = %settings.channel,
        pipeline_channel = settings.pipeline_channel.as_deref().unwrap_or("none"),
        error_column = settings.error_column.as_deref().unwrap_or("none"),
        "recovery watchdog started"
    );
    let mut backoff = MIN_BACKOFF;
    let mut next_sweep = Instant::now();
    loop {
        let scope = tokio::select! {
            biased;
            _ = shutdown::requested(&mut shutdown) => break,
            _ = tokio::time::sleep_until(next_sweep) => Scope::Everything,
            Some(wake) = wake_rx.recv() => gather(wake, &mut wake_rx),
        };
        if *shutdown.borrow() {
            break;
        }
        let everything = scope == Scope::Everything;
        let started = Instant::now();
        match sweep(&pool, &settings, &scope, &shutdown).await {
            Ok(summary) => {
                crate::metrics::sweep_finished(everything, started.elapsed(), &summary);
                backoff = MIN_BACKOFF;
                if summary.detected > 0 {
                    tracing::info!(
                        scope = if everything {
                            "everything"
                        } else {
                            "signalled jobs"
                        },
                        detected = summary.detected,
                        retried = summary.retried.len(),
                        noted = summary.noted,
                        skipped = summary.skipped,
                        failed = summary.failed,
                        "sweep done"
                    );
                }
                if everything {
                    next_sweep = Instant::now() + settings.sweep_every;
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, cause = %error_cause(&error), retry_in = ?backoff,
                               "watchdog lost its connection");
                // Whatever happened meanwhile, the sweep after the pause looks at everything.
                next_sweep = Instant::now() + backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    // The helpers stop on the same signal; wait so their connections close cleanly.
    for helper in helpers {
        let _ = helper.await;
    }
    tracing::info!("recovery watchdog stopped");
}

const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

fn error_cause(error: &RecoveryError) -> String {
    std::error::Error::source(error)
        .map(|cause| cause.to_string())
        .unwrap_or_default()
}

/// The scope of one wake-up: `first` and whatever else is already queued.
fn gather(first: Wake, wakes: &mut mpsc::UnboundedReceiver<Wake>) -> Scope {
    let mut jobs = BTreeSet::new();
    let mut everything = false;
    let mut next = Some(first);
    while let Some(wake) = next {
        match wake {
            Wake::Job(job_id) => {
                jobs.insert(job_id);
            }
            Wake::Everything => everything = true,
        }
        next = wakes.try_recv().ok();
    }
    if everything || jobs.len() > MOST_JOBS_PER_WAKE {
        Scope::Everything
    } else {
        Scope::Jobs(jobs.into_iter().collect())
    }
}

/// Every [`FAILURE_POLL`], takes the failure signals the trigger left (`DELETE … RETURNING`:
/// of several instances, one takes each) and wakes a sweep of the jobs they name. Signals wait
/// in their table while the database is away, and the poll backs off like the rest; a poll
/// that failed may have taken some and lost the answer (its connection cut after the commit),
/// so the first poll after a failure asks for a sweep of everything.
async fn poll_failures(
    pool: PgPool,
    wakes: mpsc::UnboundedSender<Wake>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut pause = FAILURE_POLL;
    let mut failed = false;
    loop {
        if shutdown::sleep(pause, &mut shutdown).await {
            return;
        }
        let taken =
            sqlx::query_scalar::<_, Uuid>("DELETE FROM retry_failure_signal RETURNING job_id")
                .fetch_all(&pool);
        let Some(taken) = shutdown::unless_requested(taken, &mut shutdown).await else {
            return;
        };
        match taken {
            Ok(jobs) => {
                pause = FAILURE_POLL;
                let missed = std::mem::take(&mut failed).then_some(Wake::Everything);
                for wake in missed.into_iter().chain(jobs.into_iter().map(Wake::Job)) {
                    if wakes.send(wake).is_err() {
                        return;
                    }
                }
            }
            Err(error) => {
                failed = true;
                pause = (pause * 2).clamp(MIN_BACKOFF, MAX_BACKOFF);
                tracing::warn!(%error, retry_in = ?pause, "could not read the failure signals");
            }
        }
    }
}

/// LISTENs on the pipeline's own `channel` and turns each notification into a [`Wake`].
/// Reconnects with back-off; after every reconnect it asks for a sweep of everything, since
/// notifications sent while it was away are lost.
async fn listen(
    pool: PgPool,
    channel: String,
    wakes: mpsc::UnboundedSender<Wake>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = MIN_BACKOFF;
    let mut first = true;
    while !*shutdown.borrow() {
        let connecting = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(&channel).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let Some(connected) = shutdown::unless_requested(connecting, &mut shutdown).await else {
            return;
        };
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, channel = %channel,
                               "could not listen for pipeline changes");
                if shutdown::sleep(backoff, &mut shutdown).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = MIN_BACKOFF;
        if !first {
            tracing::info!(channel = %channel, "listening again");
            let _ = wakes.send(Wake::Everything);
        }
        first = false;
        loop {
            let Some(received) =
                shutdown::unless_requested(listener.try_recv(), &mut shutdown).await
            else {
                return;
            };
            match received {
                Ok(Some(notification)) => {
                    if wakes.send(wake_for(&notification)).is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    // try_recv reconnected already; what was sent meanwhile is lost.
                    tracing::warn!(channel = %channel, "listener reconnected after losing its connection");
                    let _ = wakes.send(Wake::Everything);
                }
                Err(error) => {
                    tracing::warn!(%error, channel = %channel, "listener lost its connection");
                    break;
                }
            }
        }
    }
}

/// The job a notification names: `job_id` of a JSON payload (a pipeline's own channel may
/// send one, as retrylog's trigger does on its channel). Anything else wakes a sweep of
/// everything.
fn wake_for(notification: &PgNotification) -> Wake {
    serde_json::from_str::<serde_json::Value>(notification.payload())
        .ok()
        .and_then(|payload| payload.get("job_id")?.as_str()?.parse().ok())
        .map_or(Wake::Everything, Wake::Job)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_up_gathers_what_is_queued_and_folds_into_everything() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        tx.send(Wake::Job(b)).unwrap();
        tx.send(Wake::Job(a)).unwrap();
        assert_eq!(gather(Wake::Job(a), &mut rx), Scope::Jobs(vec![a, b]));
        tx.send(Wake::Everything).unwrap();
        assert_eq!(gather(Wake::Job(a), &mut rx), Scope::Everything);
    }

    #[test]
    fn more_jobs_than_one_wake_up_takes_fold_into_a_sweep_of_everything() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let job = |n: usize| Uuid::from_u128(n as u128 + 1);
        // Exactly the batch: each job swept on its own terms.
        for n in 1..MOST_JOBS_PER_WAKE {
            tx.send(Wake::Job(job(n))).unwrap();
        }
        let Scope::Jobs(jobs) = gather(Wake::Job(job(0)), &mut rx) else {
            panic!("{MOST_JOBS_PER_WAKE} jobs are swept one by one");
        };
        assert_eq!(jobs.len(), MOST_JOBS_PER_WAKE);
        // A job named twice counts once.
        for n in 1..MOST_JOBS_PER_WAKE {
            tx.send(Wake::Job(job(n))).unwrap();
        }
        tx.send(Wake::Job(job(0))).unwrap();
        assert!(
            matches!(gather(Wake::Job(job(0)), &mut rx), Scope::Jobs(jobs) if jobs.len() == MOST_JOBS_PER_WAKE)
        );
        // One job more: a sweep of everything.
        for n in 1..=MOST_JOBS_PER_WAKE {
            tx.send(Wake::Job(job(n))).unwrap();
        }
        assert_eq!(gather(Wake::Job(job(0)), &mut rx), Scope::Everything);
        assert!(rx.try_recv().is_err(), "the wake-up took every queued job");
    }
}
