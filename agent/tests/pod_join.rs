//! Pod mode end to end, through the real agent binary and real kernel events: spans from
//! processes run like containers (own pid namespace and cgroup, and for the connection test
//! their own network namespace) carry namespace-local ids and the pod's origin, as a pod's do.
//!
//! Both tests fail without the translation at the edge: without pid-namespace translation the
//! spans' (pid 1, tid 2) name the host's init, which has no thread 2 (no run-queue join); without
//! the network namespace in the connection key, the clean pod's span gets the other pod's reset
//! (same 4-tuple).
mod common;
mod correlation_support;
mod pod_support;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use common::{Agent, eventually, free_port, require_root};
use correlation_support::{Sink, attr, attr_i, conn_span, ids, kv, now_ns, send_grpc, task_span};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::any_value::Value,
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span},
};
use pod_support::{CgroupParent, NetNs, PodProc, pod_ids};

fn pod_request(pod_uid: &str, ns_pid: u32, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", Value::StringValue("pod-test".into())),
                    // What a pod reports: its own pid, and where it is (downward API).
                    kv("process.pid", Value::IntValue(i64::from(ns_pid))),
                    kv("k8s.pod.uid", Value::StringValue(pod_uid.into())),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            schema_url: String::new(),
        }],
    }
}

fn agent(sink: &Sink, extra: &[&str]) -> (Agent, SocketAddr) {
    let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let forward = format!("http://{}", sink.addr);
    let mut args = vec![
        "--otlp-grpc-addr",
        &*Box::leak(grpc.to_string().into_boxed_str()),
        "--otlp-forward",
        &*Box::leak(forward.into_boxed_str()),
        "--span-wait-ms",
        "300",
        "--no-k8s",
    ];
    args.extend(extra);
    (Agent::start(&args), grpc)
}

fn forwarded(sink: &Sink, n: u64) -> Span {
    let (_, id) = ids(n);
    assert!(
        eventually(Duration::from_secs(15), || sink.span(&id).is_some()),
        "span {n} never forwarded"
    );
    sink.span(&id).unwrap()
}

fn dump(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kernelsight-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("forwarded.otlp")
}

#[test]
fn task_spans_with_colliding_namespace_ids_join_their_own_pods_threads() {
    require_root();
    let parent = CgroupParent::new("ks-test-podjoin");
    let (uid_a, cid_a) = pod_ids(11);
    let (uid_b, cid_b) = pod_ids(12);
    // Pod A's workers burn CPU (and so wait in the run queue); pod B's sleep throughout.
    let a = PodProc::start_with(&parent.container(&uid_a, &cid_a), 2, None, true);
    let b = PodProc::start_with(&parent.container(&uid_b, &cid_b), 2, None, false);
    assert_eq!(
        (a.ns_pid, &a.ns_tids),
        (b.ns_pid, &b.ns_tids),
        "the ids collide"
    );
    let sink = Sink::start(&dump("podjoin"));
    let cg = parent.0.to_str().unwrap().to_owned();
    let (_agent, grpc) = agent(&sink, &["--cgroup", &cg]);
    // More runnable threads than CPUs: pod A's spinners wait in the run queue.
    let stop = Arc::new(AtomicBool::new(false));
    let hogs: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let end = now_ns();
    let start = end - 2_000_000_000;
    stop.store(true, Ordering::Relaxed);
    for h in hogs {
        h.join().unwrap();
    }
    let (pid, tid) = (a.ns_pid, a.ns_tids[0]);
    send_grpc(
        grpc,
        pod_request(
            &uid_a,
            pid,
            vec![task_span(1, start, end, tid, pid, "spin")],
        ),
    );
    send_grpc(
        grpc,
        pod_request(
            &uid_b,
            pid,
            vec![task_span(2, start, end, tid, pid, "sleep")],
        ),
    );
    let sa = forwarded(&sink, 1);
    let sb = forwarded(&sink, 2);
    let count = |s: &Span| attr_i(s, "kernelsight.runq.count");
    assert!(
        count(&sa).is_some_and(|c| c > 0),
        "pod A's busy thread waited in the run queue: {:?}",
        sa.attributes
    );
    // Pod B's thread slept: none of pod A's waits may land on it (same pid 1, same tid).
    assert!(
        count(&sb).unwrap_or(0) == 0,
        "pod B's span got another thread's waits: {:?}",
        sb.attributes
    );
    // The enriched span says which pod it ran in (the UID from the cgroup: no API here).
    assert_eq!(
        attr(&sa, "k8s.pod.uid"),
        Some(&Value::StringValue(uid_a.clone()))
    );
    let host_tid = a.host_tid(0).unwrap();
    assert_ne!(host_tid, tid, "namespace-local and host ids differ");
}

#[test]
fn two_pods_with_their_own_127_0_0_1_6379_do_not_share_evidence() {
    require_root();
    let parent = CgroupParent::new("ks-test-podnet");
    let (uid_a, cid_a) = pod_ids(21);
    let (uid_b, cid_b) = pod_ids(22);
    let (ns_a, ns_b) = (NetNs::new("ks-pa"), NetNs::new("ks-pb"));
    let mut a = PodProc::start(&parent.container(&uid_a, &cid_a), 1, Some(&ns_a.0));
    let mut b = PodProc::start(&parent.container(&uid_b, &cid_b), 1, Some(&ns_b.0));
    let sink = Sink::start(&dump("podnet"));
    let (_agent, grpc) = agent(&sink, &[]);
    let start = now_ns();
    // Pod A's connection is reset by its server; pod B's, the very same 4-tuple in its own
    // namespace, closes cleanly.
    a.tcp("abort");
    b.tcp("close");
    let end = now_ns();
    let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let server: SocketAddr = "127.0.0.1:6379".parse().unwrap();
    for (n, uid, p) in [(31, &uid_a, &a), (32, &uid_b, &b)] {
        send_grpc(
            grpc,
            pod_request(
                uid,
                p.ns_pid,
                vec![conn_span(
                    "redis.get",
                    n,
                    start,
                    end,
                    client,
                    server,
                    n == 31,
                )],
            ),
        );
    }
    let sa = forwarded(&sink, 31);
    let sb = forwarded(&sink, 32);
    let resets = |s: &Span| attr_i(s, "kernelsight.tcp.resets_received");
    assert_eq!(resets(&sa), Some(1), "pod A's reset: {:?}", sa.attributes);
    assert_eq!(
        resets(&sb),
        Some(0),
        "pod B's clean connection got pod A's reset: {:?}",
        sb.attributes
    );
}
