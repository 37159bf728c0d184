//! Incident detection over one-second buckets of joined evidence, each series against its own
//! adaptive baseline ([`baseline::Ewma`]).
//!
//! Time is event time (Unix ns): kernel events by when they happened, spans by when they
//! started. A bucket is judged once, after it has *settled*: spans reach the agent late (the
//! SDK's batch processor exports every 5 s by default, then the agent holds them for the
//! kernel join), so the settle time follows the lateness actually observed, between a floor
//! (the join wait) and a ceiling. Spans that arrive for an already judged bucket still reach
//! the incidents' span links, which are gathered only when an incident closes.
//!
//! Each class is judged in its own module (`surge`, `contention`, `fault`):
//!
//! - `task_surge` (per pool): arrivals anomalous, together with queue wait or the run-queue
//!   delay the pool's tasks suffered. Names the kinds that grew most over their own baselines.
//! - `cpu_contention` (per process): run-queue delay anomalous while no pool of that process is
//!   surging (a noisy neighbour or CPU limits, not our own load).
//! - `connection_fault` (per service endpoint): connections reset, or segments retransmitted,
//!   anomalous for that endpoint; says which side sent the resets and links the spans that were
//!   hurt (failed, or carrying the kernel evidence).
pub mod baseline;
mod contention;
mod early;
mod fault;
mod surge;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use agent_common::TcpEventKind;

use self::baseline::Ewma;
use crate::shared::{
    evidence::{RunqEntry, RunqJoin, TcpEntry, TcpJoin, tcp_state_name},
    incident::{Class, Incident, IncidentState, LinkRef, Verdict},
    netkey::{ConnKey, Endpoint, EphemeralPorts, Oriented},
    span::{SpanFacts, SpanRef, hex},
};

#[derive(Clone, Debug)]
pub struct DetectConfig {
    /// Bucket width: the unit of detection latency and of every rate below.
    pub bucket_ns: u64,
    /// Bounds of the settle time (see the module docs).
    pub settle_min_ns: u64,
    pub settle_max_ns: u64,
    /// Baseline half-life, in buckets. Five minutes: long enough that a one-minute surge is
    /// still far above it, short enough to follow load changes over an hour.
    pub half_life_buckets: f64,
    /// Standard deviations above baseline for every class. At 4σ a well-behaved series
    /// crosses by chance about once a day per series at one-second buckets (Gaussian tail
    /// 3e-5 × 86400 s); real series have heavier tails, which the ratio rules below absorb.
    pub sigma: f64,
    /// Buckets before a task or CPU baseline is trusted: half a minute of history.
    pub warmup_buckets: u64,
    /// `task_surge`: arrivals at least this many times the baseline ("far above") and at least
    /// `surge_min_rate` tasks per bucket (below ~20/s a 3× jump is a handful of tasks, which
    /// bursty but healthy traffic produces all the time).
    pub surge_ratio: f64,
    pub surge_min_rate: f64,
    /// Queue wait or per-task run-queue delay (ms) must also be up by this ratio and at least
    /// `pressure_min_ms` (a queue that still drains within a millisecond is not under pressure).
    pub pressure_ratio: f64,
    pub pressure_min_ms: f64,
    /// `cpu_contention`: run-queue delay per bucket (ms summed over the process's threads) at
    /// least `contention_ratio` × baseline and `contention_min_ms` (50 ms per second is 5% of a
    /// CPU spent runnable but waiting, enough to stretch a 16 ms game tick noticeably).
    pub contention_ratio: f64,
    pub contention_min_ms: f64,
    /// Consecutive anomalous buckets before `cpu_contention` is raised. A single second of
    /// run-queue spikes happens on any busy machine (a burst of wakeups, a compaction); a
    /// neighbour that takes the CPU stays for longer. Costs one bucket of detection latency.
    pub contention_min_buckets: u32,
    /// `connection_fault`: connections reset per bucket toward one endpoint. A client hanging
    /// up hard resets one connection; five in one second toward one endpoint is a pattern.
    /// Normally an endpoint resets nothing, so there is no warmup: a zero baseline is the
    /// right prior.
    pub fault_min_resets: f64,
    /// Or retransmitted segments per bucket toward one endpoint: occasional loss is normal,
    /// 50 segments within a second is a path or peer in trouble.
    pub fault_min_retransmits: f64,
    pub fault_ratio: f64,
    /// Non-anomalous buckets that close an incident, and the longest an incident stays open
    /// (a longer one is closed and, if it goes on, a new one opens, so spans keep flowing).
    pub quiet_buckets: u32,
    pub max_incident_ns: u64,
    /// Span links per incident span; the rest are counted.
    pub max_links: usize,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            bucket_ns: 1_000_000_000,
            settle_min_ns: 1_500_000_000,
            settle_max_ns: 30_000_000_000,
            half_life_buckets: 300.0,
            sigma: 4.0,
            warmup_buckets: 30,
            surge_ratio: 3.0,
            surge_min_rate: 20.0,
            pressure_ratio: 2.0,
            pressure_min_ms: 1.0,
            contention_ratio: 2.0,
            contention_min_ms: 50.0,
            contention_min_buckets: 2,
            fault_min_resets: 5.0,
            fault_min_retransmits: 50.0,
            fault_ratio: 3.0,
            quiet_buckets: 3,
            max_incident_ns: 300_000_000_000,
            max_links: 32,
        }
    }
}

// Bounds on what one bucket and the detector hold. Past them new series are not tracked (and
// counted in `Detector::overflow`), existing ones still are.
const MAX_POOLS: usize = 64;
const MAX_KINDS: usize = 64;
const MAX_PIDS: usize = 256;
const MAX_TIDS_PER_PID: usize = 64;
const MAX_ENDPOINTS: usize = 4096;
const MAX_CONNS_PER_ENDPOINT: usize = 4096;
const MAX_SESSIONS_PER_ENDPOINT: usize = 64;
const MAX_OWNERS_PER_ENDPOINT: usize = 16;
const MAX_LIVE_CONNS: usize = 65536;
const MAX_REFS_PER_SUBJECT: usize = 4096;
const MAX_REF_SUBJECTS: usize = 4096;
/// A baseline nobody has fed for this long (ns) is forgotten.
const IDLE_FORGET_NS: u64 = 600_000_000_000;
/// Decay of the span-lateness high-water mark per second (half-life one minute).
const LATENESS_DECAY_PER_S: f64 = 0.988_514_0;

#[derive(Default)]
struct PoolAgg {
    pid: Option<u32>,
    arrivals: u64,
    kinds: HashMap<String, u64>,
    qwait_ms: f64,
    qwait_n: u64,
    runq_ms: f64,
    runq_n: u64,
}

#[derive(Default)]
struct ProcAgg {
    delay_ns: u64,
    waits: u64,
    max_ns: u64,
    tids: HashMap<u32, u64>,
}

#[derive(Default)]
struct EpAgg {
    /// (connection, reset sent by the service side?)
    resets: HashSet<(ConnKey, bool)>,
    /// Connections reset during the handshake (an RST answering a SYN: refused).
    refused: HashSet<ConnKey>,
    retrans_segs: u64,
    /// Connections that retransmitted (bounded like `resets`).
    retrans_conns: HashSet<ConnKey>,
    /// The client-side processes whose sockets saw the events: pid → (comm, events). They
    /// are who suffered (or caused) the fault; bounded to `MAX_OWNERS_PER_ENDPOINT`.
    clients: BTreeMap<u32, (String, u64)>,
    failed_spans: u64,
    sessions: HashSet<String>,
    states: BTreeMap<&'static str, u64>,
}

#[derive(Default)]
struct Bucket {
    pools: HashMap<String, PoolAgg>,
    procs: HashMap<u32, ProcAgg>,
    eps: HashMap<Endpoint, EpAgg>,
}

struct PoolBase {
    arrivals: Ewma,
    qwait: Ewma,
    runq: Ewma,
    kinds: HashMap<String, Ewma>,
    pid: Option<u32>,
    seen: u64,
}

struct SeriesBase {
    a: Ewma,
    b: Ewma,
    seen: u64,
    /// Consecutive anomalous buckets so far.
    streak: u32,
}

impl SeriesBase {
    /// Baselines for a series first seen in bucket `idx`, with the given half-life.
    fn new(half_life: f64, idx: u64) -> Self {
        Self {
            a: Ewma::new(half_life),
            b: Ewma::new(half_life),
            seen: idx,
            streak: 0,
        }
    }
}

/// A dependency as its clients' spans name it.
#[derive(Clone, Debug, Default, PartialEq)]
struct PeerName {
    server_address: Option<String>,
    server_port: Option<u16>,
    peer_service: Option<String>,
}

#[derive(Clone, Copy)]
struct RefEntry {
    start: u64,
    end: u64,
    r: SpanRef,
    weight: f64,
}

struct Open {
    inc: Incident,
    quiet: u32,
    peak_score: f64,
    /// Start of the unsettled bucket an early verdict opened the incident on (its settled
    /// judgment then confirms that bucket rather than adding one).
    early_bucket: Option<u64>,
}

/// What a class's judgment says about an anomalous series.
struct Report {
    v: Verdict,
    summary: String,
    evidence: serde_json::Value,
    attributes: BTreeMap<String, serde_json::Value>,
}

/// What changed in one tick, for the listing, the metrics and the trace.
#[derive(Default)]
pub struct Changes {
    pub opened: Vec<Incident>,
    pub updated: Vec<Incident>,
    pub closed: Vec<Incident>,
}

pub struct Detector {
    cfg: DetectConfig,
    eph: EphemeralPorts,
    buckets: BTreeMap<u64, Bucket>,
    /// The next bucket to judge; data for earlier buckets is late.
    next_eval: u64,
    pools: HashMap<String, PoolBase>,
    procs: HashMap<u32, SeriesBase>,
    eps: HashMap<Endpoint, SeriesBase>,
    refs: HashMap<String, VecDeque<RefEntry>>,
    live: HashMap<ConnKey, (String, SpanRef, u64)>,
    live_order: VecDeque<ConnKey>,
    thread_names: HashMap<u32, String>,
    /// The processes the kernel watches (read once a second; bounded by `MAX_PIDS`).
    watched: HashSet<u32>,
    /// What client spans call a dependency's address (`server.address`, `server.port`,
    /// `peer.service`), by the address they connected to. Bounded by `MAX_ENDPOINTS`.
    peer_names: HashMap<Endpoint, PeerName>,
    open: HashMap<(Class, String), Open>,
    next_id: u64,
    lateness_hw_ns: f64,
    last_tick_ns: u64,
    /// Inputs that arrived for buckets already judged, and series not tracked for the bounds.
    pub late: u64,
    pub overflow: u64,
}

impl Detector {
    pub fn new(cfg: DetectConfig, eph: EphemeralPorts, now_ns: u64) -> Self {
        // The current second is judged too, though it was only partly watched: what the agent
        // saw in it is real, and a fault right at startup should not go unseen.
        let next_eval = now_ns / cfg.bucket_ns;
        Self {
            cfg,
            eph,
            buckets: BTreeMap::new(),
            next_eval,
            pools: HashMap::new(),
            procs: HashMap::new(),
            eps: HashMap::new(),
            refs: HashMap::new(),
            live: HashMap::new(),
            live_order: VecDeque::new(),
            thread_names: HashMap::new(),
            watched: HashSet::new(),
            peer_names: HashMap::new(),
            open: HashMap::new(),
            next_id: 1,
            lateness_hw_ns: 0.0,
            last_tick_ns: now_ns,
            late: 0,
            overflow: 0,
        }
    }

    pub fn config(&self) -> &DetectConfig {
        &self.cfg
    }

    /// How long a bucket waits before it is judged.
    pub fn settle_ns(&self) -> u64 {
        (self.lateness_hw_ns as u64 + self.cfg.settle_min_ns)
            .clamp(self.cfg.settle_min_ns, self.cfg.settle_max_ns)
    }

    fn bucket(&mut self, ts_ns: u64) -> Option<&mut Bucket> {
        let idx = ts_ns / self.cfg.bucket_ns;
        if idx < self.next_eval {
            self.late += 1;
            return None;
        }
        // A timestamp far in the future (a wrong clock in a span) would pin memory until then.
        if idx > self.next_eval + (self.cfg.settle_max_ns / self.cfg.bucket_ns) + 60 {
            self.overflow += 1;
            return None;
        }
        Some(self.buckets.entry(idx).or_default())
    }

    fn push_ref(&mut self, subject: String, e: RefEntry) {
        if !self.refs.contains_key(&subject) && self.refs.len() >= MAX_REF_SUBJECTS {
            self.overflow += 1;
            return;
        }
        let q = self.refs.entry(subject).or_default();
        if q.len() >= MAX_REFS_PER_SUBJECT {
            q.pop_front();
        }
        q.push_back(e);
    }

    /// The processes the kernel watches now. Their contention baselines start when they are
    /// watched, not at their first long wait: a process that never waited ≥ the kernel's event
    /// threshold has a calm history of zeros, where before it had none and learnt the first
    /// contention it met, during its warm-up, as its normal (never raised; CI once saw it).
    pub fn on_watched(&mut self, pids: &[u32]) {
        self.watched.clear();
        self.watched.extend(pids.iter().take(MAX_PIDS));
    }

    /// A run-queue wait of thread `tid`.
    pub fn on_runq(&mut self, tid: u32, e: &RunqEntry) {
        let Some(b) = self.bucket(e.end_ns) else {
            return;
        };
        let full = b.procs.len() >= MAX_PIDS;
        let Some(p) = (if full {
            b.procs.get_mut(&e.pid)
        } else {
            Some(b.procs.entry(e.pid).or_default())
        }) else {
            self.overflow += 1;
            return;
        };
        p.delay_ns += e.delay_ns;
        p.waits += 1;
        p.max_ns = p.max_ns.max(e.delay_ns);
        if p.tids.len() < MAX_TIDS_PER_PID || p.tids.contains_key(&tid) {
            *p.tids.entry(tid).or_default() += e.delay_ns;
        }
    }

    pub fn on_tcp(&mut self, e: &TcpEntry) {
        let o = Oriented {
            local: e.local,
            peer: e.peer,
        };
        let (service, service_is_local) = self.eph.service(&o);
        let key = o.key();
        // A reset ends the connection: its entry goes now, not when its session span comes
        // (which may never reach the detector: spans the store could not hold pass it by, and
        // after ~19k sockets were reset at once ~7k entries stayed, ~2 MB). Both sockets'
        // sightings of one RST name the same session and span, so the first says all.
        let live = if e.kind == TcpEventKind::Retransmit {
            None
        } else {
            self.live.remove(&key)
        };
        if let Some((_, accept, _)) = &live {
            self.push_ref(
                format!("ep:{service}"),
                RefEntry {
                    start: e.ts_ns,
                    end: e.ts_ns,
                    r: *accept,
                    weight: 1.0,
                },
            );
        }
        let Some(b) = self.bucket(e.ts_ns) else {
            return;
        };
        let full = b.eps.len() >= MAX_ENDPOINTS;
        let Some(a) = (if full {
            b.eps.get_mut(&service)
        } else {
            Some(b.eps.entry(service).or_default())
        }) else {
            self.overflow += 1;
            return;
        };
        // The observing socket is a client of the service: its owner is a client process.
        if !service_is_local
            && e.owner_pid != 0
            && (a.clients.len() < MAX_OWNERS_PER_ENDPOINT || a.clients.contains_key(&e.owner_pid))
        {
            let c = a
                .clients
                .entry(e.owner_pid)
                .or_insert_with(|| (e.owner_comm.as_str().to_owned(), 0));
            c.1 += 1;
        }
        match e.kind {
            TcpEventKind::Retransmit => {
                a.retrans_segs += u64::from(e.segs.max(1));
                if a.retrans_conns.len() < MAX_CONNS_PER_ENDPOINT {
                    a.retrans_conns.insert(key);
                }
            }
            kind => {
                // Refused: the service answered a SYN with an RST. The kernel says so on the
                // sending side: an RST sent without a socket (state 0: nobody listens on the
                // port; reported from Linux 6.10) or by a listener or half-open request. A
                // client socket still in SYN_SENT says so too. (`tcp_receive_reset` reports no
                // state: 0 there means nothing.)
                const SYN_SENT: u8 = 2;
                const SYN_RECV: u8 = 3;
                const LISTEN: u8 = 10;
                const NEW_SYN_RECV: u8 = 12;
                let refused = e.state == SYN_SENT
                    || (kind == TcpEventKind::RstSent
                        && service_is_local
                        && matches!(e.state, 0 | SYN_RECV | LISTEN | NEW_SYN_RECV));
                if refused && a.refused.len() < MAX_CONNS_PER_ENDPOINT {
                    a.refused.insert(key);
                }
                // Who sent the RST: the observing socket (sent) or its peer (received).
                let sender_is_local = kind == TcpEventKind::RstSent;
                let by_service = sender_is_local == service_is_local;
                if a.resets.len() < MAX_CONNS_PER_ENDPOINT {
                    a.resets.insert((key, by_service));
                }
                *a.states.entry(tcp_state_name(e.state)).or_default() += 1;
                if let Some((session, _, _)) = live
                    && a.sessions.len() < MAX_SESSIONS_PER_ENDPOINT
                {
                    a.sessions.insert(session);
                }
            }
        }
    }

    /// The bucket's aggregate for `pool`, unless late or past the bounds (counted).
    fn pool_agg(&mut self, start_ns: u64, pool: String) -> Option<&mut PoolAgg> {
        let max_pools = self.pools.len() >= MAX_POOLS && !self.pools.contains_key(&pool);
        let b = self.bucket(start_ns)?;
        if max_pools || (b.pools.len() >= MAX_POOLS && !b.pools.contains_key(&pool)) {
            self.overflow += 1;
            return None;
        }
        // Re-borrowed: `bucket` counted nothing late for this index.
        let idx = start_ns / self.cfg.bucket_ns;
        Some(
            self.buckets
                .entry(idx)
                .or_default()
                .pools
                .entry(pool)
                .or_default(),
        )
    }

    /// A span as it arrives, before the kernel join waits for its evidence: what the span says
    /// by itself (a pool task's arrival, kind and queue wait) counts at once, so that early
    /// verdicts see it a join wait sooner.
    pub fn on_span_arrival(&mut self, f: &SpanFacts) {
        if !f.is_pool_task() {
            return;
        }
        let pool = f.pool.clone().unwrap_or_else(|| "default".into());
        let Some(a) = self.pool_agg(f.start_ns, pool) else {
            return;
        };
        a.arrivals += 1;
        let kind = f.task_kind.clone().unwrap_or_else(|| "unknown".into());
        if a.kinds.len() < MAX_KINDS || a.kinds.contains_key(&kind) {
            *a.kinds.entry(kind).or_default() += 1;
        }
        if let Some(q) = f.queue_wait_ms {
            a.qwait_ms += q;
            a.qwait_n += 1;
        }
    }

    /// A span after its joins (it went through `on_span_arrival` first). `received_ns` is when
    /// the agent got it (for the lateness).
    pub fn on_span(
        &mut self,
        f: &SpanFacts,
        r: Option<SpanRef>,
        runq: Option<&RunqJoin>,
        tcp: Option<&TcpJoin>,
        received_ns: u64,
    ) {
        let late = received_ns.saturating_sub(f.end_ns) as f64;
        if late > self.lateness_hw_ns && received_ns >= f.end_ns {
            self.lateness_hw_ns = late.min(self.cfg.settle_max_ns as f64);
        }
        if let (Some(tid), Some(name)) = (f.tid, &f.thread_name)
            && (self.thread_names.len() < MAX_LIVE_CONNS || self.thread_names.contains_key(&tid))
        {
            self.thread_names.insert(tid, name.clone());
        }
        let runq_ms = runq.map(|j| j.total_ns as f64 / 1e6);
        if let (Some(r), Some(pid), Some(ms)) = (r, f.pid, runq_ms)
            && ms > 0.0
        {
            self.push_ref(
                format!("pid:{pid}"),
                RefEntry {
                    start: f.start_ns,
                    end: f.end_ns,
                    r,
                    weight: ms,
                },
            );
        }
        if f.is_pool_task() {
            let pool = f.pool.clone().unwrap_or_else(|| "default".into());
            if let Some(r) = r {
                let weight = f.queue_wait_ms.unwrap_or(0.0) + runq_ms.unwrap_or(0.0);
                self.push_ref(
                    format!("pool:{pool}"),
                    RefEntry {
                        start: f.start_ns,
                        end: f.end_ns,
                        r,
                        weight,
                    },
                );
            }
            // Arrivals, kinds and queue wait were counted when the span arrived; what the join
            // adds is the process (in host terms) and the task's run-queue delay.
            if let Some(a) = self.pool_agg(f.start_ns, pool) {
                a.pid = a.pid.or(f.pid);
                if let Some(ms) = runq_ms {
                    a.runq_ms += ms;
                    a.runq_n += 1;
                }
            }
        }
        if let Some(conn) = f.conn
            && (f.server_address.is_some() || f.peer_service.is_some())
            && (self.peer_names.len() < MAX_ENDPOINTS || self.peer_names.contains_key(&conn.peer))
        {
            // A client span: its peer is the service it names.
            self.peer_names.insert(
                conn.peer,
                PeerName {
                    server_address: f.server_address.clone(),
                    server_port: f.server_port,
                    peer_service: f.peer_service.clone(),
                },
            );
        }
        if let Some(conn) = f.conn {
            let (service, _) = self.eph.service(&conn);
            let key = conn.key();
            if f.name == "ws.accept" {
                if let (Some(r), Some(sid)) = (r, &f.session_id) {
                    self.remember_live(key, sid.clone(), r, f.end_ns);
                }
            } else if f.name == "ws.session" {
                self.live.remove(&key);
            }
            let hurt = tcp.is_some_and(|j| j.retransmits + j.resets_sent + j.resets_received > 0);
            if let Some(r) = r
                && (f.failed || hurt)
            {
                let weight = if f.failed { 2.0 } else { 1.0 };
                self.push_ref(
                    format!("ep:{service}"),
                    RefEntry {
                        start: f.start_ns,
                        end: f.end_ns,
                        r,
                        weight,
                    },
                );
            }
            if f.failed
                && let Some(b) = self.bucket(f.end_ns)
            {
                if let Some(a) = b.eps.get_mut(&service) {
                    a.failed_spans += 1;
                } else if b.eps.len() < MAX_ENDPOINTS {
                    b.eps.entry(service).or_default().failed_spans += 1;
                }
            }
        }
    }

    fn remember_live(&mut self, key: ConnKey, session: String, r: SpanRef, ts: u64) {
        if self.live.insert(key, (session, r, ts)).is_none() {
            self.live_order.push_back(key);
        }
        while self.live.len() > MAX_LIVE_CONNS {
            let Some(old) = self.live_order.pop_front() else {
                break;
            };
            self.live.remove(&old);
        }
        if self.live_order.len() > 2 * MAX_LIVE_CONNS {
            let live = &self.live;
            self.live_order.retain(|k| live.contains_key(k));
        }
    }

    pub fn live_connections(&self) -> usize {
        self.live.len()
    }

    pub fn open_incidents(&self) -> usize {
        self.open.len()
    }

    /// Judges every bucket that has settled by `now_ns`.
    pub fn tick(&mut self, now_ns: u64) -> Changes {
        let elapsed_s = now_ns.saturating_sub(self.last_tick_ns) as f64 / 1e9;
        self.lateness_hw_ns *= LATENESS_DECAY_PER_S.powf(elapsed_s);
        self.last_tick_ns = now_ns;
        let mut ch = Changes::default();
        // After a burst of connections (the live table took one slot each) give back the room
        // hashbrown and VecDeque keep at their largest: 19k accepted sockets left ~4 MB.
        let live = self.live.len();
        if self.live.capacity() > 1024 && self.live.capacity() > 4 * live {
            self.live.shrink_to(2 * live);
        }
        if self.live_order.capacity() > 1024 && self.live_order.capacity() > 4 * live {
            let held = &self.live;
            self.live_order.retain(|k| held.contains_key(k));
            self.live_order.shrink_to(2 * live);
        }
        let settle = self.settle_ns();
        while (self.next_eval + 1) * self.cfg.bucket_ns + settle <= now_ns {
            let idx = self.next_eval;
            let b = self.buckets.remove(&idx).unwrap_or_default();
            self.next_eval += 1;
            self.judge(idx, b, &mut ch);
        }
        self.judge_early(now_ns, &mut ch);
        for inc in &mut ch.opened {
            inc.raised_unix_ns = now_ns;
            if let Some(o) = self.open.get_mut(&(inc.class, inc.subject.clone())) {
                o.inc.raised_unix_ns = now_ns;
            }
        }
        // The spans hurt so far are listed while the incident is open, not only at its close.
        for inc in ch.opened.iter_mut().chain(ch.updated.iter_mut()) {
            self.attach_links(inc);
        }
        // Old references are useless once no incident can ask for them.
        let horizon = now_ns.saturating_sub(self.cfg.max_incident_ns + settle + 60_000_000_000);
        self.refs.retain(|_, q| {
            while q.front().is_some_and(|e| e.end < horizon) {
                q.pop_front();
            }
            !q.is_empty()
        });
        ch
    }

    /// Start and end (Unix ns) of bucket `idx`.
    fn bounds(&self, idx: u64) -> (u64, u64) {
        let start = idx * self.cfg.bucket_ns;
        (start, start + self.cfg.bucket_ns)
    }

    /// Judges bucket `idx` for each incident class in turn (see the class's module), then
    /// closes what has been quiet long enough.
    fn judge(&mut self, idx: u64, b: Bucket, ch: &mut Changes) {
        let mut anomalous: HashSet<(Class, String)> = HashSet::new();
        let surging_pids = self.judge_surges(idx, &b, &mut anomalous, ch);
        self.judge_contention(idx, &b, &surging_pids, &mut anomalous, ch);
        self.judge_faults(idx, &b, &mut anomalous, ch);
        let (_, end) = self.bounds(idx);
        let c = &self.cfg;
        // Close what has been quiet long enough (or open too long).
        let keys: Vec<(Class, String)> = self.open.keys().cloned().collect();
        for key in keys {
            let o = self.open.get_mut(&key).expect("key from the map");
            if !anomalous.contains(&key) {
                o.quiet += 1;
            }
            let too_long = end.saturating_sub(o.inc.start_unix_ns) >= c.max_incident_ns;
            if o.quiet >= c.quiet_buckets || too_long {
                let mut o = self.open.remove(&key).expect("present");
                o.inc.state = IncidentState::Closed;
                self.attach_links(&mut o.inc);
                ch.closed.push(o.inc);
            }
        }
    }
    #[expect(
        clippy::too_many_arguments,
        reason = "the detector's two fields it updates, passed apart so the caller can hold others"
    )]
    fn raise(
        open: &mut HashMap<(Class, String), Open>,
        next_id: &mut u64,
        key: (Class, String),
        start: u64,
        end: u64,
        v: Verdict,
        summary: String,
        evidence: serde_json::Value,
        ch: &mut Changes,
    ) {
        let r = Report {
            v,
            summary,
            evidence,
            attributes: BTreeMap::new(),
        };
        Self::raise_report(open, next_id, key, start, end, r, ch);
    }

    /// Opens the incident `key`, or (settled judgment) extends the open one.
    fn raise_report(
        open: &mut HashMap<(Class, String), Open>,
        next_id: &mut u64,
        key: (Class, String),
        start: u64,
        end: u64,
        r: Report,
        ch: &mut Changes,
    ) {
        let Report {
            v,
            summary,
            evidence,
            attributes,
        } = r;
        let score = v.observed / v.threshold.max(f64::MIN_POSITIVE);
        if let Some(o) = open.get_mut(&key) {
            o.quiet = 0;
            if o.early_bucket == Some(start) {
                // The settled judgment of the bucket the early verdict opened on: the same
                // bucket, not one more.
                o.early_bucket = None;
            } else {
                o.inc.buckets += 1;
            }
            o.inc.end_unix_ns = o.inc.end_unix_ns.max(end);
            if score > o.peak_score {
                o.peak_score = score;
                o.inc.baseline = v;
                o.inc.summary = summary;
                o.inc.evidence = evidence;
                o.inc.attributes.extend(attributes);
            }
            ch.updated.push(o.inc.clone());
            return;
        }
        let id = *next_id;
        *next_id += 1;
        let mut inc = Incident::new(id, key.0, key.1.clone(), start, end, summary, v, evidence);
        inc.attributes = attributes;
        ch.opened.push(inc.clone());
        open.insert(
            key,
            Open {
                inc,
                quiet: 0,
                peak_score: score,
                early_bucket: None,
            },
        );
    }

    fn attach_links(&self, inc: &mut Incident) {
        let margin = self.cfg.bucket_ns;
        let (lo, hi) = (
            inc.start_unix_ns.saturating_sub(margin),
            inc.end_unix_ns + margin,
        );
        let mut hits: Vec<RefEntry> = self
            .refs
            .get(&inc.subject)
            .map(|q| {
                q.iter()
                    .filter(|e| e.start <= hi && e.end >= lo)
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        // One link per span, the heaviest reason.
        hits.sort_by(|a, b| b.weight.total_cmp(&a.weight));
        let mut seen = HashSet::new();
        hits.retain(|e| seen.insert(e.r));
        inc.links_total = hits.len();
        inc.links = hits
            .iter()
            .take(self.cfg.max_links)
            .map(|e| LinkRef {
                trace_id: hex(&e.r.trace_id),
                span_id: hex(&e.r.span_id),
                r: e.r,
                weight: e.weight,
            })
            .collect();
    }

    /// Closes every open incident now (shutdown).
    pub fn close_all(&mut self) -> Vec<Incident> {
        let open: Vec<Open> = self.open.drain().map(|(_, o)| o).collect();
        open.into_iter()
            .map(|mut o| {
                o.inc.state = IncidentState::Closed;
                self.attach_links(&mut o.inc);
                o.inc
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
