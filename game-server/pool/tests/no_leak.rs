//! Shutdown leaves no thread behind. One test in its own binary, so no other test's pool threads
//! can be counted by mistake.
mod common;

use std::time::Duration;

use common::{config, eventually, threads_named, within};
use game_pool::{Pool, TaskError};
use prometheus::Registry;
use tokio::sync::oneshot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_pool_thread_outlives_the_pool() {
    let baseline = threads_named("pool-");
    assert_eq!(baseline, 0);

    // 1. A clean shutdown after scaling up: every worker and the sampler are joined.
    let pool = Pool::new(config("leak1", 2, 6, 64), &Registry::new()).unwrap();
    let mut handles = Vec::new();
    for _ in 0..32 {
        handles.push(
            pool.submit("work", Duration::from_secs(10), |_| async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok(())
            })
            .await
            .unwrap(),
        );
    }
    for h in handles {
        within("work", h).await.unwrap();
    }
    let during = threads_named("pool-");
    assert!(during > 2, "workers and sampler running: {during}");
    assert_eq!(threads_named("pool-sampler"), 1);
    pool.shutdown(Duration::from_secs(5)).await;
    // join() returns once the thread is done; /proc may list it a moment longer.
    eventually("pool threads are gone after shutdown", || {
        threads_named("pool-") == baseline
    })
    .await;

    // 2. Grace period runs out: the running task is cancelled, the queued one too, all joined.
    let pool = Pool::new(config("leak2", 1, 1, 8), &Registry::new()).unwrap();
    let (started_tx, started) = oneshot::channel::<()>();
    let stuck = pool
        .submit("stuck", Duration::from_secs(600), move |_| async move {
            let _ = started_tx.send(());
            std::future::pending::<()>().await;
            Ok(())
        })
        .await
        .unwrap();
    let queued = pool
        .submit("queued", Duration::from_secs(600), |_| async { Ok(()) })
        .await
        .unwrap();
    within("start", started).await.unwrap();
    within("shutdown", pool.shutdown(Duration::from_millis(100))).await;
    assert!(matches!(
        within("stuck", stuck).await,
        Err(TaskError::Cancelled)
    ));
    assert!(matches!(
        within("queued", queued).await,
        Err(TaskError::Cancelled)
    ));
    eventually("pool threads are gone after a forced shutdown", || {
        threads_named("pool-") == baseline
    })
    .await;

    // 3. Dropped without shutdown: queued work still finishes, then the threads exit by themselves.
    let pool = Pool::new(config("leak3", 3, 3, 8), &Registry::new()).unwrap();
    let h = pool
        .submit("last", Duration::from_secs(10), |_| async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(5)
        })
        .await
        .unwrap();
    drop(pool);
    assert_eq!(within("last", h).await.unwrap(), 5);
    eventually("pool threads exit after the pool is dropped", || {
        threads_named("pool-") == baseline
    })
    .await;
}
