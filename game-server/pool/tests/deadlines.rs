//! Deadlines: expired while queued (never runs), and exceeded while running (dropped at an await).
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{config, eventually, metric0, occupy, within};
use game_pool::{Pool, TaskError};
use prometheus::Registry;

#[tokio::test]
async fn queued_task_past_deadline_is_dropped_as_queue_timeout() {
    let reg = Registry::new();
    let pool = Pool::new(config("dl-q", 1, 1, 8), &reg).unwrap();
    // Occupy the only worker until we say so.
    let (release, blocker) = occupy(&pool, "block", Duration::from_secs(30)).await;

    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let t0 = Instant::now();
    let late = pool
        .submit("late", Duration::from_millis(50), move |_| async move {
            r.store(true, Ordering::SeqCst);
            Ok(())
        })
        .await
        .unwrap();
    // Reported while the worker is still busy: the housekeeper expires it, not the worker.
    assert!(matches!(
        within("queue timeout", late).await,
        Err(TaskError::QueueTimeout)
    ));
    assert!(t0.elapsed() >= Duration::from_millis(50));
    release.send(()).unwrap();
    within("blocker", blocker).await.unwrap();
    assert!(
        !ran.load(Ordering::SeqCst),
        "an expired task must never run"
    );
    assert_eq!(
        metric0(
            &reg,
            "pool_tasks_total",
            &[("kind", "late"), ("outcome", "queue_timeout")]
        ),
        1.0
    );
    assert_eq!(pool.stats().queue_timed_out, 1);
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn running_task_past_deadline_is_cancelled_and_worker_survives() {
    let reg = Registry::new();
    let pool = Pool::new(config("dl-r", 1, 1, 8), &reg).unwrap();
    let dropped = Arc::new(AtomicBool::new(false));
    struct SetOnDrop(Arc<AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let d = dropped.clone();
    let t0 = Instant::now();
    let slow = pool
        .submit("slow", Duration::from_millis(100), move |_| async move {
            let _guard = SetOnDrop(d);
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        })
        .await
        .unwrap();
    assert!(matches!(
        within("timeout", slow).await,
        Err(TaskError::Timeout)
    ));
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "did not wait for the 60 s sleep"
    );
    eventually("the task's future was dropped", || {
        dropped.load(Ordering::SeqCst)
    })
    .await;

    // A task blocked on I/O that never comes is bounded by its deadline too.
    let io = pool
        .submit("io", Duration::from_millis(100), |_| async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let _ = l.accept().await?;
            Ok(())
        })
        .await
        .unwrap();
    assert!(matches!(
        within("io timeout", io).await,
        Err(TaskError::Timeout)
    ));

    // Same single worker, still serving.
    let ok = pool
        .submit("after", Duration::from_secs(5), |_| async { Ok(7) })
        .await
        .unwrap();
    assert_eq!(within("after", ok).await.unwrap(), 7);
    assert_eq!(
        metric0(&reg, "pool_tasks_total", &[("outcome", "timeout")]),
        2.0
    );
    assert_eq!(pool.stats().timed_out, 2);
    pool.shutdown(Duration::from_secs(5)).await;
}
