//! What the server keeps in Redis besides the room directory: the leaderboard (a sorted set the
//! batch job writes, a lobby screen reads) and session resume tokens (a reconnecting client may
//! land on any replica).
use std::{sync::Arc, time::Duration};

use crate::redis_client::{RedisCallError, RedisClient};
use crate::server::App;

pub const LEADERBOARD: &str = "ks:leaderboard";

fn resume_key(session: &str) -> String {
    format!("ks:resume:{session}")
}

/// Set the players' gold in the leaderboard (one ZADD per page).
pub async fn leaderboard_update(
    redis: &RedisClient,
    scores: &[(String, i64)],
) -> Result<(), RedisCallError> {
    if scores.is_empty() {
        return Ok(());
    }
    let mut cmd = redis::cmd("ZADD");
    cmd.arg(LEADERBOARD);
    for (player, gold) in scores {
        cmd.arg(*gold).arg(player);
    }
    redis.query::<i64>("ZADD", &cmd).await.map(|_| ())
}

/// The top `n` players with their gold, best first.
pub async fn leaderboard_top(
    redis: &RedisClient,
    n: usize,
) -> Result<Vec<(String, i64)>, RedisCallError> {
    let mut cmd = redis::cmd("ZREVRANGE");
    cmd.arg(LEADERBOARD)
        .arg(0)
        .arg(n.saturating_sub(1))
        .arg("WITHSCORES");
    redis.query("ZREVRANGE", &cmd).await
}

/// Remember where a session's player was, for `?resume=<session>` within `ttl`.
pub async fn put_resume(
    redis: &RedisClient,
    session: &str,
    player: &str,
    room: &str,
    ttl: Duration,
) -> Result<(), RedisCallError> {
    let mut cmd = redis::cmd("SET");
    cmd.arg(resume_key(session))
        .arg(format!("{player} {room}"))
        .arg("PX")
        .arg(ttl.as_millis().max(1) as u64);
    redis.query::<()>("SET", &cmd).await
}

/// The room a resumed session's player was in, if the token is known and belongs to `player`.
pub async fn get_resume(
    redis: &RedisClient,
    session: &str,
    player: &str,
) -> Result<Option<String>, RedisCallError> {
    let mut cmd = redis::cmd("GET");
    cmd.arg(resume_key(session));
    let v: Option<String> = redis.query("GET", &cmd).await?;
    Ok(v.and_then(|v| {
        let (p, room) = v.split_once(' ')?;
        (p == player).then(|| room.to_owned())
    }))
}

/// Reads the leaderboard's top 10 `rate` times a second until shutdown, as lobby screens do.
/// Failures are counted by the client (game_redis_commands_total) and show in its spans.
pub async fn run_leaderboard_reads(app: Arc<App>, redis: RedisClient, rate: u32) {
    if rate == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    // Reads that could not start on time are skipped, not bunched.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let redis = redis.clone();
        // Concurrent, like many lobby screens: a slow Redis fills the pool and queues waiters.
        tokio::spawn(async move {
            let _ = leaderboard_top(&redis, 10).await;
        });
    }
}
