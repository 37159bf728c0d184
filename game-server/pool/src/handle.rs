//! The submitter's side of a task: await its result or cancel it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use crate::error::TaskError;
use crate::job::{CANCELLED, JobShared};

/// Resolves to the task's value or the reason it has none. Dropping the handle detaches the task
/// (it still runs); call [`TaskHandle::cancel`] to stop it.
pub struct TaskHandle<T> {
    rx: oneshot::Receiver<Result<T, TaskError>>,
    job: Arc<JobShared>,
}

impl<T> TaskHandle<T> {
    pub(crate) fn new(
        rx: oneshot::Receiver<Result<T, TaskError>>,
        job: Arc<JobShared>,
    ) -> TaskHandle<T> {
        TaskHandle { rx, job }
    }

    /// A queued task is removed at once (it never runs); a running one is dropped at its next
    /// await point. Synchronous code inside a task cannot be interrupted: check
    /// `TaskContext::is_cancelled` in long loops.
    pub fn cancel(&self) {
        self.job.cancel();
    }

    /// The task kind given at submission.
    pub fn kind(&self) -> &'static str {
        self.job.kind
    }
}

impl<T> Future for TaskHandle<T> {
    type Output = Result<T, TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            Poll::Ready(Err(_closed)) => Poll::Ready(Err(self.job.error())),
            // A job cancelled while queued keeps its sender until the queue drops it; don't wait for that.
            Poll::Pending if self.job.state() == CANCELLED => {
                Poll::Ready(Err(TaskError::Cancelled))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T> std::fmt::Debug for TaskHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskHandle")
            .field("kind", &self.job.kind)
            .finish_non_exhaustive()
    }
}
