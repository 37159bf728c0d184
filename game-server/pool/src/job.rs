//! A queued job: the type-erased task plus the state it shares with its handle.
//!
//! The job's lifecycle is one atomic: whoever moves it out of `QUEUED` owns its fate (a worker
//! starts it, the handle cancels it, the queue expires it). Results, errors and panics travel
//! through a oneshot channel. The ways a job ends without sending (queue timeout, deadline,
//! cancellation) set the state first and then drop the sender, so a handle that sees the channel
//! closed reads the reason from the state.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::sync::{Notify, oneshot};

use crate::breaker::Admission;
use crate::error::TaskError;
use crate::metrics::KindMetrics;

pub(crate) const QUEUED: u8 = 0;
pub(crate) const RUNNING: u8 = 1;
pub(crate) const QUEUE_TIMEOUT: u8 = 3;
pub(crate) const CANCELLED: u8 = 4;
pub(crate) const TIMED_OUT: u8 = 5;

/// A one-shot, level-triggered signal that any number of tasks, on any runtime, can await.
#[derive(Default)]
pub(crate) struct Signal {
    fired: AtomicBool,
    notify: Notify,
}

impl Signal {
    pub(crate) fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub(crate) fn is_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    pub(crate) async fn wait(&self) {
        loop {
            // A `Notified` receives `notify_waiters` from creation on, so create it before checking.
            let notified = self.notify.notified();
            if self.is_fired() {
                return;
            }
            notified.await;
        }
    }
}

/// What the handle, the task context and the pool share about one job.
pub(crate) struct JobShared {
    state: AtomicU8,
    cancel: Signal,
    /// Pool-wide cancellation (shutdown past its grace period).
    pub(crate) pool_cancel: Arc<Signal>,
    pub(crate) kind: &'static str,
    pub(crate) submitted: Instant,
    pub(crate) deadline: Instant,
    pub(crate) metrics: Arc<KindMetrics>,
    pub(crate) admission: Admission,
}

impl JobShared {
    pub(crate) fn new(
        kind: &'static str,
        submitted: Instant,
        deadline: Instant,
        metrics: Arc<KindMetrics>,
        admission: Admission,
        pool_cancel: Arc<Signal>,
    ) -> JobShared {
        JobShared {
            state: AtomicU8::new(QUEUED),
            cancel: Signal::default(),
            pool_cancel,
            kind,
            submitted,
            deadline,
            metrics,
            admission,
        }
    }

    pub(crate) fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    /// Moves a queued job to `to`; false if someone else already decided its fate.
    pub(crate) fn leave_queue(&self, to: u8) -> bool {
        self.state
            .compare_exchange(QUEUED, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Records how a started job ended (before its result sender is dropped).
    pub(crate) fn set_ended(&self, state: u8) {
        self.state.store(state, Ordering::Release);
    }

    /// Cancels a queued job outright, or signals a running one to stop at its next await.
    pub(crate) fn cancel(&self) {
        if !self.leave_queue(CANCELLED) {
            self.cancel.fire();
        }
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancel.is_fired() || self.pool_cancel.is_fired()
    }

    pub(crate) async fn cancelled(&self) {
        tokio::select! {
            _ = self.cancel.wait() => {}
            _ = self.pool_cancel.wait() => {}
        }
    }

    /// The error a handle reports when the job ended without sending a value.
    pub(crate) fn error(&self) -> TaskError {
        match self.state() {
            QUEUE_TIMEOUT => TaskError::QueueTimeout,
            TIMED_OUT => TaskError::Timeout,
            // CANCELLED, or the job was dropped unrun (pool dropped without shutdown).
            _ => TaskError::Cancelled,
        }
    }
}

/// How the user's future ended, as far as the pool needs to know (the value waits in the run).
pub(crate) enum Finish {
    Ok,
    Error(String),
    Panicked(String),
}

/// A started task, type-erased. Polling it drives the user's future to a [`Finish`]; the value
/// (or error) is held back until [`Run::deliver`], so the worker can close the span and count
/// the outcome first: whoever awaits the handle then sees metrics that already include the task.
pub(crate) trait Run: Future<Output = Finish> {
    /// Sends the held result to the handle.
    fn deliver(self: Pin<&mut Self>);
    /// Drops the user's future (timeout, cancellation) but keeps the result sender, so the
    /// handle is not woken until the worker has recorded why.
    fn abandon(self: Pin<&mut Self>);
}

/// Builds the task's run on the worker thread; the run itself need not be `Send`.
pub(crate) type StartFn = Box<dyn FnOnce(crate::TaskContext) -> Pin<Box<dyn Run>> + Send>;

pub(crate) struct Job {
    pub(crate) shared: Arc<JobShared>,
    pub(crate) start: StartFn,
    /// The submitter's span, parent of the task's `pool.task` span.
    pub(crate) parent: tracing::Span,
}

type UserFuture<T> = Pin<Box<dyn Future<Output = anyhow::Result<T>>>>;

struct TypedRun<T> {
    /// `None` once finished or abandoned.
    user: Option<UserFuture<T>>,
    tx: Option<oneshot::Sender<Result<T, TaskError>>>,
    result: Option<Result<T, TaskError>>,
}

// Nothing is ever pinned through a `TypedRun`: the user future is pinned in its own box and the
// result is moved out by value. So `T: !Unpin` need not make the run `!Unpin`.
impl<T> Unpin for TypedRun<T> {}

/// Erases the task's types. The user's closure is called lazily inside the first poll, so a
/// panic in it is caught like a panic in the future.
pub(crate) fn erase<T, F, Fut>(task: F, tx: oneshot::Sender<Result<T, TaskError>>) -> StartFn
where
    F: FnOnce(crate::TaskContext) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>> + 'static,
    T: Send + 'static,
{
    Box::new(move |ctx| {
        Box::pin(TypedRun {
            user: Some(Box::pin(async move { task(ctx).await })),
            tx: Some(tx),
            result: None,
        })
    })
}

impl<T> Future for TypedRun<T> {
    type Output = Finish;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Finish> {
        let this = self.get_mut();
        let Some(user) = this.user.as_mut() else {
            return Poll::Ready(Finish::Error("task polled after it ended".to_string()));
        };
        // The user future is never polled again after a panic, so broken state cannot be observed.
        let out = match catch_unwind(AssertUnwindSafe(|| user.as_mut().poll(cx))) {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(r)) => Ok(r),
            Err(payload) => Err(panic_message(payload.as_ref())),
        };
        drop_contained(this.user.take());
        let (finish, result) = match out {
            Ok(Ok(v)) => (Finish::Ok, Ok(v)),
            Ok(Err(e)) => (Finish::Error(format!("{e:#}")), Err(TaskError::Failed(e))),
            Err(msg) => (Finish::Panicked(msg.clone()), Err(TaskError::Panicked(msg))),
        };
        this.result = Some(result);
        Poll::Ready(finish)
    }
}

impl<T> Run for TypedRun<T> {
    fn deliver(self: Pin<&mut Self>) {
        let this = self.get_mut();
        if let (Some(tx), Some(result)) = (this.tx.take(), this.result.take())
            && let Err(unwanted) = tx.send(result)
        {
            // The handle was dropped: the value is dropped here, and its Drop is user code.
            drop_contained(unwanted);
        }
    }

    fn abandon(self: Pin<&mut Self>) {
        drop_contained(self.get_mut().user.take());
    }
}

/// Drops user state; its `Drop` impls are user code and may panic too.
pub(crate) fn drop_contained<T>(value: T) {
    if catch_unwind(AssertUnwindSafe(move || drop(value))).is_err() {
        tracing::warn!("pool task panicked while being dropped");
    }
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
