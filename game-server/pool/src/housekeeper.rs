//! The pool's own thread: sweeps expired queued tasks, feeds the breaker one sample per
//! `sample_interval`, and scales up when work is queued. A plain thread rather than a tokio timer
//! so the pool does not depend on which runtime (if any) the submitter uses.

use std::sync::Arc;
use std::time::Instant;

use crate::metrics::Outcome;
use crate::shared::Shared;

pub(crate) fn spawn(shared: &Arc<Shared>) -> std::io::Result<()> {
    let s = shared.clone();
    let handle = std::thread::Builder::new()
        .name("pool-sampler".to_string())
        .spawn(move || run(s))?;
    *shared.housekeeper.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
    Ok(())
}

fn run(shared: Arc<Shared>) {
    let sample_every = shared.cfg.breaker.sample_interval;
    let tick = shared.cfg.housekeeping_interval.min(sample_every);
    let mut next_sample = Instant::now() + sample_every;
    let mut last = (
        shared.counters.get(Outcome::QueueTimeout),
        shared.counters.finished(),
    );
    let (lock, cv) = &shared.stop;
    loop {
        {
            let stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
            let stopped = cv
                .wait_timeout_while(stopped, tick, |s| !*s)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            if *stopped {
                return;
            }
        }
        let now = Instant::now();
        // Sample before sweeping: expired tasks still hold their queue slots until removed,
        // and that pressure is what the watermark is meant to show.
        if now >= next_sample {
            // If we fell behind (a stalled VM), resume the cadence from now rather than burst.
            next_sample = (next_sample + sample_every).max(now + sample_every / 2);
            let cur = (
                shared.counters.get(Outcome::QueueTimeout),
                shared.counters.finished(),
            );
            shared.breaker.on_sample(
                now,
                shared.watermark(),
                cur.0.saturating_sub(last.0),
                cur.1.saturating_sub(last.1),
            );
            last = cur;
        }
        for job in shared.queue.sweep(now) {
            shared.finish_unstarted(job, now, false);
        }
        let queued = shared.queue.len();
        if queued > 0 {
            shared.maybe_scale_up(queued);
        }
    }
}
