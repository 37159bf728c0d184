//! The page's timeline: a bounded ring of one-second samples, fed from the pipeline.
//!
//! - TCP resets and retransmits per service endpoint: counted as the pipeline hands events on
//!   (one short lock per event, into a map bounded per second).
//! - Run-queue latency: once a second, the change of the kernel's per-process log2 histograms,
//!   summed over the watched processes (the heat map's column and its percentiles).
//! - Spans received (all, and those that got kernel evidence): the correlator's counters.
//! - Task arrivals and queue depth per pool: the game server's own pool metrics
//!   (`pool_submitted_total`, `pool_queue_depth`), scraped once a second when
//!   `--pool-metrics-url` is set.
//!
//! The sampler does a fixed, small amount of work per second whether or not anyone looks;
//! percentiles and everything visual are computed only when the page asks.
use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
};

use agent_common::TcpEventKind;
use serde::Serialize;

use crate::{
    correlator::netkey::{EphemeralPorts, Oriented},
    probes::{RunqHistogram, events::KernelEvent},
};

/// Endpoints tracked per second; the rest are summed under [`OTHER`].
pub const MAX_ENDPOINTS_PER_SAMPLE: usize = 32;
/// Pools tracked per sample.
pub const MAX_POOLS: usize = 16;
pub const OTHER: &str = "other";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TcpCounts {
    pub rst_sent: u32,
    pub rst_received: u32,
    pub retransmits: u32,
}

impl TcpCounts {
    fn add(&mut self, o: &TcpCounts) {
        self.rst_sent += o.rst_sent;
        self.rst_received += o.rst_received;
        self.retransmits += o.retransmits;
    }

    pub fn total(&self) -> u32 {
        self.rst_sent + self.rst_received + self.retransmits
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TcpPoint {
    /// The connection's service endpoint (the side whose port is not ephemeral), as in
    /// `connection_fault` subjects (`ep:<this>`).
    pub ep: String,
    #[serde(flatten)]
    pub counts: TcpCounts,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PoolPoint {
    pub pool: String,
    /// Submissions in this second.
    pub arrivals: f64,
    pub queue_depth: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RunqPoint {
    /// Waits that ended in this second per log2 slot: slot `i` is [2^i, 2^(i+1)) µs. Trailing
    /// empty slots are left out.
    pub slots: Vec<u32>,
    pub count: u64,
    pub sum_ns: u64,
    pub processes: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Sample {
    /// Unix second this sample covers (it ends at `t + 1`).
    pub t: u64,
    /// Spans received over OTLP in this second (`None`: correlation not running).
    pub spans: Option<u64>,
    pub spans_enriched: u64,
    /// `None`: no probes, or nothing watched.
    pub runq: Option<RunqPoint>,
    pub tcp: Vec<TcpPoint>,
    /// `None`: no pool metrics source, or it failed this second.
    pub pools: Option<Vec<PoolPoint>>,
    /// Kernel events lost to full rings in this second (the per-endpoint counts miss them).
    pub kernel_lost: u64,
}

/// What the pipeline accumulates for the current second.
#[derive(Default)]
struct Current {
    tcp: HashMap<String, TcpCounts>,
    other: TcpCounts,
    events: u64,
}

pub struct Timeline {
    cap: usize,
    eph: EphemeralPorts,
    current: Mutex<Current>,
    ring: Mutex<VecDeque<Sample>>,
}

impl Timeline {
    pub fn new(seconds: usize, eph: EphemeralPorts) -> Self {
        Self {
            cap: seconds.max(1),
            eph,
            current: Mutex::default(),
            ring: Mutex::new(VecDeque::new()),
        }
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Called by the pipeline for every kernel event.
    pub fn observe(&self, ev: &KernelEvent) {
        let KernelEvent::Tcp(rec) = ev else { return };
        let (service, _) = self.eph.service(&Oriented {
            local: rec.local.into(),
            peer: rec.remote.into(),
        });
        let mut c = self.current.lock().expect("timeline lock");
        c.events += 1;
        let key = service.to_string();
        let full = c.tcp.len() >= MAX_ENDPOINTS_PER_SAMPLE && !c.tcp.contains_key(&key);
        let slot = if full {
            &mut c.other
        } else {
            c.tcp.entry(key).or_default()
        };
        match rec.kind {
            TcpEventKind::RstSent => slot.rst_sent += 1,
            TcpEventKind::RstReceived => slot.rst_received += 1,
            TcpEventKind::Retransmit => slot.retransmits += rec.segs.max(1),
        }
    }

    /// Kernel events seen since the last [`Timeline::close_second`].
    pub fn events_this_second(&self) -> u64 {
        self.current.lock().expect("timeline lock").events
    }

    /// Closes second `t`: the TCP counts gathered so far go into `sample`, which joins the ring.
    pub fn close_second(&self, mut sample: Sample) {
        let cur = std::mem::take(&mut *self.current.lock().expect("timeline lock"));
        let mut tcp: Vec<TcpPoint> = cur
            .tcp
            .into_iter()
            .map(|(ep, counts)| TcpPoint { ep, counts })
            .collect();
        tcp.sort_by(|a, b| {
            b.counts
                .total()
                .cmp(&a.counts.total())
                .then_with(|| a.ep.cmp(&b.ep))
        });
        if cur.other.total() > 0 {
            tcp.push(TcpPoint {
                ep: OTHER.into(),
                counts: cur.other,
            });
        }
        sample.tcp = tcp;
        let mut ring = self.ring.lock().expect("timeline lock");
        // A second sampled twice (a clock step backwards) replaces, never duplicates.
        if let Some(last) = ring.back_mut()
            && last.t >= sample.t
        {
            let mut merged = std::mem::take(last);
            for p in sample.tcp.drain(..) {
                match merged.tcp.iter_mut().find(|m| m.ep == p.ep) {
                    Some(m) => m.counts.add(&p.counts),
                    None => merged.tcp.push(p),
                }
            }
            *last = Sample {
                t: merged.t,
                tcp: merged.tcp,
                ..sample
            };
            return;
        }
        ring.push_back(sample);
        while ring.len() > self.cap {
            ring.pop_front();
        }
    }

    /// Samples after second `since`, at most the last `max` of them.
    pub fn since(&self, since: u64, max: usize) -> Vec<Sample> {
        let ring = self.ring.lock().expect("timeline lock");
        let skip = ring.len().saturating_sub(max);
        ring.iter()
            .skip(skip)
            .filter(|s| s.t > since)
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.ring.lock().expect("timeline lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The change of the per-process histograms since the last call, summed: a process that
/// appeared counts from zero, one whose counts went down (pid reused) counts from its new state.
#[derive(Default)]
pub struct RunqDelta {
    prev: HashMap<u32, RunqHistogram>,
}

impl RunqDelta {
    pub fn step(&mut self, now: HashMap<u32, RunqHistogram>) -> RunqPoint {
        let mut slots = vec![0u64; now.values().map(|h| h.slots.len()).max().unwrap_or(0)];
        let mut sum_ns = 0u64;
        for (pid, h) in &now {
            let prev = self.prev.get(pid);
            let reset = prev.is_some_and(|p| {
                p.slots.iter().zip(&h.slots).any(|(a, b)| b < a) || h.sum_ns < p.sum_ns
            });
            let prev = if reset { None } else { prev };
            for (i, n) in h.slots.iter().enumerate() {
                slots[i] += n - prev.and_then(|p| p.slots.get(i)).copied().unwrap_or(0);
            }
            sum_ns += h.sum_ns - prev.map_or(0, |p| p.sum_ns);
        }
        let processes = now.len();
        self.prev = now;
        while slots.last() == Some(&0) {
            slots.pop();
        }
        RunqPoint {
            count: slots.iter().sum(),
            slots: slots
                .into_iter()
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
                .collect(),
            sum_ns,
            processes,
        }
    }
}

/// The `q` quantile (0..1) of a log2-slot histogram in µs, interpolated linearly inside the
/// slot (slot `i` spans [2^i, 2^(i+1)) µs). `None` when empty.
pub fn quantile_us(slots: &[u32], q: f64) -> Option<f64> {
    let total: u64 = slots.iter().map(|&n| u64::from(n)).sum();
    if total == 0 {
        return None;
    }
    let target = (q.clamp(0.0, 1.0) * total as f64).max(f64::MIN_POSITIVE);
    let mut below = 0u64;
    for (i, &n) in slots.iter().enumerate() {
        let n = u64::from(n);
        if n > 0 && (below + n) as f64 >= target {
            let lo = (1u64 << i) as f64;
            let frac = (target - below as f64) / n as f64;
            return Some(lo + frac * lo);
        }
        below += n;
    }
    Some((1u64 << slots.len()) as f64)
}

/// Pool series scraped from the game server's Prometheus text: submissions (counter, summed
/// over kinds) and queue depth (gauge), per `pool` label.
pub fn parse_pool_metrics(text: &str) -> HashMap<String, (f64, f64)> {
    let mut out: HashMap<String, (f64, f64)> = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let which = if name.ends_with("pool_submitted_total") {
            0
        } else if name.ends_with("pool_queue_depth") {
            1
        } else {
            continue;
        };
        let pool = label(labels, "pool").unwrap_or_else(|| "default".into());
        if !out.contains_key(&pool) && out.len() >= MAX_POOLS {
            continue;
        }
        let e = out.entry(pool).or_default();
        if which == 0 {
            e.0 += v;
        } else {
            e.1 += v;
        }
    }
    out
}

fn label(labels: &str, key: &str) -> Option<String> {
    // `a="x",b="y\"z"}`: values are quoted with backslash escapes.
    let mut rest = labels;
    loop {
        let (k, after) = rest.split_once("=\"")?;
        let k = k.trim_start_matches([',', ' ']);
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(match e {
                            'n' => '\n',
                            e => e,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        if k == key {
            return Some(value);
        }
        rest = &after[end..];
    }
}

/// Turns successive cumulative pool counters into per-second points.
#[derive(Default)]
pub struct PoolDelta {
    prev: HashMap<String, f64>,
}

impl PoolDelta {
    pub fn step(&mut self, now: HashMap<String, (f64, f64)>) -> Vec<PoolPoint> {
        let mut pts: Vec<PoolPoint> = now
            .iter()
            .map(|(pool, &(submitted, depth))| {
                let arrivals = match self.prev.get(pool) {
                    Some(&p) if submitted >= p => submitted - p,
                    // First sight or a restarted server: no rate yet.
                    _ => 0.0,
                };
                PoolPoint {
                    pool: pool.clone(),
                    arrivals,
                    queue_depth: depth,
                }
            })
            .collect();
        pts.sort_by(|a, b| a.pool.cmp(&b.pool));
        self.prev = now.into_iter().map(|(k, (s, _))| (k, s)).collect();
        pts
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::probes::events::TcpRecord;

    fn tcp(kind: TcpEventKind, local: &str, remote: &str) -> KernelEvent {
        KernelEvent::Tcp(TcpRecord {
            ts_ns: 0,
            kind,
            local: local.parse::<SocketAddr>().unwrap(),
            remote: remote.parse().unwrap(),
            state: 1,
            owner: None,
            current_pid: 0,
            socket: 0,
            cookie: 0,
            sock_ino: 0,
            segs: 3,
            reason: 0,
        })
    }

    #[test]
    fn tcp_events_are_grouped_by_service_endpoint_and_bounded() {
        let t = Timeline::new(3, EphemeralPorts(32768..=60999));
        // Both sides of one reset: the server's socket sent it, the client's received it.
        t.observe(&tcp(
            TcpEventKind::RstSent,
            "127.0.0.1:6379",
            "127.0.0.1:40000",
        ));
        t.observe(&tcp(
            TcpEventKind::RstReceived,
            "127.0.0.1:40000",
            "127.0.0.1:6379",
        ));
        t.observe(&tcp(
            TcpEventKind::Retransmit,
            "10.0.0.1:40001",
            "10.0.0.2:443",
        ));
        for i in 0..100 {
            t.observe(&tcp(
                TcpEventKind::RstSent,
                "10.0.0.1:40001",
                &format!("10.0.1.{i}:80"),
            ));
        }
        t.close_second(Sample {
            t: 10,
            ..Default::default()
        });
        let s = &t.since(0, 10)[0];
        let redis = s.tcp.iter().find(|p| p.ep == "127.0.0.1:6379").unwrap();
        assert_eq!(
            redis.counts,
            TcpCounts {
                rst_sent: 1,
                rst_received: 1,
                retransmits: 0
            }
        );
        assert_eq!(
            s.tcp
                .iter()
                .find(|p| p.ep == "10.0.0.2:443")
                .unwrap()
                .counts
                .retransmits,
            3
        );
        assert_eq!(s.tcp.len(), MAX_ENDPOINTS_PER_SAMPLE + 1);
        let other = s.tcp.last().unwrap();
        assert_eq!(other.ep, OTHER);
        let all: u32 = s.tcp.iter().map(|p| p.counts.total()).sum();
        assert_eq!(all, 2 + 3 + 100, "nothing lost to the bound");
        // The ring keeps the last `cap` seconds; a repeated second merges.
        for sec in 11..15 {
            t.close_second(Sample {
                t: sec,
                ..Default::default()
            });
        }
        t.observe(&tcp(
            TcpEventKind::RstSent,
            "127.0.0.1:6379",
            "127.0.0.1:40000",
        ));
        t.close_second(Sample {
            t: 14,
            ..Default::default()
        });
        let all = t.since(0, 100);
        assert_eq!(all.iter().map(|s| s.t).collect::<Vec<_>>(), [12, 13, 14]);
        assert_eq!(all[2].tcp.len(), 1);
        assert_eq!(t.since(12, 100).len(), 2);
        assert_eq!(t.since(0, 1).len(), 1);
    }

    #[test]
    fn runq_delta_sums_processes_and_survives_pid_reuse() {
        let h = |slots: &[u64], sum| RunqHistogram {
            slots: slots.to_vec(),
            sum_ns: sum,
        };
        let mut d = RunqDelta::default();
        let first = d.step(HashMap::from([
            (1, h(&[1, 2, 0, 0], 100)),
            (2, h(&[0, 1, 0, 0], 50)),
        ]));
        assert_eq!(first.slots, [1, 3]);
        assert_eq!((first.count, first.sum_ns, first.processes), (4, 150, 2));
        let second = d.step(HashMap::from([
            (1, h(&[1, 2, 5, 0], 900)),
            (2, h(&[0, 0, 0, 1], 10)),
        ]));
        // pid 2 went down: a new process under an old pid, counted from zero.
        assert_eq!(second.slots, [0, 0, 5, 1]);
        assert_eq!(second.sum_ns, 800 + 10);
        assert_eq!(d.step(HashMap::new()), RunqPoint::default());
    }

    #[test]
    fn quantiles_interpolate_inside_log2_slots() {
        assert_eq!(quantile_us(&[], 0.5), None);
        assert_eq!(quantile_us(&[0, 0], 0.5), None);
        // 10 waits in [4, 8) µs.
        let s = [0, 0, 10];
        assert_eq!(quantile_us(&s, 0.5), Some(6.0));
        assert_eq!(quantile_us(&s, 1.0), Some(8.0));
        // 90 fast, 10 in [1024, 2048) µs: p50 fast, p99 slow.
        let mut s = vec![0u32; 11];
        s[1] = 90;
        s[10] = 10;
        assert!(quantile_us(&s, 0.5).unwrap() < 4.0);
        let p99 = quantile_us(&s, 0.99).unwrap();
        assert!((1024.0..=2048.0).contains(&p99), "{p99}");
    }

    #[test]
    fn pool_metrics_from_the_game_servers_exposition() {
        let text = r#"# HELP pool_submitted_total Submission attempts by kind.
# TYPE pool_submitted_total counter
pool_submitted_total{kind="save",pool="game"} 10
pool_submitted_total{kind="path",pool="game"} 5
pool_submitted_total{pool="odd \"name\"",kind="x"} 1
pool_queue_depth{pool="game"} 7
pool_queue_capacity{pool="game"} 1024
other_metric 3
"#;
        let m = parse_pool_metrics(text);
        assert_eq!(m["game"], (15.0, 7.0));
        assert_eq!(m["odd \"name\""], (1.0, 0.0));
        let mut d = PoolDelta::default();
        assert_eq!(
            d.step(m.clone())[0].arrivals,
            0.0,
            "no rate from one reading"
        );
        let mut later = m;
        later.insert("game".into(), (40.0, 2.0));
        let pts = d.step(later);
        let g = pts.iter().find(|p| p.pool == "game").unwrap();
        assert_eq!((g.arrivals, g.queue_depth), (25.0, 2.0));
    }
}
