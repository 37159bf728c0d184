//! Pieces shared by the correlation tests: an OTLP/gRPC sink that keeps the raw request bytes,
//! span builders, OTLP senders (gRPC and HTTP), and provoked resets on loopback.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of this module"
)]

use std::{
    convert::Infallible,
    fs::File,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::{Buf as _, BufMut as _};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, trace_service_client::TraceServiceClient},
    common::v1::{AnyValue, KeyValue, any_value::Value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status, status::StatusCode},
};
use prost::Message as _;
use socket2::SockRef;
use tonic::{
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::{Body, BoxFuture, Context, Poll, Service, StdError, http},
    server::{Grpc, NamedService, UnaryService},
    transport::server::TcpIncoming,
};

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

// ---------------------------------------------------------------------------------------------
// The sink: an OTLP/gRPC TraceService that decodes nothing. It keeps each request's message
// bytes exactly as they arrived (a pass-through codec), appends them to a dump file for the
// Python decoder, and decodes them with prost only when the Rust side asks.

#[derive(Clone, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

#[derive(Clone)]
struct SinkSvc {
    got: Arc<Mutex<Vec<Vec<u8>>>>,
    dump: Arc<Mutex<File>>,
}

impl NamedService for SinkSvc {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

struct Export(SinkSvc);

impl UnaryService<Vec<u8>> for Export {
    type Response = Vec<u8>;
    type Future = BoxFuture<tonic::Response<Vec<u8>>, tonic::Status>;
    fn call(&mut self, req: tonic::Request<Vec<u8>>) -> Self::Future {
        let bytes = req.into_inner();
        {
            let mut f = self.0.dump.lock().unwrap();
            f.write_all(&(bytes.len() as u32).to_be_bytes()).unwrap();
            f.write_all(&bytes).unwrap();
            f.flush().unwrap();
        }
        self.0.got.lock().unwrap().push(bytes);
        // An empty ExportTraceServiceResponse is zero bytes on the wire.
        Box::pin(async { Ok(tonic::Response::new(Vec::new())) })
    }
}

impl<B> Service<http::Request<B>> for SinkSvc
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let me = self.clone();
        Box::pin(async move { Ok(Grpc::new(RawCodec).unary(Export(me), req).await) })
    }
}

pub struct Sink {
    pub addr: SocketAddr,
    pub dump: PathBuf,
    got: Arc<Mutex<Vec<Vec<u8>>>>,
    _rt: tokio::runtime::Runtime,
}

impl Sink {
    pub fn start(dump: &Path) -> Sink {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let svc = SinkSvc {
            got: got.clone(),
            dump: Arc::new(Mutex::new(File::create(dump).unwrap())),
        };
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        rt.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(TcpIncoming::from(listener))
                .await
                .unwrap();
        });
        Sink {
            addr,
            dump: dump.to_owned(),
            got,
            _rt: rt,
        }
    }

    /// Every span received so far, decoded.
    pub fn spans(&self) -> Vec<Span> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| {
                ExportTraceServiceRequest::decode(&b[..])
                    .expect("a valid request")
                    .resource_spans
            })
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
            .collect()
    }

    pub fn span(&self, span_id: &[u8; 8]) -> Option<Span> {
        self.spans().into_iter().find(|s| s.span_id == span_id)
    }
}

// ---------------------------------------------------------------------------------------------
// Spans.

pub fn kv(key: &str, v: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
    }
}

pub fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a Value> {
    s.attributes
        .iter()
        .find(|a| a.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()
}

pub fn attr_i(s: &Span, key: &str) -> Option<i64> {
    match attr(s, key)? {
        Value::IntValue(i) => Some(*i),
        _ => None,
    }
}

pub fn attr_f(s: &Span, key: &str) -> Option<f64> {
    match attr(s, key)? {
        Value::DoubleValue(d) => Some(*d),
        _ => None,
    }
}

pub fn ids(n: u64) -> ([u8; 16], [u8; 8]) {
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&(now_ns() ^ 0x5a5a_5a5a).to_be_bytes());
    t[8..].copy_from_slice(&n.to_be_bytes());
    let mut s = [0u8; 8];
    s.copy_from_slice(&(n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1).to_be_bytes());
    (t, s)
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A connection span as the game server emits it, from `local`'s side.
pub fn conn_span(
    name: &str,
    n: u64,
    start: u64,
    end: u64,
    local: SocketAddr,
    peer: SocketAddr,
    failed: bool,
) -> Span {
    let (trace_id, span_id) = ids(n);
    Span {
        trace_id: trace_id.to_vec(),
        span_id: span_id.to_vec(),
        name: name.into(),
        kind: 2,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes: vec![
            kv(
                "network.peer.address",
                Value::StringValue(peer.ip().to_string()),
            ),
            kv("network.peer.port", Value::IntValue(i64::from(peer.port()))),
            kv(
                "network.local.address",
                Value::StringValue(local.ip().to_string()),
            ),
            kv(
                "network.local.port",
                Value::IntValue(i64::from(local.port())),
            ),
            kv("network.transport", Value::StringValue("tcp".into())),
            kv("session.id", Value::StringValue(format!("s{n}"))),
        ],
        status: failed.then(|| Status {
            code: StatusCode::Error as i32,
            message: "connection reset".into(),
        }),
        ..Default::default()
    }
}

/// A pool task span that ran on thread `tid`.
pub fn task_span(n: u64, start: u64, end: u64, tid: u32, pid: u32, kind: &str) -> Span {
    let (trace_id, span_id) = ids(n);
    Span {
        trace_id: trace_id.to_vec(),
        span_id: span_id.to_vec(),
        name: "pool.task".into(),
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes: vec![
            kv("thread.id", Value::IntValue(i64::from(tid))),
            kv("thread.name", Value::StringValue("victim".into())),
            kv("process.pid", Value::IntValue(i64::from(pid))),
            kv("task.kind", Value::StringValue(kind.into())),
            kv("pool.name", Value::StringValue("test".into())),
            kv("pool.queue_wait_ms", Value::DoubleValue(0.1)),
            kv("task.outcome", Value::StringValue("ok".into())),
        ],
        ..Default::default()
    }
}

pub fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv(
                        "service.name",
                        Value::StringValue("correlation-test".into()),
                    ),
                    kv(
                        "process.pid",
                        Value::IntValue(i64::from(std::process::id())),
                    ),
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

/// Exports over OTLP/gRPC with the generated client.
pub fn send_grpc(addr: SocketAddr, req: ExportTraceServiceRequest) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = TraceServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connect to the agent's OTLP/gRPC");
        c.export(req).await.expect("export accepted");
    });
}

/// Exports over OTLP/HTTP (protobuf); returns the HTTP status.
pub fn send_http(addr: SocketAddr, req: &ExportTraceServiceRequest) -> u16 {
    let body = req.encode_to_vec();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .expect("connect to the agent's OTLP/HTTP");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "POST /v1/traces HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).unwrap();
    s.write_all(&body).unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Resets on loopback.

/// A listener on a port outside the kernel's ephemeral range, so the agent sees it as the
/// connection's service side (both the server's and the client's sockets name it).
pub fn service_listener() -> TcpListener {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let low: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
    (1024..low)
        .rev()
        .find_map(|p| TcpListener::bind(("127.0.0.1", p)).ok())
        .expect("a free port below the ephemeral range")
}

/// One connection that the server aborts with SO_LINGER 0 (an RST sent by the server, received
/// by the client). Returns (server side, client side, time just before the close, just after).
pub fn aborted_connection(listener: &TcpListener) -> (SocketAddr, SocketAddr, u64, u64) {
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"hello").unwrap();
    let mut buf = [0u8; 5];
    server.read_exact(&mut buf).unwrap();
    let (srv, cli) = (server.local_addr().unwrap(), server.peer_addr().unwrap());
    SockRef::from(&server)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    let before = now_ns();
    drop(server);
    let after = now_ns();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let err = client.read(&mut buf).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    (srv, cli, before, after)
}

// ---------------------------------------------------------------------------------------------
// The independent decoder.

pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("KS_PYTHON") {
        return p.into();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/python3")
}

/// Runs correlation_decode.py over the dump; panics with its output if a check fails.
pub fn python_decode(dump: &Path, checks: &[String]) -> String {
    let py = python();
    assert!(
        py.exists(),
        "{} missing: run `cargo xtask setup` (it builds the venv from xtask/python-requirements.txt)",
        py.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/correlation_decode.py");
    let out = Command::new(&py)
        .arg(script)
        .arg(dump)
        .args(checks)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python decoder failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
