//! Basic submission: values, errors, async I/O on the worker, handle and context facts.
mod common;

use std::time::Duration;

use common::{config, metric0, within};
use game_pool::{Pool, PoolConfig, PoolError, Rejected, TaskError};
use prometheus::Registry;

#[tokio::test]
async fn returns_values_and_errors() {
    let reg = Registry::new();
    let pool = Pool::new(config("basic", 1, 2, 8), &reg).unwrap();

    let h = pool
        .submit("add", Duration::from_secs(5), |_ctx| async { Ok(2 + 2) })
        .await
        .unwrap();
    assert_eq!(h.kind(), "add");
    assert_eq!(within("add", h).await.unwrap(), 4);

    let h = pool.try_submit("fail", Duration::from_secs(5), |_ctx| async {
        anyhow::bail!("nope") as anyhow::Result<()>
    });
    match within("fail", h.unwrap()).await {
        Err(TaskError::Failed(e)) => assert_eq!(e.to_string(), "nope"),
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_eq!(
        metric0(
            &reg,
            "pool_tasks_total",
            &[("pool", "basic"), ("kind", "add"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        metric0(
            &reg,
            "pool_tasks_total",
            &[("kind", "fail"), ("outcome", "error")]
        ),
        1.0
    );
    let s = pool.stats();
    assert_eq!((s.submitted, s.ok, s.failed), (2, 1, 1));
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn tasks_await_io_on_their_worker() {
    let pool = Pool::new(config("io", 1, 1, 8), &Registry::new()).unwrap();
    // A loopback echo entirely inside one task: needs the worker runtime's I/O and time drivers.
    let h = pool
        .submit("echo", Duration::from_secs(10), |ctx| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let client = async {
                let mut c = tokio::net::TcpStream::connect(addr).await?;
                c.write_all(b"ping").await?;
                let mut buf = [0u8; 4];
                c.read_exact(&mut buf).await?;
                anyhow::Ok(buf)
            };
            let server = async {
                let (mut s, _) = listener.accept().await?;
                let mut buf = [0u8; 4];
                s.read_exact(&mut buf).await?;
                s.write_all(&buf).await?;
                anyhow::Ok(())
            };
            let (echoed, served) = tokio::join!(client, server);
            served?;
            tokio::time::sleep(Duration::from_millis(1)).await;
            Ok((echoed?, ctx.thread_name().to_string()))
        })
        .await
        .unwrap();
    let (echoed, thread) = within("echo", h).await.unwrap();
    assert_eq!(&echoed, b"ping");
    assert!(thread.starts_with("pool-w"), "{thread}");
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn context_reports_kind_deadline_and_thread() {
    let pool = Pool::new(config("ctx", 1, 1, 8), &Registry::new()).unwrap();
    let h = pool
        .submit("ctx", Duration::from_secs(30), |ctx| async move {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            Ok((
                ctx.kind(),
                ctx.thread_id(),
                tid,
                ctx.remaining(),
                ctx.is_cancelled(),
            ))
        })
        .await
        .unwrap();
    let (kind, ctx_tid, real_tid, remaining, cancelled) = within("ctx", h).await.unwrap();
    assert_eq!(kind, "ctx");
    assert_eq!(ctx_tid, real_tid);
    assert_ne!(
        real_tid as u32,
        std::process::id(),
        "ran on a worker, not the main thread"
    );
    assert!(remaining > Duration::ZERO && remaining <= Duration::from_secs(30));
    assert!(!cancelled);
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn rejects_after_shutdown_and_bad_configs() {
    let pool = Pool::new(config("closed", 1, 1, 8), &Registry::new()).unwrap();
    let other = pool.clone();
    pool.shutdown(Duration::from_secs(5)).await;
    let r = other.try_submit("late", Duration::from_secs(1), |_| async { Ok(()) });
    assert_eq!(r.unwrap_err(), Rejected::ShuttingDown);
    let r = other
        .submit("late", Duration::from_secs(1), |_| async { Ok(()) })
        .await;
    assert_eq!(r.unwrap_err(), Rejected::ShuttingDown);

    for bad in [
        PoolConfig {
            min_workers: 3,
            max_workers: 2,
            ..config("bad", 1, 1, 1)
        },
        PoolConfig {
            max_workers: 0,
            min_workers: 0,
            ..config("bad", 1, 1, 1)
        },
        PoolConfig {
            queue_capacity: 0,
            ..config("bad", 1, 1, 1)
        },
        PoolConfig {
            name: String::new(),
            ..config("bad", 1, 1, 1)
        },
    ] {
        assert!(matches!(
            Pool::new(bad, &Registry::new()),
            Err(PoolError::Config(_))
        ));
    }
}

#[test]
fn pool_and_handles_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    fn send_future<F: std::future::Future + Send>(_: F) {}
    send_sync::<Pool>();
    send_sync::<game_pool::TaskContext>();
    send_sync::<Rejected>();
    send::<game_pool::TaskHandle<Vec<u8>>>();
    send::<TaskError>();
    // `submit` is usable from `tokio::spawn`ed handlers even when the task's own future is not
    // Send (it only ever runs on its worker thread).
    let pool = Pool::new(config("send", 1, 1, 1), &Registry::new()).unwrap();
    send_future(pool.submit("rc", Duration::from_secs(1), |_| async {
        let local = std::rc::Rc::new(1);
        tokio::task::yield_now().await;
        Ok(*local)
    }));
}

#[tokio::test]
async fn non_send_task_futures_run_on_the_worker() {
    let pool = Pool::new(config("rc", 1, 1, 4), &Registry::new()).unwrap();
    let h = pool
        .submit("rc", Duration::from_secs(5), |_| async {
            let shared = std::rc::Rc::new(std::cell::Cell::new(20));
            tokio::task::yield_now().await;
            shared.set(shared.get() + 1);
            Ok(shared.get())
        })
        .await
        .unwrap();
    assert_eq!(within("rc", h).await.unwrap(), 21);
    pool.shutdown(Duration::from_secs(5)).await;
}
