//! Rooms (world shards). Each room owns its state inside one task; sessions talk to
//! it only through its command queue, so there are no locks on game state.

mod task;
mod world;

pub use world::{
    MAX_INPUTS_PER_TICK, MAX_QUEUED_INPUTS, NPC_SPEED, NPC_TURN_ONE_IN, PLAYER_SPEED, WORLD_SIZE,
};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::persistence::{Persistence, PlayerRecord};
use crate::protocol::{Encoding, Input};

/// A session's link into a room: its bounded outbound queue with its kick switch.
#[derive(Clone)]
pub struct Member {
    pub session_id: u64,
    pub encoding: Encoding,
    pub tx: Arc<Outbox>,
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("room is full")]
    Full,
    #[error("room closed")]
    Closed,
}

pub struct JoinOk {
    pub entity: u32,
    pub resumed: bool,
}

pub(crate) enum RoomCmd {
    Join {
        player: String,
        member: Member,
        record: PlayerRecord,
        reply: oneshot::Sender<Result<JoinOk, JoinError>>,
    },
    Leave {
        player: String,
        session_id: u64,
        reply: oneshot::Sender<()>,
    },
    /// The session ended without leaving: keep the player for the reconnect grace.
    Disconnected { player: String, session_id: u64 },
    /// Remove the player now (it is joining another room); its record is staged.
    Evict {
        player: String,
        reply: oneshot::Sender<()>,
    },
    Input {
        player: Arc<str>,
        session_id: u64,
        input: Input,
    },
}

#[derive(Clone)]
pub struct RoomHandle {
    pub name: Arc<str>,
    id: u64,
    tx: mpsc::Sender<RoomCmd>,
}

impl RoomHandle {
    /// Inputs are best effort: under overload they are dropped, never queued without bound.
    pub fn input(&self, player: &Arc<str>, session_id: u64, input: Input) -> bool {
        self.tx
            .try_send(RoomCmd::Input {
                player: player.clone(),
                session_id,
                input,
            })
            .is_ok()
    }

    pub fn disconnected(&self, player: &str, session_id: u64) {
        let cmd = RoomCmd::Disconnected {
            player: player.to_string(),
            session_id,
        };
        // Must not be lost (it starts the grace timer); a full queue gets a spawned send.
        if let Err(mpsc::error::TrySendError::Full(cmd)) = self.tx.try_send(cmd) {
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(cmd).await;
            });
        }
    }

    pub async fn leave(&self, player: &str, session_id: u64) {
        let (reply, rx) = oneshot::channel();
        let cmd = RoomCmd::Leave {
            player: player.to_string(),
            session_id,
            reply,
        };
        if self.tx.send(cmd).await.is_ok() {
            let _ = rx.await;
        }
    }

    async fn evict(&self, player: &str) {
        let (reply, rx) = oneshot::channel();
        let cmd = RoomCmd::Evict {
            player: player.to_string(),
            reply,
        };
        if self.tx.send(cmd).await.is_ok() {
            let _ = rx.await;
        }
    }
}

pub(crate) struct Shared {
    pub cfg: Config,
    pub metrics: Arc<Metrics>,
    pub persistence: Arc<Persistence>,
    pub shutdown: CancellationToken,
    rooms: Mutex<HashMap<Arc<str>, RoomHandle>>,
    /// Which room currently holds each player (active or within grace).
    locations: Mutex<HashMap<String, Arc<str>>>,
    next_room_id: AtomicU64,
}

impl Shared {
    pub(crate) fn set_location(&self, player: &str, room: Option<&Arc<str>>) {
        let mut l = self.locations.lock().unwrap();
        match room {
            Some(r) => {
                l.insert(player.to_string(), r.clone());
            }
            None => {
                l.remove(player);
            }
        }
    }

    /// Called by a room's task as it exits; only removes the entry if it is still this room.
    pub(crate) fn remove_room(&self, name: &Arc<str>, id: u64) {
        let mut r = self.rooms.lock().unwrap();
        if r.get(name).is_some_and(|h| h.id == id) {
            r.remove(name);
        }
    }
}

/// Registry of rooms; rooms are created on first join and exit when idle.
#[derive(Clone)]
pub struct Rooms {
    shared: Arc<Shared>,
    tracker: TaskTracker,
}

impl Rooms {
    pub fn new(
        cfg: Config,
        metrics: Arc<Metrics>,
        persistence: Arc<Persistence>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                cfg,
                metrics,
                persistence,
                shutdown,
                rooms: Mutex::new(HashMap::new()),
                locations: Mutex::new(HashMap::new()),
                next_room_id: AtomicU64::new(1),
            }),
            tracker: TaskTracker::new(),
        }
    }

    fn get_or_create(&self, name: &str) -> RoomHandle {
        let mut rooms = self.shared.rooms.lock().unwrap();
        if let Some(h) = rooms.get(name)
            && !h.tx.is_closed()
        {
            return h.clone();
        }
        let name: Arc<str> = Arc::from(name);
        let id = self.shared.next_room_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(4096);
        let h = RoomHandle {
            name: name.clone(),
            id,
            tx,
        };
        rooms.insert(name.clone(), h.clone());
        self.tracker
            .spawn(task::run(self.shared.clone(), name, id, rx));
        h
    }

    pub fn location(&self, player: &str) -> Option<Arc<str>> {
        self.shared.locations.lock().unwrap().get(player).cloned()
    }

    /// If the player is held by another room (e.g. within its reconnect grace), have
    /// that room let go first so its latest state is staged before we load.
    pub async fn release_elsewhere(&self, player: &str, room: &str) {
        if let Some(other) = self.location(player)
            && &*other != room
        {
            let h = self.shared.rooms.lock().unwrap().get(&other).cloned();
            if let Some(h) = h {
                h.evict(player).await;
            }
        }
    }

    /// Join `room`, retrying if the room exited between lookup and join.
    pub async fn join(
        &self,
        room: &str,
        player: &str,
        member: Member,
        record: PlayerRecord,
    ) -> Result<(RoomHandle, JoinOk), JoinError> {
        for _ in 0..3 {
            let h = self.get_or_create(room);
            let (reply, rx) = oneshot::channel();
            let cmd = RoomCmd::Join {
                player: player.to_string(),
                member: member.clone(),
                record: record.clone(),
                reply,
            };
            if h.tx.send(cmd).await.is_err() {
                continue;
            }
            match rx.await {
                Ok(Ok(ok)) => return Ok((h, ok)),
                Ok(Err(e)) => return Err(e),
                Err(_) => continue,
            }
        }
        Err(JoinError::Closed)
    }

    /// True if this server runs `room` now.
    pub fn is_local(&self, room: &str) -> bool {
        self.shared
            .rooms
            .lock()
            .unwrap()
            .get(room)
            .is_some_and(|h| !h.tx.is_closed())
    }

    /// The rooms this server runs, with how many players each holds (connected or in their
    /// reconnect grace).
    pub fn list(&self) -> Vec<(Arc<str>, usize)> {
        let names: Vec<Arc<str>> = self.shared.rooms.lock().unwrap().keys().cloned().collect();
        let locations = self.shared.locations.lock().unwrap();
        names
            .into_iter()
            .map(|n| {
                let members = locations.values().filter(|r| **r == n).count();
                (n, members)
            })
            .collect()
    }

    pub fn count(&self) -> usize {
        self.shared.rooms.lock().unwrap().len()
    }

    /// Wait for all room tasks to stage their players and exit (after shutdown is cancelled).
    pub async fn wait_closed(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}
