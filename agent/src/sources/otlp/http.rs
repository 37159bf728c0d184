//! OTLP/HTTP: `POST /v1/traces` with `application/x-protobuf` or `application/json`, plain or
//! `Content-Encoding: gzip`.
use std::{io::Read as _, sync::Arc};

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prometheus::IntCounterVec;
use prost::Message as _;

use crate::shared::span::SpanIntake;

#[derive(Clone)]
struct St {
    intake: Arc<dyn SpanIntake>,
    /// Requests that could not be decoded, by transport.
    rejected: IntCounterVec,
    max: usize,
}

pub fn router(intake: Arc<dyn SpanIntake>, rejected: IntCounterVec, max_bytes: usize) -> Router {
    Router::new()
        .route("/v1/traces", post(traces))
        .layer(DefaultBodyLimit::max(max_bytes))
        .with_state(St {
            intake,
            rejected,
            max: max_bytes,
        })
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    intake: Arc<dyn SpanIntake>,
    rejected: IntCounterVec,
    max_bytes: usize,
) -> anyhow::Result<()> {
    axum::serve(listener, router(intake, rejected, max_bytes)).await?;
    Ok(())
}

fn bad(status: StatusCode, msg: String) -> Response {
    (status, msg).into_response()
}

async fn traces(State(st): State<St>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |h| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase()
    };
    let ctype = header(header::CONTENT_TYPE);
    let json = ctype.starts_with("application/json");
    if !json && !ctype.starts_with("application/x-protobuf") && !ctype.is_empty() {
        return bad(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("unsupported content type {ctype:?}"),
        );
    }
    let body: Vec<u8> = match header(header::CONTENT_ENCODING).as_str() {
        "" | "identity" => body.to_vec(),
        "gzip" => {
            // Bounded like the compressed body: a small bomb cannot inflate past the limit.
            let mut out = Vec::new();
            let mut dec = flate2::read::GzDecoder::new(&body[..]).take(st.max as u64 + 1);
            if let Err(e) = dec.read_to_end(&mut out) {
                return reject(&st, format!("bad gzip body: {e}"));
            }
            if out.len() > st.max {
                return bad(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request inflates past {} bytes", st.max),
                );
            }
            out
        }
        other => {
            return bad(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("unsupported content encoding {other:?}"),
            );
        }
    };
    let req = if json {
        serde_json::from_slice::<ExportTraceServiceRequest>(&body).map_err(|e| e.to_string())
    } else {
        ExportTraceServiceRequest::decode(&body[..]).map_err(|e| e.to_string())
    };
    let req = match req {
        Ok(r) => r,
        Err(e) => return reject(&st, format!("cannot decode the export request: {e}")),
    };
    st.intake.submit(req, "http");
    if json {
        ([(header::CONTENT_TYPE, "application/json")], "{}").into_response()
    } else {
        let resp = ExportTraceServiceResponse {
            partial_success: None,
        }
        .encode_to_vec();
        ([(header::CONTENT_TYPE, "application/x-protobuf")], resp).into_response()
    }
}

fn reject(st: &St, msg: String) -> Response {
    st.rejected.with_label_values(&["http"]).inc();
    bad(StatusCode::BAD_REQUEST, msg)
}
