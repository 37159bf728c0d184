// One step of the Colyseus side of `cargo xtask bench peer`: spawn server.cjs (pinned with
// taskset when --server-cpu is given), open N sessions with Colyseus's own client (colyseus.js,
// joinOrCreate fills rooms of members_per_room), send inputs and pings at the workload's rates,
// measure a steady window, print one JSON row. The same columns as `bots bench --json`.
//
//   node bench.cjs --sessions 1000 --duration 15 [--server-cpu 1] [--connect-rate 500]
"use strict";

const { spawn } = require("child_process");
const fs = require("fs");
const path = require("path");
const readline = require("readline");
const W = require("../workload.json");

function arg(name, dflt) {
  const i = process.argv.indexOf("--" + name);
  return i >= 0 ? process.argv[i + 1] : dflt;
}
const N = Number(arg("sessions", 100));
const DURATION = Number(arg("duration", 15));
const SERVER_CPU = arg("server-cpu", null);
const CONNECT_RATE = Number(arg("connect-rate", 500));
// One session in SAMPLE decodes the state patches (and measures their latency).
const SAMPLE = Number(arg("sample", 10));
const ROOM_STATE_PATCH = 15; // colyseus.js Protocol.ROOM_STATE_PATCH

const { Client } = require("colyseus.js");

const HZ = sysconf_clk_tck();
function sysconf_clk_tck() {
  return 100; // USER_HZ is 100 on every Linux ABI node runs on
}
function cpuSecs(pid) {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) / HZ;
  } catch {
    return 0;
  }
}
function rssKib(pid) {
  try {
    const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}
const nowMicros = () => Math.round((performance.timeOrigin + performance.now()) * 1000);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function pct(v, p) {
  if (v.length === 0) return 0;
  const s = Float64Array.from(v).sort();
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

async function main() {
  const serverJs = path.join(__dirname, "server.cjs");
  const [cmd, args] = SERVER_CPU !== null
    ? ["taskset", ["-c", String(SERVER_CPU), process.execPath, serverJs]]
    : [process.execPath, [serverJs]];
  const child = spawn(cmd, args, { stdio: ["pipe", "pipe", "inherit"], env: process.env });
  const pid = child.pid;
  const lines = readline.createInterface({ input: child.stdout });
  const waiters = [];
  let onListen;
  const listening = new Promise((r) => (onListen = r));
  lines.on("line", (l) => {
    const m = /^colyseus-peer listening on (\d+)/.exec(l);
    if (m) return onListen(Number(m[1]));
    const w = waiters.shift();
    if (w) w(JSON.parse(l));
  });
  const ask = (c) =>
    new Promise((r) => {
      waiters.push(r);
      child.stdin.write(c + "\n");
    });
  const port = await Promise.race([listening, sleep(20000).then(() => { throw new Error("peer server did not start"); })]);
  await sleep(1000);
  const baselineRss = rssKib(pid);

  const client = new Client(`ws://127.0.0.1:${port}`);
  const bots = [];
  let connected = 0, failed = 0, closed = 0;
  let measuring = false;
  const c = { inputs: 0, patches: 0, bytes: 0, lat: [], rtt: [] };

  async function open(i) {
    const room = await client.joinOrCreate("game");
    const b = { i, room, seq: 0, ping: 0, dx: 1, dy: 0 };
    // Bytes as received by the client (payload of each WebSocket message), like our bots count.
    // Patches are counted here for every session; only every SAMPLE-th session decodes them
    // (Colyseus's client decoding 50-member states for every session saturated one core of
    // load long before the server: our bots, too, read only what they measure).
    const ws = room.connection.transport.ws;
    const inner = ws.onmessage;
    const decodes = i % SAMPLE === 0;
    ws.onmessage = (e) => {
      c.bytes += e.data.byteLength;
      if (new Uint8Array(e.data, 0, 1)[0] === ROOM_STATE_PATCH) {
        c.patches++;
        if (!decodes) return;
      }
      inner(e);
    };
    if (decodes) {
      room.onStateChange((s) => {
        if (measuring && s.ts) c.lat.push(nowMicros() - s.ts);
      });
    }
    room.onMessage("pong", (m) => {
      if (measuring) c.rtt.push(nowMicros() - m.ts);
    });
    room.onLeave(() => {
      b.gone = true;
      closed++;
    });
    bots.push(b);
    connected++;
  }

  const started = Date.now();
  const gap = 1000 / CONNECT_RATE;
  const opens = [];
  for (let i = 0; i < N; i++) {
    opens.push(open(i).catch((e) => {
      failed++;
      if (failed < 3) console.error(`colyseus bench: join failed: ${e.message || e}`);
    }));
    // Pace the ramp: sleep once per batch of sessions that a millisecond timer can resolve.
    if (i % Math.max(1, Math.round(CONNECT_RATE / 100)) === 0) await sleep(Math.max(1, gap * Math.max(1, Math.round(CONNECT_RATE / 100))));
  }
  // Inputs: one timer for all sessions at the input rate (each bot sends one input per period).
  const inputPeriod = 1000 / W.input_hz;
  const inputTimer = setInterval(() => {
    for (const b of bots) {
      if (b.gone) continue;
      b.seq++;
      if (b.seq % 20 === 0) {
        b.dx = ((b.seq / 20 + b.i) % 3) - 1;
        b.dy = ((Math.floor(b.seq / 60) + b.i) % 3) - 1;
      }
      b.room.send("i", { seq: b.seq, dx: b.dx, dy: b.dy, c: b.seq % W.collect_every_inputs === 0 });
      c.inputs++;
    }
  }, inputPeriod);
  const pingTimer = setInterval(() => {
    for (const b of bots) {
      if (b.gone) continue;
      b.room.send("ping", { id: ++b.ping, ts: nowMicros() });
    }
  }, 1000 / W.ping_hz);
  const deadline = Date.now() + 60000;
  await Promise.race([Promise.all(opens), sleep(Math.max(0, deadline - Date.now()))]);
  await sleep(1000);

  // Steady window.
  await ask("reset");
  const cpu0 = cpuSecs(pid);
  const load0 = process.cpuUsage();
  const t0 = performance.now();
  const c0 = { ...c };
  measuring = true;
  let lastInputs = c.inputs, lastPatches = c.patches;
  for (let s = 0; s < DURATION; s++) {
    await sleep(1000);
    process.stderr.write(`[colyseus ${Math.round((Date.now() - started) / 1000)}s] sessions ${connected}/${N} (failed ${failed}, closed ${closed}) inputs/s ${c.inputs - lastInputs} patches/s ${c.patches - lastPatches}\n`);
    lastInputs = c.inputs;
    lastPatches = c.patches;
  }
  measuring = false;
  const secs = (performance.now() - t0) / 1000;
  const cpu1 = cpuSecs(pid);
  const load1 = process.cpuUsage(load0);
  const st = await ask("stats");
  const rss = rssKib(pid);
  clearInterval(inputTimer);
  clearInterval(pingTimer);
  const inputsPerSec = (c.inputs - c0.inputs) / secs;
  const patchesPerSec = (c.patches - c0.patches) / secs;
  const due = N * W.tick_hz;
  const row = {
    sessions: N,
    connected,
    rooms: st.rooms,
    tick_p99_ms: st.tick_p99_ms,
    tick_overruns: st.overruns,
    delivered_ratio: patchesPerSec / due,
    inputs_ratio: inputsPerSec / (N * W.input_hz),
    server_cpu_pct: ((cpu1 - cpu0) / secs) * 100,
    msgs_out_per_sec: st.patches / secs,
    bytes_in_per_sec: (c.bytes - c0.bytes) / secs,
    rss_per_session_kib: Math.max(0, (rss - baselineRss) / Math.max(1, N)),
    delta_latency_p99_ms: pct(c.lat, 99) / 1000,
    rtt_p99_ms: pct(c.rtt, 99) / 1000,
    closed_early: closed,
    load_cpu_pct: ((load1.user + load1.system) / 1e6 / secs) * 100,
  };
  row.held =
    connected === N && closed === 0 && row.tick_p99_ms < 1000 / W.tick_hz &&
    row.delivered_ratio >= 0.95 && row.inputs_ratio >= 0.95;
  process.stdout.write(JSON.stringify(row) + "\n");
  child.kill("SIGTERM");
  process.exit(0);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
