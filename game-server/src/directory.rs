//! The room directory: which server runs a room, kept in Redis so that every replica sends a
//! room's players to one process. Key `ks:room:<name>` holds the owner's advertised WebSocket
//! URL with a lease (PX). The owner renews the leases of the rooms it runs every third of the
//! lease; a room that exits (idle) is simply not renewed any more, and a dead server's leases
//! lapse: the next join anywhere claims the room. So a room moves at most one lease after its
//! owner died.
use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus::{IntCounterVec, Opts, Registry};

use crate::redis_client::{RedisCallError, RedisClient};

/// Claim (or renew) atomically: free or already ours → (re)set with the lease and answer nil;
/// held by another server → answer its URL.
const CLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if (not v) or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return false
end
return v";

/// Delete the entry only if it is still ours.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

pub enum Claim {
    Mine,
    Elsewhere(String),
}

#[derive(Clone)]
pub struct Directory {
    redis: RedisClient,
    me: Arc<str>,
    lease: Duration,
    outcomes: IntCounterVec,
    /// Rooms we hold a lease on: what a clean shutdown releases (the room tasks may already
    /// have exited by then).
    held: Arc<Mutex<HashSet<Arc<str>>>>,
}

pub fn key(room: &str) -> String {
    format!("ks:room:{room}")
}

impl Directory {
    pub fn new(
        redis: RedisClient,
        me: String,
        lease: Duration,
        registry: &Registry,
    ) -> anyhow::Result<Self> {
        let outcomes = IntCounterVec::new(
            Opts::new(
                "game_room_directory_total",
                "Room directory claims and renewals by outcome (mine, elsewhere, lost, error).",
            ),
            &["op", "outcome"],
        )?;
        registry.register(Box::new(outcomes.clone()))?;
        Ok(Self {
            redis,
            me: me.into(),
            lease,
            outcomes,
            held: Arc::default(),
        })
    }

    /// This server's advertised URL (what other servers redirect to).
    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    async fn eval(&self, room: &str) -> Result<Claim, RedisCallError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(CLAIM)
            .arg(1)
            .arg(key(room))
            .arg(&*self.me)
            .arg(self.lease.as_millis() as u64);
        let owner: Option<String> = self.redis.query("EVAL", &cmd).await?;
        Ok(match owner {
            None => Claim::Mine,
            Some(url) => Claim::Elsewhere(url),
        })
    }

    /// Claim a room this server does not run yet.
    pub async fn claim(&self, room: &str) -> Result<Claim, RedisCallError> {
        let r = self.eval(room).await;
        let outcome = match &r {
            Ok(Claim::Mine) => {
                self.held.lock().expect("not poisoned").insert(room.into());
                "mine"
            }
            Ok(Claim::Elsewhere(_)) => "elsewhere",
            Err(_) => "error",
        };
        self.outcomes.with_label_values(&["claim", outcome]).inc();
        r
    }

    /// Renew the leases of the rooms this server runs. A room another server holds by now
    /// (our lease lapsed while Redis was unreachable) keeps running here for its members; it
    /// is counted as `lost` and new joins elsewhere go to the new owner.
    pub async fn renew(&self, rooms: &[Arc<str>]) {
        // Rooms that exited are not renewed: their leases lapse.
        *self.held.lock().expect("not poisoned") = rooms.iter().cloned().collect();
        for room in rooms {
            let outcome = match self.eval(room).await {
                Ok(Claim::Mine) => "mine",
                Ok(Claim::Elsewhere(owner)) => {
                    tracing::warn!(room = %room, %owner, "room lease lost to another server");
                    "lost"
                }
                Err(e) => {
                    tracing::debug!(room = %room, "lease renewal failed: {e}");
                    "error"
                }
            };
            self.outcomes.with_label_values(&["renew", outcome]).inc();
        }
    }

    /// On a clean shutdown: free our rooms now instead of after the lease, so players who
    /// reconnect elsewhere place them at once.
    pub async fn release(&self, running: &[Arc<str>]) {
        let mut rooms: HashSet<Arc<str>> = self.held.lock().expect("not poisoned").clone();
        rooms.extend(running.iter().cloned());
        for room in rooms {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(RELEASE).arg(1).arg(key(&room)).arg(&*self.me);
            let outcome = match self.redis.query::<i64>("EVAL", &cmd).await {
                Ok(_) => "released",
                Err(_) => "error",
            };
            self.outcomes.with_label_values(&["release", outcome]).inc();
        }
    }
}
