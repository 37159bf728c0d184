//! Background work (persistence I/O, batch jobs) goes through the managed worker
//! pool (`game-pool`): OS-thread workers, so blocking SQLite calls and CPU-heavy
//! batch tasks never stall the async runtime that drives sockets and rooms, and each
//! task's span carries the Linux tid the kernel agent joins run-queue delay on.
//! This thin wrapper keeps call sites to synchronous closures.

use std::future::Future;
use std::time::Duration;

use game_pool::{BreakerState, Pool, PoolConfig, TaskContext};

/// What a background task learns about where it runs (for span attributes).
#[derive(Clone, Debug)]
pub struct TaskInfo {
    pub thread_id: i64,
    pub thread_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BgError {
    #[error("rejected by worker pool: {0}")]
    Rejected(&'static str),
    #[error("{0}")]
    Task(String),
}

#[derive(Clone, Debug)]
pub struct PoolSizing {
    pub min_workers: usize,
    pub max_workers: usize,
    pub queue_capacity: usize,
}

#[derive(Clone)]
pub struct Background {
    pool: Pool,
}

fn info(ctx: &TaskContext) -> TaskInfo {
    TaskInfo {
        thread_id: ctx.thread_id() as i64,
        thread_name: ctx.thread_name().to_string(),
    }
}

impl Background {
    pub fn new(sizing: PoolSizing, registry: &prometheus::Registry) -> anyhow::Result<Self> {
        let cfg = PoolConfig {
            name: "game".to_string(),
            min_workers: sizing.min_workers,
            max_workers: sizing.max_workers.max(sizing.min_workers).max(1),
            queue_capacity: sizing.queue_capacity.max(1),
            ..PoolConfig::default()
        };
        Ok(Self {
            pool: Pool::new(cfg, registry)?,
        })
    }

    /// Run `f` on a worker thread, waiting (up to `deadline`) for a queue slot.
    pub async fn run<T, F>(
        &self,
        kind: &'static str,
        deadline: Duration,
        f: F,
    ) -> Result<T, BgError>
    where
        T: Send + 'static,
        F: FnOnce(TaskInfo) -> anyhow::Result<T> + Send + 'static,
    {
        let h = self
            .pool
            .submit(kind, deadline, move |ctx| async move { f(info(&ctx)) })
            .await
            .map_err(|r| BgError::Rejected(r.as_str()))?;
        h.await.map_err(|e| BgError::Task(format!("{kind}: {e}")))
    }

    /// Submit without waiting for queue space; the returned future resolves to the result.
    pub fn try_run<T, F>(
        &self,
        kind: &'static str,
        deadline: Duration,
        f: F,
    ) -> Result<impl Future<Output = Result<T, BgError>> + Send + 'static, BgError>
    where
        T: Send + 'static,
        F: FnOnce(TaskInfo) -> anyhow::Result<T> + Send + 'static,
    {
        let h = self
            .pool
            .try_submit(kind, deadline, move |ctx| async move { f(info(&ctx)) })
            .map_err(|r| BgError::Rejected(r.as_str()))?;
        Ok(async move { h.await.map_err(|e| BgError::Task(format!("{kind}: {e}"))) })
    }

    /// False while the pool's circuit breaker is open (readiness).
    pub fn ready(&self) -> bool {
        self.pool.stats().breaker != BreakerState::Open
    }

    pub async fn shutdown(&self, grace: Duration) {
        self.pool.clone().shutdown(grace).await;
    }
}
