//! Every task is a `pool.task` span carrying OpenTelemetry-style fields, parented to the
//! submitter's span, opened and closed on the worker thread around exactly the task's run.
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{config, within};
use game_pool::{Pool, TaskError};
use prometheus::Registry;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Instrument, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

#[derive(Debug, Clone)]
struct Captured {
    name: &'static str,
    fields: HashMap<String, String>,
    parent: Option<u64>,
    /// Linux tid of the thread that created / entered the span.
    created_on: i32,
    entered_on: Vec<i32>,
    opened: Instant,
    closed: Option<Instant>,
}

/// Records every span; ids are reused after close, so open spans are tracked separately.
#[derive(Default)]
struct Store {
    all: Vec<Captured>,
    open: HashMap<u64, usize>,
}

struct Capture(Arc<Mutex<Store>>);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, f: &Field, v: &str) {
        self.0.insert(f.name().to_string(), v.to_string());
    }
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        self.0.insert(f.name().to_string(), format!("{v:?}"));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let parent = if attrs.is_root() {
            None
        } else if let Some(p) = attrs.parent() {
            Some(p.into_u64())
        } else {
            ctx.current_span().id().map(Id::into_u64)
        };
        let span = Captured {
            name: attrs.metadata().name(),
            fields,
            parent,
            created_on: gettid(),
            entered_on: Vec::new(),
            opened: Instant::now(),
            closed: None,
        };
        let mut store = self.0.lock().unwrap();
        store.all.push(span);
        let i = store.all.len() - 1;
        store.open.insert(id.into_u64(), i);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut store = self.0.lock().unwrap();
        if let Some(&i) = store.open.get(&id.into_u64()) {
            values.record(&mut Fields(&mut store.all[i].fields));
        }
    }

    fn on_enter(&self, id: &Id, _: Context<'_, S>) {
        let mut store = self.0.lock().unwrap();
        if let Some(&i) = store.open.get(&id.into_u64()) {
            store.all[i].entered_on.push(gettid());
        }
    }

    fn on_close(&self, id: Id, _: Context<'_, S>) {
        let mut store = self.0.lock().unwrap();
        if let Some(i) = store.open.remove(&id.into_u64()) {
            store.all[i].closed = Some(Instant::now());
        }
    }
}

/// The layer is installed globally: worker threads are not the test's thread.
fn store() -> &'static Arc<Mutex<Store>> {
    static STORE: OnceLock<Arc<Mutex<Store>>> = OnceLock::new();
    STORE.get_or_init(|| {
        let store = Arc::new(Mutex::new(Store::default()));
        let subscriber = tracing_subscriber::registry().with(Capture(store.clone()));
        tracing::subscriber::set_global_default(subscriber).unwrap();
        store
    })
}

fn task_span(kind: &str) -> Captured {
    let store = store().lock().unwrap();
    let mut found = store.all.iter().filter(|s| {
        s.name == "pool.task" && s.fields.get("task.kind").map(String::as_str) == Some(kind)
    });
    let span = found
        .next()
        .unwrap_or_else(|| panic!("no pool.task span for {kind}"))
        .clone();
    assert!(found.next().is_none(), "one span per task");
    span
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_span_carries_the_worker_tid_and_the_submitters_parent() {
    store();
    let pool = Pool::new(config("spans", 2, 2, 16), &Registry::new()).unwrap();
    let request = tracing::info_span!("request");
    let request_id = request.id().expect("subscriber installed").into_u64();
    let h = pool
        .submit("span-ok", Duration::from_secs(10), |ctx| async move {
            let start = Instant::now();
            tokio::time::sleep(Duration::from_millis(2)).await;
            Ok((gettid(), ctx.thread_id(), start, Instant::now()))
        })
        .instrument(request.clone())
        .await
        .unwrap();
    let (real_tid, ctx_tid, start, end) = within("span-ok", h).await.unwrap();

    // The span is closed before the handle resolves.
    let span = task_span("span-ok");
    assert_eq!(real_tid, ctx_tid);
    assert_eq!(span.fields["thread.id"], real_tid.to_string());
    assert_eq!(span.created_on, real_tid, "span opened on the worker");
    assert!(!span.entered_on.is_empty() && span.entered_on.iter().all(|t| *t == real_tid));
    assert_eq!(
        span.parent,
        Some(request_id),
        "child of the submitter's span"
    );
    assert!(span.fields["thread.name"].starts_with("pool-w"));
    assert_eq!(span.fields["process.pid"], std::process::id().to_string());
    assert_eq!(span.fields["pool.name"], "spans");
    assert!(span.fields["pool.queue_wait_ms"].parse::<f64>().unwrap() >= 0.0);
    assert_eq!(span.fields["task.outcome"], "ok");
    assert!(!span.fields.contains_key("otel.status_code"));
    // Covers the whole run and nothing outside this worker's part.
    let closed = span.closed.expect("span closed");
    assert!(span.opened <= start && end <= closed);
    drop(request);
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_set_outcome_and_error_status() {
    store();
    let pool = Pool::new(config("spans-err", 1, 1, 16), &Registry::new()).unwrap();
    let err = pool.submit("span-err", Duration::from_secs(10), |_| async {
        anyhow::bail!("db down") as anyhow::Result<()>
    });
    assert!(matches!(
        within("err", err.await.unwrap()).await,
        Err(TaskError::Failed(_))
    ));
    let late = pool.submit("span-timeout", Duration::from_millis(30), |_| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(())
    });
    assert!(matches!(
        within("timeout", late.await.unwrap()).await,
        Err(TaskError::Timeout)
    ));
    let boom = pool.submit("span-panic", Duration::from_secs(10), |_| async {
        panic!("kaboom");
        #[expect(
            unreachable_code,
            reason = "the task's type needs a result after the panic"
        )]
        Ok(())
    });
    assert!(matches!(
        within("panic", boom.await.unwrap()).await,
        Err(TaskError::Panicked(_))
    ));

    for (kind, outcome, msg) in [
        ("span-err", "error", "db down"),
        ("span-timeout", "timeout", "deadline"),
        ("span-panic", "panicked", "kaboom"),
    ] {
        let span = task_span(kind);
        assert_eq!(span.fields["task.outcome"], outcome, "{kind}");
        assert_eq!(span.fields["otel.status_code"], "ERROR", "{kind}");
        assert!(
            span.fields["otel.status_message"].contains(msg),
            "{kind}: {:?}",
            span.fields
        );
        assert!(span.closed.is_some());
        // No submitter span: the task span is a root.
        assert_eq!(span.parent, None);
    }
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_reports_its_own_tid() {
    store();
    let pool = Pool::new(config("spans-many", 4, 4, 64), &Registry::new()).unwrap();
    const KINDS: [&str; 8] = ["m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"];
    let mut handles = Vec::new();
    for kind in KINDS {
        handles.push(
            pool.submit(kind, Duration::from_secs(10), |_| async {
                // Long enough that tasks overlap and spread over the workers.
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(gettid())
            })
            .await
            .unwrap(),
        );
    }
    let mut tids = std::collections::HashSet::new();
    for (kind, h) in KINDS.iter().zip(handles) {
        let tid = within(kind, h).await.unwrap();
        assert_eq!(
            task_span(kind).fields["thread.id"],
            tid.to_string(),
            "{kind}"
        );
        tids.insert(tid);
    }
    assert!(tids.len() > 1, "tasks ran on several workers: {tids:?}");
    pool.shutdown(Duration::from_secs(5)).await;
}
