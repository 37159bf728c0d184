// The Colyseus peer of our game server for `cargo xtask bench peer`: one room type doing the
// same work as game-server's rooms (game-server/peer/workload.json: members and NPCs per room,
// movement, input queue limits, 20 Hz tick with one patch per tick, app-level ping/pong).
//
//   node server.cjs                 listen on 127.0.0.1:0, print "colyseus-peer listening on PORT"
//   node server.cjs --workload      print the workload this room runs (JSON) and exit
//
// stdin commands (one per line), answered with one JSON line on stdout:
//   reset   start a measurement window (tick durations, patches, clients)
//   stats   {"clients","rooms","ticks","tick_p99_ms","tick_max_ms","patches","overruns"}
// Modules come from NODE_PATH (`cargo xtask setup` installs them into .tools/colyseus-peer).
"use strict";

const W = require("../workload.json");

// The room's parameters, read from the shared workload file (and nothing else).
const P = {
  tick_hz: W.tick_hz,
  members_per_room: W.members_per_room,
  npcs_per_room: W.npcs_per_room,
  world_size: W.world_size,
  player_speed: W.player_speed,
  npc_speed: W.npc_speed,
  npc_turn_one_in: W.npc_turn_one_in,
  max_queued_inputs: W.max_queued_inputs,
  max_inputs_per_tick: W.max_inputs_per_tick,
};

if (process.argv.includes("--workload")) {
  process.stdout.write(JSON.stringify(P) + "\n");
  process.exit(0);
}

const { Server, Room } = require("@colyseus/core");
const { WebSocketTransport } = require("@colyseus/ws-transport");
const { Schema, MapSchema, defineTypes } = require("@colyseus/schema");

// Positions as float32 like our binary protocol's entities; ack and gold per player (our
// delta's header carries the member's own; Colyseus's idiom is to put them in the shared state).
class Player extends Schema {}
defineTypes(Player, { x: "float32", y: "float32", ack: "uint32", gold: "int32" });
class Npc extends Schema {}
defineTypes(Npc, { x: "float32", y: "float32" });
class State extends Schema {
  constructor() {
    super();
    this.tick = 0;
    this.ts = 0;
    this.players = new MapSchema();
    this.npcs = new MapSchema();
  }
}
// ts: server Unix time in µs when the patch is sent (our delta's `ts`), for the latency.
defineTypes(State, { tick: "uint32", ts: "float64", players: { map: Player }, npcs: { map: Npc } });

const dt = 1 / P.tick_hz;
const stats = { ticks: 0, patches: 0, overruns: 0, durs: [] };

function nowMicros() {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

class GameRoom extends Room {
  onCreate() {
    this.maxClients = P.members_per_room;
    this.state = new State();
    this.queues = new Map();
    for (let i = 0; i < P.npcs_per_room; i++) {
      const n = new Npc();
      n.x = Math.random() * P.world_size;
      n.y = Math.random() * P.world_size;
      const a = Math.random() * 2 * Math.PI;
      n.vx = Math.cos(a) * P.npc_speed;
      n.vy = Math.sin(a) * P.npc_speed;
      this.state.npcs.set("n" + i, n);
    }
    this.onMessage("i", (client, m) => {
      const q = this.queues.get(client.sessionId);
      if (q && q.length < P.max_queued_inputs) q.push(m);
    });
    this.onMessage("ping", (client, m) => client.send("pong", m));
    // Patches go out at the end of each tick (as ours), not on a separate timer.
    this.patchRate = null;
    this.setSimulationInterval(() => this.tick(), 1000 / P.tick_hz);
  }

  onJoin(client) {
    const p = new Player();
    p.x = Math.random() * P.world_size;
    p.y = Math.random() * P.world_size;
    p.ack = 0;
    p.gold = 0;
    this.state.players.set(client.sessionId, p);
    this.queues.set(client.sessionId, []);
  }

  onLeave(client) {
    this.state.players.delete(client.sessionId);
    this.queues.delete(client.sessionId);
  }

  tick() {
    const t0 = performance.now();
    const s = this.state;
    s.tick++;
    const clamp = (v, lo, hi) => (v < lo ? lo : v > hi ? hi : v);
    for (const [id, q] of this.queues) {
      if (q.length === 0) continue;
      const p = s.players.get(id);
      const n = Math.min(q.length, P.max_inputs_per_tick);
      for (let k = 0; k < n; k++) {
        const i = q[k];
        const dx = clamp(i.dx | 0, -1, 1);
        const dy = clamp(i.dy | 0, -1, 1);
        if (dx !== 0 || dy !== 0) {
          p.x = clamp(p.x + dx * P.player_speed * dt, 0, P.world_size);
          p.y = clamp(p.y + dy * P.player_speed * dt, 0, P.world_size);
        }
        if (i.c) p.gold++;
        p.ack = i.seq;
      }
      q.splice(0, n);
    }
    for (const n of s.npcs.values()) {
      if (Math.floor(Math.random() * P.npc_turn_one_in) === 0) {
        const a = Math.random() * 2 * Math.PI;
        n.vx = Math.cos(a) * P.npc_speed;
        n.vy = Math.sin(a) * P.npc_speed;
      }
      n.x += n.vx * dt;
      n.y += n.vy * dt;
      if (n.x < 0 || n.x > P.world_size) {
        n.vx = -n.vx;
        n.x = clamp(n.x, 0, P.world_size);
      }
      if (n.y < 0 || n.y > P.world_size) {
        n.vy = -n.vy;
        n.y = clamp(n.y, 0, P.world_size);
      }
    }
    s.ts = nowMicros();
    if (this.broadcastPatch()) stats.patches += this.clients.length;
    const took = performance.now() - t0;
    stats.ticks++;
    stats.durs.push(took);
    if (took > 1000 / P.tick_hz) stats.overruns++;
  }
}

function p99(v) {
  if (v.length === 0) return 0;
  const s = Float64Array.from(v).sort();
  return s[Math.min(s.length - 1, Math.ceil(0.99 * s.length) - 1)];
}

async function main() {
  const transport = new WebSocketTransport({ maxPayload: 4096 });
  const server = new Server({ transport, greet: false });
  server.define("game", GameRoom);
  await server.listen(0, "127.0.0.1");
  const port = transport.server.address().port;
  process.stdout.write(`colyseus-peer listening on ${port}\n`);
  let rooms = 0;
  let clients = 0;
  require("readline")
    .createInterface({ input: process.stdin })
    .on("line", async (line) => {
      const cmd = line.trim();
      if (cmd === "reset") {
        Object.assign(stats, { ticks: 0, patches: 0, overruns: 0, durs: [] });
        process.stdout.write("{}\n");
      } else if (cmd === "stats") {
        const { matchMaker } = require("@colyseus/core");
        const list = await matchMaker.query({});
        rooms = list.length;
        clients = list.reduce((a, r) => a + r.clients, 0);
        const out = {
          clients,
          rooms,
          ticks: stats.ticks,
          tick_p99_ms: p99(stats.durs),
          tick_max_ms: stats.durs.reduce((a, b) => Math.max(a, b), 0),
          patches: stats.patches,
          overruns: stats.overruns,
        };
        process.stdout.write(JSON.stringify(out) + "\n");
      } else if (cmd === "quit") {
        process.exit(0);
      }
    })
    .on("close", () => process.exit(0));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
