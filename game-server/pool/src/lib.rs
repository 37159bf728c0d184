//! Managed worker pool for the game server (issue 5).
//!
//! Workers are dedicated OS threads (`pool-w<N>`), each with its own current-thread tokio
//! runtime, running one task at a time. That is what lets every task's `pool.task` span carry the
//! Linux thread id it ran on, which the kernel agent joins with run-queue delay per thread.
//!
//! - Bounded queue; `submit` waits for room up to the task's deadline, `try_submit` never waits.
//! - Deadlines: expired while queued → `QueueTimeout` (never runs); still running → `Timeout`.
//! - Cancellation via `TaskHandle::cancel`; panics are contained and counted.
//! - Circuit breaker driven by the watermark and the queue-timeout rate.
//! - Elastic workers between `min_workers` and `max_workers`.
//! - Prometheus metrics prefixed `pool_` and labelled by `pool`; see README.md.

mod breaker;
mod config;
mod context;
mod error;
mod handle;
mod housekeeper;
mod job;
mod metrics;
mod pool;
mod queue;
mod shared;
mod worker;

pub use breaker::BreakerState;
pub use config::{BreakerConfig, PoolConfig};
pub use context::TaskContext;
pub use error::{PoolError, Rejected, TaskError};
pub use handle::TaskHandle;
pub use pool::{Pool, PoolStats};
