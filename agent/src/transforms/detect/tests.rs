//! Detector behaviour on synthetic evidence with known ground truth.
use std::net::SocketAddr;

use agent_common::TcpEventKind;

use super::*;
use crate::shared::{
    evidence::{RunqEntry, RunqJoin, TcpEntry, TcpJoin},
    netkey::{Endpoint, EphemeralPorts, Oriented},
    span::{SpanFacts, SpanRef},
};

const S: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;
/// Bucket-aligned start of the simulated clock.
const T0: u64 = 1_700_000_000 * S;

fn ep(s: &str) -> Endpoint {
    s.parse::<SocketAddr>().unwrap().into()
}

fn cfg() -> DetectConfig {
    DetectConfig {
        settle_min_ns: 500 * MS,
        ..DetectConfig::default()
    }
}

struct Sim {
    d: Detector,
    /// The bucket being filled (seconds after T0).
    sec: u64,
    opened: Vec<Incident>,
    closed: Vec<Incident>,
    next_span: u64,
}

impl Sim {
    fn new() -> Self {
        Self::with(cfg())
    }

    fn with(c: DetectConfig) -> Self {
        Self {
            d: Detector::new(c, EphemeralPorts(32768..=60999), T0 - 1),
            sec: 0,
            opened: vec![],
            closed: vec![],
            next_span: 1,
        }
    }

    fn at(&self, offset_ns: u64) -> u64 {
        T0 + self.sec * S + offset_ns
    }

    /// Ends the current second and judges it.
    fn next_second(&mut self) {
        self.sec += 1;
        let ch = self.d.tick(T0 + self.sec * S + self.d.settle_ns());
        self.opened.extend(ch.opened);
        self.closed.extend(ch.closed);
    }

    fn span_ref(&mut self) -> SpanRef {
        self.next_span += 1;
        let mut r = SpanRef {
            trace_id: [7; 16],
            span_id: [0; 8],
        };
        r.span_id.copy_from_slice(&self.next_span.to_be_bytes());
        r
    }

    fn task(&mut self, kind: &str, queue_wait_ms: f64, runq_ms: f64, i: u64) {
        let start = self.at(i % 900 * MS);
        let f = SpanFacts {
            name: "pool.task".into(),
            start_ns: start,
            end_ns: start + MS,
            tid: Some(100 + (i % 4) as u32),
            pid: Some(42),
            pool: Some("db".into()),
            task_kind: Some(kind.into()),
            queue_wait_ms: Some(queue_wait_ms),
            ..Default::default()
        };
        let j = RunqJoin {
            total_ns: (runq_ms * 1e6) as u64,
            count: u64::from(runq_ms > 0.0),
            ..Default::default()
        };
        let r = self.span_ref();
        self.d.on_span_arrival(&f);
        self.d.on_span(&f, Some(r), Some(&j), None, start + 2 * MS);
    }

    /// A `ws.accept` span: the detector learns a live session on `local` ← `peer`.
    fn accept(&mut self, local: &str, peer: &str, session: &str) -> SpanRef {
        let r = self.span_ref();
        let facts = SpanFacts {
            name: "ws.accept".into(),
            start_ns: self.at(0),
            end_ns: self.at(MS),
            conn: Some(Oriented {
                local: ep(local),
                peer: ep(peer),
            }),
            session_id: Some(session.into()),
            ..Default::default()
        };
        self.d.on_span(&facts, Some(r), None, None, self.at(2 * MS));
        r
    }

    fn tasks(&mut self, n: u64, kind: &str, queue_wait_ms: f64, runq_ms: f64) {
        for i in 0..n {
            self.task(kind, queue_wait_ms, runq_ms, i);
        }
    }

    fn runq(&mut self, pid: u32, total_ms: u64) {
        // Ten waits making up `total_ms`.
        for i in 0..10 {
            let e = RunqEntry {
                end_ns: self.at(i * 50 * MS + MS),
                delay_ns: total_ms * MS / 10,
                pid,
                cpu: 0,
            };
            self.d.on_runq(500 + i as u32 % 3, &e);
        }
    }

    fn rst(&mut self, kind: TcpEventKind, local: &str, peer: &str, offset_ms: u64) {
        self.tcp(kind, local, peer, offset_ms, 1, (0, ""));
    }

    /// A TCP event in TCP state `state`, on a socket owned by `owner` (pid, comm).
    fn tcp(
        &mut self,
        kind: TcpEventKind,
        local: &str,
        peer: &str,
        offset_ms: u64,
        state: u8,
        owner: (u32, &str),
    ) {
        let e = TcpEntry {
            ts_ns: self.at(offset_ms * MS),
            kind,
            local: ep(local),
            peer: ep(peer),
            segs: 1,
            state,
            netns: 1,
            owner_pid: owner.0,
            owner_comm: owner.1.into(),
        };
        self.d.on_tcp(&e);
    }

    /// A tick `offset_ms` into the bucket being filled (early verdicts only: it has not settled).
    fn tick_at(&mut self, offset_ms: u64) {
        let ch = self.d.tick(self.at(offset_ms * MS));
        self.opened.extend(ch.opened);
        self.closed.extend(ch.closed);
    }
}

#[test]
fn connection_fault_names_the_endpoint_the_resetting_side_and_links_the_hurt_spans() {
    let mut s = Sim::new();
    for _ in 0..5 {
        s.next_second();
    }
    // An accept span tells the detector about a live session on one of the connections.
    let accept = s.accept("10.0.0.1:7000", "10.0.0.9:40000", "sess-1");
    // The server at :7000 aborts eight client connections (seen on both sockets, as on one
    // node), plus a retransmit that does not count as a reset.
    for i in 0..8 {
        let client = format!("10.0.0.9:{}", 40000 + i);
        s.rst(TcpEventKind::RstSent, "10.0.0.1:7000", &client, 100 + i);
        s.rst(TcpEventKind::RstReceived, &client, "10.0.0.1:7000", 100 + i);
    }
    s.rst(
        TcpEventKind::Retransmit,
        "10.0.0.1:7000",
        "10.0.0.9:40000",
        50,
    );
    // A session span that failed on one of them, and a healthy span on another endpoint.
    let hurt = s.span_ref();
    let failed = SpanFacts {
        name: "ws.session".into(),
        start_ns: s.at(0),
        end_ns: s.at(200 * MS),
        conn: Some(Oriented {
            local: ep("10.0.0.1:7000"),
            peer: ep("10.0.0.9:40001"),
        }),
        failed: true,
        ..Default::default()
    };
    let tcp = TcpJoin {
        resets_sent: 1,
        ..Default::default()
    };
    s.d.on_span(&failed, Some(hurt), None, Some(&tcp), s.at(300 * MS));
    s.next_second();
    assert_eq!(s.opened.len(), 1, "one incident");
    let inc = &s.opened[0];
    assert_eq!(inc.class, Class::ConnectionFault);
    assert_eq!(inc.subject, "ep:10.0.0.1:7000");
    assert_eq!(
        inc.evidence["connections_reset"], 8,
        "each reset once, not once per socket"
    );
    assert_eq!(inc.evidence["reset_by"], "service");
    assert_eq!(inc.evidence["sessions"][0], "sess-1");
    assert_eq!(inc.baseline.mean, 0.0);
    assert_eq!(
        inc.baseline.threshold, 5.0,
        "the floor, over a zero baseline"
    );
    // Quiet for three seconds: closed, with links to the failed span and the reset session.
    for _ in 0..3 {
        s.next_second();
    }
    assert_eq!(s.closed.len(), 1);
    let links: Vec<SpanRef> = s.closed[0].links.iter().map(|l| l.r).collect();
    assert_eq!(links.len(), 2, "{links:?}");
    assert_eq!(links[0], hurt, "the failed span weighs most");
    assert!(links.contains(&accept));
    assert_eq!(s.closed[0].links_total, 2);
}

#[test]
fn a_reset_ends_a_live_connection_even_if_its_session_span_never_comes() {
    let mut s = Sim::new();
    s.next_second();
    for port in [40000, 40001] {
        s.accept(
            "10.0.0.1:7000",
            &format!("10.0.0.9:{port}"),
            &format!("sess-{port}"),
        );
    }
    assert_eq!(s.d.live_connections(), 2);
    // One is reset (seen on both sockets); its session span is never seen (passed by).
    s.rst(
        TcpEventKind::RstReceived,
        "10.0.0.1:7000",
        "10.0.0.9:40000",
        100,
    );
    s.rst(
        TcpEventKind::RstSent,
        "10.0.0.9:40000",
        "10.0.0.1:7000",
        100,
    );
    assert_eq!(s.d.live_connections(), 1, "the reset connection is gone");
    s.rst(
        TcpEventKind::Retransmit,
        "10.0.0.1:7000",
        "10.0.0.9:40001",
        120,
    );
    assert_eq!(
        s.d.live_connections(),
        1,
        "a retransmit does not end a connection"
    );
}

#[test]
fn peers_resetting_a_service_and_small_numbers_are_told_apart() {
    let mut s = Sim::new();
    s.next_second();
    // Our clients get reset by redis: the service side (6379) sent them.
    for i in 0..6 {
        s.rst(
            TcpEventKind::RstReceived,
            &format!("10.0.0.2:{}", 45000 + i),
            "10.0.0.5:6379",
            i,
        );
    }
    // Three resets toward another endpoint: under the floor.
    for i in 0..3 {
        s.rst(
            TcpEventKind::RstReceived,
            &format!("10.0.0.2:{}", 46000 + i),
            "10.0.0.6:5432",
            i,
        );
    }
    s.next_second();
    assert_eq!(
        s.opened.len(),
        1,
        "{:?}",
        s.opened.iter().map(|i| &i.subject).collect::<Vec<_>>()
    );
    assert_eq!(s.opened[0].subject, "ep:10.0.0.5:6379");
    assert_eq!(s.opened[0].evidence["reset_by"], "service");

    // Clients resetting our server (the peers sent them).
    let mut s = Sim::new();
    s.next_second();
    for i in 0..6 {
        s.rst(
            TcpEventKind::RstReceived,
            "10.0.0.1:7000",
            &format!("10.0.0.9:{}", 50000 + i),
            i,
        );
    }
    s.next_second();
    assert_eq!(s.opened[0].evidence["reset_by"], "peers");
}

fn warm(s: &mut Sim, secs: u64) {
    for _ in 0..secs {
        s.tasks(30, "load", 0.5, 0.2);
        s.runq(42, 5);
        s.next_second();
    }
}

#[test]
fn task_surge_needs_arrivals_and_pressure_and_names_the_dominant_kind() {
    let mut s = Sim::new();
    warm(&mut s, 40);
    assert!(
        s.opened.is_empty(),
        "steady load is not an incident: {:?}",
        s.opened.first().map(|i| &i.summary)
    );
    // Arrivals 6× without pressure: not a surge (the pool absorbs it).
    s.tasks(30, "load", 0.5, 0.2);
    s.tasks(150, "save", 0.5, 0.2);
    s.runq(42, 5);
    s.next_second();
    assert!(
        s.opened.is_empty(),
        "{:?}",
        s.opened.first().map(|i| &i.summary)
    );
    warm(&mut s, 5);
    // Arrivals 6× and queue wait 40×: a surge, dominated by "save".
    s.tasks(30, "load", 20.0, 0.2);
    s.tasks(150, "save", 20.0, 0.2);
    s.runq(42, 5);
    s.next_second();
    assert_eq!(s.opened.len(), 1);
    let inc = &s.opened[0];
    assert_eq!(inc.class, Class::TaskSurge);
    assert_eq!(inc.subject, "pool:db");
    assert_eq!(inc.evidence["dominant_kinds"][0]["kind"], "save");
    assert_eq!(inc.baseline.observed, 180.0);
    assert!(
        inc.baseline.mean > 25.0 && inc.baseline.mean < 45.0,
        "{:?}",
        inc.baseline
    );
    // Run-queue delay was normal and so is the process's: no cpu_contention beside it.
    assert!(s.opened.iter().all(|i| i.class != Class::CpuContention));
    for _ in 0..3 {
        warm(&mut s, 1);
    }
    assert_eq!(s.closed.len(), 1);
    assert!(
        s.closed[0].links.len() == 32 && s.closed[0].links_total >= 180,
        "{} {}",
        s.closed[0].links.len(),
        s.closed[0].links_total
    );
}

#[test]
fn cpu_contention_when_runq_delay_rises_with_normal_arrivals_but_not_during_a_surge() {
    let mut s = Sim::new();
    warm(&mut s, 40);
    // One second of spikes is not contention: it must persist (contention_min_buckets).
    s.tasks(30, "load", 0.5, 0.2);
    s.runq(42, 400);
    s.next_second();
    assert!(
        s.opened.is_empty(),
        "a lone spike: {:?}",
        s.opened.first().map(|i| &i.summary)
    );
    warm(&mut s, 3);
    assert!(s.opened.is_empty());
    s.tasks(30, "load", 0.5, 0.2);
    s.runq(42, 400);
    s.next_second();
    assert!(s.opened.is_empty());
    s.tasks(30, "load", 0.5, 0.2);
    s.runq(42, 400);
    s.next_second();
    assert_eq!(
        s.opened.len(),
        1,
        "{:?}",
        s.opened.iter().map(|i| &i.summary).collect::<Vec<_>>()
    );
    let inc = &s.opened[0];
    assert_eq!(inc.class, Class::CpuContention);
    assert_eq!(inc.subject, "pid:42");
    assert_eq!(inc.evidence["runq_delay_ms"], 400.0);
    assert_eq!(inc.evidence["top_threads"].as_array().unwrap().len(), 3);

    // The same delay during our own surge is the surge, not a neighbour.
    let mut s = Sim::new();
    warm(&mut s, 40);
    for _ in 0..2 {
        s.tasks(200, "load", 20.0, 5.0);
        s.runq(42, 400);
        s.next_second();
    }
    let classes: Vec<Class> = s.opened.iter().map(|i| i.class).collect();
    assert_eq!(classes, [Class::TaskSurge]);
}

#[test]
fn nothing_fires_before_the_baseline_is_warm() {
    let mut s = Sim::new();
    s.tasks(500, "x", 50.0, 10.0);
    s.runq(42, 900);
    s.next_second();
    assert!(s.opened.is_empty());
}

#[test]
fn settle_follows_observed_lateness_within_bounds() {
    let mut s = Sim::new();
    assert_eq!(s.d.settle_ns(), 500 * MS);
    // Spans arriving 5 s after they end (a batching SDK): judging waits for them.
    let f = SpanFacts {
        name: "x".into(),
        start_ns: T0,
        end_ns: T0 + MS,
        ..Default::default()
    };
    s.d.on_span(&f, None, None, None, T0 + MS + 5 * S);
    assert_eq!(s.d.settle_ns(), 5 * S + 500 * MS);
    // A span stamped hours ago cannot push it past the ceiling.
    s.d.on_span(&f, None, None, None, T0 + 3600 * S);
    assert_eq!(s.d.settle_ns(), 30 * S);
    // And the high-water mark decays when lateness drops.
    s.d.tick(T0 + 600 * S);
    assert!(s.d.settle_ns() < 2 * S, "{}", s.d.settle_ns());
}

#[test]
fn memory_stays_bounded_under_a_flood_of_endpoints_and_sessions() {
    let mut s = Sim::new();
    for i in 0..(MAX_ENDPOINTS as u64 + 1000) {
        let peer = format!("10.{}.{}.{}:80", (i >> 16) & 255, (i >> 8) & 255, i & 255);
        s.rst(TcpEventKind::RstReceived, "10.0.0.1:45000", &peer, 0);
    }
    for i in 0..(MAX_LIVE_CONNS as u64 + 100) {
        let f = SpanFacts {
            name: "ws.accept".into(),
            conn: Some(Oriented {
                local: ep("10.0.0.1:7000"),
                peer: Endpoint::new(
                    [10, 1, (i >> 8) as u8, i as u8].into(),
                    (i >> 16) as u16 + 40000,
                ),
            }),
            session_id: Some(format!("{i}")),
            ..Default::default()
        };
        let r = s.span_ref();
        s.d.on_span(&f, Some(r), None, None, T0);
    }
    assert!(s.d.live_connections() <= MAX_LIVE_CONNS);
    assert!(s.d.buckets.values().all(|b| b.eps.len() <= MAX_ENDPOINTS));
    assert!(s.d.overflow > 0);
}

const SYN_SENT: u8 = 2;

#[test]
fn connection_fault_names_the_kind_the_counts_and_the_dependency_as_its_spans_call_it() {
    let mut s = Sim::new();
    s.next_second();
    // A client span toward the dependency names it (server.address, peer.service).
    let client = SpanFacts {
        name: "GET".into(),
        start_ns: s.at(0),
        end_ns: s.at(MS),
        conn: Some(Oriented {
            local: ep("10.0.0.2:45000"),
            peer: ep("10.0.0.5:6379"),
        }),
        server_address: Some("redis.cache.svc".into()),
        server_port: Some(6379),
        peer_service: Some("redis".into()),
        ..Default::default()
    };
    let r = s.span_ref();
    s.d.on_span(&client, Some(r), None, None, s.at(2 * MS));
    // Seven connects answered with an RST by our process 900: the kernel sent them without a
    // socket (nobody listening: state 0), or the client was still in SYN_SENT.
    for i in 0..7 {
        let client = format!("10.0.0.2:{}", 45100 + i);
        s.tcp(
            TcpEventKind::RstReceived,
            &client,
            "10.0.0.5:6379",
            10 + i,
            if i < 3 { SYN_SENT } else { 0 },
            (900, "game-server"),
        );
        if i >= 3 {
            s.tcp(
                TcpEventKind::RstSent,
                "10.0.0.5:6379",
                &client,
                10 + i,
                0,
                (0, ""),
            );
        }
    }
    // Two established connections reset by redis, one reset by us.
    for i in 0..2 {
        s.tcp(
            TcpEventKind::RstReceived,
            &format!("10.0.0.2:{}", 45200 + i),
            "10.0.0.5:6379",
            20,
            1,
            (900, "game-server"),
        );
    }
    s.tcp(
        TcpEventKind::RstSent,
        "10.0.0.2:45300",
        "10.0.0.5:6379",
        30,
        1,
        (900, "game-server"),
    );
    s.next_second();
    assert_eq!(s.opened.len(), 1);
    let inc = &s.opened[0];
    assert_eq!(inc.subject, "ep:10.0.0.5:6379");
    let at = |k: &str| inc.attributes.get(k).cloned().unwrap_or_default();
    assert_eq!(at("kernelsight.fault.kind"), "refused");
    assert_eq!(at("kernelsight.fault.count"), 7);
    assert_eq!(at("kernelsight.fault.refused"), 7);
    assert_eq!(at("kernelsight.fault.reset_by_peer"), 2);
    assert_eq!(at("kernelsight.fault.reset_by_us"), 1);
    assert_eq!(at("server.address"), "redis.cache.svc");
    assert_eq!(at("server.port"), 6379);
    assert_eq!(at("peer.service"), "redis");
    assert_eq!(at("kernelsight.fault.client.pid"), 900);
    assert_eq!(at("kernelsight.fault.client.comm"), "game-server");
    assert_eq!(inc.evidence["connections_reset"], 10);
    assert!(
        inc.summary
            .starts_with("redis redis.cache.svc:6379 (10.0.0.5:6379): 7 connections refused"),
        "{}",
        inc.summary
    );
    // On the incident span, under the same names.
    let rs = inc.to_otlp(&[]);
    let span = &rs.scope_spans[0].spans[0];
    assert!(span.attributes.iter().any(|kv| kv.key == "server.address"));
    assert!(
        span.attributes
            .iter()
            .any(|kv| kv.key == "kernelsight.fault.kind")
    );

    // Without a span that names it, the address is the endpoint's; a loss is a retransmit storm.
    let mut s = Sim::new();
    s.next_second();
    for i in 0..60 {
        s.tcp(
            TcpEventKind::Retransmit,
            "10.0.0.2:45000",
            "10.0.0.7:8080",
            i,
            1,
            (901, "bystander"),
        );
    }
    s.next_second();
    let inc = &s.opened[0];
    let at = |k: &str| inc.attributes.get(k).cloned().unwrap_or_default();
    assert_eq!(at("kernelsight.fault.kind"), "retransmit_storm");
    assert_eq!(at("kernelsight.fault.count"), 60);
    assert_eq!(at("server.address"), "10.0.0.7");
    assert_eq!(at("server.port"), 8080);
    assert!(!inc.attributes.contains_key("peer.service"));
    assert_eq!(at("kernelsight.fault.client.comm"), "bystander");
}

#[test]
fn a_fault_opens_early_on_kernel_evidence_and_its_settled_bucket_confirms_it() {
    let mut s = Sim::new();
    s.next_second();
    // Four resets 100 ms into the bucket: under the floor, nothing yet.
    for i in 0..4 {
        s.rst(
            TcpEventKind::RstReceived,
            &format!("10.0.0.2:{}", 45000 + i),
            "10.0.0.5:6379",
            100,
        );
    }
    s.tick_at(150);
    assert!(s.opened.is_empty());
    // The fifth: the bucket so far beats the threshold; raised 300 ms into the bucket, long
    // before it settles.
    s.rst(
        TcpEventKind::RstReceived,
        "10.0.0.2:45004",
        "10.0.0.5:6379",
        250,
    );
    s.tick_at(300);
    assert_eq!(s.opened.len(), 1);
    assert_eq!(s.opened[0].raised_by, "early");
    assert_eq!(s.opened[0].raised_unix_ns, s.at(300 * MS));
    // Ticking again does not raise it twice; the settled judgment confirms the same bucket.
    s.tick_at(400);
    s.rst(
        TcpEventKind::RstReceived,
        "10.0.0.2:45005",
        "10.0.0.5:6379",
        500,
    );
    s.next_second();
    assert_eq!(s.opened.len(), 1);
    let o = &s.d.open[&(Class::ConnectionFault, "ep:10.0.0.5:6379".to_owned())];
    assert_eq!(o.inc.buckets, 1, "the early bucket is not counted twice");
    assert_eq!(
        o.inc.evidence["connections_reset"], 6,
        "settled evidence replaces the early one"
    );
}

#[test]
fn a_surge_opens_early_on_spans_as_they_arrive() {
    let mut s = Sim::new();
    warm(&mut s, 40);
    // Half a bucket of a surge, the spans arrived (not yet joined, nor settled).
    for i in 0..150 {
        let start = s.at(i * MS);
        let f = SpanFacts {
            name: "pool.task".into(),
            start_ns: start,
            end_ns: start + MS,
            pid: Some(42),
            pool: Some("db".into()),
            task_kind: Some("full_sync".into()),
            queue_wait_ms: Some(20.0),
            ..Default::default()
        };
        s.d.on_span_arrival(&f);
    }
    s.tick_at(500);
    assert_eq!(s.opened.len(), 1);
    assert_eq!(s.opened[0].class, Class::TaskSurge);
    assert_eq!(s.opened[0].raised_by, "early");
    assert!(
        s.opened[0].summary.contains("full_sync"),
        "{}",
        s.opened[0].summary
    );
}

#[test]
fn contention_opens_early_only_after_its_consecutive_buckets_and_not_in_a_surge() {
    let mut s = Sim::new();
    warm(&mut s, 40);
    // One bucket of heavy run-queue delay (not yet settled), then the next one so far.
    s.tasks(30, "load", 0.5, 0.2);
    s.runq(42, 400);
    s.sec += 1;
    s.tick_at(100);
    assert!(
        s.opened.is_empty(),
        "one bucket is not enough: {:?}",
        s.opened.first().map(|i| &i.summary)
    );
    s.tasks(30, "load", 0.5, 0.2);
    s.runq(42, 400);
    s.tick_at(600);
    assert_eq!(s.opened.len(), 1, "two buckets in a row, arrivals normal");
    assert_eq!(s.opened[0].class, Class::CpuContention);
    assert_eq!(s.opened[0].subject, "pid:42");
    assert_eq!(s.opened[0].raised_by, "early");

    // The same delay with the process's own pool surging: not contention.
    let mut s = Sim::new();
    warm(&mut s, 40);
    for _ in 0..2 {
        s.tasks(30, "load", 0.5, 0.2);
        s.tasks(200, "full_sync", 0.5, 0.2);
        s.runq(42, 400);
        s.sec += 1;
    }
    s.sec -= 1;
    s.tick_at(600);
    assert!(
        s.opened.iter().all(|i| i.class != Class::CpuContention),
        "{:?}",
        s.opened.iter().map(|i| &i.summary).collect::<Vec<_>>()
    );
}

#[test]
fn a_watched_process_that_never_waited_has_a_calm_baseline_and_its_first_contention_is_raised() {
    // A busy process alone on its CPU waits less than the kernel's event threshold, so no
    // run-queue event names it; the kernel still watches it. Warm-up as in the end-to-end test.
    let mut s = Sim::with(DetectConfig {
        warmup_buckets: 3,
        ..cfg()
    });
    for _ in 0..6 {
        s.d.on_watched(&[42]);
        s.next_second();
    }
    assert!(s.opened.is_empty());
    // Then a hog takes half its CPU: raised after `contention_min_buckets`, not learnt.
    for _ in 0..4 {
        s.d.on_watched(&[42]);
        s.runq(42, 500);
        s.next_second();
    }
    assert_eq!(
        s.opened
            .iter()
            .map(|i| (i.class, i.subject.as_str()))
            .collect::<Vec<_>>(),
        [(Class::CpuContention, "pid:42")],
        "{:?}",
        s.opened.iter().map(|i| &i.summary).collect::<Vec<_>>()
    );
}
