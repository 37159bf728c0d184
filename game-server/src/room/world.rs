//! A room's game state and its per-tick simulation and delta broadcast.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::{JoinError, JoinOk, Member, Shared};
use crate::outbox::PushError;
use crate::persistence::PlayerRecord;
use crate::protocol::{self, Encoding, Entity, Input, KIND_NPC, KIND_PLAYER, ServerMsg, close};

// The workload constants are public: the Colyseus peer's room must match them
// (game-server/peer/workload.json, checked by tests/peer_workload.rs).
pub const WORLD_SIZE: f32 = 100.0;
/// Units per second at full input.
pub const PLAYER_SPEED: f32 = 10.0;
pub const NPC_SPEED: f32 = 3.0;
/// An NPC picks a new direction with probability 1/N per tick.
pub const NPC_TURN_ONE_IN: u64 = 64;
/// Inputs buffered per player between ticks; more are dropped (a client may not outrun the sim).
pub const MAX_QUEUED_INPUTS: usize = 8;
/// Inputs applied per player per tick, so a burst cannot teleport a player.
pub const MAX_INPUTS_PER_TICK: usize = 4;
const MAX_ITEMS: usize = 64;

struct Player {
    entity: u32,
    x: f32,
    y: f32,
    gold: i64,
    items: Vec<String>,
    inputs: VecDeque<Input>,
    ack: u32,
    /// Position changed since the last broadcast.
    dirty: bool,
    /// Changed since last staged to persistence.
    persist_dirty: bool,
    sent_ack: u32,
    sent_gold: i64,
    member: Option<Member>,
    grace_until: Option<Instant>,
}

struct Npc {
    entity: u32,
    x: f32,
    y: f32,
    vx: f32,
    vy: f32,
}

pub(super) struct World {
    pub name: Arc<str>,
    pub tick: u64,
    shared: Arc<Shared>,
    next_entity: u32,
    players: HashMap<String, Player>,
    npcs: Vec<Npc>,
    gone: Vec<u32>,
    rng: u64,
    /// Reused every tick (the seed's sync.Pool advice): entity list and encode scratch.
    ents: Vec<Entity>,
    scratch: BytesMut,
}

impl World {
    pub fn new(shared: Arc<Shared>, name: Arc<str>, seed: u64) -> Self {
        let mut w = Self {
            name,
            tick: 0,
            next_entity: 1,
            players: HashMap::new(),
            npcs: Vec::new(),
            gone: Vec::new(),
            rng: seed | 1,
            ents: Vec::new(),
            scratch: BytesMut::with_capacity(16 * 1024),
            shared,
        };
        for _ in 0..w.shared.cfg.npcs_per_room {
            let entity = w.alloc_entity();
            let (x, y) = (w.rand_f32() * WORLD_SIZE, w.rand_f32() * WORLD_SIZE);
            let (vx, vy) = w.rand_dir();
            w.npcs.push(Npc {
                entity,
                x,
                y,
                vx,
                vy,
            });
        }
        w
    }

    fn alloc_entity(&mut self) -> u32 {
        let e = self.next_entity;
        self.next_entity = self.next_entity.wrapping_add(1).max(1);
        e
    }

    fn rand_u64(&mut self) -> u64 {
        // xorshift64: cheap, deterministic per room, good enough for wandering NPCs.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    fn rand_f32(&mut self) -> f32 {
        (self.rand_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    fn rand_dir(&mut self) -> (f32, f32) {
        let a = self.rand_f32() * std::f32::consts::TAU;
        (a.cos() * NPC_SPEED, a.sin() * NPC_SPEED)
    }

    pub fn is_empty(&self) -> bool {
        self.players.is_empty()
    }

    fn record(name: &str, p: &Player) -> PlayerRecord {
        PlayerRecord {
            player: name.to_string(),
            gold: p.gold,
            items: p.items.clone(),
            x: p.x,
            y: p.y,
        }
    }

    fn snapshot(&self) -> Vec<Entity> {
        let mut v = Vec::with_capacity(self.players.len() + self.npcs.len());
        v.extend(self.players.values().map(|p| Entity {
            id: p.entity,
            k: KIND_PLAYER,
            x: p.x,
            y: p.y,
        }));
        v.extend(self.npcs.iter().map(|n| Entity {
            id: n.entity,
            k: KIND_NPC,
            x: n.x,
            y: n.y,
        }));
        v
    }

    fn send_direct(&mut self, member: &Member, msg: &ServerMsg) {
        member.encoding.encode_server(msg, &mut self.scratch);
        let frame = self.scratch.split().freeze();
        if member.tx.push(frame).is_err() {
            member.tx.kick(close::SLOW_CONSUMER, "slow_consumer");
        }
    }

    pub fn join(
        &mut self,
        player: String,
        member: Member,
        rec: PlayerRecord,
    ) -> Result<JoinOk, JoinError> {
        let resumed;
        let entity;
        if let Some(p) = self.players.get_mut(&player) {
            if let Some(old) = p.member.take()
                && old.session_id != member.session_id
            {
                old.tx.kick(close::REPLACED, "replaced");
            }
            p.member = Some(member.clone());
            p.grace_until = None;
            // Force a full header on the next delta for the new connection.
            p.sent_ack = u32::MAX;
            resumed = true;
            entity = p.entity;
        } else {
            let active = self.players.values().filter(|p| p.member.is_some()).count();
            if active >= self.shared.cfg.max_room_members {
                return Err(JoinError::Full);
            }
            entity = self.alloc_entity();
            let (mut x, mut y) = (rec.x, rec.y);
            if !(0.0..=WORLD_SIZE).contains(&x)
                || !(0.0..=WORLD_SIZE).contains(&y)
                || (x == 0.0 && y == 0.0)
            {
                x = self.rand_f32() * WORLD_SIZE;
                y = self.rand_f32() * WORLD_SIZE;
            }
            self.players.insert(
                player.clone(),
                Player {
                    entity,
                    x,
                    y,
                    gold: rec.gold,
                    items: rec.items,
                    inputs: VecDeque::with_capacity(MAX_QUEUED_INPUTS),
                    ack: 0,
                    dirty: true,
                    persist_dirty: false,
                    sent_ack: u32::MAX,
                    sent_gold: i64::MIN,
                    member: Some(member.clone()),
                    grace_until: None,
                },
            );
            self.shared.metrics.room_members.inc();
            self.shared.set_location(&player, Some(&self.name));
            resumed = false;
        }
        let p = &self.players[&player];
        let msg = ServerMsg::Joined {
            room: self.name.to_string(),
            you: entity,
            tick: self.tick,
            gold: p.gold,
            items: p.items.clone(),
            resumed,
            ents: self.snapshot(),
        };
        self.send_direct(&member, &msg);
        self.shared
            .metrics
            .joins_total
            .with_label_values(&[if resumed { "resumed" } else { "new" }])
            .inc();
        Ok(JoinOk { entity, resumed })
    }

    fn remove(&mut self, player: &str) -> Option<Player> {
        let p = self.players.remove(player)?;
        self.gone.push(p.entity);
        self.shared.persistence.stage(Self::record(player, &p));
        self.shared.set_location(player, None);
        self.shared.metrics.room_members.dec();
        Some(p)
    }

    pub fn leave(&mut self, player: &str, session_id: u64) {
        if self
            .players
            .get(player)
            .and_then(|p| p.member.as_ref())
            .map(|m| m.session_id)
            != Some(session_id)
        {
            return;
        }
        if let Some(p) = self.remove(player)
            && let Some(m) = p.member
        {
            let msg = ServerMsg::Left {
                room: self.name.to_string(),
            };
            self.send_direct(&m, &msg);
        }
    }

    pub fn evict(&mut self, player: &str) {
        if let Some(p) = self.remove(player)
            && let Some(m) = p.member
        {
            m.tx.kick(close::REPLACED, "replaced");
        }
    }

    pub fn disconnected(&mut self, player: &str, session_id: u64, grace: Duration) {
        if let Some(p) = self.players.get_mut(player)
            && p.member.as_ref().map(|m| m.session_id) == Some(session_id)
        {
            p.member = None;
            p.grace_until = Some(Instant::now() + grace);
        }
    }

    pub fn input(&mut self, player: &str, session_id: u64, input: Input) {
        if let Some(p) = self.players.get_mut(player)
            && p.member.as_ref().map(|m| m.session_id) == Some(session_id)
        {
            if p.inputs.len() >= MAX_QUEUED_INPUTS {
                self.shared.metrics.inputs_dropped_total.inc();
                return;
            }
            p.inputs.push_back(input);
        }
    }

    /// Advance the simulation by exactly one tick of `dt`.
    pub fn step(&mut self, dt: f32) {
        self.tick += 1;
        let mut changed: Vec<String> = Vec::new();
        for (name, p) in self.players.iter_mut() {
            for _ in 0..MAX_INPUTS_PER_TICK {
                let Some(i) = p.inputs.pop_front() else { break };
                let (dx, dy) = (i.dx.clamp(-1, 1) as f32, i.dy.clamp(-1, 1) as f32);
                if dx != 0.0 || dy != 0.0 {
                    p.x = (p.x + dx * PLAYER_SPEED * dt).clamp(0.0, WORLD_SIZE);
                    p.y = (p.y + dy * PLAYER_SPEED * dt).clamp(0.0, WORLD_SIZE);
                    p.dirty = true;
                    p.persist_dirty = true;
                }
                if i.collect {
                    p.gold += 1;
                    if p.gold % 10 == 0 && p.items.len() < MAX_ITEMS {
                        p.items.push("gem".to_string());
                    }
                    changed.push(name.clone());
                }
                p.ack = i.seq;
            }
        }
        // Key data (gold, items) is staged as soon as it changes: the loss window is the flush interval.
        for name in changed {
            if let Some(p) = self.players.get_mut(&name) {
                p.persist_dirty = false;
                let rec = Self::record(&name, p);
                self.shared.persistence.stage(rec);
            }
        }
        for i in 0..self.npcs.len() {
            if self.rand_u64().is_multiple_of(NPC_TURN_ONE_IN) {
                let (vx, vy) = self.rand_dir();
                self.npcs[i].vx = vx;
                self.npcs[i].vy = vy;
            }
            let n = &mut self.npcs[i];
            n.x += n.vx * dt;
            n.y += n.vy * dt;
            if !(0.0..=WORLD_SIZE).contains(&n.x) {
                n.vx = -n.vx;
                n.x = n.x.clamp(0.0, WORLD_SIZE);
            }
            if !(0.0..=WORLD_SIZE).contains(&n.y) {
                n.vy = -n.vy;
                n.y = n.y.clamp(0.0, WORLD_SIZE);
            }
        }
        // Positions are staged about once a second, not every tick.
        if self
            .tick
            .is_multiple_of(self.shared.cfg.tick_hz.max(1) as u64)
        {
            for (name, p) in self.players.iter_mut() {
                if p.persist_dirty {
                    p.persist_dirty = false;
                    self.shared.persistence.stage(Self::record(name, p));
                }
            }
        }
    }

    /// Drop players whose reconnect grace ran out.
    pub fn expire(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .players
            .iter()
            .filter(|(_, p)| p.grace_until.is_some_and(|g| g <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for n in expired {
            self.remove(&n);
        }
    }

    /// Send one delta to each member: changed entities since the last broadcast, ids
    /// that left, and the member's own ack and gold. The shared part is encoded once
    /// per encoding, then each member's frame is header + body.
    pub fn broadcast(&mut self) {
        self.ents.clear();
        for p in self.players.values_mut() {
            if p.dirty {
                p.dirty = false;
                self.ents.push(Entity {
                    id: p.entity,
                    k: KIND_PLAYER,
                    x: p.x,
                    y: p.y,
                });
            }
        }
        // NPCs move every tick.
        self.ents.extend(self.npcs.iter().map(|n| Entity {
            id: n.entity,
            k: KIND_NPC,
            x: n.x,
            y: n.y,
        }));
        let shared_change = !self.ents.is_empty() || !self.gone.is_empty();
        let mut json_body: Option<Bytes> = None;
        let mut bin_body: Option<Bytes> = None;
        let ts = protocol::unix_micros();
        let metrics = &self.shared.metrics;
        for p in self.players.values_mut() {
            let Some(m) = &p.member else { continue };
            if !shared_change && p.ack == p.sent_ack && p.gold == p.sent_gold {
                continue;
            }
            let body = match m.encoding {
                Encoding::Json => json_body.get_or_insert_with(|| {
                    protocol::json::delta_body(&self.ents, &self.gone, &mut self.scratch);
                    self.scratch.split().freeze()
                }),
                Encoding::Binary => bin_body.get_or_insert_with(|| {
                    protocol::binary::delta_body(&self.ents, &self.gone, &mut self.scratch);
                    self.scratch.split().freeze()
                }),
            };
            match m.encoding {
                Encoding::Json => {
                    protocol::json::delta_header(self.tick, p.ack, ts, p.gold, &mut self.scratch)
                }
                Encoding::Binary => {
                    protocol::binary::delta_header(self.tick, p.ack, ts, p.gold, &mut self.scratch)
                }
            }
            self.scratch.extend_from_slice(body);
            let frame = self.scratch.split().freeze();
            match m.tx.push(frame) {
                Ok(()) => {
                    p.sent_ack = p.ack;
                    p.sent_gold = p.gold;
                }
                Err(PushError::Full) => {
                    // Never buffer without bound: a client that cannot keep up is dropped.
                    metrics.outbound_dropped_total.inc();
                    m.tx.kick(close::SLOW_CONSUMER, "slow_consumer");
                }
                Err(PushError::Closed) => {}
            }
        }
        self.gone.clear();
        // Reclaim scratch capacity once all frames from earlier ticks are dropped.
        self.scratch.reserve(4096);
    }

    /// Stage every player (clean shutdown).
    pub fn stage_all(&mut self) {
        for (name, p) in &self.players {
            self.shared.persistence.stage(Self::record(name, p));
        }
    }

    pub fn clear(&mut self) {
        for name in self.players.keys() {
            self.shared.set_location(name, None);
        }
        self.shared
            .metrics
            .room_members
            .sub(self.players.len() as i64);
        self.players.clear();
    }
}
