//! The agent's OTLP/HTTP intake, end to end through its real axum router: content type
//! (protobuf, JSON, other), content encoding (identity, gzip, other), the gzip bomb bound, the
//! protobuf and JSON decoders, then what the correlator reads from each span. The answer must
//! be a clean 200/400/413/415, never a 5xx or a panic.
#![no_main]
use std::{
    io::Write as _,
    sync::{Arc, LazyLock, atomic::AtomicUsize, atomic::Ordering},
};

use agent::shared::span::{SpanFacts, SpanIntake, SpanRef, span_count};
use agent::sources::otlp::http::router;
use arbitrary::Arbitrary;
use axum::{body::Body, http::Request};
use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use tower::ServiceExt as _;

/// What the agent's real intake does with a request before queueing it: read every span's facts.
struct Reader(AtomicUsize);
impl SpanIntake for Reader {
    fn submit(&self, req: ExportTraceServiceRequest, _transport: &'static str) {
        let mut n = 0;
        for rs in &req.resource_spans {
            let resource = rs
                .resource
                .as_ref()
                .map(|r| &r.attributes[..])
                .unwrap_or(&[]);
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    let _ = SpanFacts::read(span, resource);
                    let _ = SpanRef::of(span);
                    n += 1;
                }
            }
        }
        assert_eq!(n, span_count(&req));
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Arbitrary, Debug)]
enum Ctype {
    None,
    Protobuf,
    Json,
    JsonCharset,
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Cenc {
    None,
    Identity,
    /// The body, gzip-compressed here (so the decoders see what a real client sends).
    Gzip,
    /// The body as is, labelled gzip.
    GzipLabelOnly,
    Raw(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    ctype: Ctype,
    cenc: Cenc,
    body: Vec<u8>,
}

/// The agent's default body limit is much larger; a small one lets the fuzzer reach the
/// "inflates past the limit" path.
const MAX: usize = 64 * 1024;

static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
});
static INTAKE: LazyLock<Arc<Reader>> = LazyLock::new(|| Arc::new(Reader(AtomicUsize::new(0))));
/// The agent's router, built once (cloning it per request is what axum does per connection).
static ROUTER: LazyLock<axum::Router> = LazyLock::new(|| {
    let intake: Arc<dyn SpanIntake> = INTAKE.clone();
    let rejected =
        prometheus::IntCounterVec::new(prometheus::Opts::new("rejected", "x"), &["transport"])
            .unwrap();
    router(intake, rejected, MAX)
});

fuzz_target!(|inp: Input| {
    let mut req = Request::post("/v1/traces");
    match &inp.ctype {
        Ctype::None => {}
        Ctype::Protobuf => req = req.header("content-type", "application/x-protobuf"),
        Ctype::Json => req = req.header("content-type", "application/json"),
        Ctype::JsonCharset => req = req.header("content-type", "Application/JSON; charset=utf-8"),
        Ctype::Raw(s) => req = req.header("content-type", s.as_str()),
    }
    let body = match &inp.cenc {
        Cenc::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&inp.body).unwrap();
            e.finish().unwrap()
        }
        _ => inp.body.clone(),
    };
    match &inp.cenc {
        Cenc::None => {}
        Cenc::Identity => req = req.header("content-encoding", "identity"),
        Cenc::Gzip | Cenc::GzipLabelOnly => req = req.header("content-encoding", "gzip"),
        Cenc::Raw(s) => req = req.header("content-encoding", s.as_str()),
    }
    // Header values the http crate refuses never reach the server either.
    let Ok(req) = req.body(Body::from(body)) else {
        return;
    };
    let status = RT
        .block_on(ROUTER.clone().oneshot(req))
        .unwrap()
        .status()
        .as_u16();
    assert!(
        matches!(status, 200 | 400 | 413 | 415),
        "status {status} for {:?}/{:?}",
        inp.ctype,
        inp.cenc
    );
});
