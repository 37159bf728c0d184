//! Spans arriving faster than the agent can hold them for joining: the span store stays within
//! its cap, the excess passes unenriched and is counted, and every sender is answered at once
//! with success.
mod common;
mod correlation_support;

use std::{net::SocketAddr, time::Duration};

use common::{Agent, eventually, free_port, require_root};
use correlation_support::{conn_span, now_ns, request, send_grpc, send_http};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn span_store_stays_within_its_cap_under_a_flood() {
    require_root();
    const CAP: usize = 2000;
    const PER_REQUEST: u64 = 500;
    const REQUESTS: u64 = 40;
    let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let agent = Agent::start(&[
        "--otlp-grpc-addr",
        &grpc.to_string(),
        "--otlp-http-addr",
        &http.to_string(),
        "--span-store-cap",
        &CAP.to_string(),
        // Every span is held 2 s for kernel evidence: the store fills long before it drains.
        "--span-wait-ms",
        "2000",
    ]);
    let rss0 = rss_kib(agent.child.id());
    let local: SocketAddr = "127.0.0.1:7000".parse().unwrap();
    let make = |r: u64| {
        let now = now_ns();
        let spans = (0..PER_REQUEST)
            .map(|i| {
                let n = r * PER_REQUEST + i;
                let peer = SocketAddr::new([127, 0, 0, 1].into(), 40000 + (n % 20000) as u16);
                conn_span("ws.session", n, now - 1_000_000, now, local, peer, false)
            })
            .collect();
        request(spans)
    };
    // Four HTTP senders and one gRPC sender at once.
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let http_senders: Vec<_> = (0..4)
            .map(|t| {
                s.spawn(move || {
                    (0..REQUESTS / 4)
                        .map(|k| send_http(http, &make(t * 1000 + k)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let grpc_sender = s.spawn(move || (0..4).for_each(|k| send_grpc(grpc, make(9000 + k))));
        grpc_sender.join().unwrap();
        http_senders
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(
        statuses.iter().all(|&c| c == 200),
        "every export answered with success: {statuses:?}"
    );

    let m = agent.metrics();
    let sent = (REQUESTS + 4) * PER_REQUEST;
    let received = m.sum("kernelsight_spans_received_total", &[]);
    let unenriched = m.get("kernelsight_spans_unenriched_total{reason=\"store_full\"}");
    let high = m.get("kernelsight_span_store_spans_high_water");
    eprintln!(
        "flood: {sent} spans sent, {received} received, {unenriched} passed unenriched, store high water {high} (cap {CAP})"
    );
    assert_eq!(received as u64, sent);
    assert!(
        high as usize <= CAP,
        "store high water {high} over its cap {CAP}"
    );
    assert!(high > 0.0);
    assert!(unenriched > 0.0, "the excess was counted as unenriched");
    assert_eq!(m.get("kernelsight_span_store_capacity"), CAP as f64);
    // Once the wait is over, the store empties.
    assert!(eventually(Duration::from_secs(10), || agent
        .metrics()
        .get("kernelsight_span_store_spans")
        == 0.0));
    let rss1 = rss_kib(agent.child.id());
    eprintln!("flood: agent RSS {rss0} KiB before, {rss1} KiB after");
    // Not a performance bound: a sanity bound on what ~22k spans of 300 bytes could cost if
    // they were all kept (they must not be).
    assert!(
        rss1.saturating_sub(rss0) < 256 * 1024,
        "RSS grew by {} KiB",
        rss1 - rss0
    );
}

fn anon_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Few spans can be many bytes: 20,000 spans of ~2.4 KB decoded (well under the 65,536-span
/// cap) would hold ~48 MB if the store were bounded in spans only. With its default byte
/// budget (8 MiB) it holds at most that, joins early what it must let go of, and counts it.
#[test]
fn span_store_is_bounded_in_bytes_by_default() {
    require_root();
    const PER_REQUEST: u64 = 500;
    const REQUESTS: u64 = 40;
    const BUDGET: f64 = (8 << 20) as f64;
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let agent = Agent::start(&[
        "--otlp-http-addr",
        &http.to_string(),
        // Held 10 s for kernel evidence: without a byte bound all of them would still be held
        // when memory is read below.
        "--span-wait-ms",
        "10000",
    ]);
    let pid = agent.child.id();
    let anon0 = anon_kib(pid);
    let local: SocketAddr = "127.0.0.1:7000".parse().unwrap();
    let payload = "x".repeat(2000);
    let make = |r: u64| {
        let now = now_ns();
        let spans = (0..PER_REQUEST)
            .map(|i| {
                let n = r * PER_REQUEST + i;
                let peer = SocketAddr::new([127, 0, 0, 1].into(), 40000 + (n % 20000) as u16);
                let mut s = conn_span("ws.session", n, now - 1_000_000, now, local, peer, false);
                s.attributes.push(correlation_support::kv(
                    "game.payload",
                    opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                        payload.clone(),
                    ),
                ));
                s
            })
            .collect();
        request(spans)
    };
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|t| {
                let make = &make;
                s.spawn(move || {
                    (0..REQUESTS / 2)
                        .map(|k| send_http(http, &make(t * 1000 + k)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|&c| c == 200), "{statuses:?}");
    let anon1 = anon_kib(pid);
    let m = agent.metrics();
    let sent = REQUESTS * PER_REQUEST;
    let received = m.sum("kernelsight_spans_received_total", &[]);
    let high_bytes = m.get("kernelsight_span_store_bytes_high_water");
    let early = m.get("kernelsight_spans_joined_early_total");
    let unenriched = m.get("kernelsight_spans_unenriched_total{reason=\"store_full\"}");
    eprintln!(
        "{sent} spans of ~2.4 KB: {received} received, store high water {high_bytes} B, {early} joined early, {unenriched} unenriched; agent RssAnon {anon0} → {anon1} KiB"
    );
    assert_eq!(received as u64, sent);
    assert!(
        high_bytes > 0.0 && high_bytes <= BUDGET,
        "store high water {high_bytes} B (budget {BUDGET})"
    );
    assert!(
        early + unenriched > 0.0,
        "what the store could not hold was counted"
    );
    // The store's 8 MiB plus what decoding and the HTTP bodies take at once; all of it held
    // would be ~48 MB.
    assert!(
        anon1.saturating_sub(anon0) < 24 * 1024,
        "agent heap grew by {} KiB",
        anon1.saturating_sub(anon0)
    );
}
