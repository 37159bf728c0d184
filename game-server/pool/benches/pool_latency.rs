//! Submit→start latency and throughput of empty tasks: game-pool beside tokio::spawn,
//! spawn_blocking and a Semaphore-bounded tokio::spawn; plus the cost of the per-task span.
//!
//! Run: `cargo bench -p game-pool` (about 15 s). Prints a table; see README.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use game_pool::{BreakerConfig, Pool, PoolConfig};
use tokio::sync::Semaphore;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Subscriber, field::Empty};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// Sequential submissions for idle latency (one task in flight at a time).
const IDLE_N: usize = 20_000;
/// Tasks in one burst for throughput and loaded latency.
const BURST_N: usize = 100_000;
const ROUNDS: usize = 5;
const WORKERS: usize = 2;
const SEM_PERMITS: usize = 1024;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Spawn,
    SpawnBlocking,
    SemaphoreSpawn,
    Pool,
}

struct Row {
    name: String,
    idle_p50: f64,
    idle_p99: f64,
    burst_p50: f64,
    burst_p99: f64,
    tasks_per_s: f64,
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

fn ns(from: Instant, to: Instant) -> u64 {
    to.saturating_duration_since(from).as_nanos() as u64
}

/// The tokio baselines: a task that returns the instant it started.
async fn spawn_one(mode: Mode, sem: &Arc<Semaphore>) -> tokio::task::JoinHandle<Instant> {
    match mode {
        Mode::Spawn => tokio::spawn(async { Instant::now() }),
        Mode::SpawnBlocking => tokio::task::spawn_blocking(Instant::now),
        Mode::SemaphoreSpawn => {
            let permit = sem.clone().acquire_owned().await.unwrap();
            tokio::spawn(async move {
                let t = Instant::now();
                drop(permit);
                t
            })
        }
        Mode::Pool => unreachable!("the pool is measured by its own branch"),
    }
}

async fn idle_latency(mode: Mode, pool: &Pool, sem: &Arc<Semaphore>) -> Vec<u64> {
    let mut lat = Vec::with_capacity(IDLE_N);
    for _ in 0..IDLE_N {
        let t0 = Instant::now();
        let started = if mode == Mode::Pool {
            let h = pool
                .submit("empty", Duration::from_secs(60), |_| async {
                    Ok(Instant::now())
                })
                .await;
            h.unwrap().await.unwrap()
        } else {
            spawn_one(mode, sem).await.await.unwrap()
        };
        lat.push(ns(t0, started));
    }
    lat.sort_unstable();
    lat
}

/// Submits BURST_N empty tasks as fast as possible, then awaits them all.
async fn burst(mode: Mode, pool: &Pool, sem: &Arc<Semaphore>) -> (Vec<u64>, f64) {
    let mut submitted_at = Vec::with_capacity(BURST_N);
    let t0 = Instant::now();
    let mut lat = Vec::with_capacity(BURST_N);
    if mode == Mode::Pool {
        let mut handles = Vec::with_capacity(BURST_N);
        for _ in 0..BURST_N {
            submitted_at.push(Instant::now());
            let h = pool
                .submit("empty", Duration::from_secs(60), |_| async {
                    Ok(Instant::now())
                })
                .await;
            handles.push(h.unwrap());
        }
        for (h, at) in handles.into_iter().zip(submitted_at) {
            lat.push(ns(at, h.await.unwrap()));
        }
    } else {
        let mut handles = Vec::with_capacity(BURST_N);
        for _ in 0..BURST_N {
            submitted_at.push(Instant::now());
            handles.push(spawn_one(mode, sem).await);
        }
        for (h, at) in handles.into_iter().zip(submitted_at) {
            lat.push(ns(at, h.await.unwrap()));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    lat.sort_unstable();
    (lat, BURST_N as f64 / secs)
}

fn measure(rt: &tokio::runtime::Runtime, name: &str, mode: Mode, pool: &Pool) -> Row {
    let sem = Arc::new(Semaphore::new(SEM_PERMITS));
    // Each measurement runs as a task on the runtime, like a game-server handler would.
    let (pool2, sem2, name) = (pool.clone(), sem.clone(), name.to_string());
    rt.block_on(async move {
        tokio::spawn(async move {
            let _warm = burst(mode, &pool2, &sem2).await;
            let mut rounds = Vec::new();
            for _ in 0..ROUNDS {
                let idle = idle_latency(mode, &pool2, &sem2).await;
                let (loaded, tps) = burst(mode, &pool2, &sem2).await;
                rounds.push((
                    pct(&idle, 0.5),
                    pct(&idle, 0.99),
                    pct(&loaded, 0.5),
                    pct(&loaded, 0.99),
                    tps,
                ));
            }
            // Median round by throughput: robust to one noisy round on a shared VM.
            rounds.sort_by(|a, b| a.4.total_cmp(&b.4));
            let (idle_p50, idle_p99, burst_p50, burst_p99, tasks_per_s) = rounds[ROUNDS / 2];
            Row {
                name,
                idle_p50,
                idle_p99,
                burst_p50,
                burst_p99,
                tasks_per_s,
            }
        })
        .await
        .unwrap()
    })
}

/// A layer that records every field of every span into its extensions, roughly what an
/// OpenTelemetry layer does when it builds span attributes.
struct Recording;

#[derive(Default)]
struct Attrs(Vec<(&'static str, String)>);

impl Visit for Attrs {
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        self.0.push((f.name(), format!("{v:?}")));
    }
    fn record_str(&mut self, f: &Field, v: &str) {
        self.0.push((f.name(), v.to_string()));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recording {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut a = Attrs::default();
        attrs.record(&mut a);
        ctx.span(id).unwrap().extensions_mut().insert(a);
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(a) = span.extensions_mut().get_mut::<Attrs>()
        {
            values.record(a);
        }
    }
}

/// The same span the pool creates per task: create with fields, record the outcome, close.
fn span_cost_ns(iters: u32) -> f64 {
    let parent = tracing::Span::current();
    let t0 = Instant::now();
    for i in 0..iters {
        let span = tracing::info_span!(
            parent: &parent,
            "pool.task",
            pool.name = "bench",
            task.kind = "empty",
            thread.id = 4242,
            thread.name = "pool-w0",
            process.pid = 4200,
            pool.queue_wait_ms = f64::from(i % 7),
            task.outcome = Empty,
            otel.status_code = Empty,
            otel.status_message = Empty,
        );
        let entered = span.enter();
        std::hint::black_box(&entered);
        drop(entered);
        span.record("task.outcome", "ok");
        drop(span);
    }
    t0.elapsed().as_nanos() as f64 / f64::from(iters)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
        .unwrap();
    let cfg = PoolConfig {
        name: "bench".to_string(),
        min_workers: WORKERS,
        max_workers: WORKERS,
        queue_capacity: SEM_PERMITS,
        breaker: BreakerConfig {
            enabled: false,
            ..BreakerConfig::default()
        },
        ..PoolConfig::default()
    };
    let pool = Pool::new(cfg, &prometheus::Registry::new()).unwrap();

    eprintln!("measuring (about 15 s)...");
    let mut rows = vec![
        measure(&rt, "tokio::spawn", Mode::Spawn, &pool),
        measure(&rt, "tokio spawn_blocking", Mode::SpawnBlocking, &pool),
        measure(&rt, "Semaphore(1024) + spawn", Mode::SemaphoreSpawn, &pool),
        measure(&rt, "game-pool submit", Mode::Pool, &pool),
    ];
    let span_off = span_cost_ns(1_000_000);
    let span_on =
        tracing::subscriber::with_default(tracing_subscriber::registry().with(Recording), || {
            span_cost_ns(1_000_000)
        });
    // End to end with the recording subscriber installed for every thread (the workers too).
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Recording))
        .unwrap();
    rows.push(measure(
        &rt,
        "game-pool + recording subscriber",
        Mode::Pool,
        &pool,
    ));

    let base = (rows[0].idle_p50, rows[0].idle_p99, rows[0].tasks_per_s);
    println!();
    println!(
        "{:<34} {:>10} {:>10} {:>11} {:>11} {:>12} | {:>8} {:>8} {:>8}",
        "mode (2 runtime threads, 2 workers)",
        "idle p50",
        "idle p99",
        "burst p50",
        "burst p99",
        "tasks/s",
        "p50 x",
        "p99 x",
        "tput x"
    );
    for r in &rows {
        println!(
            "{:<34} {:>8.1}us {:>8.1}us {:>9.1}us {:>9.1}us {:>12.0} | {:>8.2} {:>8.2} {:>8.2}",
            r.name,
            r.idle_p50,
            r.idle_p99,
            r.burst_p50,
            r.burst_p99,
            r.tasks_per_s,
            r.idle_p50 / base.0,
            r.idle_p99 / base.1,
            r.tasks_per_s / base.2
        );
    }
    let pool_row = &rows[3];
    let traced_row = &rows[4];
    println!();
    println!("span create+enter+record+close, no subscriber:        {span_off:>8.1} ns");
    println!("span create+enter+record+close, recording subscriber: {span_on:>8.1} ns");
    println!(
        "pool per-task time, no subscriber -> recording:       {:>8.0} ns -> {:.0} ns",
        1e9 / pool_row.tasks_per_s,
        1e9 / traced_row.tasks_per_s
    );
    println!();
    println!(
        "idle = one task in flight (submit -> first instruction of the task); burst = {BURST_N} tasks"
    );
    println!(
        "submitted back to back, then awaited; x = ratio to tokio::spawn (latency: lower is better)."
    );
    rt.block_on(pool.shutdown(Duration::from_secs(5)));
}
