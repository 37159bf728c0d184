//! Elastic workers: pre-warm above the watermark, never beyond max, retire idle ones down to min.
mod common;

use std::time::Duration;

use common::{config, eventually, metric0, within};
use game_pool::{Pool, PoolConfig};
use prometheus::Registry;
use tokio::sync::watch;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scales_up_to_max_and_back_down_to_min() {
    let reg = Registry::new();
    let cfg = PoolConfig {
        idle_timeout: Duration::from_millis(150),
        ..config("elastic", 1, 6, 64)
    };
    let pool = Pool::new(cfg, &reg).unwrap();
    assert_eq!(pool.stats().workers, 1);

    // Tasks that hold their worker until the gate opens.
    let (open, gate) = watch::channel(false);
    let mut handles = Vec::new();
    for _ in 0..10 {
        let mut gate = gate.clone();
        handles.push(
            pool.submit("gated", Duration::from_secs(60), move |_| async move {
                let _ = gate.wait_for(|o| *o).await;
                Ok(())
            })
            .await
            .unwrap(),
        );
        assert!(pool.stats().workers <= 6, "never above max_workers");
    }
    eventually("six busy workers", || {
        let s = pool.stats();
        s.active == 6 && s.queued == 4
    })
    .await;
    assert_eq!(pool.stats().workers, 6);
    assert_eq!(metric0(&reg, "pool_workers", &[("state", "busy")]), 6.0);

    open.send(true).unwrap();
    for h in handles {
        within("gated", h).await.unwrap();
    }
    eventually("idle workers retired down to min", || {
        pool.stats().workers == 1
    })
    .await;
    assert_eq!(
        metric0(&reg, "pool_worker_retires_total", &[("pool", "elastic")]),
        5.0
    );
    assert_eq!(
        metric0(&reg, "pool_worker_spawns_total", &[("pool", "elastic")]),
        6.0
    );
    // Stays at min: the last worker never retires.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(pool.stats().workers, 1);
    let h = pool
        .submit("after", Duration::from_secs(5), |_| async { Ok(()) })
        .await
        .unwrap();
    within("after", h).await.unwrap();
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarms_spare_workers_before_the_queue_backs_up() {
    let reg = Registry::new();
    let pool = Pool::new(config("prewarm", 2, 8, 64), &reg).unwrap();
    let (open, gate) = watch::channel(false);
    let mut handles = Vec::new();
    // Two long tasks on two workers: utilisation 100% > 85%, so two spares are started.
    for _ in 0..2 {
        let mut gate = gate.clone();
        handles.push(
            pool.submit("gated", Duration::from_secs(60), move |_| async move {
                let _ = gate.wait_for(|o| *o).await;
                Ok(())
            })
            .await
            .unwrap(),
        );
    }
    eventually("spare workers pre-warmed", || {
        let s = pool.stats();
        s.active == 2 && s.workers >= 4 && s.idle >= 2
    })
    .await;
    assert_eq!(pool.stats().queued, 0);
    open.send(true).unwrap();
    for h in handles {
        within("gated", h).await.unwrap();
    }
    pool.shutdown(Duration::from_secs(5)).await;
}
