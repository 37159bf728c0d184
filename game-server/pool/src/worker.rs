//! Worker threads: each owns a current-thread tokio runtime and runs one task at a time to
//! completion, so a task's span can name the one Linux thread it ran on.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::runtime::Runtime;
use tracing::field::Empty;

use crate::breaker::Admission;
use crate::context::{TaskContext, WorkerInfo};
use crate::job::{CANCELLED, Finish, Job, JobShared, RUNNING, Run, TIMED_OUT};
use crate::metrics::Outcome;
use crate::queue::Pop;
use crate::shared::Shared;

/// Starts one worker thread. The caller has already counted it in `live`.
pub(crate) fn spawn(shared: &Arc<Shared>) -> std::io::Result<()> {
    let id = shared.next_worker.fetch_add(1, Ordering::Relaxed);
    // Thread names are cut to 15 bytes by the kernel; "pool-w" + id fits for any realistic id.
    let name = format!("pool-w{id}");
    let s = shared.clone();
    shared.alive.fetch_add(1, Ordering::AcqRel);
    let spawned = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || worker_main(s, name));
    match spawned {
        Ok(handle) => {
            shared.metrics.worker_spawns.inc();
            let mut threads = shared.threads.lock().unwrap_or_else(|p| p.into_inner());
            // Forget handles of threads that already retired, so churn does not grow the list.
            threads.retain(|h| !h.is_finished());
            threads.push(handle);
            Ok(())
        }
        Err(e) => {
            shared.worker_exited();
            Err(e)
        }
    }
}

fn worker_main(shared: Arc<Shared>, name: String) {
    // Keeps the books right however this thread ends, even by a panic in the pool's own code:
    // shutdown waits for `alive` to reach zero.
    let mut exit = ExitGuard {
        shared: &shared,
        counted: true,
    };
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let info = Arc::new(WorkerInfo { tid, name });
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(pool = %shared.name, error = %e, "cannot build worker runtime");
            return;
        }
    };
    loop {
        match shared
            .queue
            .pop(shared.cfg.idle_timeout, shared.cfg.idle_spin, || {
                shared.try_retire()
            }) {
            Pop::Job(job) => run_job(&shared, &info, &rt, job),
            Pop::Retire => {
                // `try_retire` already took this worker out of `live`.
                exit.counted = false;
                return;
            }
            Pop::Closed => return,
        }
    }
}

struct ExitGuard<'a> {
    shared: &'a Shared,
    /// Still counted in `live`.
    counted: bool,
}

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.shared.live.fetch_sub(1, Ordering::AcqRel);
        }
        self.shared.worker_exited();
    }
}

/// How a started task ended.
enum Ended {
    Finished(Finish),
    Cancelled,
    TimedOut,
}

fn run_job(shared: &Arc<Shared>, info: &Arc<WorkerInfo>, rt: &Runtime, job: Job) {
    let now = Instant::now();
    let js = job.shared.clone();
    // An expired job is a queue timeout even if the sweeper has not reached it yet; after a
    // forced shutdown nothing new starts.
    let cancelled = shared.pool_cancel.is_fired();
    if js.deadline <= now || cancelled || !js.leave_queue(RUNNING) {
        shared.finish_unstarted(job, now, cancelled);
        return;
    }
    let wait = now.saturating_duration_since(js.submitted);
    js.metrics.wait.observe(wait.as_secs_f64());
    shared.busy.fetch_add(1, Ordering::Relaxed);

    // Created here and closed below, so its time window is exactly this run on this thread.
    let span = tracing::info_span!(
        parent: &job.parent,
        "pool.task",
        pool.name = %shared.name,
        task.kind = js.kind,
        thread.id = info.tid,
        thread.name = %info.name,
        process.pid = shared.pid,
        pool.queue_wait_ms = wait.as_secs_f64() * 1e3,
        task.outcome = Empty,
        otel.status_code = Empty,
        otel.status_message = Empty,
    );
    let started = Instant::now();
    let mut run = (job.start)(TaskContext::new(js.clone(), info.clone()));
    let ended = {
        let _entered = span.enter();
        rt.block_on(guarded(run.as_mut(), &js))
    };
    js.metrics.run.observe(started.elapsed().as_secs_f64());

    let (outcome, failure) = match &ended {
        Ended::Finished(Finish::Ok) => (Outcome::Ok, None),
        Ended::Finished(Finish::Error(m)) => (Outcome::Error, Some(m.clone())),
        Ended::Finished(Finish::Panicked(m)) => (Outcome::Panicked, Some(format!("panicked: {m}"))),
        Ended::TimedOut => (
            Outcome::Timeout,
            Some("deadline exceeded while running".to_string()),
        ),
        // Cancellation is the caller's choice, not a failure of the task.
        Ended::Cancelled => (Outcome::Cancelled, None),
    };
    span.record("task.outcome", outcome.as_str());
    if let Some(msg) = failure {
        span.record("otel.status_code", "ERROR");
        span.record("otel.status_message", msg.as_str());
    }
    drop(span);

    // Account before the handle can see the result, so an awaiting caller reads up-to-date stats.
    shared.record(&js.metrics, outcome);
    if let Admission::Probe(epoch) = js.admission {
        shared
            .breaker
            .probe_finished(epoch, outcome != Outcome::Timeout, Instant::now());
    }
    shared.busy.fetch_sub(1, Ordering::Relaxed);
    match ended {
        Ended::Finished(_) => run.as_mut().deliver(),
        // The handle reads the reason from the state once the sender (inside `run`) is dropped.
        Ended::Cancelled => js.set_ended(CANCELLED),
        Ended::TimedOut => js.set_ended(TIMED_OUT),
    }
    drop(run);
}

/// Runs the task until it finishes, is cancelled, or reaches its deadline. Runs inside the
/// worker's runtime, so an abandoned future's `Drop` impls still find their runtime.
async fn guarded(mut run: Pin<&mut dyn Run>, js: &JobShared) -> Ended {
    let ended = tokio::select! {
        biased;
        finish = &mut run => Ended::Finished(finish),
        _ = js.cancelled() => Ended::Cancelled,
        _ = tokio::time::sleep_until(js.deadline.into()) => Ended::TimedOut,
    };
    if !matches!(ended, Ended::Finished(_)) {
        run.as_mut().abandon();
    }
    ended
}
