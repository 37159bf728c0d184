// kernelsight's embedded page. Vanilla JS + SVG, no dependencies, served by the agent itself.
// It polls /api/timeline (only the seconds it has not seen) and /api/status while the tab is
// visible, draws everything here in the browser, and fetches one incident's detail on click.
'use strict';

(() => {
  const POLL_MS = 2000;
  const BACKOFF_MS = 5000;
  const KEEP_S = 900;
  const NS = 'http://www.w3.org/2000/svg';
  const CLASS_COLOR = { task_surge: '#e8590c', connection_fault: '#d6336c', cpu_contention: '#7048e8' };
  const CLASS_TEXT = {
    task_surge: 'Task surge',
    connection_fault: 'Connection fault',
    cpu_contention: 'CPU contention',
  };
  const EP_COLORS = ['#1c7ed6', '#f76707', '#2f9e44', '#ae3ec9', '#0c8599', '#e64980', '#5c940d'];
  const OTHER_COLOR = '#adb5bd';

  const state = {
    samples: [], // sorted by t
    lastT: 0,
    incidents: [],
    status: null,
    windowS: 300,
    selected: null,
    detail: null,
    timer: null,
    failures: 0,
    lastOk: 0,
    polls: 0,
  };
  // Exposed for the browser test and for curious people with a console.
  window.kernelsight = state;

  const $ = (id) => document.getElementById(id);

  // The pod an incident's subject runs in: namespace/name from the API, else its UID.
function podText(p) {
  const name = p.name ? `${p.namespace}/${p.name}` : p.uid;
  return p.container ? `${name} (${p.container})` : name;
}

function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      // Through the CSSOM: the page's CSP forbids inline style attributes.
      else if (k === 'style') for (const [p, x] of Object.entries(v)) e.style.setProperty(p, x);
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function svg(tag, attrs, ...children) {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, String(v));
    }
    for (const c of children.flat()) if (c) e.append(c);
    return e;
  }

  // ---------------------------------------------------------------- formatting

  const pad = (n) => String(n).padStart(2, '0');
  function clock(unixS) {
    const d = new Date(unixS * 1000);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  function fmtNum(x, digits = 1) {
    if (x === null || x === undefined || Number.isNaN(x)) return '–';
    if (Math.abs(x) >= 1000) return Math.round(x).toLocaleString('en');
    if (Number.isInteger(x)) return String(x);
    return x.toFixed(digits);
  }
  function fmtUs(us) {
    if (us === null || us === undefined) return '–';
    if (us < 1000) return `${us < 10 ? us.toFixed(1) : Math.round(us)} µs`;
    if (us < 1e6) return `${(us / 1000).toFixed(us < 1e4 ? 2 : 1)} ms`;
    return `${(us / 1e6).toFixed(2)} s`;
  }
  function fmtDur(ns) {
    const ms = ns / 1e6;
    if (ms < 1) return `${(ns / 1e3).toFixed(0)} µs`;
    if (ms < 1000) return `${ms.toFixed(ms < 10 ? 1 : 0)} ms`;
    return `${(ms / 1000).toFixed(1)} s`;
  }
  function ago(s) {
    if (s === null || s === undefined) return 'never';
    if (s < 2) return 'just now';
    if (s < 120) return `${s} s ago`;
    if (s < 7200) return `${Math.round(s / 60)} min ago`;
    return `${Math.round(s / 3600)} h ago`;
  }

  // ---------------------------------------------------------------- polling

  async function getJSON(url) {
    const r = await fetch(url, { cache: 'no-store', headers: { Accept: 'application/json' } });
    if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
    return r.json();
  }

  async function poll() {
    state.timer = null;
    state.polls += 1;
    try {
      const [tl, st] = await Promise.all([
        getJSON(`/api/timeline?since=${state.lastT}&seconds=${KEEP_S}`),
        getJSON('/api/status'),
      ]);
      state.status = st;
      ingest(tl);
      state.failures = 0;
      state.lastOk = Date.now();
      if (state.selected) await loadDetail(state.selected, true);
      render();
    } catch (e) {
      state.failures += 1;
      state.error = String(e.message || e);
      renderLive();
      renderBanners();
    }
    schedule();
  }

  function schedule() {
    if (state.timer) clearTimeout(state.timer);
    state.timer = null;
    // Nobody looking, nothing fetched: polling resumes when the tab is visible again.
    if (document.visibilityState !== 'visible') {
      renderLive();
      return;
    }
    state.timer = setTimeout(poll, state.failures ? BACKOFF_MS : POLL_MS);
  }

  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') poll();
    else schedule();
  });

  function ingest(tl) {
    for (const s of tl.samples) {
      if (s.t > state.lastT) {
        state.samples.push(s);
        state.lastT = s.t;
      }
    }
    const horizon = tl.now_unix_s - KEEP_S;
    while (state.samples.length && state.samples[0].t < horizon) state.samples.shift();
    state.now = tl.now_unix_s;
    state.incidents = tl.incidents.slice().sort((a, b) => b.start_unix_ns - a.start_unix_ns);
  }

  // ---------------------------------------------------------------- header, banners

  function chip(label, level, title) {
    return el('span', { class: 'chip', title }, el('span', { class: `dot ${level}` }), label);
  }

  function renderLive() {
    const dot = $('live-dot');
    const text = $('live-text');
    if (state.failures) {
      dot.className = 'dot bad';
      text.textContent = `agent unreachable — retrying (last data ${state.lastOk ? ago(Math.round((Date.now() - state.lastOk) / 1000)) : 'never'})`;
    } else if (document.visibilityState !== 'visible') {
      dot.className = 'dot off';
      text.textContent = 'paused while hidden';
    } else if (state.lastOk) {
      dot.className = 'dot ok pulse';
      text.textContent = `live · updated ${clock(Math.floor(state.lastOk / 1000))}`;
    }
  }

  function renderChips() {
    const st = state.status;
    const box = $('chips');
    box.replaceChildren();
    if (!st) return;
    $('host').textContent = `agent ${st.version}`;
    const p = st.probes;
    box.append(
      !p.loaded
        ? chip('kernel probes: not loaded', 'bad', 'no eBPF programs attached')
        : p.error
          ? chip('kernel probes: error', 'bad', p.error)
          : chip(`kernel probes · ${p.watched_processes} watched`, p.watched_processes > 0 ? 'ok' : 'warn',
            p.watched_processes > 0 ? 'run-queue latency measured for these processes' : 'no process watched for run-queue latency'),
    );
    const s = st.spans;
    box.append(
      !s.correlation
        ? chip('spans: receiver off', 'bad', 'OTLP receivers not running')
        : s.received_total === 0
          ? chip('spans: none yet', 'warn', `OTLP gRPC ${s.otlp_grpc}, HTTP ${s.otlp_http}`)
          : chip(`spans · last ${ago(s.last_s_ago)}`, s.last_s_ago !== null && s.last_s_ago < 30 ? 'ok' : 'warn', `${s.received_total} received`),
    );
    const t = st.tasks;
    box.append(
      !t.pool_metrics_url
        ? chip('pool metrics: off', 'off', 'set --pool-metrics-url for task arrivals and queue depth')
        : chip(`pool metrics: ${t.ok === false ? 'failing' : 'ok'}`, t.ok === false ? 'bad' : t.ok ? 'ok' : 'warn', t.error || t.pool_metrics_url),
    );
    box.append(
      st.trace_url_template
        ? chip('trace links: on', st.forwarding ? 'ok' : 'warn', st.forwarding ? st.trace_url_template : 'links set, but spans are not forwarded (--otlp-forward)')
        : chip('trace backend: none', 'off', 'set --otlp-forward and --trace-url-template to link incidents to Jaeger/Tempo'),
    );
  }

  function renderBanners() {
    const box = $('banners');
    box.replaceChildren();
    const add = (level, strong, ...rest) => box.append(el('div', { class: `banner ${level}` }, el('b', { text: strong }), ...rest));
    if (state.failures) {
      add('bad', 'The agent is not answering.', `Showing what was last received; retrying every ${BACKOFF_MS / 1000} s. (${state.error})`);
    }
    const st = state.status;
    if (!st) return;
    if (!st.probes.loaded) {
      add('bad', 'Kernel probes are not loaded:', 'no resets, retransmits or run-queue latency can be shown. The agent needs root, or CAP_BPF and CAP_PERFMON.');
    } else if (st.probes.error) {
      add('bad', 'Reading the kernel maps failed:', st.probes.error);
    }
    if (!st.spans.correlation) {
      add('', 'Spans are not being received:', 'the OTLP receivers are not running, so spans cannot be enriched or linked to incidents.');
    } else if (st.spans.received_total === 0) {
      add('info', 'No spans have arrived yet.',
        `Point the game server's OTLP exporter at this agent (gRPC ${st.spans.otlp_grpc}, HTTP http://${st.spans.otlp_http}/v1/traces). `,
        'Kernel lanes below work without spans; incidents will have no affected spans to show until spans arrive.');
    } else if (st.spans.last_s_ago !== null && st.spans.last_s_ago > 60) {
      add('', `No spans for ${ago(st.spans.last_s_ago).replace(' ago', '')}.`, 'Has the game server stopped, or its exporter lost this agent?');
    }
  }

  // ---------------------------------------------------------------- timeline

  function visibleSamples() {
    const end = state.now || Math.floor(Date.now() / 1000);
    const start = end - state.windowS;
    return { start, end, samples: state.samples.filter((s) => s.t >= start && s.t < end) };
  }

  function topEndpoints(samples, field) {
    const totals = new Map();
    for (const s of samples) {
      for (const p of s.tcp) {
        const v = field(p);
        if (v > 0) totals.set(p.ep, (totals.get(p.ep) || 0) + v);
      }
    }
    return [...totals.entries()].sort((a, b) => b[1] - a[1]);
  }

  function render() {
    renderLive();
    renderChips();
    renderBanners();
    renderChart();
    renderIncidentList();
    renderDetail();
  }

  function niceMax(v) {
    if (v <= 0) return 1;
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  function renderChart() {
    const host = $('chart');
    const root = $('chart-svg');
    const W = Math.max(480, host.clientWidth);
    const L = 200; // lane labels
    const R = 30;
    const plotW = W - L - R;
    const { start, end, samples } = visibleSamples();
    const x = (t) => L + ((t - start) / (end - start)) * plotW;
    const bw = Math.max(1, plotW / state.windowS - (state.windowS <= 300 ? 1 : 0));
    const st = state.status;
    const g = [];
    let y = 8;
    const lanes = [];
    const step = state.windowS <= 60 ? 10 : state.windowS <= 300 ? 30 : 120;
    const ticks = [];
    for (let t = Math.ceil(start / step) * step; t <= end; t += step) ticks.push(t);
    const tlStatus = st && st.timeline;
    const gapX = samples.length && tlStatus && tlStatus.samples < tlStatus.seconds && samples[0].t > start + 3 ? x(samples[0].t) : null;
    // Notes go where there could have been data.
    const noteX = gapX !== null && gapX < L + plotW - 420 ? gapX + 10 : L + 10;

    // Each lane: { title, sub, h, draw(y0, h) }
    lanes.push({ id: 'incidents', title: 'Incidents', h: 26, draw: (y0) => drawIncidentFlags(y0, x, start, end, g, L + plotW, noteX) });

    lanes.push({
      id: 'tasks', title: 'Task arrivals', sub: ['line: tasks/s'], h: 70,
      draw: (y0, h) => {
        const areaLabel = svg('text', { x: 8, y: y0 + 41, text: 'area: queue depth' });
        g.push(areaLabel);
        if (!st || !st.tasks.pool_metrics_url) {
          return note(y0, h, 'No task source: start the agent with --pool-metrics-url http://<game-server>/metrics', 'lane-warn');
        }
        const pts = samples.filter((s) => s.pools);
        if (!pts.length) return note(y0, h, st.tasks.error ? `Pool metrics failing: ${st.tasks.error}` : 'Waiting for the first pool metrics…', st.tasks.error ? 'lane-warn' : 'lane-note');
        const pools = [...new Set(pts.flatMap((s) => s.pools.map((p) => p.pool)))].slice(0, EP_COLORS.length);
        const maxA = niceMax(Math.max(1, ...pts.flatMap((s) => s.pools.map((p) => p.arrivals))));
        const maxQ = niceMax(Math.max(1, ...pts.flatMap((s) => s.pools.map((p) => p.queue_depth))));
        pools.forEach((pool, i) => {
          const c = EP_COLORS[i];
          let area = '';
          let line = '';
          for (const s of pts) {
            const p = s.pools.find((q) => q.pool === pool);
            if (!p) continue;
            const xx = x(s.t + 0.5);
            area += `${area ? 'L' : 'M'}${xx.toFixed(1)},${(y0 + h - (p.queue_depth / maxQ) * h).toFixed(1)}`;
            line += `${line ? 'L' : 'M'}${xx.toFixed(1)},${(y0 + h - (p.arrivals / maxA) * h).toFixed(1)}`;
          }
          if (area) {
            const first = x(pts[0].t + 0.5);
            const last = x(pts[pts.length - 1].t + 0.5);
            g.push(svg('path', { d: `${area}L${last.toFixed(1)},${y0 + h}L${first.toFixed(1)},${y0 + h}Z`, fill: c, 'fill-opacity': 0.15 }));
          }
          g.push(svg('path', { d: line, fill: 'none', stroke: c, 'stroke-width': 1.6 }));
        });
        g.push(svg('text', { x: L - 6, y: y0 + 9, 'text-anchor': 'end', text: `${fmtNum(maxA)}/s` }));
        areaLabel.textContent = `area: queue depth (top ${fmtNum(maxQ)})`;
        let lx = noteX;
        for (const [i, pool] of pools.entries()) {
          g.push(svg('rect', { x: lx, y: y0 + 3, width: 9, height: 9, rx: 2, fill: EP_COLORS[i] }));
          g.push(svg('text', { x: lx + 13, y: y0 + 11, text: `pool ${pool}`, 'data-pool': pool }));
          lx += 30 + pool.length * 6.3 + 20;
        }
      },
    });

    lanes.push({
      id: 'runq', title: 'Run-queue latency', sub: ['waits per second, by length', 'red line: p50', 'red dashed: p99'], h: 110,
      draw: (y0, h) => {
        if (st && !st.probes.loaded) return note(y0, h, 'Kernel probes not loaded', 'lane-warn');
        const pts = samples.filter((s) => s.runq && s.runq.count > 0);
        if (!pts.length) {
          if (st && st.probes.watched_processes === 0) return note(y0, h, 'No process watched: start the agent with --comm game-server (or --pid, --cgroup, --watch-all)', 'lane-warn');
          return note(y0, h, 'No run-queue waits measured in this window');
        }
        let top = 13; // up to 16 ms at least
        for (const s of pts) top = Math.max(top, s.runq.slots.length);
        top = Math.min(top, 26);
        const rowH = h / top;
        let maxC = 1;
        for (const s of pts) for (const c of s.runq.slots) maxC = Math.max(maxC, c);
        const lmax = Math.log1p(maxC);
        for (const s of pts) {
          s.runq.slots.forEach((c, i) => {
            if (!c || i >= top) return;
            const f = Math.log1p(c) / lmax;
            g.push(svg('rect', { x: x(s.t).toFixed(1), y: (y0 + h - (i + 1) * rowH).toFixed(1), width: bw.toFixed(1), height: Math.max(1, rowH - 0.5).toFixed(1), fill: heat(f) }));
          });
        }
        // Percentile lines, on the same log2 scale.
        const yOf = (us) => y0 + h - (Math.log2(Math.max(1, us)) / top) * h;
        for (const [key, dash] of [['p50_us', null], ['p99_us', '5 3']]) {
          let d = '';
          for (const s of pts) if (s.runq[key]) d += `${d ? 'L' : 'M'}${x(s.t + 0.5).toFixed(1)},${yOf(s.runq[key]).toFixed(1)}`;
          if (!d) continue;
          // A white halo keeps the line readable over any cell.
          g.push(svg('path', { d, fill: 'none', stroke: '#fff', 'stroke-width': 3.2, 'stroke-opacity': 0.85, 'stroke-dasharray': dash }));
          g.push(svg('path', { class: `runq-${key}`, d, fill: 'none', stroke: '#e03131', 'stroke-width': 1.6, 'stroke-dasharray': dash }));
        }
        for (const i of [0, 4, 8, 12, 16, 20, 24]) {
          if (i > top) continue;
          const yy = y0 + h - (i / top) * h;
          g.push(svg('line', { x1: L - 4, x2: L, y1: yy, y2: yy, stroke: '#adb5bd' }));
          g.push(svg('text', { x: L - 6, y: yy + 3.5, 'text-anchor': 'end', text: fmtUs(2 ** i).replace('.00', '') }));
        }
      },
    });

    const rstEps = topEndpoints(samples, (p) => p.rst_sent + p.rst_received);
    const rtxEps = topEndpoints(samples, (p) => p.retransmits);
    const colorOf = endpointColors([...rstEps, ...rtxEps]);
    const sumOf = (ep, f) => samples.reduce((a, s) => a + s.tcp.filter((p) => p.ep === ep).reduce((b, p) => b + f(p), 0), 0);
    const tcpLane = (title, sub, field, eps, legend) => ({
      id: title, title, sub, h: 74,
      draw: (y0, h) => {
        if (st && !st.probes.loaded) return note(y0, h, 'Kernel probes not loaded', 'lane-warn');
        if (!eps.length) return note(y0, h, `None in the last ${windowText()}`);
        const totals = samples.map((s) => s.tcp.reduce((a, p) => a + field(p), 0));
        const maxV = niceMax(Math.max(1, ...totals));
        for (const s of samples) {
          let acc = 0;
          const parts = s.tcp.filter((p) => field(p) > 0).sort((a, b) => (colorOf.rank(a.ep) - colorOf.rank(b.ep)));
          for (const p of parts) {
            const v = field(p);
            const hh = (v / maxV) * h;
            g.push(svg('rect', { x: x(s.t).toFixed(1), y: (y0 + h - ((acc + v) / maxV) * h).toFixed(1), width: bw.toFixed(1), height: Math.max(0.5, hh).toFixed(1), fill: colorOf(p.ep) }));
            acc += v;
          }
        }
        g.push(svg('text', { x: L - 6, y: y0 + 9, 'text-anchor': 'end', text: `${fmtNum(maxV)}/s` }));
        // Legend: the endpoints in this lane, busiest first, with what the window holds.
        let lx = L + 4;
        for (const [ep, total] of eps.slice(0, 5)) {
          const label = `${ep} · ${legend(ep, total)}`;
          g.push(svg('rect', { x: lx, y: y0 + 2, width: 9, height: 9, rx: 2, fill: colorOf(ep) }));
          g.push(svg('text', { x: lx + 13, y: y0 + 10, text: label, 'data-endpoint': ep }));
          lx += 22 + label.length * 6.3;
          if (lx > L + plotW - 120) break;
        }
      },
    });
    lanes.push(tcpLane('TCP resets', ['RST sent + received', 'per service endpoint'], (p) => p.rst_sent + p.rst_received, rstEps,
      (ep) => `${fmtNum(sumOf(ep, (p) => p.rst_sent))} sent, ${fmtNum(sumOf(ep, (p) => p.rst_received))} received`));
    lanes.push(tcpLane('Retransmits', ['segments', 'per service endpoint'], (p) => p.retransmits, rtxEps, (ep, total) => `${fmtNum(total)} segments`));

    lanes.push({
      id: 'spans', title: 'Spans received', sub: ['per second · blue: enriched'], h: 44,
      draw: (y0, h) => {
        if (st && !st.spans.correlation) return note(y0, h, 'OTLP receivers not running', 'lane-warn');
        const pts = samples.filter((s) => s.spans !== null && s.spans !== undefined);
        const maxV = niceMax(Math.max(1, ...pts.map((s) => s.spans)));
        if (!pts.some((s) => s.spans > 0)) return note(y0, h, st && st.spans.received_total === 0 ? `No spans yet — send OTLP to ${st.spans.otlp_grpc} (gRPC) or ${st.spans.otlp_http} (HTTP)` : `No spans in the last ${windowText()}`, st && st.spans.received_total === 0 ? 'lane-warn' : 'lane-note');
        for (const s of pts) {
          if (!s.spans) continue;
          g.push(svg('rect', { x: x(s.t).toFixed(1), y: (y0 + h - (s.spans / maxV) * h).toFixed(1), width: bw.toFixed(1), height: ((s.spans / maxV) * h).toFixed(1), fill: '#ced4da' }));
          if (s.spans_enriched) g.push(svg('rect', { x: x(s.t).toFixed(1), y: (y0 + h - (Math.min(s.spans_enriched, s.spans) / maxV) * h).toFixed(1), width: bw.toFixed(1), height: ((Math.min(s.spans_enriched, s.spans) / maxV) * h).toFixed(1), fill: '#4dabf7' }));
        }
        g.push(svg('text', { x: L - 6, y: y0 + 9, 'text-anchor': 'end', text: `${fmtNum(maxV)}/s` }));
      },
    });

    function note(y0, h, text, cls = 'lane-note') {
      g.push(svg('text', { class: cls, x: noteX, y: y0 + h / 2 + 4, text }));
    }

    const laneBoxes = [];
    for (const lane of lanes) {
      const y0 = y;
      g.push(svg('rect', { x: L, y: y0, width: plotW, height: lane.h, fill: lane.id === 'incidents' ? 'none' : '#fbfcfd', stroke: lane.id === 'incidents' ? 'none' : '#eef1f4' }));
      if (gapX !== null && lane.id !== 'incidents') g.push(svg('rect', { class: 'before-start', x: L, y: y0, width: gapX - L, height: lane.h, fill: '#eceff2' }));
      g.push(svg('text', { class: 'lane-title', x: 8, y: y0 + 14, text: lane.title }));
      [].concat(lane.sub || []).forEach((line, i) => g.push(svg('text', { x: 8, y: y0 + 28 + i * 13, text: line })));
      // Time grid under the lane's data.
      if (lane.id !== 'incidents') for (const t of ticks) g.push(svg('line', { x1: x(t), x2: x(t), y1: y0, y2: y0 + lane.h, stroke: '#e3e7eb', 'stroke-width': 1 }));
      laneBoxes.push({ lane, y0 });
      lane.draw(y0, lane.h);
      y += lane.h + 12;
    }
    const plotTop = laneBoxes[0].y0;
    const plotBottom = y - 12;

    // Incident bands across every lane.
    for (const inc of state.incidents) {
      const s = inc.start_unix_ns / 1e9;
      const e = inc.state === 'open' ? Math.max(inc.end_unix_ns / 1e9, end) : inc.end_unix_ns / 1e9;
      if (e < start || s > end) continue;
      const x0 = x(Math.max(start, s));
      const x1 = Math.max(x0 + 3, x(Math.min(end, e)));
      const c = CLASS_COLOR[inc.class] || '#868e96';
      const band = svg('g', { class: 'band', 'data-incident': inc.id, 'data-class': inc.class, 'data-subject': inc.subject, onclick: () => select(inc.id) },
        svg('rect', { x: x0, y: plotTop + 26, width: x1 - x0, height: plotBottom - plotTop - 26, fill: c, 'fill-opacity': state.selected === inc.id ? 0.22 : 0.12, stroke: c, 'stroke-opacity': 0.6, 'stroke-width': state.selected === inc.id ? 2 : 1 }),
        svg('title', { text: `${inc.class} ${inc.subject}: ${inc.summary}` }));
      g.push(band);
    }

    // Before the agent started there is nothing to show: say so instead of an empty stretch.
    if (gapX !== null) {
      g.push(svg('line', { x1: gapX, x2: gapX, y1: plotTop + 26, y2: plotBottom, stroke: '#868e96', 'stroke-dasharray': '3 3' }));
      if (gapX - L > 170) g.push(svg('text', { class: 'lane-note', x: gapX - 8, y: plotTop + 15, 'text-anchor': 'end', text: `agent started ${clock(samples[0].t)}` }));
    }

    // Time axis.
    for (const t of ticks) {
      const xx = x(t);
      g.push(svg('line', { x1: xx, x2: xx, y1: plotBottom, y2: plotBottom + 4, stroke: '#adb5bd' }));
      g.push(svg('text', { x: Math.min(xx, L + plotW - 24), y: plotBottom + 16, 'text-anchor': 'middle', text: clock(t) }));
    }
    // Lost kernel events: the per-endpoint counts miss them.
    for (const s of samples) {
      if (s.kernel_lost > 0) g.push(svg('rect', { x: x(s.t), y: plotBottom + 1, width: Math.max(2, bw), height: 4, fill: '#e03131' }, svg('title', { text: `${s.kernel_lost} kernel events lost (ring full)` })));
    }
    if (!samples.length) {
      g.push(svg('text', { class: 'lane-note', x: L + plotW / 2, y: plotTop + 60, 'text-anchor': 'middle', text: 'Collecting the first seconds…' }));
    }
    const cursor = svg('line', { x1: 0, x2: 0, y1: plotTop + 26, y2: plotBottom, stroke: '#495057', 'stroke-dasharray': '2 2', visibility: 'hidden' });
    g.push(cursor);
    const H = plotBottom + 22;
    root.setAttribute('viewBox', `0 0 ${W} ${H}`);
    root.setAttribute('height', H);
    root.replaceChildren(...g);
    root.onmousemove = (ev) => hover(ev, { x, start, end, L, plotW, plotTop, plotBottom, cursor, colorOf, W });
    root.onmouseleave = () => {
      cursor.setAttribute('visibility', 'hidden');
      $('tip').hidden = true;
    };
  }

  function windowText() {
    if (state.windowS === 60) return 'minute';
    return state.windowS >= 120 ? `${state.windowS / 60} minutes` : `${state.windowS} s`;
  }

  function endpointColors(ranked) {
    const order = [];
    for (const [ep] of ranked) if (ep !== 'other' && !order.includes(ep)) order.push(ep);
    const f = (ep) => {
      const i = order.indexOf(ep);
      return i >= 0 && i < EP_COLORS.length ? EP_COLORS[i] : OTHER_COLOR;
    };
    f.rank = (ep) => {
      const i = order.indexOf(ep);
      return i < 0 ? 1e9 : i;
    };
    return f;
  }

  // Sequential colour scale, pale blue (few waits) → deep navy (many).
  function heat(f) {
    const stops = [[222, 235, 247], [158, 202, 225], [66, 146, 198], [8, 81, 156], [8, 38, 84]];
    const p = Math.min(0.999, Math.max(0, f)) * (stops.length - 1);
    const i = Math.floor(p);
    const k = p - i;
    const c = stops[i].map((v, j) => Math.round(v + (stops[i + 1][j] - v) * k));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  }

  function drawIncidentFlags(y0, x, start, end, g, right, noteX) {
    const items = [];
    const incs = state.incidents.slice().sort((a, b) => a.start_unix_ns - b.start_unix_ns);
    for (const inc of incs) {
      const s = inc.start_unix_ns / 1e9;
      const e = inc.state === 'open' ? end : inc.end_unix_ns / 1e9;
      if (e < start || s > end) continue;
      const label = `${inc.class}${inc.state === 'open' ? ' (open)' : ''}`;
      items.push({ inc, label, w: label.length * 6.4 + 12, want: x(Math.max(start, s)) });
    }
    // Flags start at their incident, pushed right so they do not overlap, then back left so
    // none runs past the edge.
    let prev = -Infinity;
    for (const it of items) {
      it.x = Math.max(it.want, prev + 4);
      prev = it.x + it.w;
    }
    let limit = right;
    for (const it of items.slice().reverse()) {
      it.x = Math.max(x(start), Math.min(it.x, limit - it.w));
      limit = it.x - 4;
    }
    for (const { inc, label, w, want, x: xx } of items) {
      const c = CLASS_COLOR[inc.class] || '#868e96';
      g.push(svg('g', { class: 'flag band', 'data-incident': inc.id, 'data-class': inc.class, 'data-subject': inc.subject, onclick: () => select(inc.id) },
        Math.abs(want - xx) > 2 ? svg('path', { d: `M${(xx + Math.min(w - 4, Math.max(4, want - xx))).toFixed(1)},${y0 + 20}L${want.toFixed(1)},${y0 + 27}`, stroke: c, 'stroke-width': 1.5, fill: 'none' }) : null,
        svg('rect', { x: xx, y: y0, width: w, height: 20, rx: 4, fill: c, stroke: state.selected === inc.id ? '#1c2b3a' : 'none', 'stroke-width': 2 }),
        svg('text', { x: xx + 6, y: y0 + 14, text: label }),
        svg('title', { text: `${inc.subject}: ${inc.summary}` })));
    }
    if (!items.length) g.push(svg('text', { class: 'lane-note', x: noteX, y: y0 + 15, text: 'none in this window' }));
  }

  function hover(ev, ctx) {
    const rect = ev.currentTarget.getBoundingClientRect();
    const scale = ctx.W / rect.width;
    const px = (ev.clientX - rect.left) * scale;
    if (px < ctx.L || px > ctx.L + ctx.plotW) {
      ctx.cursor.setAttribute('visibility', 'hidden');
      $('tip').hidden = true;
      return;
    }
    const t = Math.floor(ctx.start + ((px - ctx.L) / ctx.plotW) * (ctx.end - ctx.start));
    const s = state.samples.find((q) => q.t === t);
    ctx.cursor.setAttribute('x1', ctx.x(t + 0.5));
    ctx.cursor.setAttribute('x2', ctx.x(t + 0.5));
    ctx.cursor.setAttribute('visibility', 'visible');
    const tip = $('tip');
    const lines = [el('div', {}, el('b', { text: clock(t) }))];
    if (!s) lines.push(el('div', { text: 'no sample' }));
    else {
      if (s.pools) for (const p of s.pools) lines.push(el('div', { text: `pool ${p.pool}: ${fmtNum(p.arrivals)} tasks/s, queue ${fmtNum(p.queue_depth)}` }));
      if (s.runq && s.runq.count) lines.push(el('div', { text: `run queue: ${s.runq.count} waits · p50 ${fmtUs(s.runq.p50_us)} · p99 ${fmtUs(s.runq.p99_us)}` }));
      for (const p of s.tcp.slice(0, 6)) {
        lines.push(el('div', {}, el('span', { class: 'sw', style: { background: ctx.colorOf(p.ep) } }),
          `${p.ep}: ${p.rst_sent} RST sent, ${p.rst_received} received, ${p.retransmits} retransmitted`));
      }
      if (s.spans !== null && s.spans !== undefined) lines.push(el('div', { text: `spans: ${s.spans} (${s.spans_enriched} with kernel evidence)` }));
      if (s.kernel_lost) lines.push(el('div', { text: `${s.kernel_lost} kernel events lost` }));
    }
    for (const inc of state.incidents) {
      const a = inc.start_unix_ns / 1e9;
      const b = inc.state === 'open' ? Infinity : inc.end_unix_ns / 1e9;
      if (t + 1 > a && t < b) lines.push(el('div', { text: `▲ ${inc.class} ${inc.subject}` }));
    }
    tip.replaceChildren(...lines);
    tip.hidden = false;
    const left = (ev.clientX - rect.left) + 14;
    tip.style.left = `${Math.min(left, rect.width - tip.offsetWidth - 4)}px`;
    tip.style.top = `${Math.max(0, ev.clientY - rect.top - 20)}px`;
  }

  // ---------------------------------------------------------------- incidents

  function renderIncidentList() {
    const list = $('incident-list');
    list.replaceChildren();
    const incs = state.incidents;
    $('incident-empty').hidden = incs.length > 0;
    const open = incs.filter((i) => i.state === 'open').length;
    $('inc-count').textContent = incs.length ? `${incs.length} shown${open ? ` · ${open} open` : ''}` : '';
    for (const inc of incs) {
      const c = CLASS_COLOR[inc.class] || '#868e96';
      const card = el('li', {
        class: `incident-card${state.selected === inc.id ? ' selected' : ''}`,
        style: { '--c': c },
        tabindex: 0,
        role: 'button',
        'data-incident': inc.id,
        'data-class': inc.class,
        'data-subject': inc.subject,
        onclick: () => select(inc.id),
        onkeydown: (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); select(inc.id); } },
      },
      el('div', { class: 'row' }, el('span', { class: 'badge', style: { '--c': c }, text: CLASS_TEXT[inc.class] || inc.class }), el('span', { class: `state ${inc.state}`, text: inc.state })),
      el('div', { class: 'row' }, el('span', { class: 'subject', text: inc.subject }), el('span', { class: 'muted', text: clock(Math.floor(inc.start_unix_ns / 1e9)) })),
      ...(inc.pod ? [el('div', { class: 'row muted pod', 'data-pod': podText(inc.pod), text: `pod ${podText(inc.pod)}` })] : []),
      el('div', { class: 'summary', text: inc.summary }));
      list.append(card);
    }
  }

  async function select(id) {
    state.selected = id;
    if (location.hash !== `#${encodeURIComponent(id)}`) history.replaceState(null, '', `#${encodeURIComponent(id)}`);
    state.detail = null;
    render();
    await loadDetail(id, false);
    renderDetail();
    const d = $('detail');
    if (!d.hidden && d.getBoundingClientRect().top > window.innerHeight) d.scrollIntoView({ behavior: 'smooth', block: 'start' });
  }

  async function loadDetail(id, quiet) {
    // A closed incident's detail is final; an open one is refreshed on each poll.
    if (quiet && state.detail && state.detail.id === id && state.detail.state === 'closed') return;
    try {
      state.detail = await getJSON(`/api/incidents/${encodeURIComponent(id)}`);
      state.detailError = null;
    } catch (e) {
      if (!quiet || !state.detail) state.detailError = `Could not load ${id}: ${e.message || e}`;
    }
  }

  function traceLink(template, traceId, spanId, text) {
    if (!template || !/^https?:\/\//.test(template)) return null;
    const href = template.replaceAll('{trace_id}', encodeURIComponent(traceId)).replaceAll('{span_id}', encodeURIComponent(spanId || ''));
    return el('a', { href, target: '_blank', rel: 'noopener noreferrer', class: 'trace-link', 'data-trace-id': traceId, text });
  }

  function gauge(b) {
    const W = 460;
    const H = 84;
    const L = 8;
    const R = 16;
    const hi = Math.max(b.observed, b.threshold, b.mean + b.stddev) * 1.12 || 1;
    const x = (v) => L + (v / hi) * (W - L - R);
    const y = 30;
    const parts = [
      svg('rect', { x: L, y, width: W - L - R, height: 18, fill: '#f1f3f5', rx: 3 }),
      // Baseline: the mean, with ±1σ.
      svg('rect', { x: x(Math.max(0, b.mean - b.stddev)), y, width: Math.max(2, x(b.mean + b.stddev) - x(Math.max(0, b.mean - b.stddev))), height: 18, fill: '#a5d8ff' }),
      svg('line', { x1: x(b.mean), x2: x(b.mean), y1: y - 4, y2: y + 22, stroke: '#1c7ed6', 'stroke-width': 2 }),
      svg('text', { x: x(b.mean), y: y - 8, 'text-anchor': x(b.mean) < 60 ? 'start' : 'middle', text: `baseline ${fmtNum(b.mean, 2)}`, fill: '#1c7ed6' }),
      // Threshold.
      svg('line', { x1: x(b.threshold), x2: x(b.threshold), y1: y - 6, y2: y + 26, stroke: '#e03131', 'stroke-width': 2, 'stroke-dasharray': '4 2' }),
      svg('text', { x: x(b.threshold), y: y + 38, 'text-anchor': 'middle', text: `threshold ${fmtNum(b.threshold, 2)}`, fill: '#e03131' }),
      // Observed.
      svg('rect', { x: L, y: y + 5, width: Math.max(2, x(b.observed) - L), height: 8, fill: '#212529', rx: 2 }),
      svg('circle', { cx: x(b.observed), cy: y + 9, r: 5, fill: '#212529' }),
      svg('text', { x: Math.min(x(b.observed), W - R), y: y - 8, 'text-anchor': 'end', text: `observed ${fmtNum(b.observed, 2)}`, 'font-weight': 600 }),
    ];
    return svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `observed ${b.observed} against threshold ${b.threshold}` }, ...parts);
  }

  function valueText(v) {
    if (v === null || v === undefined) return '–';
    if (Array.isArray(v)) return v.length ? v.map(valueText).join(', ') : 'none';
    if (typeof v === 'object') {
      if ('observed' in v && 'threshold' in v) return `${fmtNum(v.observed, 2)} (baseline ${fmtNum(v.mean, 2)} ± ${fmtNum(v.stddev, 2)}, threshold ${fmtNum(v.threshold, 2)}${v.anomalous ? ', anomalous' : ''})`;
      return Object.entries(v).map(([k, x]) => `${k}: ${valueText(x)}`).join(' · ') || 'none';
    }
    if (typeof v === 'number') return fmtNum(v, 2);
    return String(v);
  }

  // Also the display order: what a person reads first.
  const EVIDENCE_LABELS = {
    endpoint: 'endpoint', reset_by: 'who sent the resets', connections_reset: 'connections reset',
    connections_reset_by_service: 'reset by the service', connections_reset_by_peers: 'reset by its peers',
    failed_spans: 'failed spans', sessions: 'sessions hit', states_at_reset: 'TCP state at reset',
    retransmitted_segments: 'segments retransmitted', retransmits: 'retransmits vs baseline',
    pool: 'pool', pid: 'process', arrivals: 'task arrivals (1 s)',
    dominant_kinds: 'dominant task kinds', queue_wait_ms_mean: 'mean queue wait (ms)', queue_wait: 'queue wait vs baseline',
    task_runq_delay_ms_mean: 'mean run-queue delay per task (ms)', task_runq_delay: 'run-queue delay vs baseline',
    runq_delay_ms: 'run-queue delay (ms in 1 s)', waits: 'waits', max_wait_ms: 'longest wait (ms)', top_threads: 'most delayed threads',
    task_arrivals: 'task arrivals',
  };

  function spanRow(s, template) {
    const a = s.attributes || {};
    const ks = Object.entries(a).filter(([k]) => k.startsWith('kernelsight.'));
    const net = a['network.peer.address'] ? `${a['network.local.address']}:${a['network.local.port']} → ${a['network.peer.address']}:${a['network.peer.port']}` : (a['thread.id'] ? `thread ${a['thread.name'] || ''} ${a['thread.id']}` : '');
    const pills = ks.map(([k, v]) => {
      const short = k.replace('kernelsight.', '');
      const hot = typeof v === 'number' ? v > 0 : v === true;
      return el('span', { class: `pill${hot ? ' hot' : ''}`, text: `${short}=${typeof v === 'number' ? fmtNum(v, 2) : v}` });
    });
    const events = (s.events || []).reduce((m, [name]) => m.set(name, (m.get(name) || 0) + 1), new Map());
    const evText = [...events.entries()].map(([n, c]) => `${c}× ${n.replace('kernelsight.', '')}`).join(', ');
    return el('tr', { 'data-span-id': s.span_id },
      el('td', {}, el('b', { text: s.name }), el('div', { class: 'muted', text: s.service || '' })),
      el('td', { class: 'mono', text: `${clock(Math.floor(s.start_unix_ns / 1e9))} · ${fmtDur(Math.max(0, s.end_unix_ns - s.start_unix_ns))}` }),
      el('td', { class: 'mono', text: net }),
      el('td', {}, pills.length ? pills : el('span', { class: 'muted', text: 'none' }), evText ? el('div', { class: 'muted', text: `events: ${evText}` }) : null),
      el('td', {}, traceLink(template, s.trace_id, s.span_id, 'trace ↗') || el('span', { class: 'mono muted', title: s.trace_id, text: `${s.trace_id.slice(0, 8)}…` })));
  }

  // Who an incident names: for a connection fault the dependency (as its clients' spans call
  // it), the kind of failure with its counts and the client process; for CPU contention the
  // culprit when the agent names one. Attributes carry their OTel / kernelsight.* names.
  function attributionLines(d) {
    const a = d.attributes || {};
    const lines = [];
    if (a['kernelsight.fault.kind']) {
      const svc = a['peer.service'] ? `${a['peer.service']} ` : '';
      const kinds = ['refused', 'reset_by_peer', 'reset_by_us']
        .map((k) => `${k.replace(/_/g, ' ')} ${a[`kernelsight.fault.${k}`] ?? 0}`)
        .concat([`retransmitted segments ${a['kernelsight.fault.retransmitted_segments'] ?? 0}`]);
      lines.push(el('p', { class: 'attribution', id: 'detail-peer' },
        el('b', { text: 'Dependency: ' }), `${svc}${a['server.address']}:${a['server.port']}`,
        el('b', { text: ' · failure: ' }), `${String(a['kernelsight.fault.kind']).replace(/_/g, ' ')} ×${a['kernelsight.fault.count']} (${kinds.join(', ')})`,
        ...(a['kernelsight.fault.client.comm'] ? [el('b', { text: ' · client: ' }), `${a['kernelsight.fault.client.comm']} (pid ${a['kernelsight.fault.client.pid']})`] : [])));
    }
    if (a['kernelsight.culprit.pid'] !== undefined) {
      const share = a['kernelsight.culprit.share'];
      lines.push(el('p', { class: 'attribution', id: 'detail-culprit' },
        el('b', { text: 'Culprit: ' }), `${a['kernelsight.culprit.comm'] || '?'} (pid ${a['kernelsight.culprit.pid']}${a['kernelsight.culprit.cgroup'] ? `, cgroup ${a['kernelsight.culprit.cgroup']}` : ''})${share !== undefined ? ` ${fmtNum(100 * share, 0)}%` : ''}`));
    }
    if (d.raised_by) {
      lines.push(el('p', { class: 'muted', id: 'detail-raised', text: d.raised_by === 'early'
        ? 'Raised early: the second so far already beat its threshold (kernel evidence is in within ~0.1 s); the settled second confirms it.'
        : 'Raised when its second settled (its spans had arrived).' }));
    }
    return lines;
  }

  function renderDetail() {
    const box = $('detail');
    if (!state.selected) {
      box.hidden = true;
      return;
    }
    box.hidden = false;
    const d = state.detail;
    if (!d) {
      box.replaceChildren(el('p', { class: 'note', text: state.detailError || 'Loading…' }));
      return;
    }
    const c = CLASS_COLOR[d.class] || '#868e96';
    const startS = Math.floor(d.start_unix_ns / 1e9);
    const endS = Math.ceil(d.end_unix_ns / 1e9);
    const b = d.baseline;
    const tpl = d.trace_url_template;
    const spans = d.affected_spans && d.affected_spans.length ? d.affected_spans : d.related_spans || [];
    const linked = d.affected_spans && d.affected_spans.length > 0;
    const ev = d.evidence || {};
    const order = Object.keys(EVIDENCE_LABELS);
    const rank = (k) => (order.includes(k) ? order.indexOf(k) : order.length);
    const kv = Object.entries(ev).sort((p, q) => rank(p[0]) - rank(q[0])).map(([k, v]) => el('tr', {}, el('td', { text: EVIDENCE_LABELS[k] || k }), el('td', { text: valueText(v) })));
    const incidentTrace = traceLink(tpl, d.trace_id, d.span_id, 'open the incident trace ↗');
    box.replaceChildren(...[
      el('h2', {},
        el('span', { class: 'badge', style: { '--c': c }, text: CLASS_TEXT[d.class] || d.class }),
        el('span', { class: 'mono', text: d.subject }),
        ...(d.pod ? [el('span', { class: 'mono pod', 'data-pod': podText(d.pod), text: `pod ${podText(d.pod)}` })] : []),
        el('span', { class: `state ${d.state}`, text: d.state }),
        el('button', { class: 'close', type: 'button', title: 'close', 'aria-label': 'close', onclick: () => { state.selected = null; state.detail = null; history.replaceState(null, '', location.pathname); render(); }, text: '×' })),
      el('div', { class: 'muted', text: `${clock(startS)} – ${d.state === 'open' ? 'now' : clock(endS)} · ${d.buckets} anomalous second${d.buckets === 1 ? '' : 's'} · ${d.id}` }),
      el('p', { class: 'summary', id: 'detail-summary', text: d.summary }),
      ...attributionLines(d),
      el('div', { class: 'why' },
        el('div', { class: 'gauge' },
          el('h3', { text: 'Why it was raised' }),
          gauge(b),
          el('p', { text: b.samples > 0
            ? `The worst second measured ${fmtNum(b.observed, 2)}. Its baseline was ${fmtNum(b.mean, 2)} ± ${fmtNum(b.stddev, 2)}, learnt over ${b.samples} second${b.samples === 1 ? '' : 's'}; anything at or above ${fmtNum(b.threshold, 2)} counts as anomalous.`
            : `The worst second measured ${fmtNum(b.observed, 2)}. There was no history for this subject yet, so its baseline is zero and the floor of ${fmtNum(b.threshold, 2)} decides: normally this never happens at all.` })),
        el('div', {},
          el('h3', { text: 'Evidence' }),
          el('table', { class: 'kv', id: 'evidence' }, el('tbody', {}, kv)))),
      d.culprits && d.culprits.length
        ? el('div', { class: 'culprits' },
          el('h3', { text: 'Who held the CPU while it waited' }),
          el('table', { class: 'kv', id: 'culprits' }, el('tbody', {}, d.culprits.map((c) => el('tr', {},
            el('td', { class: 'mono', text: c.pid ? `${c.comm} (pid ${c.pid})` : c.comm }),
            el('td', { class: 'mono', text: c.pid ? `cgroup ${c.cgroup}${c.pod_name ? ` · pod ${c.pod_namespace}/${c.pod_name}` : ''}` : '' }),
            el('td', { text: `${Math.round(c.share * 100)}% · ${fmtNum(c.ns / 1e6, 0)} ms` }))))))
        : null,
      el('h3', { text: linked ? `Affected spans (${d.affected_spans.length} linked of ${d.links_total})` : 'Spans that touched it so far' }),
      linked ? null : el('p', { class: 'note', text: d.state === 'open'
        ? 'No span has been linked yet (links grow while the incident is open). Meanwhile, these spans with kernel evidence touched the same subject.'
        : (d.links_total > 0 ? `${d.links_total} spans were linked, but the agent no longer keeps their details.` : 'No spans were linked: were spans for these connections or tasks sent to the agent?') }),
      spans.length
        ? el('table', { class: 'spans', id: 'affected-spans' },
          el('thead', {}, el('tr', {}, el('th', { text: 'span' }), el('th', { text: 'when · duration' }), el('th', { text: 'connection / thread' }), el('th', { text: 'kernel enrichment' }), el('th', { text: 'trace' }))),
          el('tbody', {}, spans.map((s) => spanRow(s, tpl))))
        : el('p', { class: 'empty', text: 'No enriched spans for this subject in the incident window.' }),
      el('h3', { text: 'Traces' }),
      tpl
        ? el('p', { class: 'note' }, incidentTrace, ` · the incident is a span of its own trace (${d.trace_id}), linked to the spans above${d.forwarding ? '' : '; spans are not forwarded (--otlp-forward), so the backend may not have it'}.`)
        : el('p', { class: 'note', text: `No trace backend link configured. Start the agent with --otlp-forward http://jaeger:4317 --trace-url-template 'http://localhost:16686/trace/{trace_id}' to open these traces in Jaeger. Incident trace id: ${d.trace_id}.` }),
    ].filter(Boolean));
  }

  // ---------------------------------------------------------------- start

  for (const b of document.querySelectorAll('[data-window]')) {
    b.addEventListener('click', () => {
      state.windowS = Number(b.dataset.window);
      for (const o of document.querySelectorAll('[data-window]')) o.classList.toggle('on', o === b);
      $('window-label').textContent = windowText();
      renderChart();
    });
  }
  let resizeTimer = null;
  window.addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(renderChart, 100);
  });
  if (location.hash.length > 1) {
    state.selected = decodeURIComponent(location.hash.slice(1));
  }
  poll();
})();
