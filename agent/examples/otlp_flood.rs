//! OTLP/HTTP protobuf load for `cargo xtask bench overload`: posts ExportTraceServiceRequests
//! to `/v1/traces` over keep-alive connections at a target span rate (0: as fast as they go)
//! for a while, then prints one JSON line (requests, statuses, spans sent and answered 200).
//!
//! The spans look like the game server's: connection spans with the OTel network attributes
//! and task spans with `process.pid`/`thread.id`, all "just ended", so the agent holds them for
//! its kernel-evidence wait as it would the real ones.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt as _, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value::Value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span},
};
use prost::Message as _;

#[derive(Parser)]
struct Args {
    /// The agent's OTLP/HTTP receiver.
    #[arg(long, default_value = "127.0.0.1:4318")]
    addr: SocketAddr,
    /// Spans per second over all connections (0: as fast as they go).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    #[arg(long, default_value_t = 100)]
    spans_per_request: u64,
    #[arg(long, default_value_t = 4)]
    connections: u64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    ok: AtomicU64,
    other_status: AtomicU64,
    errors: AtomicU64,
    spans_sent: AtomicU64,
    spans_ok: AtomicU64,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

fn kv(k: &str, v: Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
    }
}

fn body(seq: u64, n: u64) -> Bytes {
    let end = now_ns();
    let spans = (0..n)
        .map(|i| {
            let id = seq * n + i;
            let mut trace_id = [0u8; 16];
            trace_id[..8].copy_from_slice(&id.to_be_bytes());
            trace_id[8] = 1;
            let attributes = if id.is_multiple_of(2) {
                vec![
                    kv(
                        "network.peer.address",
                        Value::StringValue("127.0.0.1".into()),
                    ),
                    kv(
                        "network.peer.port",
                        Value::IntValue(20_000 + (id % 40_000) as i64),
                    ),
                    kv(
                        "network.local.address",
                        Value::StringValue("127.0.0.1".into()),
                    ),
                    kv("network.local.port", Value::IntValue(7000)),
                    kv("network.transport", Value::StringValue("tcp".into())),
                    kv("session.id", Value::StringValue(format!("{id:016x}"))),
                ]
            } else {
                vec![
                    kv("pool.name", Value::StringValue("background".into())),
                    kv("task.kind", Value::StringValue("persist".into())),
                    kv("process.pid", Value::IntValue(1)),
                    kv("thread.id", Value::IntValue(1)),
                ]
            };
            Span {
                trace_id: trace_id.to_vec(),
                span_id: (id + 1).to_be_bytes().to_vec(),
                name: if id.is_multiple_of(2) {
                    "ws.session"
                } else {
                    "pool.task"
                }
                .into(),
                kind: 2,
                start_time_unix_nano: end - 2_000_000,
                end_time_unix_nano: end,
                attributes,
                ..Default::default()
            }
        })
        .collect();
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", Value::StringValue("otlp-flood".into()))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    Bytes::from(req.encode_to_vec())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = Args::parse();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: axum::http::Uri = format!("http://{}/v1/traces", a.addr).parse().expect("uri");
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let deadline = start + Duration::from_secs(a.seconds);
    let per_conn_interval = (a.rate > 0).then(|| {
        Duration::from_secs_f64((a.spans_per_request * a.connections) as f64 / a.rate as f64)
    });
    let tasks: Vec<_> = (0..a.connections)
        .map(|c| {
            let (client, uri, tally) = (client.clone(), uri.clone(), tally.clone());
            let n = a.spans_per_request;
            tokio::spawn(async move {
                let mut seq = c << 40;
                let mut next = Instant::now();
                while Instant::now() < deadline {
                    if let Some(iv) = per_conn_interval {
                        tokio::time::sleep_until(next.into()).await;
                        next += iv;
                    }
                    seq += 1;
                    let req = axum::http::Request::post(uri.clone())
                        .header("content-type", "application/x-protobuf")
                        .body(Full::new(body(seq, n)))
                        .expect("request");
                    tally.requests.fetch_add(1, Ordering::Relaxed);
                    tally.spans_sent.fetch_add(n, Ordering::Relaxed);
                    match client.request(req).await {
                        Ok(resp) => {
                            let ok = resp.status() == 200;
                            let _ = resp.into_body().collect().await;
                            if ok {
                                tally.ok.fetch_add(1, Ordering::Relaxed);
                                tally.spans_ok.fetch_add(n, Ordering::Relaxed);
                            } else {
                                tally.other_status.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            tally.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let secs = start.elapsed().as_secs_f64();
    let g = |x: &AtomicU64| x.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "seconds": secs,
            "requests": g(&tally.requests),
            "ok": g(&tally.ok),
            "other_status": g(&tally.other_status),
            "errors": g(&tally.errors),
            "spans_sent": g(&tally.spans_sent),
            "spans_ok": g(&tally.spans_ok),
            "spans_per_sec": g(&tally.spans_sent) as f64 / secs,
        })
    );
}
