//! Error types: why a submission was refused, why a task produced no value, why a pool failed to start.

use std::fmt;

/// A submission the pool refused; the task was not queued and will never run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// The circuit breaker is open (or half-open with all probe slots taken).
    #[error("pool busy: circuit breaker is open")]
    PoolBusy,
    /// The queue is full (`try_submit`), or stayed full until the deadline (`submit`).
    #[error("pool queue is full")]
    QueueFull,
    /// The pool is shutting down or was dropped.
    #[error("pool is shutting down")]
    ShuttingDown,
}

impl Rejected {
    /// Value of the `reason` label on `pool_rejections_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::PoolBusy => "pool_busy",
            Rejected::QueueFull => "queue_full",
            Rejected::ShuttingDown => "shutting_down",
        }
    }
}

/// Why a queued task produced no value.
#[derive(thiserror::Error)]
pub enum TaskError {
    /// The task started but was still running at its deadline; it was dropped at an await point.
    #[error("task ran past its deadline")]
    Timeout,
    /// The deadline passed while the task was still queued; it never ran.
    #[error("task deadline passed while queued")]
    QueueTimeout,
    /// Cancelled through `TaskHandle::cancel` or by a shutdown whose grace period ran out.
    #[error("task cancelled")]
    Cancelled,
    /// The task panicked; the message is the panic payload when it was a string.
    #[error("task panicked: {0}")]
    Panicked(String),
    /// The task returned an error.
    #[error("task failed: {0:#}")]
    Failed(anyhow::Error),
}

impl fmt::Debug for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Timeout => f.write_str("Timeout"),
            TaskError::QueueTimeout => f.write_str("QueueTimeout"),
            TaskError::Cancelled => f.write_str("Cancelled"),
            TaskError::Panicked(m) => f.debug_tuple("Panicked").field(m).finish(),
            TaskError::Failed(e) => f
                .debug_tuple("Failed")
                .field(&format_args!("{e:#}"))
                .finish(),
        }
    }
}

/// Failure to build a pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("invalid pool config: {0}")]
    Config(String),
    #[error("registering pool metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("spawning pool thread: {0}")]
    Spawn(#[from] std::io::Error),
}
