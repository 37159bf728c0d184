//! The bounded task queue between async submitters and OS-thread workers.
//!
//! Capacity is a semaphore of slots taken before a job is pushed and given back when it leaves
//! the deque, so the deque can never hold more than `capacity` jobs, and async submitters can wait
//! for room (fairly, in FIFO order) without blocking their runtime. Workers block on a condvar.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, TryAcquireError};

use crate::error::Rejected;
use crate::job::{Job, QUEUED};

pub(crate) struct Queue {
    inner: Mutex<Inner>,
    work: Condvar,
    slots: Semaphore,
    len: AtomicUsize,
    capacity: usize,
}

struct Inner {
    jobs: VecDeque<Job>,
    /// Workers blocked in `pop`; a push only pays for a futex wake when someone is waiting.
    waiting: usize,
    closed: bool,
}

pub(crate) enum Pop {
    Job(Job),
    /// Idle for the idle timeout and allowed to retire.
    Retire,
    /// Closed and empty.
    Closed,
}

impl Queue {
    pub(crate) fn new(capacity: usize) -> Queue {
        Queue {
            inner: Mutex::new(Inner {
                jobs: VecDeque::with_capacity(capacity),
                waiting: 0,
                closed: false,
            }),
            work: Condvar::new(),
            slots: Semaphore::new(capacity),
            len: AtomicUsize::new(0),
            capacity,
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Jobs in the deque, including ones cancelled in place and not yet removed.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Takes a slot without waiting.
    pub(crate) fn try_reserve(&self) -> Result<(), Rejected> {
        match self.slots.try_acquire() {
            // The slot is returned by hand when the job leaves the deque, not by a guard.
            Ok(permit) => {
                permit.forget();
                Ok(())
            }
            Err(TryAcquireError::NoPermits) => Err(Rejected::QueueFull),
            Err(TryAcquireError::Closed) => Err(Rejected::ShuttingDown),
        }
    }

    /// Takes a slot, waiting for one until `deadline`.
    pub(crate) async fn reserve_until(&self, deadline: Instant) -> Result<(), Rejected> {
        match self.try_reserve() {
            Err(Rejected::QueueFull) => {}
            other => return other,
        }
        match tokio::time::timeout_at(deadline.into(), self.slots.acquire()).await {
            Ok(Ok(permit)) => {
                permit.forget();
                Ok(())
            }
            Ok(Err(_closed)) => Err(Rejected::ShuttingDown),
            Err(_elapsed) => Err(Rejected::QueueFull),
        }
    }

    /// Gives back a slot that was reserved but not used.
    pub(crate) fn unreserve(&self) {
        self.slots.add_permits(1);
    }

    /// Pushes a job into a reserved slot. Returns the queue length after the push, or the job
    /// back if the queue was closed meanwhile.
    pub(crate) fn push(&self, job: Job) -> Result<usize, Job> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(job);
        }
        inner.jobs.push_back(job);
        let len = inner.jobs.len();
        self.len.store(len, Ordering::Relaxed);
        let waiting = inner.waiting;
        drop(inner);
        if waiting > 0 {
            self.work.notify_one();
        }
        Ok(len)
    }

    /// Blocks a worker until a job arrives, polling for up to `spin` before sleeping.
    /// After `idle_timeout` without work it asks `may_retire`
    /// (under the queue lock, so no push can slip in between the decision and the exit).
    pub(crate) fn pop(
        &self,
        idle_timeout: Duration,
        spin: Duration,
        mut may_retire: impl FnMut() -> bool,
    ) -> Pop {
        let mut inner = self.lock();
        let mut idle_until = Instant::now() + idle_timeout;
        let mut spun = false;
        loop {
            if let Some(job) = inner.jobs.pop_front() {
                self.len.store(inner.jobs.len(), Ordering::Relaxed);
                drop(inner);
                self.slots.add_permits(1);
                return Pop::Job(job);
            }
            if inner.closed {
                return Pop::Closed;
            }
            let now = Instant::now();
            if now >= idle_until {
                if may_retire() {
                    return Pop::Retire;
                }
                idle_until = now + idle_timeout;
            }
            if !spun && !spin.is_zero() {
                // Poll briefly before sleeping: during a burst the next job usually arrives within
                // microseconds, and catching it here saves both a futex wake on the submitter's
                // side and a context switch on ours. Yielding keeps it polite on a busy machine.
                spun = true;
                drop(inner);
                let until = now + spin;
                let mut i = 0u32;
                while self.len.load(Ordering::Relaxed) == 0 && Instant::now() < until {
                    if i < 64 {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                    i += 1;
                }
                inner = self.lock();
                continue;
            }
            inner.waiting += 1;
            inner = self
                .work
                .wait_timeout(inner, idle_until - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            inner.waiting -= 1;
        }
    }

    /// Removes jobs whose deadline passed or that were cancelled in place.
    pub(crate) fn sweep(&self, now: Instant) -> Vec<Job> {
        let dead = |j: &Job| j.shared.deadline <= now || j.shared.state() != QUEUED;
        let mut inner = self.lock();
        if !inner.jobs.iter().any(dead) {
            return Vec::new();
        }
        let mut removed = Vec::new();
        let mut kept = VecDeque::with_capacity(self.capacity);
        for job in inner.jobs.drain(..) {
            if dead(&job) {
                removed.push(job)
            } else {
                kept.push_back(job)
            }
        }
        inner.jobs = kept;
        self.len.store(inner.jobs.len(), Ordering::Relaxed);
        drop(inner);
        self.slots.add_permits(removed.len());
        removed
    }

    /// Stops accepting jobs: new and waiting reservations fail, workers drain what is queued and exit.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.slots.close();
        self.work.notify_all();
    }

    /// Removes every queued job (shutdown past its grace period).
    pub(crate) fn drain(&self) -> Vec<Job> {
        let mut inner = self.lock();
        let all: Vec<Job> = inner.jobs.drain(..).collect();
        self.len.store(0, Ordering::Relaxed);
        all
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding this lock, but stay usable if that ever changes.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}
