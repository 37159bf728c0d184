//! Background work (persistence I/O, batch jobs) goes through the managed worker
//! pool so it never blocks the async runtime that drives sockets and rooms.
//! This wrapper keeps the call sites independent of the pool's exact API.

use std::time::Duration;

use tracing::Span;

/// What a background task learns about where it runs (for span attributes).
#[derive(Clone, Debug)]
pub struct TaskInfo {
    pub thread_id: i64,
    pub thread_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BgError {
    #[error("rejected: {0}")]
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
    _sizing: PoolSizing,
}

impl Background {
    pub fn new(sizing: PoolSizing, _registry: &prometheus::Registry) -> anyhow::Result<Self> {
        Ok(Self { _sizing: sizing })
    }

    /// Run `f` on a worker thread, waiting for a queue slot if needed.
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
        let parent = Span::current();
        let h = tokio::task::spawn_blocking(move || {
            let _g = parent.entered();
            f(current_info())
        });
        match tokio::time::timeout(deadline, h).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(BgError::Task(format!("{kind}: {e:#}"))),
            Ok(Err(e)) => Err(BgError::Task(format!("{kind}: {e}"))),
            Err(_) => Err(BgError::Task(format!("{kind}: timeout"))),
        }
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
        let this = self.clone();
        Ok(async move { this.run(kind, deadline, f).await })
    }

    pub fn ready(&self) -> bool {
        true
    }

    pub async fn shutdown(&self, _grace: Duration) {}
}

fn current_info() -> TaskInfo {
    TaskInfo {
        thread_id: crate::telemetry::gettid(),
        thread_name: std::thread::current().name().unwrap_or("").to_string(),
    }
}
