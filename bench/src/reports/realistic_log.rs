//! The reports benchmark's log: realistic rather than uniform. Jobs of 4 variants created
//! over the last 30 UTC days, every variant retried 1–8 times (about 3.9 on average), a fifth
//! of the jobs retried at job level too; each retry some minutes to hours after the previous
//! one; reasons, steps and scenarios varied the way the watchdog and operators produce them;
//! the events in `occurred_at` order.

use anyhow::Context;
use chrono::{DateTime, Utc};
use rand::distributions::{Distribution, WeightedIndex};
use rand::rngs::StdRng;
use rand::Rng;
use uuid::Uuid;

use retrylog::event::RetryReason;
use retrylog::report::Bucket;

use super::WINDOW_DAYS;
use crate::log::{EventKind, GeneratedLog, PlannedEvent, Stream};
use crate::pipeline::{PipelineRows, VARIANTS_PER_JOB};

/// The shape of the generated log: events per variant stream 1..=8 with these weights (mean
/// 3.88); the share of jobs with job-level events, and how many (1 or 2).
const VARIANT_EVENTS_WEIGHTS: [u32; 8] = [14, 17, 17, 15, 13, 10, 8, 6];
const JOBS_WITH_JOB_EVENTS: f64 = 0.2;

/// Variant retries: reason, scenario (the detail as PostgreSQL prints it), the status the
/// variant was retried from, and how often, out of 100.
const VARIANT_RETRIES: [(RetryReason, &str, &str, u32); 4] = [
    (RetryReason::Stuck, r#"{"scenario": "lagging"}"#, "done", 40),
    (RetryReason::Stuck, r#"{"scenario": "stale"}"#, "done", 15),
    (
        RetryReason::Failed,
        r#"{"scenario": "failed"}"#,
        "failed",
        35,
    ),
    // An operator's re-run: no scenario.
    (RetryReason::ManualRecovery, "{}", "failed", 10),
];
/// The steps variants are retried at, and how often, out of 100.
const VARIANT_STEPS: [(&str, u32); 3] = [("prepare", 20), ("generate", 50), ("segment", 30)];
/// Job-level retries: the watchdog's final-step recovery, or an operator's re-run of the job
/// (no step, no scenario); how often, out of 100.
const JOB_RETRIES: [(EventKind, u32); 2] = [
    (
        EventKind {
            reason: RetryReason::ManualRecovery,
            step: Some("iou_eval"),
            from_status: "running",
            to_status: "done",
            detail: r#"{"scenario": "final_step"}"#,
        },
        70,
    ),
    (
        EventKind {
            reason: RetryReason::ManualRecovery,
            step: None,
            from_status: "failed",
            to_status: "running",
            detail: "{}",
        },
        30,
    ),
];

/// Retry gaps, in seconds: the first retry of a target this long after its creation, each
/// later one this long after the previous (the watchdog's stuck threshold is 5 minutes).
const FIRST_GAP: std::ops::Range<i64> = 300..7_200;
const NEXT_GAP: std::ops::Range<i64> = 300..14_400;

/// `total` events of new jobs created over the current UTC day and the 29 before it, up to
/// `end`, in `occurred_at` order (see the module's documentation for the shape).
pub fn realistic_log(
    total: u64,
    end: DateTime<Utc>,
    rng: &mut StdRng,
) -> anyhow::Result<GeneratedLog> {
    let start = Bucket::Day.start_of(end) - chrono::Duration::days(WINDOW_DAYS - 1);
    let (start, end) = (start.timestamp_micros(), end.timestamp_micros());

    // Kinds 0.. are the variant retries, scenario-major; the job retries follow.
    let mut kinds = Vec::new();
    for (reason, detail, from_status, _) in VARIANT_RETRIES {
        for (step, _) in VARIANT_STEPS {
            kinds.push(EventKind {
                reason,
                step: Some(step),
                from_status,
                to_status: "done",
                detail,
            });
        }
    }
    let job_kinds = kinds.len();
    kinds.extend(JOB_RETRIES.iter().map(|(kind, _)| *kind));
    let retries = WeightedIndex::new(VARIANT_RETRIES.map(|(.., weight)| weight))?;
    let steps = WeightedIndex::new(VARIANT_STEPS.map(|(_, weight)| weight))?;
    let job_retries = WeightedIndex::new(JOB_RETRIES.map(|(_, weight)| weight))?;
    let lengths = WeightedIndex::new(VARIANT_EVENTS_WEIGHTS)?;

    let mut rows = PipelineRows::default();
    let mut planner = Planner {
        total,
        end,
        streams: Vec::new(),
        events: Vec::with_capacity(total as usize),
    };
    while !planner.full() {
        let job_id = Uuid::new_v4();
        let created = rng.gen_range(start..end);
        rows.jobs.push(job_id);
        rows.job_created.push(micros(created)?);
        for order in 0..VARIANTS_PER_JOB {
            let variant = Uuid::new_v4();
            let variant_created = (created + rng.gen_range(0..60_000_000)).min(end);
            rows.variants.push(variant);
            rows.owners.push(job_id);
            rows.orders.push(order as i32);
            rows.variant_created.push(micros(variant_created)?);
            let wanted = lengths.sample(rng) + 1;
            planner.stream(
                rng,
                Stream::new(job_id, Some(variant)),
                variant_created,
                wanted,
                |rng| retries.sample(rng) * VARIANT_STEPS.len() + steps.sample(rng),
            )?;
        }
        if rng.gen_bool(JOBS_WITH_JOB_EVENTS) {
            let wanted = rng.gen_range(1..=2);
            planner.stream(rng, Stream::new(job_id, None), created, wanted, |rng| {
                job_kinds + job_retries.sample(rng)
            })?;
        }
    }
    // Log order is time order; a stream's events keep their attempt order (their times
    // strictly increase).
    let Planner {
        streams,
        mut events,
        ..
    } = planner;
    events.sort_unstable();
    Ok(GeneratedLog {
        rows,
        streams,
        kinds,
        events,
    })
}

/// The streams and events of a log being generated.
struct Planner {
    /// Events wanted in all.
    total: u64,
    /// No event occurs after this (microseconds).
    end: i64,
    streams: Vec<Stream>,
    events: Vec<PlannedEvent>,
}

impl Planner {
    fn full(&self) -> bool {
        self.events.len() as u64 >= self.total
    }

    /// Adds a stream of `wanted` events (fewer if the log is full before), the first some
    /// time after `created`, each later one some time after the previous; `kind` picks what
    /// each event says.
    fn stream(
        &mut self,
        rng: &mut StdRng,
        stream: Stream,
        created: i64,
        wanted: usize,
        mut kind: impl FnMut(&mut StdRng) -> usize,
    ) -> anyhow::Result<()> {
        let wanted = wanted.min((self.total - self.events.len() as u64) as usize);
        if wanted == 0 {
            return Ok(());
        }
        let index = u32::try_from(self.streams.len()).context("too many streams")?;
        self.streams.push(stream);
        let mut at = created;
        for attempt in 1..=wanted {
            let gap = if attempt == 1 { FIRST_GAP } else { NEXT_GAP };
            let mut next = at + rng.gen_range(gap) * 1_000_000 + rng.gen_range(0..1_000_000);
            if next > self.end {
                // Near the end of the window: squeeze the rest in before it.
                next = at + (self.end - at) / 2;
            }
            at = next.max(at + 1);
            self.events.push(PlannedEvent {
                occurred_micros: at,
                stream: index,
                attempt: u16::try_from(attempt)?,
                kind: u16::try_from(kind(rng))?,
            });
        }
        Ok(())
    }
}

fn micros(at: i64) -> anyhow::Result<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp_micros(at).context("timestamp out of range")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rand::SeedableRng;

    use super::*;

    #[test]
    fn the_realistic_log_has_the_promised_shape() {
        let end = DateTime::parse_from_rfc3339("2026-11-26T06:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let log = realistic_log(50_000, end, &mut StdRng::seed_from_u64(7)).unwrap();
        assert_eq!(log.events.len(), 50_000);
        assert_eq!(
            log.rows.variants.len(),
            log.rows.jobs.len() * VARIANTS_PER_JOB
        );
        let created: HashMap<Uuid, DateTime<Utc>> = log
            .rows
            .variants
            .iter()
            .copied()
            .zip(log.rows.variant_created.iter().copied())
            .chain(
                log.rows
                    .jobs
                    .iter()
                    .copied()
                    .zip(log.rows.job_created.iter().copied()),
            )
            .collect();
        let start = Bucket::Day.start_of(end) - chrono::Duration::days(WINDOW_DAYS - 1);
        let mut last_attempt = vec![0u16; log.streams.len()];
        let mut variant_events = 0;
        for pair in log.events.windows(2) {
            assert!(pair[0].occurred_micros <= pair[1].occurred_micros);
        }
        for event in &log.events {
            let stream = &log.streams[event.stream as usize];
            // Attempts 1, 2, ... in log order.
            assert_eq!(event.attempt, last_attempt[event.stream as usize] + 1);
            last_attempt[event.stream as usize] = event.attempt;
            let at = micros(event.occurred_micros).unwrap();
            let target = stream.job_variants_id.unwrap_or(stream.job_id);
            assert!(
                at > created[&target],
                "an event before its target was created"
            );
            assert!(at >= start && at <= end + chrono::Duration::seconds(1));
            // Job-level events are at the final step or at none; variants' at the others.
            let kind = log.kinds[usize::from(event.kind)];
            let job_level = kind.step == Some("iou_eval") || kind.step.is_none();
            assert_eq!(job_level, stream.job_variants_id.is_none());
            if stream.job_variants_id.is_some() {
                variant_events += 1;
            }
        }
        assert!(last_attempt.iter().all(|&n| (1..=8).contains(&n)));
        let variant_streams = log
            .streams
            .iter()
            .filter(|s| s.job_variants_id.is_some())
            .count();
        let mean = variant_events as f64 / variant_streams as f64;
        assert!((3.6..4.2).contains(&mean), "mean events per variant {mean}");
        // Every reason, step and scenario occurs.
        let used: std::collections::BTreeSet<u16> = log.events.iter().map(|e| e.kind).collect();
        assert_eq!(used.len(), log.kinds.len());
    }
}
