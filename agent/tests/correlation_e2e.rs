//! End to end, with the real agent binary and real kernel events on 127.0.0.1: spans go in over
//! OTLP (HTTP and gRPC), come out of the agent's forwarder into a sink run here, enriched with
//! the resets provoked on their connections; a burst of resets becomes a connection_fault
//! incident, listed at /incidents and forwarded as a span linked to the hurt spans; and the
//! forwarded stream is decoded and checked by the OpenTelemetry project's Python bindings.
mod common;
mod correlation_support;

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use common::{Agent, eventually, free_port, http_get, require_root};
use correlation_support::*;
use opentelemetry_proto::tonic::{common::v1::any_value::Value, trace::v1::Span};

fn otlp_agent(sink: &Sink, extra: &[&str]) -> (Agent, SocketAddr, SocketAddr) {
    let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let forward = format!("http://{}", sink.addr);
    let mut args = vec![
        "--otlp-grpc-addr".to_owned(),
        grpc.to_string(),
        "--otlp-http-addr".to_owned(),
        http.to_string(),
        "--otlp-forward".to_owned(),
        forward,
    ];
    if !extra.contains(&"--span-wait-ms") {
        args.extend(["--span-wait-ms".to_owned(), "300".to_owned()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (Agent::start(&args), grpc, http)
}

fn wait_for(sink: &Sink, id: &[u8]) -> Span {
    let id: [u8; 8] = id.try_into().unwrap();
    assert!(
        eventually(Duration::from_secs(15), || sink.span(&id).is_some()),
        "span {} never forwarded",
        hex(&id)
    );
    sink.span(&id).unwrap()
}

fn event_attr<'a>(
    e: &'a opentelemetry_proto::tonic::trace::v1::span::Event,
    key: &str,
) -> Option<&'a Value> {
    e.attributes
        .iter()
        .find(|a| a.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()
}

fn dump_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kernelsight-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("forwarded.otlp")
}

#[test]
fn resets_reach_connection_spans_and_a_burst_is_an_incident_linked_to_them() {
    require_root();
    let sink = Sink::start(&dump_path("e2e"));
    let (agent, grpc, http) = otlp_agent(&sink, &[]);
    let listener = service_listener();
    let service = listener.local_addr().unwrap();

    // One aborted connection, described by a span from each side.
    let t0 = now_ns();
    let (srv, cli, before, after) = aborted_connection(&listener);
    let t1 = now_ns();
    let server_view = conn_span("ws.session", 1, t0, t1, srv, cli, true);
    let client_view = conn_span("redis.client", 2, t0, t1, cli, srv, true);
    assert_eq!(send_http(http, &request(vec![server_view.clone()])), 200);
    send_grpc(grpc, request(vec![client_view.clone()]));

    let s = wait_for(&sink, &server_view.span_id);
    assert_eq!(
        attr_i(&s, "kernelsight.tcp.resets_sent"),
        Some(1),
        "{:?}",
        s.attributes
    );
    assert_eq!(attr_i(&s, "kernelsight.tcp.resets_received"), Some(0));
    assert_eq!(attr_i(&s, "kernelsight.tcp.retransmits"), Some(0));
    let rst: Vec<_> = s
        .events
        .iter()
        .filter(|e| e.name == "kernelsight.tcp.reset")
        .collect();
    assert_eq!(
        rst.len(),
        1,
        "one RST, though both sockets saw it: {:?}",
        s.events
    );
    assert_eq!(
        event_attr(rst[0], "kernelsight.tcp.direction"),
        Some(&Value::StringValue("sent".into()))
    );
    // The event's time is the kernel's, converted: inside the close() that sent it.
    let unc = (agent
        .metrics()
        .get("kernelsight_clock_offset_uncertainty_seconds")
        * 1e9)
        .ceil() as u64;
    let t = rst[0].time_unix_nano;
    assert!(
        before <= t + unc && t <= after + unc,
        "RST event at {t}, close() ran in [{before}, {after}] ±{unc}"
    );
    let c = wait_for(&sink, &client_view.span_id);
    assert_eq!(
        (
            attr_i(&c, "kernelsight.tcp.resets_sent"),
            attr_i(&c, "kernelsight.tcp.resets_received")
        ),
        (Some(0), Some(1))
    );

    // A burst: twelve connections aborted by the service within a second, each with a session
    // span (half of them failed).
    std::thread::sleep(Duration::from_millis(1500));
    let mut burst = Vec::new();
    for i in 0..12 {
        let start = now_ns();
        let (s, c, _, _) = aborted_connection(&listener);
        burst.push(conn_span(
            "ws.session",
            100 + i,
            start,
            now_ns(),
            s,
            c,
            i % 2 == 0,
        ));
    }
    let burst_ids: HashSet<Vec<u8>> = burst.iter().map(|s| s.span_id.clone()).collect();
    send_grpc(grpc, request(burst));

    let subject = format!("ep:{service}");
    let mut listed = serde_json::Value::Null;
    assert!(
        eventually(Duration::from_secs(15), || {
            let (_, body) = http_get(agent.addr, "/incidents?class=connection_fault").unwrap();
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            match v["incidents"]
                .as_array()
                .and_then(|a| a.iter().find(|i| i["subject"] == subject.as_str()))
            {
                Some(i) => {
                    listed = i.clone();
                    true
                }
                None => false,
            }
        }),
        "no connection_fault incident for {subject} at /incidents"
    );
    eprintln!("listed: {}", listed["summary"]);
    assert_eq!(listed["evidence"]["reset_by"], "service");
    assert!(listed["evidence"]["connections_reset"].as_u64().unwrap() >= 5);
    assert!(
        listed["baseline"]["observed"].as_f64().unwrap()
            >= listed["baseline"]["threshold"].as_f64().unwrap()
    );
    assert!(
        agent
            .metrics()
            .get("kernelsight_incidents_total{class=\"connection_fault\"}")
            >= 1.0
    );

    // Closed after a quiet spell, and forwarded as a span of its own trace linked to the hurt
    // spans.
    let find_incident = || {
        sink.spans().into_iter().find(|s| {
            s.name == "kernelsight.incident.connection_fault"
                && matches!(attr(s, "kernelsight.incident.subject"), Some(Value::StringValue(v)) if *v == subject)
        })
    };
    assert!(
        eventually(Duration::from_secs(20), || find_incident().is_some()),
        "incident span never forwarded"
    );
    let inc = find_incident().unwrap();
    let forwarded: HashSet<Vec<u8>> = sink.spans().into_iter().map(|s| s.span_id).collect();
    assert!(!inc.links.is_empty());
    for l in &inc.links {
        assert!(
            forwarded.contains(&l.span_id),
            "link to {} which was never forwarded",
            hex(&l.span_id)
        );
        assert_ne!(l.trace_id, inc.trace_id);
    }
    let linked_burst = inc
        .links
        .iter()
        .filter(|l| burst_ids.contains(&l.span_id))
        .count();
    assert!(
        linked_burst >= 5,
        "links to the burst's spans: {linked_burst}"
    );
    let (_, body) = http_get(agent.addr, "/incidents?state=closed").unwrap();
    assert!(
        body.contains(&subject),
        "the closed incident is still listed"
    );

    // The same stream, decoded by code that is not ours.
    let out = python_decode(
        &sink.dump,
        &[
            format!(
                "--expect={}:kernelsight.tcp.resets_sent=1",
                hex(&server_view.span_id)
            ),
            format!(
                "--expect={}:kernelsight.tcp.resets_received=1",
                hex(&client_view.span_id)
            ),
            format!(
                "--expect-event={}:kernelsight.tcp.reset",
                hex(&server_view.span_id)
            ),
            "--incident=connection_fault".to_owned(),
            "--links".to_owned(),
        ],
    );
    eprintln!("python: {out}");
}

/// gettid(2).
fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is valid, and it outlives the call that reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

#[test]
fn task_spans_get_the_run_queue_delay_their_thread_suffered() {
    require_root();
    let sink = Sink::start(&dump_path("runq"));
    let me = std::process::id().to_string();
    let (agent, grpc, _) = otlp_agent(&sink, &["--pid", &me]);
    assert!(
        eventually(Duration::from_secs(10), || agent
            .metrics()
            .get("kernelsight_runq_watched_processes")
            >= 1.0),
        "the agent never started watching this process"
    );

    // Two busy hogs and a busy victim share CPU 0: the victim keeps being preempted and waits
    // on the run queue. A blocked thread beside it waits on nothing.
    let stop = Arc::new(AtomicBool::new(false));
    let hogs: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                pin_to_cpu0();
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    // The blocked thread stays alive until the end: the agent checks that a span's thread.id
    // is a live thread of its process before it reports a measured zero.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let blocked = std::thread::spawn(move || {
        tid_tx.send((gettid(), now_ns())).unwrap();
        let _ = rx.recv();
    });
    let (btid, bstart) = tid_rx.recv().unwrap();
    let victim = std::thread::spawn(|| {
        pin_to_cpu0();
        let tid = gettid();
        let start = now_ns();
        let mut x = 0u64;
        while now_ns() - start < 400_000_000 {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        (tid, start, now_ns(), x)
    });
    let (vtid, vstart, vend, _) = victim.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    hogs.into_iter().for_each(|h| h.join().unwrap());
    std::thread::sleep(
        Duration::from_millis(300).saturating_sub(Duration::from_nanos(now_ns() - bstart)),
    );

    let pid = std::process::id();
    let victim_span = task_span(1, vstart, vend, vtid, pid, "compute");
    // The blocked thread's span covers a window in which it never ran nor waited.
    let idle_span = task_span(
        2,
        bstart + 100_000_000,
        bstart + 300_000_000,
        btid,
        pid,
        "idle",
    );
    send_grpc(grpc, request(vec![victim_span.clone(), idle_span.clone()]));

    let v = wait_for(&sink, &victim_span.span_id);
    let total = attr_f(&v, "kernelsight.runq.delay_total_ms")
        .expect("run-queue attributes on the task span");
    let max = attr_f(&v, "kernelsight.runq.delay_max_ms").unwrap();
    let count = attr_i(&v, "kernelsight.runq.count").unwrap();
    eprintln!(
        "victim tid {vtid}: {count} waits, {total:.1} ms in all (max {max:.1} ms) over a 400 ms task"
    );
    assert!(
        count > 0 && total >= 20.0,
        "a thread sharing a CPU with two hogs waited: {count} waits, {total} ms"
    );
    // Only waiting inside the span's window counts (plus the 1 ms join slack on each side).
    let span_ms = (vend - vstart) as f64 / 1e6;
    assert!(
        max <= total && total <= span_ms + 2.0,
        "{total} ms of waiting inside a {span_ms} ms task (max {max})"
    );
    assert!(
        v.events
            .iter()
            .any(|e| e.name == "kernelsight.runq.slow_wakeup")
    );
    let i = wait_for(&sink, &idle_span.span_id);
    assert_eq!(
        attr_i(&i, "kernelsight.runq.count"),
        Some(0),
        "a watched, blocked thread: zero, measured: {:?}",
        i.attributes
    );
    assert_eq!(attr_f(&i, "kernelsight.runq.delay_total_ms"), Some(0.0));
    drop(tx);
    blocked.join().unwrap();

    // A thread.id that is not a thread of the process (tracing-opentelemetry's ThreadId
    // counter, say) gets no run-queue attributes at all, rather than a "measured" zero.
    let bogus = task_span(3, vstart, vend, 3, pid, "bogus");
    send_grpc(grpc, request(vec![bogus.clone()]));
    let b = wait_for(&sink, &bogus.span_id);
    assert_eq!(
        attr_i(&b, "kernelsight.runq.count"),
        None,
        "{:?}",
        b.attributes
    );
}

#[test]
fn a_clean_shutdown_delivers_held_spans_and_closes_open_incidents() {
    require_root();
    let sink = Sink::start(&dump_path("shutdown"));
    // Spans are held 2 s for evidence: at the SIGTERM below, the last one is still held.
    let (mut agent, grpc, _) = otlp_agent(&sink, &["--span-wait-ms", "2000"]);
    let listener = Arc::new(service_listener());
    let subject = format!("ep:{}", listener.local_addr().unwrap());
    // Resets keep coming (20 a second) until the agent is gone: the incident is still open at
    // the SIGTERM.
    let stop = Arc::new(AtomicBool::new(false));
    let storm = {
        let (listener, stop) = (listener.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                aborted_connection(&listener);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    assert!(
        eventually(Duration::from_secs(15), || {
            let (_, body) = http_get(agent.addr, "/incidents?state=open").unwrap();
            body.contains(&subject)
        }),
        "no open incident for {subject}"
    );
    let start = now_ns();
    let (srv, cli, _, _) = aborted_connection(&listener);
    let held = conn_span("ws.session", 7, start, now_ns(), srv, cli, true);
    send_grpc(grpc, request(vec![held.clone()]));

    // SAFETY: signalling our own child, which we have not waited for yet.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGTERM) };
    let mut status = None;
    assert!(eventually(Duration::from_secs(10), || {
        status = agent.child.try_wait().unwrap();
        status.is_some()
    }));
    stop.store(true, Ordering::Relaxed);
    storm.join().unwrap();
    assert!(status.unwrap().success(), "{status:?}");
    let s = sink
        .span(&held.span_id.clone().try_into().unwrap())
        .expect("the held span was delivered before exit");
    assert_eq!(
        attr_i(&s, "kernelsight.tcp.resets_sent"),
        Some(1),
        "and joined with the evidence there was"
    );
    assert!(
        sink.spans().iter().any(|s| s.name == "kernelsight.incident.connection_fault"
            && matches!(attr(s, "kernelsight.incident.subject"), Some(Value::StringValue(v)) if *v == subject)),
        "the open incident was closed and forwarded at shutdown"
    );
}
