//! The scheduled batch job (the seed's "2 a.m. full sync"): N tasks submitted to the
//! worker pool at once. Triggered on a schedule or via `POST /admin/batch`, so a task
//! surge can be reproduced on demand.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::MissedTickBehavior;
use tracing::info_span;

use crate::persistence::Persistence;
use crate::server::App;

pub const FULL_SYNC: &str = "full_sync";
const PAGE: i64 = 50;
/// Hash rounds per task: a few milliseconds of CPU, like serialising a page for a remote sync.
const ROUNDS: usize = 2_000;

pub struct Summary {
    pub submitted: u32,
    pub rejected: u32,
}

/// Submit `tasks` full-sync tasks without waiting for queue space: when the pool is
/// saturated, excess tasks are rejected (and counted) rather than queued without bound.
pub fn full_sync(app: &Arc<App>, tasks: u32, trigger: &'static str) -> Summary {
    let job = info_span!(
        "batch.job",
        "batch.kind" = FULL_SYNC,
        "batch.trigger" = trigger,
        "batch.tasks" = tasks as i64
    );
    let m = &app.metrics.batch_tasks_total;
    let mut s = Summary {
        submitted: 0,
        rejected: 0,
    };
    let mut handles = Vec::with_capacity(tasks as usize);
    // Entered while submitting: the pool makes its `pool.task` spans children of it.
    let entered = job.enter();
    for i in 0..tasks {
        let path = app.persistence.path().to_path_buf();
        let r = app.bg.try_run(FULL_SYNC, Duration::from_secs(30), move |info| {
            let span = info_span!("batch.task", "task.kind" = FULL_SYNC,
                "batch.page" = i as i64, "thread.id" = info.thread_id, "thread.name" = %info.thread_name);
            let _g = span.enter();
            sync_page(&path, i as i64)
        });
        match r {
            Ok(h) => {
                s.submitted += 1;
                handles.push(h);
            }
            Err(_) => s.rejected += 1,
        }
    }
    drop(entered);
    m.with_label_values(&[FULL_SYNC, "submitted"])
        .inc_by(s.submitted as u64);
    m.with_label_values(&[FULL_SYNC, "rejected"])
        .inc_by(s.rejected as u64);
    job.in_scope(|| {
        tracing::info!(
            submitted = s.submitted,
            rejected = s.rejected,
            trigger,
            "full sync started"
        );
    });
    let metrics = app.metrics.clone();
    let redis = app.redis.clone();
    tokio::spawn(async move {
        for h in handles {
            let res = match h.await {
                Ok((_, scores)) => {
                    // The page's gold goes to the leaderboard (a sorted set in Redis).
                    match &redis {
                        Some(r) => match crate::cache::leaderboard_update(r, &scores).await {
                            Ok(()) => "ok",
                            Err(_) => "leaderboard_error",
                        },
                        None => "ok",
                    }
                }
                Err(_) => "error",
            };
            metrics
                .batch_tasks_total
                .with_label_values(&[FULL_SYNC, res])
                .inc();
        }
    });
    s
}

/// One task: read a page of players and digest it (stands in for pushing it elsewhere); the
/// page's (player, gold) pairs go on to the leaderboard.
type Scores = Vec<(String, i64)>;
fn sync_page(path: &std::path::Path, page: i64) -> anyhow::Result<([u8; 32], Scores)> {
    let rows = Persistence::read_page(path, (page * PAGE) % 10_000, PAGE)?;
    let mut h = Sha256::new();
    for r in &rows {
        h.update(r.player.as_bytes());
        h.update(r.gold.to_le_bytes());
    }
    let mut d: [u8; 32] = h.finalize().into();
    for _ in 0..ROUNDS {
        d = Sha256::digest(d).into();
    }
    Ok((d, rows.into_iter().map(|r| (r.player, r.gold)).collect()))
}

/// Run the full sync every `every` (0 disables the schedule).
pub fn spawn_schedule(app: Arc<App>, every: Duration, tasks: u32) {
    if every.is_zero() {
        return;
    }
    tokio::spawn(async move {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        // A missed run is not made up in a burst: one sync per period at most.
        t.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = app.shutdown.cancelled() => break,
                _ = t.tick() => { full_sync(&app, tasks, "schedule"); }
            }
        }
    });
}
