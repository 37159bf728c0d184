//! Cancellation of queued and running tasks.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{config, eventually, metric0, occupy, within};
use game_pool::{Pool, TaskError};
use prometheus::Registry;
use tokio::sync::oneshot;

#[tokio::test]
async fn cancel_queued_task_never_runs() {
    let reg = Registry::new();
    let pool = Pool::new(config("cq", 1, 1, 8), &reg).unwrap();
    let (release, blocker) = occupy(&pool, "block", Duration::from_secs(30)).await;

    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let queued = pool
        .submit("victim", Duration::from_secs(30), move |_| async move {
            r.store(true, Ordering::SeqCst);
            Ok(())
        })
        .await
        .unwrap();
    queued.cancel();
    // Resolves at once, while the worker is still blocked.
    assert!(matches!(
        within("cancelled", queued).await,
        Err(TaskError::Cancelled)
    ));
    release.send(()).unwrap();
    within("blocker", blocker).await.unwrap();
    let after = pool
        .submit("after", Duration::from_secs(5), |_| async { Ok(()) })
        .await
        .unwrap();
    within("after", after).await.unwrap();
    assert!(!ran.load(Ordering::SeqCst));
    eventually("the cancellation is counted", || {
        metric0(
            &reg,
            "pool_tasks_total",
            &[("kind", "victim"), ("outcome", "cancelled")],
        ) == 1.0
    })
    .await;
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn cancel_running_task_stops_it_and_worker_survives() {
    let reg = Registry::new();
    let pool = Pool::new(config("cr", 1, 1, 8), &reg).unwrap();
    let (started_tx, started) = oneshot::channel::<()>();
    let finished = Arc::new(AtomicBool::new(false));
    let f = finished.clone();
    let h = pool
        .submit("long", Duration::from_secs(60), move |_| async move {
            let _ = started_tx.send(());
            tokio::time::sleep(Duration::from_secs(60)).await;
            f.store(true, Ordering::SeqCst);
            Ok(())
        })
        .await
        .unwrap();
    within("start", started).await.unwrap();
    h.cancel();
    assert!(matches!(
        within("cancelled", h).await,
        Err(TaskError::Cancelled)
    ));
    assert!(!finished.load(Ordering::SeqCst));

    // A task can watch for cancellation itself and wind down.
    let (started_tx, started) = oneshot::channel::<()>();
    let h = pool
        .submit(
            "cooperative",
            Duration::from_secs(60),
            move |ctx| async move {
                let _ = started_tx.send(());
                ctx.cancelled().await;
                Ok(ctx.is_cancelled())
            },
        )
        .await
        .unwrap();
    within("start", started).await.unwrap();
    h.cancel();
    // The task saw the signal in the same poll and returned its own value.
    assert!(within("cooperative", h).await.unwrap());

    let again = pool
        .submit("after", Duration::from_secs(5), |_| async { Ok(1) })
        .await
        .unwrap();
    assert_eq!(within("after", again).await.unwrap(), 1);
    assert_eq!(
        metric0(
            &reg,
            "pool_tasks_total",
            &[("kind", "long"), ("outcome", "cancelled")]
        ),
        1.0
    );
    pool.shutdown(Duration::from_secs(5)).await;
}
