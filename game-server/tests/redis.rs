//! The Redis client against a real `redis-server` (no mock): a pool that is exhausted fails
//! cleanly after its configured wait, and a Redis crash and restart mid-run is survived without
//! losing an acknowledged write.
mod common;

use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::{metric_value, temp_dir};
use game_server::redis_client::{RedisCallError, RedisClient, RedisOptions};
use prometheus::{Registry, TextEncoder};

fn client(r: &RedisServer, pool: usize, wait_ms: u64, response_ms: u64) -> (RedisClient, Registry) {
    let reg = Registry::new();
    let c = RedisClient::new(
        RedisOptions {
            addr: r.addr_arg(),
            pool_size: pool,
            wait_timeout: Duration::from_millis(wait_ms),
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_millis(response_ms),
        },
        &reg,
    )
    .unwrap();
    (c, reg)
}

fn metrics(reg: &Registry) -> String {
    TextEncoder::new().encode_to_string(&reg.gather()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_fails_cleanly_after_the_configured_wait() {
    let dir = temp_dir("redis-pool");
    let r = RedisServer::start(&dir);
    let (c, reg) = client(&r, 2, 300, 10_000);
    // Two blocking pops on an empty list hold both pooled connections for 2 s.
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut cmd = redis::cmd("BLPOP");
                cmd.arg("ks:test:empty").arg(2);
                c.query::<Option<(String, String)>>("BLPOP", &cmd).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = metrics(&reg);
    assert_eq!(
        metric_value(&m, "game_redis_pool_connections{state=\"used\"}"),
        2.0,
        "{m}"
    );

    let started = Instant::now();
    let r3 = tokio::time::timeout(
        Duration::from_secs(5),
        c.query::<Option<String>>("GET", redis::cmd("GET").arg("k")),
    )
    .await
    .expect("a third command must not hang on an exhausted pool");
    let waited = started.elapsed();
    assert!(
        matches!(r3, Err(RedisCallError::PoolExhausted(_))),
        "expected pool exhaustion, got {r3:?}"
    );
    assert!(
        waited >= Duration::from_millis(280) && waited < Duration::from_millis(1500),
        "failed after {waited:?}, the configured wait is 300 ms"
    );
    let m = metrics(&reg);
    assert_eq!(
        metric_value(&m, "game_redis_pool_timeouts_total{phase=\"wait\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            "game_redis_commands_total{operation=\"GET\",outcome=\"pool_exhausted\"}"
        ),
        1.0,
        "{m}"
    );
    for h in holders {
        assert_eq!(h.await.unwrap().unwrap(), None, "BLPOP timed out empty");
    }
    // Connections are back: the next command is served.
    let v: Option<String> = c.query("GET", redis::cmd("GET").arg("k")).await.unwrap();
    assert_eq!(v, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_crash_and_restart_is_survived_without_losing_acknowledged_writes() {
    let dir = temp_dir("redis-restart");
    let mut r = RedisServer::start(&dir);
    let (c, reg) = client(&r, 4, 300, 500);
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = {
        let (c, stop) = (c.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut acked, mut failed) = (Vec::new(), 0u64);
            let mut i = 0i64;
            while !stop.is_cancelled() {
                let scores = [(format!("p{i}"), i)];
                match game_server::cache::leaderboard_update(&c, &scores).await {
                    Ok(()) => acked.push((i, Instant::now())),
                    Err(_) => failed += 1,
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (acked, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    // A crash (SIGKILL: no shutdown save), down for a while, then back on the same port.
    let killed_at = Instant::now();
    r.kill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    r.spawn();
    let restarted_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    stop.cancel();
    let (acked, failed) = writer.await.unwrap();
    assert!(failed > 0, "the outage was not felt");
    let before = acked.iter().filter(|(_, t)| *t < killed_at).count();
    let after = acked.iter().filter(|(_, t)| *t > restarted_at).count();
    assert!(before > 0, "no write before the crash");
    assert!(after > 0, "the client did not reconnect after the restart");
    // Every acknowledged write is in Redis after the crash (AOF, fsync always).
    let members: std::collections::HashSet<String> = r
        .cli(&["ZRANGE", game_server::cache::LEADERBOARD, "0", "-1"])
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let lost: Vec<i64> = acked
        .iter()
        .map(|(i, _)| *i)
        .filter(|i| !members.contains(&format!("p{i}")))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    // The errors are counted.
    let m = metrics(&reg);
    let counted = metric_value(
        &m,
        "game_redis_commands_total{operation=\"ZADD\",outcome=\"error\"}",
    ) + metric_value(
        &m,
        "game_redis_commands_total{operation=\"ZADD\",outcome=\"pool_exhausted\"}",
    );
    assert_eq!(counted as u64, failed, "{m}");
    eprintln!(
        "acked {} writes ({before} before the crash, {after} after the restart), {failed} failed",
        acked.len()
    );
}
