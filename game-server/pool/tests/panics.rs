//! Panics are contained: reported to the handle, counted, and the worker thread survives.
mod common;

use std::time::Duration;

use common::{config, metric0, within};
use game_pool::{Pool, TaskError};
use prometheus::Registry;

fn tid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

#[tokio::test]
async fn panicking_tasks_are_contained_and_counted() {
    let reg = Registry::new();
    // One worker, so "the worker survived" means the same thread runs the next task.
    let pool = Pool::new(config("panics", 1, 1, 8), &reg).unwrap();
    let before = pool
        .submit("tid", Duration::from_secs(5), |_| async { Ok(tid()) })
        .await
        .unwrap();
    let before = within("tid", before).await.unwrap();

    let h = pool
        .submit("boom", Duration::from_secs(5), |_| async {
            tokio::task::yield_now().await;
            panic!("boom in poll");
            #[expect(
                unreachable_code,
                reason = "the task's type needs a result after the panic"
            )]
            Ok(())
        })
        .await
        .unwrap();
    match within("boom", h).await {
        Err(TaskError::Panicked(msg)) => assert!(msg.contains("boom in poll"), "{msg}"),
        other => panic!("expected Panicked, got {other:?}"),
    }

    // A panic in the closure itself, before it returns a future.
    let h = pool
        .submit("boom", Duration::from_secs(5), |_| {
            if tid() != 0 {
                panic!("boom in closure");
            }
            async { Ok(()) }
        })
        .await
        .unwrap();
    assert!(
        matches!(within("boom2", h).await, Err(TaskError::Panicked(m)) if m.contains("boom in closure"))
    );

    let after = pool
        .submit("tid", Duration::from_secs(5), |_| async { Ok(tid()) })
        .await
        .unwrap();
    assert_eq!(
        within("tid", after).await.unwrap(),
        before,
        "same worker thread still serving"
    );
    let s = pool.stats();
    assert_eq!((s.panicked, s.workers), (2, 1));
    assert_eq!(
        metric0(
            &reg,
            "pool_tasks_total",
            &[("kind", "boom"), ("outcome", "panicked")]
        ),
        2.0
    );
    pool.shutdown(Duration::from_secs(5)).await;
}
