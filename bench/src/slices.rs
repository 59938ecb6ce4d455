//! What the throughput benchmarks (`appends`, `footprint`) share: the flags that say how long
//! and in how many interleaved slices they count, and the workers that count commits.

use std::future::Future;
use std::time::{Duration, Instant};

use clap::Args;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

/// How long each measurement counts, cut into how many slices, at which connection counts.
#[derive(Debug, Args)]
pub struct SliceArgs {
    /// Seconds each measurement counts commits, per approach (or database) and connection
    /// count, after the warm-up.
    #[arg(long, default_value_t = 5, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub seconds: u64,

    /// Seconds of warm-up before each approach's first slice at each connection count (not
    /// counted).
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u64).range(0..=600))]
    pub warmup: u64,

    /// Cut each measurement into this many slices and interleave the approaches slice by slice
    /// (rotating their order), so a burst of machine noise hits all of them alike.
    #[arg(long, default_value_t = 5, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub slices: u32,

    /// Connection counts to measure at, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16", value_name = "N,N,...",
          value_parser = clap::value_parser!(u32).range(1..=500))]
    pub connections: Vec<u32>,
}

impl SliceArgs {
    /// `--smoke`: one second at 2 connections, no warm-up, one slice.
    pub fn smoke(&mut self) {
        self.seconds = 1;
        self.warmup = 0;
        self.slices = 1;
        self.connections = vec![2];
    }

    /// The counted length of one slice.
    pub fn slice(&self) -> Duration {
        Duration::from_secs(self.seconds) / self.slices
    }

    /// The pause before slice `round` of an approach: the full warm-up before its first, only
    /// a moment for the previous approach's last transactions to clear before the others.
    pub fn settle(&self, round: usize) -> Duration {
        let warmup = Duration::from_secs(self.warmup);
        if round == 0 {
            warmup
        } else {
            warmup.min(Duration::from_millis(250))
        }
    }

    /// Commits per second from the commits counted over every slice.
    pub fn rate(&self, commits: u64) -> f64 {
        commits as f64 / (self.slice() * self.slices).as_secs_f64()
    }
}

/// Runs `connections` workers for `warmup` + `seconds`, each repeating `transaction` back to
/// back; returns the transactions that committed inside the counted `seconds`.
pub async fn count_commits<F, Fut>(
    connections: u32,
    warmup: Duration,
    seconds: Duration,
    transaction: F,
) -> anyhow::Result<u64>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let start = Instant::now() + warmup;
    let end = start + seconds;
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let transaction = transaction.clone();
            tokio::spawn(async move {
                let mut counted = 0;
                while Instant::now() < end {
                    transaction().await?;
                    let committed = Instant::now();
                    if committed >= start && committed <= end {
                        counted += 1;
                    }
                }
                Ok::<u64, anyhow::Error>(counted)
            })
        })
        .collect();
    let mut total = 0;
    for worker in workers {
        total += worker.await??;
    }
    Ok(total)
}

/// A pool of exactly `connections` connections (min = max), opened up front, so no worker ever
/// waits for a connection and every connection is equally warm.
pub async fn open_pool(options: PgConnectOptions, connections: u32) -> sqlx::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(connections)
        .min_connections(connections)
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(options)
        .await
}
