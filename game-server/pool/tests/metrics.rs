//! Metric names, labels and lifecycle in a shared registry.
mod common;

use std::time::Duration;

use common::{config, metric, metric0, occupy, within};
use game_pool::{Pool, PoolError};
use prometheus::Registry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposes_the_documented_metrics_with_pool_label() {
    let reg = Registry::new();
    let pool = Pool::new(config("m1", 1, 1, 4), &reg).unwrap();
    let (release, busy) = occupy(&pool, "render", Duration::from_secs(10)).await;
    let queued = pool
        .submit("save", Duration::from_secs(10), |_| async { Ok(()) })
        .await
        .unwrap();

    let p = ("pool", "m1");
    // Scrape while one task runs and one waits: gauges are computed at scrape time.
    assert_eq!(
        metric(&reg, "pool_workers", &[p, ("state", "busy")]),
        Some(1.0)
    );
    assert_eq!(
        metric(&reg, "pool_workers", &[p, ("state", "idle")]),
        Some(0.0)
    );
    assert_eq!(metric(&reg, "pool_queue_depth", &[p]), Some(1.0));
    assert_eq!(metric(&reg, "pool_queue_capacity", &[p]), Some(4.0));
    // (1 busy + 1 queued) / (1 max worker + 4 slots)
    assert_eq!(metric(&reg, "pool_watermark_ratio", &[p]), Some(0.4));
    assert_eq!(metric(&reg, "pool_breaker_state", &[p]), Some(0.0));
    assert_eq!(
        metric(&reg, "pool_submitted_total", &[p, ("kind", "save")]),
        Some(1.0)
    );

    release.send(()).unwrap();
    within("busy", busy).await.unwrap();
    within("queued", queued).await.unwrap();
    let rejected = pool.try_submit("save", Duration::ZERO, |_| async { Ok(()) });
    // A zero deadline is accepted and then expires in the queue (or is picked up at once and
    // expires at the worker): either way it never runs.
    if let Ok(h) = rejected {
        assert!(within("zero", h).await.is_err());
    }
    for (kind, name) in [
        ("render", "pool_task_run_seconds_count"),
        ("save", "pool_task_wait_seconds_count"),
    ] {
        assert!(
            metric0(&reg, name, &[p, ("kind", kind)]) >= 1.0,
            "{name}{{kind={kind}}}"
        );
    }
    assert!(
        metric(
            &reg,
            "pool_task_wait_seconds_bucket",
            &[p, ("kind", "save"), ("le", "+Inf")]
        )
        .is_some()
    );
    assert_eq!(
        metric0(
            &reg,
            "pool_tasks_total",
            &[p, ("kind", "render"), ("outcome", "ok")]
        ),
        1.0
    );
    // Every submission ends in exactly one outcome.
    let submitted = metric0(&reg, "pool_submitted_total", &[p]);
    assert_eq!(submitted, 3.0);
    assert_eq!(metric0(&reg, "pool_tasks_total", &[p]), submitted);
    assert_eq!(metric0(&reg, "pool_worker_spawns_total", &[p]), 1.0);
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn pools_share_a_registry_and_unregister_on_drop() {
    let reg = Registry::new();
    let a = Pool::new(config("a", 1, 1, 4), &reg).unwrap();
    let b = Pool::new(config("b", 1, 1, 4), &reg).unwrap();
    assert!(matches!(
        Pool::new(config("a", 1, 1, 4), &reg),
        Err(PoolError::Metrics(_))
    ));
    let h = b
        .submit("x", Duration::from_secs(5), |_| async { Ok(()) })
        .await
        .unwrap();
    within("x", h).await.unwrap();
    assert_eq!(metric0(&reg, "pool_tasks_total", &[("pool", "b")]), 1.0);
    assert_eq!(metric0(&reg, "pool_tasks_total", &[("pool", "a")]), 0.0);
    // The failed duplicate must not have removed the first pool's collectors.
    assert_eq!(
        metric(&reg, "pool_queue_capacity", &[("pool", "a")]),
        Some(4.0)
    );
    a.shutdown(Duration::from_secs(5)).await;
    assert_eq!(metric(&reg, "pool_queue_capacity", &[("pool", "a")]), None);
    // The name is free again.
    let a2 = Pool::new(config("a", 1, 1, 4), &reg).unwrap();
    a2.shutdown(Duration::from_secs(5)).await;
    b.shutdown(Duration::from_secs(5)).await;
}
