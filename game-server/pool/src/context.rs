//! What a running task can see about itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::job::JobShared;

/// Facts about the worker thread a task runs on; fixed for the thread's life.
#[derive(Debug)]
pub(crate) struct WorkerInfo {
    pub(crate) tid: i32,
    pub(crate) name: String,
}

/// Handed to every task. Cheap to clone.
#[derive(Clone)]
pub struct TaskContext {
    job: Arc<JobShared>,
    worker: Arc<WorkerInfo>,
}

impl TaskContext {
    pub(crate) fn new(job: Arc<JobShared>, worker: Arc<WorkerInfo>) -> TaskContext {
        TaskContext { job, worker }
    }

    pub fn kind(&self) -> &'static str {
        self.job.kind
    }

    /// Absolute deadline (submission time + the deadline given to `submit`).
    pub fn deadline(&self) -> Instant {
        self.job.deadline
    }

    /// Time left before the deadline; zero once it has passed.
    pub fn remaining(&self) -> Duration {
        self.job.deadline.saturating_duration_since(Instant::now())
    }

    /// True once the task was cancelled (its handle, or a shutdown past its grace period).
    pub fn is_cancelled(&self) -> bool {
        self.job.is_cancelled()
    }

    /// Completes when the task is cancelled. The pool drops a cancelled task's future at its next
    /// await anyway; a task awaiting this directly gets to finish first (clean up, return a value).
    pub async fn cancelled(&self) {
        self.job.cancelled().await
    }

    /// Linux thread id (`gettid`) of the worker running this task: the key the kernel agent joins on.
    pub fn thread_id(&self) -> i32 {
        self.worker.tid
    }

    /// Name of the worker thread, e.g. `pool-w3`.
    pub fn thread_name(&self) -> &str {
        &self.worker.name
    }
}

impl std::fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskContext")
            .field("kind", &self.job.kind)
            .field("thread_id", &self.worker.tid)
            .field("thread_name", &self.worker.name)
            .finish_non_exhaustive()
    }
}
