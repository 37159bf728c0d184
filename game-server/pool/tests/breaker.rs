//! The circuit breaker opens under the seed's conditions (sustained high watermark *and* queue
//! timeouts), rejects with PoolBusy while open, then probes and closes after recovery.
mod common;

use std::time::Duration;

use common::{config, eventually, metric0, within};
use game_pool::{BreakerConfig, BreakerState, Pool, PoolConfig, Rejected};
use prometheus::Registry;

fn breaker_config(name: &str) -> PoolConfig {
    PoolConfig {
        breaker: BreakerConfig {
            enabled: true,
            sample_interval: Duration::from_millis(20),
            open_watermark: 0.90,
            consecutive_samples: 3,
            queue_timeout_rate: 0.05,
            cool_down: Duration::from_millis(300),
            half_open_probes: 2,
        },
        // One worker, ten slots: watermark = (busy + queued) / 11, so a full queue reads ~1.0.
        ..config(name, 1, 1, 10)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_under_overload_with_queue_timeouts_and_closes_after_recovery() {
    let reg = Registry::new();
    let pool = Pool::new(breaker_config("brk"), &reg).unwrap();
    assert_eq!(pool.stats().breaker, BreakerState::Closed);

    // Overload: each task holds the worker 30 ms, queued ones expire after 60 ms, and we keep
    // the queue topped up. Watermark stays ~1 and most tasks time out in the queue.
    let mut handles = Vec::new();
    let opened = within("breaker opens", async {
        loop {
            match pool.try_submit("heavy", Duration::from_millis(60), |_| async {
                std::thread::sleep(Duration::from_millis(30));
                Ok(())
            }) {
                Ok(h) => handles.push(h),
                Err(Rejected::QueueFull) => tokio::time::sleep(Duration::from_millis(2)).await,
                Err(Rejected::PoolBusy) => break true,
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert!(opened);
    assert_eq!(pool.stats().breaker, BreakerState::Open);
    assert_eq!(metric0(&reg, "pool_breaker_state", &[("pool", "brk")]), 1.0);
    assert!(pool.stats().queue_timed_out > 0);
    // While open, everything is refused and counted.
    let r = pool.try_submit("light", Duration::from_secs(5), |_| async { Ok(()) });
    assert_eq!(r.unwrap_err(), Rejected::PoolBusy);
    let r = pool
        .submit("light", Duration::from_secs(5), |_| async { Ok(()) })
        .await;
    assert_eq!(r.unwrap_err(), Rejected::PoolBusy);
    assert!(metric0(&reg, "pool_rejections_total", &[("reason", "pool_busy")]) >= 3.0);
    for h in handles {
        let _ = within("drain", h).await;
    }

    // After the cool-down the sampler turns it half-open; healthy probes close it.
    eventually("half-open after cool-down", || {
        pool.stats().breaker == BreakerState::HalfOpen
    })
    .await;
    assert_eq!(metric0(&reg, "pool_breaker_state", &[("pool", "brk")]), 2.0);
    for _ in 0..2 {
        let h = pool
            .submit("probe", Duration::from_secs(10), |_| async { Ok(()) })
            .await
            .unwrap();
        within("probe", h).await.unwrap();
    }
    assert_eq!(pool.stats().breaker, BreakerState::Closed);
    assert_eq!(metric0(&reg, "pool_breaker_state", &[("pool", "brk")]), 0.0);
    for to in ["open", "half_open", "closed"] {
        assert_eq!(
            metric0(&reg, "pool_breaker_transitions_total", &[("to", to)]),
            1.0,
            "{to}"
        );
    }
    let h = pool
        .submit("light", Duration::from_secs(5), |_| async { Ok(1) })
        .await
        .unwrap();
    assert_eq!(within("light", h).await.unwrap(), 1);
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_watermark_without_queue_timeouts_keeps_it_closed() {
    let reg = Registry::new();
    let pool = Pool::new(breaker_config("brk-busy"), &reg).unwrap();
    // Saturated, but every task has a generous deadline: busy is not unhealthy.
    let mut handles = Vec::new();
    let mut hot_samples = 0;
    while hot_samples < 15 {
        match pool.try_submit("steady", Duration::from_secs(60), |_| async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(())
        }) {
            Ok(h) => handles.push(h),
            Err(Rejected::QueueFull) => {
                // Count only full-queue moments spaced a sample interval apart.
                assert!(pool.stats().watermark >= 0.9);
                hot_samples += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(other) => panic!("breaker must stay closed, got {other:?}"),
        }
    }
    assert_eq!(pool.stats().breaker, BreakerState::Closed);
    for h in handles {
        within("steady", h).await.unwrap();
    }
    assert_eq!(pool.stats().queue_timed_out, 0);
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_that_times_out_reopens_it() {
    let reg = Registry::new();
    let pool = Pool::new(breaker_config("brk-re"), &reg).unwrap();
    let mut handles = Vec::new();
    loop {
        match pool.try_submit("heavy", Duration::from_millis(60), |_| async {
            std::thread::sleep(Duration::from_millis(30));
            Ok(())
        }) {
            Ok(h) => handles.push(h),
            Err(Rejected::QueueFull) => tokio::time::sleep(Duration::from_millis(2)).await,
            Err(Rejected::PoolBusy) => break,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    for h in handles {
        let _ = within("drain", h).await;
    }
    eventually("half-open", || {
        pool.stats().breaker == BreakerState::HalfOpen
    })
    .await;
    let h = pool
        .submit("probe", Duration::from_millis(50), |_| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(())
        })
        .await
        .unwrap();
    assert!(within("probe", h).await.is_err());
    assert_eq!(pool.stats().breaker, BreakerState::Open);
    assert_eq!(
        metric0(&reg, "pool_breaker_transitions_total", &[("to", "open")]),
        2.0
    );
    pool.shutdown(Duration::from_secs(5)).await;
}
