//! The joins: a span's key and time window against the kernel evidence, and what gets written
//! onto the span.
//!
//! - Thread spans (`thread.id`): the run-queue waits of that thread inside the span's window
//!   (widened by `slack` on both sides); a wait that straddles a boundary counts only its part
//!   inside. The wake-up that brought the worker to this task ends before the span starts: it
//!   is queueing, and shows in `pool.queue_wait_ms`. Slow waits also become span events,
//!   carrying the whole wait as the kernel measured it.
//! - Connection spans (4-tuple): every TCP event on the connection from `start − slack` to
//!   `end + tail`. The tail is there because a session's socket is closed, and its last RST
//!   sent, as the session task unwinds, just after the span has ended; a 4-tuple is not reused
//!   within the tail (the active closer holds it in TIME_WAIT for 60 s), so nothing foreign
//!   gets in.
//!
//! When both ends of a connection live on this node (loopback, or two pods on one node), the
//! kernel reports one RST twice: sent on one socket, received on the other. Such a mirror
//! observation is folded into the local side's own one.
use agent_common::TcpEventKind;
use opentelemetry_proto::tonic::trace::v1::Span;

use super::evidence::{NetConnKey, Windows};
use crate::shared::{
    culprit::CulpritShare,
    evidence::{Dir, RunqEntry, RunqJoin, TcpEntry, TcpHit, TcpJoin, tcp_state_name},
    netkey::Oriented,
    span::{event, kv_b, kv_f, kv_i, kv_s},
};

#[derive(Clone, Debug)]
pub struct JoinConfig {
    /// Widening of a span's window on both sides: span timestamps are taken by the SDK near,
    /// not at, the boundaries, and the clock conversion carries its own (µs) uncertainty.
    pub slack_ns: u64,
    /// How long after a connection span's end its connection's events still count.
    pub conn_tail_ns: u64,
    /// Waits at least this long become span events (all waits count in the totals).
    pub slow_wakeup_ns: u64,
    /// At most this many span events per join; the rest are counted in an attribute.
    pub max_events: usize,
}

impl Default for JoinConfig {
    fn default() -> Self {
        Self {
            slack_ns: 1_000_000,
            conn_tail_ns: 1_000_000_000,
            slow_wakeup_ns: 1_000_000,
            max_events: 32,
        }
    }
}

pub const A_RUNQ_TOTAL: &str = "kernelsight.runq.delay_total_ms";
pub const A_RUNQ_MAX: &str = "kernelsight.runq.delay_max_ms";
pub const A_RUNQ_COUNT: &str = "kernelsight.runq.count";
pub const A_RUNQ_TRUNC: &str = "kernelsight.runq.evidence_truncated";
pub const A_RUNQ_OMITTED: &str = "kernelsight.runq.events_omitted";
pub const E_RUNQ_SLOW: &str = "kernelsight.runq.slow_wakeup";
pub const A_TCP_RETRANS: &str = "kernelsight.tcp.retransmits";
pub const A_TCP_RST_SENT: &str = "kernelsight.tcp.resets_sent";
pub const A_TCP_RST_RECV: &str = "kernelsight.tcp.resets_received";
pub const A_TCP_TRUNC: &str = "kernelsight.tcp.evidence_truncated";
pub const A_TCP_OMITTED: &str = "kernelsight.tcp.events_omitted";
pub const E_TCP_RETRANS: &str = "kernelsight.tcp.retransmit";
pub const E_TCP_RST: &str = "kernelsight.tcp.reset";

pub fn join_runq(
    w: &Windows<u32, RunqEntry>,
    tid: u32,
    start: u64,
    end: u64,
    cfg: &JoinConfig,
) -> RunqJoin {
    let (lo, hi) = (
        start.saturating_sub(cfg.slack_ns),
        end.saturating_add(cfg.slack_ns),
    );
    let mut j = RunqJoin {
        truncated: w.truncated(&tid, lo),
        ..Default::default()
    };
    if let Some(win) = w.get(&tid) {
        for e in win.items() {
            let inside = e.end_ns.min(hi).saturating_sub(e.start_ns().max(lo));
            if inside == 0 {
                continue;
            }
            j.total_ns += inside;
            j.max_ns = j.max_ns.max(inside);
            j.count += 1;
            if e.delay_ns >= cfg.slow_wakeup_ns {
                j.slow.push(e.clone());
            }
        }
    }
    j.slow.sort_by_key(|e| e.end_ns);
    j
}

/// How close in time a mirror observation must be to the local one to be the same RST. On one
/// node an RST crosses from socket to socket within one softirq (microseconds); 10 ms leaves
/// room for a loaded machine without merging distinct resets (a reset ends a connection, so
/// two on one 4-tuple inside 10 ms are the same one).
const MIRROR_NS: u64 = 10_000_000;

/// `netns` is the span side's network namespace: only evidence from sockets in it counts (0,
/// unknown, matches nothing).
pub fn join_tcp(
    w: &Windows<NetConnKey, TcpEntry>,
    netns: u64,
    conn: Oriented,
    start: u64,
    end: u64,
    cfg: &JoinConfig,
) -> TcpJoin {
    if netns == 0 {
        return TcpJoin::default();
    }
    let key = (netns, conn.key());
    let (lo, hi) = (
        start.saturating_sub(cfg.slack_ns),
        end.saturating_add(cfg.conn_tail_ns),
    );
    let mut j = TcpJoin {
        truncated: w.truncated(&key, lo),
        ..Default::default()
    };
    let Some(win) = w.get(&key) else { return j };
    let mut hits: Vec<TcpHit> = win
        .items()
        .filter(|e| e.ts_ns >= lo && e.ts_ns <= hi)
        .filter_map(|e| {
            let own = e.local == conn.local && e.peer == conn.peer;
            let mirror = e.local == conn.peer && e.peer == conn.local;
            if !own && !mirror {
                return None;
            }
            let sent_by_observer = !matches!(e.kind, TcpEventKind::RstReceived);
            let dir = if sent_by_observer == own {
                Dir::Sent
            } else {
                Dir::Received
            };
            Some(TcpHit {
                ts_ns: e.ts_ns,
                kind: e.kind,
                dir,
                own_socket: own,
                segs: e.segs.max(1),
                state: e.state,
            })
        })
        .collect();
    hits.sort_by_key(|h| (h.ts_ns, !h.own_socket));
    // Fold mirror RST observations into an own-socket observation of the same RST.
    let own_rsts: Vec<(u64, Dir)> = hits
        .iter()
        .filter(|h| h.own_socket && h.kind != TcpEventKind::Retransmit)
        .map(|h| (h.ts_ns, h.dir))
        .collect();
    hits.retain(|h| {
        h.own_socket
            || h.kind == TcpEventKind::Retransmit
            || !own_rsts
                .iter()
                .any(|&(t, d)| d == h.dir && t.abs_diff(h.ts_ns) <= MIRROR_NS)
    });
    for h in &hits {
        match (h.kind, h.dir) {
            (TcpEventKind::Retransmit, _) => j.retransmits += u64::from(h.segs),
            (_, Dir::Sent) => j.resets_sent += 1,
            (_, Dir::Received) => j.resets_received += 1,
        }
    }
    j.hits = hits;
    j
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Writes a run-queue join onto the span.
pub fn apply_runq(span: &mut Span, j: &RunqJoin, cfg: &JoinConfig) {
    span.attributes.push(kv_f(A_RUNQ_TOTAL, ms(j.total_ns)));
    span.attributes.push(kv_f(A_RUNQ_MAX, ms(j.max_ns)));
    span.attributes.push(kv_i(A_RUNQ_COUNT, j.count as i64));
    if j.truncated {
        span.attributes.push(kv_b(A_RUNQ_TRUNC, true));
    }
    // Keep the longest waits when there are too many, then show them in time order.
    let mut slow: Vec<&RunqEntry> = j.slow.iter().collect();
    if slow.len() > cfg.max_events {
        slow.sort_by_key(|e| std::cmp::Reverse(e.delay_ns));
        span.attributes
            .push(kv_i(A_RUNQ_OMITTED, (slow.len() - cfg.max_events) as i64));
        slow.truncate(cfg.max_events);
        slow.sort_by_key(|e| e.end_ns);
    }
    for e in slow {
        span.events.push(event(
            E_RUNQ_SLOW,
            e.end_ns,
            vec![
                kv_f("kernelsight.runq.delay_ms", ms(e.delay_ns)),
                kv_i("kernelsight.runq.cpu", i64::from(e.cpu)),
            ],
        ));
    }
}

/// Names the top culprit of the span's process around the span (per second, per process:
/// the kernel accounts culprits per victim process, not per thread); never its own threads.
pub fn apply_culprit(span: &mut Span, top: &[CulpritShare]) {
    if let Some(c) = top.iter().find(|c| c.id.pid != 0 && !c.own_threads) {
        span.attributes
            .push(kv_i("kernelsight.runq.culprit.pid", i64::from(c.id.pid)));
        span.attributes
            .push(kv_s("kernelsight.runq.culprit.comm", c.id.comm.clone()));
        span.attributes
            .push(kv_f("kernelsight.runq.culprit.share", c.share));
    }
}

/// Writes a TCP join onto the span.
pub fn apply_tcp(span: &mut Span, j: &TcpJoin, cfg: &JoinConfig) {
    span.attributes
        .push(kv_i(A_TCP_RETRANS, j.retransmits as i64));
    span.attributes
        .push(kv_i(A_TCP_RST_SENT, j.resets_sent as i64));
    span.attributes
        .push(kv_i(A_TCP_RST_RECV, j.resets_received as i64));
    if j.truncated {
        span.attributes.push(kv_b(A_TCP_TRUNC, true));
    }
    // Resets first (there are few, and they matter most), then the earliest retransmits.
    let mut shown: Vec<&TcpHit> = j
        .hits
        .iter()
        .filter(|h| h.kind != TcpEventKind::Retransmit)
        .collect();
    shown.extend(j.hits.iter().filter(|h| h.kind == TcpEventKind::Retransmit));
    if shown.len() > cfg.max_events {
        span.attributes
            .push(kv_i(A_TCP_OMITTED, (shown.len() - cfg.max_events) as i64));
        shown.truncate(cfg.max_events);
    }
    shown.sort_by_key(|h| h.ts_ns);
    for h in shown {
        let mut attrs = vec![
            kv_s("kernelsight.tcp.direction", h.dir.as_str()),
            kv_s(
                "kernelsight.tcp.observed_on",
                if h.own_socket {
                    "local_socket"
                } else {
                    "peer_socket"
                },
            ),
            kv_s("kernelsight.tcp.state", tcp_state_name(h.state)),
        ];
        let name = if h.kind == TcpEventKind::Retransmit {
            attrs.push(kv_i("kernelsight.tcp.segs", i64::from(h.segs)));
            E_TCP_RETRANS
        } else {
            E_TCP_RST
        };
        span.events.push(event(name, h.ts_ns, attrs));
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::shared::netkey::ConnKey;
    use crate::{
        shared::{
            netkey::Endpoint,
            span::{attr_f64, attr_i64},
        },
        transforms::correlate::evidence::Bounds,
    };

    fn ep(s: &str) -> Endpoint {
        s.parse::<SocketAddr>().unwrap().into()
    }

    fn runq_windows(entries: &[(u32, u64, u64)]) -> Windows<u32, RunqEntry> {
        let mut w = Windows::new(Bounds {
            max_keys: 100,
            per_key: 100,
            max_entries: usize::MAX,
            retention_ns: u64::MAX,
        });
        for &(tid, end_ns, delay_ns) in entries {
            w.push(
                tid,
                RunqEntry {
                    end_ns,
                    delay_ns,
                    pid: 1,
                    cpu: 3,
                },
            );
        }
        w
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn runq_window_counts_overlapping_waits_of_that_thread_only() {
        let cfg = JoinConfig {
            slack_ns: MS,
            ..Default::default()
        };
        let w = runq_windows(&[
            (7, 100 * MS, 5 * MS),       // ends 98 ms before the span: out
            (7, 200 * MS, 2 * MS), // the wake-up for the task: only its last 1 ms (slack) is in
            (7, 250 * MS, 7 * MS), // preempted mid-task: in
            (7, 260 * MS, 100_000), // a short one: counted, no event
            (8, 250 * MS, 50 * MS), // another thread: out
            (7, 301 * MS, 3 * MS), // from 298 ms: 1 ms inside the window's slack
            (7, 300 * MS + 1, MS), // starts 1 ns after the window (with slack): out
            (7, 400 * MS, MS),     // after: out
            (7, 5_000 * MS, 4_900 * MS), // a wait straddling the whole span: only the window counts
        ]);
        let j = join_runq(&w, 7, 200 * MS, 298 * MS, &cfg);
        assert_eq!(j.count, 5, "{j:?}");
        assert_eq!(j.total_ns, 9 * MS + 100_000 + 100 * MS);
        assert_eq!(
            j.max_ns,
            100 * MS,
            "the window is 100 ms wide with its slack"
        );
        assert_eq!(j.slow.len(), 4);
        let j = join_runq(
            &w,
            7,
            200 * MS,
            298 * MS,
            &JoinConfig {
                slack_ns: 0,
                ..cfg.clone()
            },
        );
        assert_eq!(
            j.total_ns,
            7 * MS + 100_000 + 98 * MS,
            "without slack: the mid-task wait, the short one, the straddler"
        );
        let w = runq_windows(&[
            (7, 200 * MS, 2 * MS),
            (7, 250 * MS, 7 * MS),
            (7, 260 * MS, 100_000),
            (7, 301 * MS, 3 * MS),
        ]);
        let j = join_runq(&w, 7, 200 * MS, 298 * MS, &cfg);
        assert_eq!(j.total_ns, 9 * MS + 100_000);
        let mut span = Span::default();
        apply_runq(&mut span, &j, &cfg);
        assert_eq!(attr_f64(&span.attributes, A_RUNQ_TOTAL), Some(9.1));
        assert_eq!(attr_f64(&span.attributes, A_RUNQ_MAX), Some(7.0));
        assert_eq!(attr_i64(&span.attributes, A_RUNQ_COUNT), Some(4));
        assert_eq!(span.events.len(), 3);
        assert_eq!(span.events[1].time_unix_nano, 250 * MS);
        assert_eq!(
            attr_f64(&span.events[0].attributes, "kernelsight.runq.delay_ms"),
            Some(2.0),
            "events carry the whole wait"
        );
    }

    #[test]
    fn runq_events_are_bounded_keeping_the_longest() {
        let cfg = JoinConfig {
            max_events: 2,
            ..Default::default()
        };
        let w = runq_windows(&[
            (1, 10 * MS, 2 * MS),
            (1, 20 * MS, 9 * MS),
            (1, 30 * MS, 4 * MS),
            (1, 40 * MS, 8 * MS),
        ]);
        let j = join_runq(&w, 1, 0, 50 * MS, &cfg);
        let mut span = Span::default();
        apply_runq(&mut span, &j, &cfg);
        let times: Vec<u64> = span.events.iter().map(|e| e.time_unix_nano).collect();
        assert_eq!(times, [20 * MS, 40 * MS]);
        assert_eq!(attr_i64(&span.attributes, A_RUNQ_OMITTED), Some(2));
        assert_eq!(j.count, 4, "all waits still count");
    }

    /// The host's network namespace in these tests.
    const NS: u64 = 1;

    fn tcp(entries: &[(u64, TcpEventKind, &str, &str)]) -> Windows<NetConnKey, TcpEntry> {
        tcp_in(NS, entries)
    }

    fn tcp_in(
        netns: u64,
        entries: &[(u64, TcpEventKind, &str, &str)],
    ) -> Windows<NetConnKey, TcpEntry> {
        let mut w = Windows::new(Bounds {
            max_keys: 100,
            per_key: 100,
            max_entries: usize::MAX,
            retention_ns: u64::MAX,
        });
        for &(ts_ns, kind, local, peer) in entries {
            let (local, peer) = (ep(local), ep(peer));
            w.push(
                (netns, ConnKey::new(local, peer)),
                TcpEntry {
                    ts_ns,
                    kind,
                    local,
                    peer,
                    segs: 1,
                    state: 1,
                    netns,
                    owner_pid: 0,
                    owner_comm: Default::default(),
                },
            );
        }
        w
    }

    #[test]
    fn tcp_join_by_4tuple_in_either_orientation_with_loopback_mirrors_folded() {
        use TcpEventKind::*;
        let server = "127.0.0.1:7000";
        let client = "127.0.0.1:50000";
        let w = tcp(&[
            (100 * MS, Retransmit, server, client), // server retransmits
            (150 * MS, Retransmit, client, server), // client retransmits
            (200 * MS, RstSent, server, client),    // server aborts...
            (200 * MS + 20_000, RstReceived, client, server), // ...and the client gets it
            (200 * MS, RstSent, server, "127.0.0.1:50001"), // another connection
        ]);
        let cfg = JoinConfig::default();
        // The server's session span: local = server.
        let span_side = Oriented {
            local: ep(server),
            peer: ep(client),
        };
        let j = join_tcp(&w, NS, span_side, 50 * MS, 199 * MS, &cfg);
        assert_eq!(
            (j.retransmits, j.resets_sent, j.resets_received),
            (2, 1, 0),
            "{j:?}"
        );
        assert_eq!(
            j.hits.len(),
            3,
            "the client's observation of the RST is folded in"
        );
        // The client's span (v4-mapped addresses in its attributes) sees the same RST as received.
        let client_side = Oriented {
            local: Endpoint::parse("::ffff:127.0.0.1", 50000).unwrap(),
            peer: Endpoint::parse("::ffff:127.0.0.1", 7000).unwrap(),
        };
        let j = join_tcp(&w, NS, client_side, 50 * MS, 300 * MS, &cfg);
        assert_eq!(
            (j.retransmits, j.resets_sent, j.resets_received),
            (2, 0, 1),
            "{j:?}"
        );
        let mut span = Span::default();
        apply_tcp(&mut span, &j, &cfg);
        assert_eq!(attr_i64(&span.attributes, A_TCP_RST_RECV), Some(1));
        let rst: Vec<_> = span.events.iter().filter(|e| e.name == E_TCP_RST).collect();
        assert_eq!(rst.len(), 1);
        assert_eq!(rst[0].time_unix_nano, 200 * MS + 20_000);
    }

    #[test]
    fn tcp_join_respects_the_window_and_tail() {
        use TcpEventKind::*;
        let w = tcp(&[
            (10 * MS, RstSent, "10.0.0.1:7000", "10.0.0.2:40000"),
            (3_000 * MS, RstSent, "10.0.0.1:7000", "10.0.0.2:40000"),
        ]);
        let side = Oriented {
            local: ep("10.0.0.1:7000"),
            peer: ep("10.0.0.2:40000"),
        };
        let cfg = JoinConfig {
            conn_tail_ns: 1_000 * MS,
            ..Default::default()
        };
        // Span ends at 1.5 s: the RST at 3 s is past the tail, the one at 10 ms is before the start.
        let j = join_tcp(&w, NS, side, 100 * MS, 1_500 * MS, &cfg);
        assert_eq!(j.resets_sent, 0);
        let j = join_tcp(&w, NS, side, 100 * MS, 2_500 * MS, &cfg);
        assert_eq!(j.resets_sent, 1, "inside the tail");
        // Only the peer's socket is on this node: its RST sent is ours received.
        let mirror = Oriented {
            local: side.peer,
            peer: side.local,
        };
        let j = join_tcp(&w, NS, mirror, 0, 20 * MS, &cfg);
        assert_eq!((j.resets_sent, j.resets_received), (0, 1));
        assert!(!j.hits[0].own_socket);
    }

    #[test]
    fn tcp_evidence_is_per_network_namespace() {
        use TcpEventKind::*;
        // Two pods, each with its own 127.0.0.1:6379, happen to use the same client port: one
        // 4-tuple, two connections. Pod A's was reset; pod B's retransmitted.
        let (pod_a, pod_b) = (4026532185, 4026532190);
        let mut w = tcp_in(
            pod_a,
            &[(100 * MS, RstReceived, "127.0.0.1:40000", "127.0.0.1:6379")],
        );
        let (l, p) = (ep("127.0.0.1:40000"), ep("127.0.0.1:6379"));
        w.push(
            (pod_b, ConnKey::new(l, p)),
            TcpEntry {
                ts_ns: 100 * MS,
                kind: Retransmit,
                local: l,
                peer: p,
                segs: 1,
                state: 1,
                netns: pod_b,
                owner_pid: 0,
                owner_comm: Default::default(),
            },
        );
        let side = Oriented { local: l, peer: p };
        let cfg = JoinConfig::default();
        let a = join_tcp(&w, pod_a, side, 50 * MS, 150 * MS, &cfg);
        assert_eq!((a.resets_received, a.retransmits), (1, 0), "{a:?}");
        let b = join_tcp(&w, pod_b, side, 50 * MS, 150 * MS, &cfg);
        assert_eq!((b.resets_received, b.retransmits), (0, 1), "{b:?}");
        // A span whose namespace is unknown joins nothing rather than guess.
        assert!(
            join_tcp(&w, 0, side, 50 * MS, 150 * MS, &cfg)
                .hits
                .is_empty()
        );
    }
}
