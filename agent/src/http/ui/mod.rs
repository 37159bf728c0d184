//! The embedded default: one page, served by the agent on its HTTP listener, that shows what
//! happened as pictures: a live timeline (task arrivals and queue depth, run-queue latency,
//! resets and retransmits per endpoint, incident markers) and, for a clicked incident, why it
//! was raised and which spans it hurt, with links into the trace backend when one is set.
//!
//! Every asset is compiled in (`include_str!`) and served from here; the page's
//! Content-Security-Policy allows nothing else. The browser does all the drawing; it polls only
//! while its tab is visible, and asks only for the seconds it has not seen yet.
//!
//! Routes: `/` (the page), `/ui/*` (its script, style and icon), `/api/status`,
//! `/api/timeline?since=<unix s>&seconds=<n>`, `/api/incidents/{id}`.
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::{Deserialize, Serialize};

use super::AppState;
use crate::{
    shared::{incident::IncidentState, netkey::Endpoint, sample::RunqPoint, span::SpanSummary},
    sinks::timeline::Timeline,
};

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");
const FAVICON_SVG: &str = include_str!("favicon.svg");

/// Only what the agent serves: no CDN, no inline script, no outside connections.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
                   frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// What the page shows besides the sinks' data.
pub struct Page {
    pub timeline: Arc<Timeline>,
    /// Links each trace to the trace backend (`{trace_id}`, `{span_id}` replaced).
    pub trace_url_template: Option<String>,
    /// Where the task lane's pool metrics come from (shown on the page).
    pub pool_metrics_url: Option<String>,
    pub started: Instant,
    /// The OTLP receivers' (gRPC, HTTP) addresses, when correlation runs.
    pub otlp: Option<(SocketAddr, SocketAddr)>,
    pub forwarding: bool,
}

fn now_unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }),
        )
        .route(
            "/ui/favicon.svg",
            get(|| async { asset(FAVICON_SVG, "image/svg+xml") }),
        )
        .route(
            "/favicon.ico",
            get(|| async { asset(FAVICON_SVG, "image/svg+xml") }),
        )
        .route("/api/status", get(status))
        .route("/api/timeline", get(timeline))
        .route("/api/incidents/{id}", get(incident))
}

fn asset(body: &'static str, ctype: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

fn no_store<T: Serialize>(v: T) -> Response {
    let mut r = Json(v).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn status(State(st): State<Arc<AppState>>) -> Response {
    let ui = st.ui.as_ref();
    let src = ui.map(|u| u.timeline.sources()).unwrap_or_default();
    let now = now_unix_s();
    let ago = |t: Option<u64>| t.map(|t| now.saturating_sub(t + 1));
    let (open, total) = match &st.incidents {
        Some(b) => {
            let b = b.lock().expect("board lock");
            (
                b.incidents()
                    .filter(|i| i.state == IncidentState::Open)
                    .count(),
                b.incidents().count(),
            )
        }
        None => (0, 0),
    };
    no_store(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "now_unix_s": now,
        "uptime_s": ui.map(|u| u.started.elapsed().as_secs()),
        "probes": {
            "loaded": st.probes_loaded,
            "error": src.probes_error,
            "features": src.probe_status,
            "watched_processes": src.watched_processes,
            "last_event_s_ago": ago(src.last_kernel_event_unix_s),
        },
        "spans": {
            "correlation": st.incidents.is_some(),
            "received_total": src.spans_total,
            "last_s_ago": ago(src.last_span_unix_s),
            "otlp_grpc": ui.and_then(|u| u.otlp).map(|(g, _)| g.to_string()),
            "otlp_http": ui.and_then(|u| u.otlp).map(|(_, h)| h.to_string()),
        },
        "tasks": {
            "pool_metrics_url": ui.and_then(|u| u.pool_metrics_url.clone()),
            "ok": src.pool_metrics_ok,
            "error": src.pool_metrics_error,
        },
        "incidents": { "open": open, "kept": total },
        "trace_url_template": ui.and_then(|u| u.trace_url_template.clone()),
        "forwarding": ui.is_some_and(|u| u.forwarding),
        "timeline": {
            "seconds": ui.map(|u| u.timeline.capacity()),
            "samples": ui.map(|u| u.timeline.len()),
            "runq_slot_unit": "slot i counts waits in [2^i, 2^(i+1)) µs",
        },
    }))
}

#[derive(Debug, Default, Deserialize)]
pub struct TimelineQuery {
    /// Only seconds after this one (Unix seconds): what the page has not seen yet.
    pub since: Option<u64>,
    /// At most this many of the latest seconds (default: all kept).
    pub seconds: Option<usize>,
}

#[derive(Serialize)]
struct RunqOut<'a> {
    #[serde(flatten)]
    point: &'a RunqPoint,
    p50_us: Option<f64>,
    p90_us: Option<f64>,
    p99_us: Option<f64>,
}

async fn timeline(State(st): State<Arc<AppState>>, Query(q): Query<TimelineQuery>) -> Response {
    let Some(ui) = &st.ui else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the timeline is not running\n",
        )
            .into_response();
    };
    let samples = ui
        .timeline
        .since(q.since.unwrap_or(0), q.seconds.unwrap_or(usize::MAX));
    let samples: Vec<serde_json::Value> = samples
        .iter()
        .map(|s| {
            let mut v = serde_json::to_value(s).unwrap_or_default();
            if let Some(r) = &s.runq {
                v["runq"] = serde_json::to_value(RunqOut {
                    point: r,
                    p50_us: r.quantile_us(0.5),
                    p90_us: r.quantile_us(0.9),
                    p99_us: r.quantile_us(0.99),
                })
                .unwrap_or_default();
            }
            v
        })
        .collect();
    // Incident markers: everything the board keeps that overlaps the timeline.
    let horizon_ns = now_unix_s().saturating_sub(ui.timeline.capacity() as u64) * 1_000_000_000;
    let incidents: Vec<serde_json::Value> = match &st.incidents {
        Some(b) => b
            .lock()
            .expect("board lock")
            .incidents()
            .filter(|i| i.end_unix_ns >= horizon_ns)
            .map(|i| {
                serde_json::json!({
                    "id": i.id, "class": i.class, "subject": i.subject, "state": i.state,
                    "start_unix_ns": i.start_unix_ns, "end_unix_ns": i.end_unix_ns, "summary": i.summary,
                    "observed": i.baseline.observed, "threshold": i.baseline.threshold,
                })
            })
            .collect(),
        None => Vec::new(),
    };
    no_store(
        serde_json::json!({ "now_unix_s": now_unix_s(), "samples": samples, "incidents": incidents }),
    )
}

/// Whether an enriched span touched an incident's subject (used before the incident closes and
/// its span links are final).
fn touches(subject: &str, attrs: &serde_json::Map<String, serde_json::Value>) -> bool {
    let s = |k: &str| {
        attrs.get(k).and_then(|v| {
            v.as_str()
                .map(str::to_owned)
                .or_else(|| v.as_i64().map(|i| i.to_string()))
        })
    };
    if let Some(ep) = subject.strip_prefix("ep:") {
        let ep = ep
            .rsplit_once(':')
            .and_then(|(a, p)| Endpoint::parse(a, p.parse().ok()?));
        let side = |a: &str, p: &str| Endpoint::parse(&s(a)?, s(p)?.parse().ok()?);
        return ep.is_some()
            && (side("network.peer.address", "network.peer.port") == ep
                || side("network.local.address", "network.local.port") == ep);
    }
    if let Some(pool) = subject.strip_prefix("pool:") {
        return s("pool.name").as_deref() == Some(pool);
    }
    false
}

async fn incident(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let Some(board) = &st.incidents else {
        return (StatusCode::NOT_FOUND, "correlation is not running\n").into_response();
    };
    let b = board.lock().expect("board lock");
    let Some(inc) = b.incidents().find(|i| i.id == id) else {
        return (
            StatusCode::NOT_FOUND,
            format!("no incident {id} (the agent keeps the last ones only)\n"),
        )
            .into_response();
    };
    let mut v = serde_json::to_value(inc).unwrap_or_default();
    let affected: Vec<SpanSummary> = inc
        .links
        .iter()
        .filter_map(|l| b.span(&l.trace_id, &l.span_id))
        .collect();
    v["affected_spans"] = serde_json::to_value(&affected).unwrap_or_default();
    v["links_missing"] = serde_json::json!(inc.links.len() - affected.len());
    // Until the incident closes its links are not gathered: show the enriched spans that touched
    // the subject inside the incident's window so far.
    let mut related: Vec<SpanSummary> = Vec::new();
    if inc.links.is_empty() {
        let (lo, hi) = (
            inc.start_unix_ns.saturating_sub(2_000_000_000),
            inc.end_unix_ns + 2_000_000_000,
        );
        related = b
            .recent_spans()
            .filter(|s| {
                s.start_unix_ns <= hi && s.end_unix_ns >= lo && touches(&inc.subject, &s.attributes)
            })
            .take(50)
            .collect();
    }
    v["related_spans"] = serde_json::to_value(&related).unwrap_or_default();
    drop(b);
    if let Some(ui) = &st.ui {
        v["trace_url_template"] = serde_json::json!(ui.trace_url_template);
        v["forwarding"] = serde_json::json!(ui.forwarding);
    }
    no_store(v)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::sinks::prometheus::Metrics;

    #[test]
    fn spans_touch_an_endpoint_from_either_side() {
        let attrs = |v: serde_json::Value| v.as_object().unwrap().clone();
        let a = attrs(
            serde_json::json!({"network.peer.address": "::ffff:127.0.0.1", "network.peer.port": 1023, "network.local.address": "127.0.0.1", "network.local.port": 40000}),
        );
        assert!(touches("ep:127.0.0.1:1023", &a));
        assert!(touches("ep:127.0.0.1:40000", &a));
        assert!(!touches("ep:127.0.0.1:1024", &a));
        assert!(touches(
            "pool:game",
            &attrs(serde_json::json!({"pool.name": "game"}))
        ));
        assert!(!touches("pid:1", &a));
    }

    async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.unwrap();
        let (head, body) = buf.split_once("\r\n\r\n").unwrap();
        (
            head.split_whitespace().nth(1).unwrap().parse().unwrap(),
            head.to_ascii_lowercase(),
            body.to_owned(),
        )
    }

    /// Without probes, correlation or the timeline (states the binary does not reach today, but
    /// the listener supports), every route still answers and says what is missing.
    #[tokio::test]
    async fn routes_answer_and_say_what_is_missing() {
        let state = Arc::new(AppState {
            metrics: Arc::new(Metrics::new()),
            probes_loaded: false,
            incidents: None,
            ui: None,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, super::super::router(state)).await });
        let (code, head, body) = get(addr, "/").await;
        assert_eq!(code, 200);
        assert!(
            head.contains("content-security-policy: default-src 'self'")
                && head.contains("text/html"),
            "{head}"
        );
        assert!(body.contains("/ui/app.js"));
        for (path, ctype) in [
            ("/ui/app.js", "text/javascript"),
            ("/ui/app.css", "text/css"),
            ("/ui/favicon.svg", "image/svg+xml"),
        ] {
            let (code, head, _) = get(addr, path).await;
            assert!(code == 200 && head.contains(ctype), "{path}: {head}");
        }
        let (code, _, body) = get(addr, "/api/status").await;
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["probes"]["loaded"], false);
        assert_eq!(v["spans"]["correlation"], false);
        assert_eq!(get(addr, "/api/timeline").await.0, 503);
        assert_eq!(get(addr, "/api/incidents/connection_fault-1").await.0, 404);
    }

    /// The page loads nothing from elsewhere: every script, style, image and fetch names a
    /// path on the agent itself.
    #[test]
    fn assets_reference_only_the_agent() {
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("app.js", APP_JS),
            ("app.css", APP_CSS),
        ] {
            for needle in [
                "src=\"http",
                "href=\"http",
                "src=\"//",
                "href=\"//",
                "@import",
                "url(http",
                "cdn",
            ] {
                assert!(
                    !text.to_ascii_lowercase().contains(needle),
                    "{name} contains {needle}"
                );
            }
        }
        assert!(
            !INDEX_HTML.contains("<script>"),
            "no inline script (the CSP forbids it)"
        );
        assert!(
            INDEX_HTML.contains("src=\"/ui/app.js\"")
                && INDEX_HTML.contains("href=\"/ui/app.css\"")
        );
    }
}
