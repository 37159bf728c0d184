//! 10x overload: the queue never exceeds its capacity and every rejection is counted.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{config, metric0, occupy, within};
use game_pool::{Pool, Rejected, TaskError};
use prometheus::Registry;

const WORKERS: usize = 2;
const CAPACITY: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_submit_overload_stays_bounded_and_counts_rejections() {
    let reg = Registry::new();
    let pool = Pool::new(config("ovl", WORKERS, WORKERS, CAPACITY), &reg).unwrap();
    let total = 10 * (WORKERS + CAPACITY);
    let (mut accepted, mut rejected, mut max_seen) = (Vec::new(), 0usize, 0usize);
    for _ in 0..total {
        match pool.try_submit("burst", Duration::from_secs(30), |_| async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(())
        }) {
            Ok(h) => accepted.push(h),
            Err(Rejected::QueueFull) => rejected += 1,
            Err(other) => panic!("unexpected rejection {other:?}"),
        }
        let s = pool.stats();
        max_seen = max_seen.max(s.queued);
        assert!(s.queued <= CAPACITY, "queue {} over capacity", s.queued);
        assert!(metric0(&reg, "pool_queue_depth", &[("pool", "ovl")]) <= CAPACITY as f64);
    }
    assert_eq!(max_seen, CAPACITY, "the burst filled the queue");
    // Workers free a few slots during the burst; still, most of a 10x burst must be turned away.
    assert!(rejected > total / 2, "rejected only {rejected} of {total}");
    assert_eq!(accepted.len() + rejected, total);
    for h in accepted {
        within("accepted", h).await.unwrap();
    }
    let outcome = |o| {
        metric0(
            &reg,
            "pool_tasks_total",
            &[("kind", "burst"), ("outcome", o)],
        )
    };
    assert_eq!(outcome("rejected"), rejected as f64);
    assert_eq!(outcome("ok"), (total - rejected) as f64);
    assert_eq!(
        metric0(&reg, "pool_rejections_total", &[("reason", "queue_full")]),
        rejected as f64
    );
    assert_eq!(
        metric0(&reg, "pool_submitted_total", &[("kind", "burst")]),
        total as f64
    );
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_submitters_are_bounded_by_their_deadline() {
    let reg = Registry::new();
    let pool = Pool::new(config("ovl-wait", WORKERS, WORKERS, CAPACITY), &reg).unwrap();
    // A monitor samples the queue the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let monitor = {
        let (pool, stop, max_seen) = (pool.clone(), stop.clone(), max_seen.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                max_seen.fetch_max(pool.stats().queued, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        })
    };
    let total = 10 * (WORKERS + CAPACITY);
    let mut submitters = Vec::new();
    for _ in 0..total {
        let pool = pool.clone();
        submitters.push(tokio::spawn(async move {
            let h = pool
                .submit("wait", Duration::from_millis(200), |_| async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok(())
                })
                .await?;
            Ok::<_, Rejected>(h.await)
        }));
    }
    let (mut ok, mut full, mut late) = (0, 0, 0);
    for s in submitters {
        match within("submitter", s).await.unwrap() {
            Ok(Ok(())) => ok += 1,
            // Admitted late in its deadline: expired in the queue or while running.
            Ok(Err(TaskError::QueueTimeout | TaskError::Timeout)) => late += 1,
            Err(Rejected::QueueFull) => full += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    monitor.await.unwrap();
    assert!(max_seen.load(Ordering::Relaxed) <= CAPACITY);
    assert!(
        full > 0,
        "a 10x overload with a short deadline must turn some submitters away"
    );
    assert!(ok > 0);
    assert_eq!(ok + full + late, total);
    assert_eq!(
        metric0(
            &reg,
            "pool_tasks_total",
            &[("kind", "wait"), ("outcome", "rejected")]
        ),
        full as f64
    );
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_abandoned_while_waiting_for_room_still_adds_up() {
    let reg = Registry::new();
    let pool = Pool::new(config("ovl-drop", 1, 1, 1), &reg).unwrap();
    let (release, running) = occupy(&pool, "hold", Duration::from_secs(30)).await;
    let queued = pool
        .submit("hold", Duration::from_secs(30), |_| async { Ok(()) })
        .await
        .unwrap();
    // The queue is full; this submitter waits for room and then gives up (its future is dropped).
    let gave_up = tokio::time::timeout(
        Duration::from_millis(50),
        pool.submit("impatient", Duration::from_secs(30), |_| async { Ok(()) }),
    )
    .await;
    assert!(gave_up.is_err());
    release.send(()).unwrap();
    within("running", running).await.unwrap();
    within("queued", queued).await.unwrap();
    assert_eq!(
        metric0(
            &reg,
            "pool_tasks_total",
            &[("kind", "impatient"), ("outcome", "cancelled")]
        ),
        1.0
    );
    let p = [("pool", "ovl-drop")];
    assert_eq!(
        metric0(&reg, "pool_tasks_total", &p),
        metric0(&reg, "pool_submitted_total", &p)
    );
    pool.shutdown(Duration::from_secs(5)).await;
}
