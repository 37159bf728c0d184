//! Helpers shared by the integration tests.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::future::Future;
use std::time::{Duration, Instant};

use game_pool::{BreakerConfig, Pool, PoolConfig, TaskHandle};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::sync::oneshot;

/// A small pool with fast timers, for tests.
pub fn config(name: &str, min: usize, max: usize, capacity: usize) -> PoolConfig {
    PoolConfig {
        name: name.to_string(),
        min_workers: min,
        max_workers: max,
        queue_capacity: capacity,
        idle_timeout: Duration::from_secs(60),
        housekeeping_interval: Duration::from_millis(5),
        breaker: BreakerConfig {
            enabled: false,
            ..BreakerConfig::default()
        },
        ..PoolConfig::default()
    }
}

/// Sum of the samples named exactly `name` whose labels include all of `labels`, read from the
/// text exposition (what Prometheus scrapes). `None` if no sample matched.
pub fn metric(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .unwrap();
    let text = String::from_utf8(buf).unwrap();
    let mut total = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (sname, slabels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if sname != name {
            continue;
        }
        let has = |k: &str, v: &str| slabels.split(',').any(|kv| kv == format!("{k}=\"{v}\""));
        if labels.iter().all(|(k, v)| has(k, v)) {
            *total.get_or_insert(0.0) += value.parse::<f64>().unwrap();
        }
    }
    total
}

pub fn metric0(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(registry, name, labels).unwrap_or(0.0)
}

/// Polls `cond` until it holds; panics with `what` after a generous timeout. Conditions are
/// logical ("the breaker opened"), the timeout only guards against hanging forever.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < give_up, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Awaits `fut`, panicking (instead of hanging the test run) if it takes absurdly long.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"))
}

/// Threads of this process whose name starts with `prefix`.
pub fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end().starts_with(prefix))
        .count()
}

/// Occupies one worker with a task of `kind` that runs until the returned sender is used (or
/// dropped); returns once the task has started, with its handle.
pub async fn occupy(
    pool: &Pool,
    kind: &'static str,
    deadline: Duration,
) -> (oneshot::Sender<()>, TaskHandle<()>) {
    let (release, gate) = oneshot::channel::<()>();
    let (started_tx, started) = oneshot::channel::<()>();
    let handle = pool
        .submit(kind, deadline, move |_| async move {
            let _ = started_tx.send(());
            let _ = gate.await;
            Ok(())
        })
        .await
        .unwrap();
    within(&format!("{kind} start"), started).await.unwrap();
    (release, handle)
}
