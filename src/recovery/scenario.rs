//! The watchdog's four scenarios, where a retry starts (before store → projector →
//! report/http): each one SQL condition over the pipeline tables, run unlocked by [`detect`]
//! to find candidates and locked by the claim (`claim.rs`) to take one.

use serde::Serialize;
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::config::WatchdogSettings;
use crate::event::{RetryReason, Target};

/// Why the watchdog retries a target. Stored as `detail.scenario` of the event.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    strum::Display,
    strum::EnumString,
    strum::AsRefStr,
    strum::EnumIter,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Scenario {
    /// A variant is `failed` while its job runs (or failed) at a managed step: set it back to
    /// `done` at its step so that step re-runs.
    Failed,
    /// A variant is `done` at an earlier step than its running job and has sat still for
    /// `stuck_after`: touch it so the pipeline advances it.
    Lagging,
    /// A variant is `done`, not behind its job, has sat still for `stuck_after`, and another
    /// variant of the job has moved further: touch it.
    Stale,
    /// A job runs at the final step, all its variants are done there, and nothing has moved
    /// for `stuck_after`: set the job `done`. A job-level retry.
    FinalStep,
}

impl Scenario {
    /// Every scenario, in the order a sweep handles them.
    pub const ALL: [Scenario; 4] = [
        Scenario::Failed,
        Scenario::Lagging,
        Scenario::Stale,
        Scenario::FinalStep,
    ];

    /// The reason its retries are recorded with.
    pub fn reason(self) -> RetryReason {
        match self {
            Scenario::Failed => RetryReason::Failed,
            Scenario::Lagging | Scenario::Stale => RetryReason::Stuck,
            Scenario::FinalStep => RetryReason::ManualRecovery,
        }
    }

    /// The condition as SQL over `$1` (the steps, text[]) and `$2` (stuck_after in seconds),
    /// followed by `scope`, a condition on `j` (the job) or `v` (the variant).
    fn sql(self, scope: &str) -> String {
        match self {
            Scenario::Failed => format!(
                "{}
                   FROM jobs j JOIN jobs_variants v ON v.job_id = j.job_id
                  WHERE v.status = 'failed'
                    AND j.status IN ('running', 'failed')
                    AND array_position($1::text[], j.current_step) IS NOT NULL
                    AND array_position($1::text[], v.current_step) IS NOT NULL
                    -- failed needs no idle time; this only gives $2 its type
                    AND $2::float8 IS NOT NULL
                    {NOT_NOTED_VARIANT} {scope}",
                variant_columns(false)
            ),
            Scenario::Lagging => format!(
                "{}
                   FROM jobs j JOIN jobs_variants v ON v.job_id = j.job_id
                  WHERE j.status = 'running' AND v.status = 'done'
                    AND array_position($1::text[], v.current_step)
                        < array_position($1::text[], j.current_step)
                    AND v.updated_at <= now() - make_interval(secs => $2::float8)
                    {NOT_NOTED_VARIANT} {scope}",
                variant_columns(false)
            ),
            Scenario::Stale => format!(
                "{}
                   FROM jobs j JOIN jobs_variants v ON v.job_id = j.job_id
                   CROSS JOIN LATERAL (
                       -- the furthest sibling, and (the window runs before the LIMIT) how
                       -- many are ahead at all
                       SELECT o.job_variants_id, o.current_step,
                              count(*) OVER ()::int AS siblings
                         FROM jobs_variants o
                        WHERE o.job_id = v.job_id AND o.job_variants_id <> v.job_variants_id
                          AND array_position($1::text[], o.current_step)
                              > array_position($1::text[], v.current_step)
                        ORDER BY array_position($1::text[], o.current_step) DESC,
                                 o.job_variants_id
                        LIMIT 1) ahead
                  WHERE j.status = 'running' AND v.status = 'done'
                    AND array_position($1::text[], v.current_step)
                        >= array_position($1::text[], j.current_step)
                    AND v.updated_at <= now() - make_interval(secs => $2::float8)
                    -- implied by the lateral; as a semi-join the plan finds the few variants
                    -- with a sibling ahead at all (hashing every variant once, or probing
                    -- each by job) before it runs the lateral's sort for each of them
                    AND EXISTS (
                        SELECT 1 FROM jobs_variants o
                         WHERE o.job_id = v.job_id
                           AND array_position($1::text[], o.current_step)
                               > array_position($1::text[], v.current_step))
                    {NOT_NOTED_VARIANT} {scope}",
                variant_columns(true)
            ),
            Scenario::FinalStep => format!(
                "SELECT j.job_id, NULL::uuid AS job_variants_id, j.status AS job_status,
                        j.current_step AS job_step, j.status, j.current_step AS step,
                        extract(epoch FROM now() - greatest(j.updated_at, agg.last_update))::float8
                            AS idle_seconds,
                        j.retry_count,
                        (SELECT h.attempt FROM retry_history h
                          WHERE h.job_id = j.job_id AND h.job_variants_id IS NULL
                          ORDER BY h.attempt DESC LIMIT 1) AS last_attempt,
                        NULL::uuid AS ahead_variant_id, NULL::text AS ahead_step,
                        NULL::int AS siblings_ahead, agg.variants
                   FROM jobs j
                   CROSS JOIN LATERAL (
                       SELECT count(*)::int AS variants,
                              count(*) FILTER (WHERE o.status = 'done'
                                  AND o.current_step = j.current_step)::int AS finished,
                              max(o.updated_at) AS last_update
                         FROM jobs_variants o WHERE o.job_id = j.job_id) agg
                  WHERE j.status = 'running'
                    AND j.current_step = ($1::text[])[cardinality($1::text[])]
                    AND agg.variants > 0 AND agg.finished = agg.variants
                    -- implied by the next condition; lets the plan drop jobs before their
                    -- variants are aggregated
                    AND j.updated_at <= now() - make_interval(secs => $2::float8)
                    AND greatest(j.updated_at, agg.last_update)
                        <= now() - make_interval(secs => $2::float8)
                    AND NOT EXISTS (
                        SELECT 1 FROM retry_intervention i
                         WHERE i.job_id = j.job_id AND i.job_variants_id IS NULL
                           AND i.retry_count = j.retry_count)
                    {scope}"
            ),
        }
    }

    /// Detection: the candidates among every managed job, or among `jobs` (`$3`) when
    /// `scoped`. The exact query [`detect`] runs, with its parameters `$1`–`$4` unbound: the
    /// steps, `stuck_after` in seconds, the jobs, the batch size.
    pub fn detect_sql(self, scoped: bool) -> String {
        let scope = if scoped { "AND j.job_id = ANY($3)" } else { "" };
        let order = match self {
            Scenario::FinalStep => "j.updated_at",
            _ => "v.updated_at",
        };
        format!("{} ORDER BY {order} LIMIT $4", self.sql(scope))
    }

    /// Every target some scenario would pick up now, as `(job_id, job_variants_id,
    /// retry_count)` rows (`job_variants_id` NULL for a job), over `$1` (the steps) and `$2` (stuck_after in
    /// seconds): the targets page's `stuck` state, the detection's own conditions without
    /// its order and batch limit, so the two cannot disagree. When `scoped`, only among the
    /// jobs of `$3` (uuid[]), as a scoped detection reads them.
    pub fn candidates_sql(scoped: bool) -> String {
        let scope = if scoped { "AND j.job_id = ANY($3)" } else { "" };
        Scenario::ALL
            .iter()
            .map(|scenario| {
                format!(
                    "SELECT c.job_id, c.job_variants_id, c.retry_count FROM ({}) c",
                    scenario.sql(scope)
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ")
    }

    /// Claim: the same condition for the one target `$3`, locking its row unless another
    /// transaction holds it. NO KEY UPDATE, the lock `record_retry` takes as well, so a
    /// pipeline inserting variants (a key-share lock on the job) is not held up.
    pub(super) fn claim_sql(self) -> String {
        match self {
            Scenario::FinalStep => format!(
                "{} FOR NO KEY UPDATE OF j SKIP LOCKED",
                self.sql("AND j.job_id = $3")
            ),
            _ => format!(
                "{} FOR NO KEY UPDATE OF v SKIP LOCKED",
                self.sql("AND v.job_variants_id = $3")
            ),
        }
    }

    /// Claim of a batch: [`Scenario::claim_sql`] for every target of `$3` (their ids, uuid[])
    /// at once; a target another transaction holds, or no longer in the condition, is not
    /// returned.
    pub(super) fn claim_many_sql(self) -> String {
        match self {
            Scenario::FinalStep => format!(
                "{} FOR NO KEY UPDATE OF j SKIP LOCKED",
                self.sql("AND j.job_id = ANY($3)")
            ),
            _ => format!(
                "{} FOR NO KEY UPDATE OF v SKIP LOCKED",
                self.sql("AND v.job_variants_id = ANY($3)")
            ),
        }
    }

    /// The state change of a batch, over `$1` (the targets' ids, uuid[]).
    pub(super) fn state_change_many_sql(self) -> String {
        self.state_change_sql().replace("= $1", "= ANY($1)")
    }

    /// The state change that is the retry, over `$1` (the target's id).
    pub(super) fn state_change_sql(self) -> &'static str {
        match self {
            Scenario::Failed => {
                "UPDATE jobs_variants SET status = 'done', updated_at = now()
                  WHERE job_variants_id = $1"
            }
            Scenario::Lagging | Scenario::Stale => {
                "UPDATE jobs_variants SET updated_at = now() WHERE job_variants_id = $1"
            }
            Scenario::FinalStep => {
                "UPDATE jobs SET status = 'done', updated_at = now() WHERE job_id = $1"
            }
        }
    }

    /// The status the state change sets.
    pub(super) fn to_status(self) -> &'static str {
        "done"
    }
}

/// The columns every variant scenario reads. Only the stale scenario has a variant `ahead`.
fn variant_columns(ahead: bool) -> String {
    let (ahead_id, ahead_step, siblings) = if ahead {
        (
            "ahead.job_variants_id",
            "ahead.current_step",
            "ahead.siblings",
        )
    } else {
        ("NULL::uuid", "NULL::text", "NULL::int")
    };
    format!(
        "SELECT v.job_id, v.job_variants_id, j.status AS job_status,
                j.current_step AS job_step, v.status, v.current_step AS step,
                extract(epoch FROM now() - v.updated_at)::float8 AS idle_seconds,
                v.retry_count,
                (SELECT h.attempt FROM retry_history h
                  WHERE h.job_id = v.job_id AND h.job_variants_id = v.job_variants_id
                  ORDER BY h.attempt DESC LIMIT 1) AS last_attempt,
                {ahead_id} AS ahead_variant_id, {ahead_step} AS ahead_step,
                {siblings} AS siblings_ahead, NULL::int AS variants"
    )
}

/// A variant already noted at its current count is not a candidate again: the note stands
/// until a retry (an operator's) changes the count.
const NOT_NOTED_VARIANT: &str = "AND NOT EXISTS (
        SELECT 1 FROM retry_intervention i
         WHERE i.job_id = v.job_id AND i.job_variants_id = v.job_variants_id
           AND i.retry_count = v.retry_count)";

/// A target in a scenario's condition, with the facts that put it there.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Candidate {
    pub job_id: Uuid,
    /// `None` for the job-level final-step scenario.
    pub job_variants_id: Option<Uuid>,
    pub job_status: String,
    pub job_step: Option<String>,
    /// The target's status and step.
    pub status: String,
    pub step: Option<String>,
    /// Seconds since the target (for final_step: anything in the job) was last updated.
    pub idle_seconds: f64,
    pub retry_count: i32,
    /// The last attempt in the target's stream when detection read it.
    pub last_attempt: Option<i32>,
    /// Stale: the variant that moved furthest, and its step.
    pub ahead_variant_id: Option<Uuid>,
    pub ahead_step: Option<String>,
    /// Stale: how many of the variant's siblings are at a later step.
    pub siblings_ahead: Option<i32>,
    /// Final step: how many variants the job has.
    pub variants: Option<i32>,
}

impl Candidate {
    /// The stream a retry of this candidate joins.
    pub fn target(&self) -> Target {
        Target::from_columns(self.job_id, self.job_variants_id)
    }

    /// The event's `detail`: the scenario and the facts that triggered it.
    pub(super) fn detail(
        &self,
        scenario: Scenario,
        settings: &WatchdogSettings,
    ) -> serde_json::Value {
        let mut detail = json!({
            "scenario": scenario,
            "job_status": self.job_status,
            "job_step": self.job_step,
            "idle_seconds": self.idle_seconds.round() as i64,
            "stuck_after_seconds": settings.stuck_after.as_secs(),
        });
        let fields = detail.as_object_mut().expect("a JSON object");
        if self.job_variants_id.is_some() {
            fields.insert("variant_step".into(), json!(self.step));
        }
        if let Some(ahead) = &self.ahead_variant_id {
            fields.insert("ahead_variant_id".into(), json!(ahead));
            fields.insert("ahead_step".into(), json!(self.ahead_step));
        }
        if let Some(siblings) = self.siblings_ahead {
            fields.insert("siblings_ahead".into(), json!(siblings));
        }
        if let Some(variants) = self.variants {
            fields.insert("variants_done".into(), json!(variants));
        }
        detail
    }
}

/// Which jobs a sweep looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every job at a managed step: the periodic sweep.
    Everything,
    /// Only these jobs: the ones notifications named.
    Jobs(Vec<Uuid>),
}

/// Candidates one detection query returns at most; a sweep repeats while a round is full.
pub const DETECT_BATCH: i64 = 1000;

/// Reads the candidates of `scenario` within `scope`, longest idle first.
pub async fn detect(
    conn: &mut PgConnection,
    scenario: Scenario,
    settings: &WatchdogSettings,
    scope: &Scope,
    limit: i64,
) -> Result<Vec<Candidate>, sqlx::Error> {
    let jobs = match scope {
        Scope::Everything => None,
        Scope::Jobs(jobs) => Some(jobs.as_slice()),
    };
    sqlx::query_as(&scenario.detect_sql(jobs.is_some()))
        .bind(settings.steps.names())
        .bind(settings.stuck_after.as_secs_f64())
        .bind(jobs)
        .bind(limit)
        .fetch_all(conn)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_scenario_records_its_reason() {
        assert_eq!(Scenario::Failed.reason(), RetryReason::Failed);
        assert_eq!(Scenario::Lagging.reason(), RetryReason::Stuck);
        assert_eq!(Scenario::Stale.reason(), RetryReason::Stuck);
        assert_eq!(Scenario::FinalStep.reason(), RetryReason::ManualRecovery);
        assert_eq!(Scenario::FinalStep.to_string(), "final_step");
    }
}
