//! `retrylog-bench footprint`: the pipeline's own writes with retrylog installed and its
//! watchdog running, against the same writes on a twin database without retrylog — the real
//! "before" (`twin.rs`), created in the same run on the same server.
//!
//! 1. Both databases get the same jobs (running at `generate`) and variants (done there).
//! 2. The retrylog database runs what `serve` runs on it, with default settings: the
//!    watchdog (`recovery::run`: it polls the failure signals every 250 ms, holds no LISTEN,
//!    and sweeps every 30 s) and the projector (`projector::run`: it polls the log every
//!    second and recounts the targets created from the pipeline's rows every 60 s).
//! 3. Five statements the pipeline makes — the original counter bump, a heartbeat touch, a
//!    status change running ↔ done, a step change, a job inserted with four variants — each
//!    at every `--connections` count, in slices that alternate between the two databases
//!    (the order flips every slice), so a burst of machine noise hits both alike.
//!    The pipeline's four statements run as a LOGIN role made for the run that holds exactly
//!    the pipeline capability (`retrylog grant pipeline`) in the retrylog database and, in the
//!    twin, the table rights the pipeline had before (SELECT, INSERT, UPDATE); the counter bump,
//!    which no pipeline role may make with retrylog, runs as the bench's own role on both sides.
//! 4. Twice: as the tables come (world "plain"), and with a pipeline NOTIFY trigger of the
//!    pipeline's own on both databases (world "pipeline notifies"), a per-row NOTIFY like the
//!    one a pipeline whose workers listen for their rows' changes uses to react to touches.
//!
//! The goal: every ratio ≥ 0.95 (docs/performance.md, "Footprint").

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use rand::Rng;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use retrylog::cli::FormatArg;
use retrylog::config::WatchdogSettings;
use retrylog::connect::Connected;
use retrylog::projector::{self, ProjectorSettings};
use retrylog::recovery;

use crate::database::{fresh_database, in_bench_database, print_server};
use crate::figures::{figure_table, Goal, Line, Unit};
use crate::pipeline::{insert_pipeline_rows, PipelineRows, VARIANTS_PER_JOB};
use crate::slices::{count_commits, open_pool, SliceArgs};
use crate::twin::{fresh_twin, holds_retrylog_objects, release_twin};
use crate::{progress, ACTOR};

/// `retrylog-bench footprint`.
///
/// Runs in two scratch databases on the configured server, retrylog_bench (retrylog
/// installed, its watchdog and projector running) and retrylog_bench_before (the
/// counter-only schema, no retrylog object), both dropped at the end.
#[derive(Debug, Args)]
pub struct FootprintArgs {
    #[command(flatten)]
    pub slices: SliceArgs,

    /// Variants in each database before the run (in jobs of four).
    #[arg(long, default_value_t = 40_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(4..=10_000_000))]
    pub variants: u64,

    /// Keep both databases at the end, for inspection.
    #[arg(long)]
    pub keep: bool,

    /// Attribution run: drop retrylog's BRIN indexes on `created_at` (migration 0010, what
    /// the projector recounts the targets created through) in the retrylog database, to see
    /// what they cost the pipeline's writes.
    #[arg(long)]
    pub without_created_index: bool,

    #[command(flatten)]
    pub format: FormatArg,
}

impl FootprintArgs {
    /// `--smoke`: one second at 2 connections, no warm-up, 400 variants.
    pub fn smoke(&mut self) {
        self.slices.smoke();
        self.variants = 400;
    }
}

/// The pipeline's statements, measured one at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Statement {
    CounterBump,
    Heartbeat,
    StatusChange,
    StepChange,
    InsertJob,
}

impl Statement {
    const ALL: [Statement; 5] = [
        Statement::CounterBump,
        Statement::Heartbeat,
        Statement::StatusChange,
        Statement::StepChange,
        Statement::InsertJob,
    ];

    fn label(self) -> &'static str {
        match self {
            Statement::CounterBump => "counter bump",
            Statement::Heartbeat => "heartbeat touch",
            Statement::StatusChange => "status running <-> done",
            Statement::StepChange => "step change",
            Statement::InsertJob => "insert a job + 4 variants",
        }
    }

    /// The statement over `$1`, a variant (for the insert: the new job, and `$2` its
    /// variants).
    fn sql(self) -> &'static str {
        match self {
            Statement::CounterBump => {
                "UPDATE jobs_variants SET retry_count = retry_count + 1, updated_at = now()
                  WHERE job_variants_id = $1"
            }
            Statement::Heartbeat => {
                "UPDATE jobs_variants SET updated_at = now() WHERE job_variants_id = $1"
            }
            Statement::StatusChange => {
                "UPDATE jobs_variants
                    SET status = CASE status WHEN 'running' THEN 'done' ELSE 'running' END,
                        updated_at = now()
                  WHERE job_variants_id = $1"
            }
            Statement::StepChange => {
                "UPDATE jobs_variants
                    SET current_step = CASE current_step WHEN 'generate' THEN 'segment'
                                                         ELSE 'generate' END,
                        updated_at = now()
                  WHERE job_variants_id = $1"
            }
            Statement::InsertJob => {
                "INSERT INTO jobs (job_id, status, current_step) VALUES ($1, 'running', 'prepare')"
            }
        }
    }
}

/// The variants of a job the insert creates, in the same transaction as the job.
const INSERT_VARIANTS: &str = "INSERT INTO jobs_variants
        (job_variants_id, job_id, creation_order, status, current_step)
    SELECT id, $1, (n - 1)::int, 'running', 'prepare'
      FROM unnest($2::uuid[]) WITH ORDINALITY AS v(id, n)";

/// Whether the pipeline has a NOTIFY trigger of its own, in both databases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum World {
    Plain,
    PipelineNotifies,
}

impl World {
    fn label(self) -> &'static str {
        match self {
            World::Plain => "plain",
            World::PipelineNotifies => "pipeline notifies",
        }
    }
}

/// The pipeline's own change trigger of world "pipeline notifies": a per-row NOTIFY on every
/// insert and update, the shape a pipeline whose workers listen for their rows' changes uses to
/// react to a touch.
const PIPELINE_TRIGGER: &str = include_str!("../pgbench/pipeline-notify.sql");

/// The goal every line is held to.
const GOAL: f64 = 0.95;

/// One statement at one connection count in one world: commits per second on each side.
#[derive(Debug, Clone, Copy)]
struct Figure {
    world: World,
    statement: Statement,
    connections: u32,
    without: f64,
    with: f64,
}

/// The variants the updates pick from: the same ids in both databases.
type Targets = Arc<Vec<Uuid>>;

/// The LOGIN role the pipeline's statements run as, made for one run (roles are cluster-wide:
/// its name is the run's own) and dropped at its end.
struct PipelineRole {
    name: String,
    /// A random password, for a server that does not trust local logins.
    password: String,
}

impl PipelineRole {
    /// Creates the role: the pipeline capability in the retrylog database, and in the twin
    /// the rights the pipeline's roles had before retrylog (the old documented recipe).
    async fn create(with: &PgPool, without: &PgPool) -> anyhow::Result<PipelineRole> {
        let role = PipelineRole {
            name: format!(
                "retrylog_bench_pipeline_{}",
                &Uuid::new_v4().simple().to_string()[..8]
            ),
            password: Uuid::new_v4().simple().to_string(),
        };
        sqlx::query(&format!(
            "CREATE ROLE {} LOGIN PASSWORD '{}'",
            role.name, role.password
        ))
        .execute(with)
        .await
        .context("creating the pipeline's role (the bench's role needs CREATEROLE)")?;
        let mut conn = with.acquire().await?;
        retrylog::grant::grant(&mut conn, retrylog::grant::Capability::Pipeline, &role.name)
            .await
            .context("granting the pipeline capability")?;
        sqlx::query(&format!(
            "GRANT SELECT, INSERT, UPDATE ON jobs, jobs_variants TO {}",
            role.name
        ))
        .execute(without)
        .await
        .context("granting the pipeline's old rights in the twin")?;
        eprintln!(
            "retrylog-bench: footprint: the pipeline's statements run as {}, with the pipeline \
             capability (the twin: SELECT, INSERT, UPDATE on its tables)",
            role.name
        );
        Ok(role)
    }

    /// `options` logged in as the role.
    fn options(&self, options: &PgConnectOptions) -> PgConnectOptions {
        options
            .clone()
            .username(&self.name)
            .password(&self.password)
    }

    /// Removes its rights from both databases and drops it; best effort, said on failure.
    async fn remove(&self, with: &PgPool, without: &PgPool) {
        for pool in [with, without] {
            if let Err(error) = sqlx::query(&format!("DROP OWNED BY {}", self.name))
                .execute(pool)
                .await
            {
                eprintln!(
                    "retrylog-bench: footprint: DROP OWNED BY {}: {error}",
                    self.name
                );
            }
        }
        if let Err(error) = sqlx::query(&format!("DROP ROLE {}", self.name))
            .execute(with)
            .await
        {
            eprintln!(
                "retrylog-bench: footprint: DROP ROLE {}: {error}",
                self.name
            );
        }
    }
}

pub async fn run(connected: &Connected, args: FootprintArgs) -> anyhow::Result<ExitCode> {
    let figures = in_bench_database(
        connected,
        "retrylog-bench footprint",
        args.keep,
        async |options| {
            let measured = measure_worlds(connected, options, &args).await;
            release_twin(connected, args.keep).await;
            measured
        },
    )
    .await?;
    let format = args.format.format;
    figure_table(&lines(&figures), format, &["connections"]).print(format)?;
    Ok(ExitCode::SUCCESS)
}

async fn measure_worlds(
    connected: &Connected,
    options: &PgConnectOptions,
    args: &FootprintArgs,
) -> anyhow::Result<Vec<Figure>> {
    let with = fresh_database(connected, options).await?;
    if args.without_created_index {
        sqlx::raw_sql(
            "DROP INDEX retrylog_jobs_created_at;
             DROP INDEX retrylog_jobs_variants_created_at;",
        )
        .execute(&with)
        .await?;
        eprintln!("retrylog-bench: footprint: retrylog's created_at indexes dropped");
    }
    let without = fresh_twin(connected, options).await?;
    if holds_retrylog_objects(&without).await? {
        anyhow::bail!("the twin database holds retrylog objects; it must be the bare schema");
    }
    print_server(&with).await?;
    eprintln!(
        "retrylog-bench: footprint: {} s per statement, database and connection count in {} \
         alternating slice(s), after {} s warm-up; {} variants in each database; connections \
         {:?}; twin database without retrylog: {}",
        args.slices.seconds,
        args.slices.slices,
        args.slices.warmup,
        args.variants,
        args.slices.connections,
        crate::twin::twin_database()?
    );
    let targets = seed(&[&with, &without], args.variants as usize).await?;
    let role = PipelineRole::create(&with, &without).await?;
    let figures = measure_with_role(&with, &without, options, &targets, args, &role).await;
    role.remove(&with, &without).await;
    figures
}

async fn measure_with_role(
    with: &PgPool,
    without: &PgPool,
    options: &PgConnectOptions,
    targets: &Targets,
    args: &FootprintArgs,
    role: &PipelineRole,
) -> anyhow::Result<Vec<Figure>> {
    // A tenth of the variants have an open retry, so the watchdog's look at the pipeline's
    // rows (the outcomes' observation, every sweep) has rows to join while the writes run.
    let open: i64 = sqlx::query_scalar(
        "SELECT count(record_retry(job_id, 'stuck', job_variants_id, actor => $2))
           FROM (SELECT job_id, job_variants_id FROM jobs_variants
                  ORDER BY job_variants_id LIMIT $1) t",
    )
    .bind((args.variants / 10) as i64)
    .bind(ACTOR)
    .fetch_one(with)
    .await
    .context("recording the open retries")?;
    eprintln!("retrylog-bench: {open} variants have an open retry in the retrylog database");
    let mut figures = Vec::new();
    for world in [World::Plain, World::PipelineNotifies] {
        if world == World::PipelineNotifies {
            for pool in [with, without] {
                sqlx::raw_sql(PIPELINE_TRIGGER)
                    .execute(pool)
                    .await
                    .context("installing the pipeline's own NOTIFY trigger")?;
            }
        }
        // The watchdog and the projector serve runs, on connections of their own, for the
        // whole world.
        let serve_pool = PgPoolOptions::new()
            .max_connections(3)
            .connect_with(options.clone())
            .await?;
        let (stop, stopped) = watch::channel(false);
        let settings = WatchdogSettings {
            instance: ACTOR.to_string(),
            ..WatchdogSettings::default()
        };
        let watchdog = tokio::spawn(recovery::run(serve_pool.clone(), settings, stopped.clone()));
        let projector = tokio::spawn(projector::run(
            serve_pool.clone(),
            ProjectorSettings::default(),
            stopped,
        ));
        let measured = measure_world(world, options, role, targets, args).await;
        stop.send_replace(true);
        watchdog.await.context("the watchdog panicked")?;
        projector.await.context("the projector panicked")?;
        serve_pool.close().await;
        figures.extend(measured?);
    }
    Ok(figures)
}

/// The same jobs and variants in every database; returns the variants.
async fn seed(pools: &[&PgPool], variants: usize) -> anyhow::Result<Targets> {
    let mut rows = PipelineRows {
        jobs: (0..variants.div_ceil(VARIANTS_PER_JOB))
            .map(|_| Uuid::new_v4())
            .collect(),
        ..PipelineRows::default()
    };
    for index in 0..variants {
        rows.variants.push(Uuid::new_v4());
        rows.owners.push(rows.jobs[index / VARIANTS_PER_JOB]);
        rows.orders.push((index % VARIANTS_PER_JOB) as i32);
    }
    for pool in pools {
        insert_pipeline_rows(pool, &rows).await?;
        sqlx::raw_sql("VACUUM ANALYZE").execute(*pool).await?;
    }
    Ok(Arc::new(rows.variants))
}

/// Every statement at every connection count, the two databases alternating slice by slice.
async fn measure_world(
    world: World,
    options: &PgConnectOptions,
    role: &PipelineRole,
    targets: &Targets,
    args: &FootprintArgs,
) -> anyhow::Result<Vec<Figure>> {
    let progress = progress::spinner();
    let timing = &args.slices;
    let mut figures = Vec::new();
    for &connections in &timing.connections {
        // [0]: with retrylog, [1]: the twin without; each sized to the connection count: the
        // pipeline's role for its statements, the bench's own for the counter bump.
        let as_pipeline = role.options(options);
        let pipeline_pools = [
            open_pool(as_pipeline.clone(), connections).await?,
            open_pool(crate::twin::twin_options(&as_pipeline)?, connections).await?,
        ];
        let own_pools = [
            open_pool(options.clone(), connections).await?,
            open_pool(crate::twin::twin_options(options)?, connections).await?,
        ];
        for statement in Statement::ALL {
            let pools = if statement == Statement::CounterBump {
                &own_pools
            } else {
                &pipeline_pools
            };
            let mut counted = [0u64; 2];
            for round in 0..timing.slices as usize {
                for offset in 0..2 {
                    let side = (round + offset) % 2;
                    progress.set_message(format!(
                        "footprint: {}, {}, {connections} connection(s), {}, slice {}/{}",
                        world.label(),
                        statement.label(),
                        if side == 0 {
                            "with retrylog"
                        } else {
                            "without"
                        },
                        round + 1,
                        timing.slices
                    ));
                    let (pool, targets) = (pools[side].clone(), targets.clone());
                    counted[side] += count_commits(
                        connections,
                        timing.settle(round),
                        timing.slice(),
                        move || write(pool.clone(), statement, targets.clone()),
                    )
                    .await
                    .with_context(|| format!("measuring {}", statement.label()))?;
                }
            }
            figures.push(Figure {
                world,
                statement,
                connections,
                with: timing.rate(counted[0]),
                without: timing.rate(counted[1]),
            });
        }
        for pool in pipeline_pools.into_iter().chain(own_pools) {
            pool.close().await;
        }
    }
    progress.finish_and_clear();
    Ok(figures)
}

/// One pipeline write: the statement on a random variant, committed on its own (the insert:
/// the job and its variants in one transaction).
async fn write(pool: PgPool, statement: Statement, targets: Targets) -> anyhow::Result<()> {
    if statement == Statement::InsertJob {
        let job = Uuid::new_v4();
        let variants: Vec<Uuid> = (0..VARIANTS_PER_JOB).map(|_| Uuid::new_v4()).collect();
        let mut tx = pool.begin().await?;
        sqlx::query(statement.sql())
            .bind(job)
            .execute(&mut *tx)
            .await?;
        sqlx::query(INSERT_VARIANTS)
            .bind(job)
            .bind(&variants)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    } else {
        let variant = targets[rand::thread_rng().gen_range(0..targets.len())];
        sqlx::query(statement.sql())
            .bind(variant)
            .execute(&pool)
            .await?;
    }
    Ok(())
}

/// One line per figure: with retrylog against without, the goal on every line.
fn lines(figures: &[Figure]) -> Vec<Line> {
    figures
        .iter()
        .map(|figure| {
            Line::new(
                "pipeline writes/s",
                format!(
                    "{}: {}, {} connection{}",
                    figure.world.label(),
                    figure.statement.label(),
                    figure.connections,
                    if figure.connections == 1 { "" } else { "s" }
                ),
                Unit::PerSecond,
                figure.with,
            )
            .baseline("without retrylog", figure.without)
            .connections(figure.connections)
            .goal(Goal::AtLeast(GOAL))
        })
        .collect()
}
