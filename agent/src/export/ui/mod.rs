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
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use agent_common::{COUNTER_MAX, Counter};
use anyhow::{Context as _, bail};
use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::Mutex as AsyncMutex,
};

use super::{
    http::AppState,
    incidents::ListQuery,
    metrics::Metrics,
    timeline::{PoolDelta, RunqDelta, Sample, Timeline, parse_pool_metrics, quantile_us},
};
use crate::{
    correlator::{
        Correlation,
        metrics::CorrelationMetrics,
        netkey::{Endpoint, EphemeralPorts},
    },
    probes::Probes,
};

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");
const FAVICON_SVG: &str = include_str!("favicon.svg");

/// Only what the agent serves: no CDN, no inline script, no outside connections.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
                   frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Options of the page (flattened into the agent's command line).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct UiArgs {
    /// Link each trace on the incident page to the trace backend: `{trace_id}` (and
    /// `{span_id}`) are replaced, e.g. 'http://localhost:16686/trace/{trace_id}' for Jaeger.
    #[arg(long, env = "KERNELSIGHT_TRACE_URL_TEMPLATE")]
    pub trace_url_template: Option<String>,

    /// The game server's Prometheus endpoint (http://host:port/path), scraped once a second for
    /// the timeline's task arrivals and queue depth (`pool_submitted_total`, `pool_queue_depth`).
    #[arg(long, env = "KERNELSIGHT_POOL_METRICS_URL")]
    pub pool_metrics_url: Option<String>,

    /// Seconds of history the timeline keeps (one sample per second).
    #[arg(long, env = "KERNELSIGHT_TIMELINE_SECONDS", default_value_t = 900)]
    pub timeline_seconds: usize,
}

impl UiArgs {
    /// Refuses a template that is not an http(s) URL with `{trace_id}` in it (it becomes a link
    /// on the page).
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(t) = &self.trace_url_template
            && (!(t.starts_with("http://") || t.starts_with("https://"))
                || !t.contains("{trace_id}"))
        {
            bail!("--trace-url-template must be an http(s) URL containing {{trace_id}}, got {t:?}");
        }
        if let Some(u) = &self.pool_metrics_url {
            HttpUrl::parse(u).with_context(|| format!("--pool-metrics-url {u:?}"))?;
        }
        Ok(())
    }
}

/// A plain-HTTP URL (the scrape stays on the node; no TLS client in the agent for this).
#[derive(Clone, Debug, PartialEq, Eq)]
struct HttpUrl {
    host_port: String,
    path: String,
}

impl HttpUrl {
    fn parse(u: &str) -> anyhow::Result<Self> {
        let rest = u
            .strip_prefix("http://")
            .context("only http:// URLs are supported")?;
        let (host_port, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/metrics"),
        };
        if host_port.is_empty() {
            bail!("no host");
        }
        let host_port = if host_port
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !host_port.ends_with(']')
        {
            host_port.to_owned()
        } else {
            format!("{host_port}:80")
        };
        Ok(Self {
            host_port,
            path: path.to_owned(),
        })
    }
}

/// Where each input of the page stands, for /api/status and the page's banners.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SourceState {
    /// The last second a kernel event of any kind arrived.
    pub last_kernel_event_unix_s: Option<u64>,
    pub last_span_unix_s: Option<u64>,
    pub spans_total: u64,
    pub watched_processes: i64,
    pub pool_metrics_ok: Option<bool>,
    pub pool_metrics_error: Option<String>,
    pub probes_error: Option<String>,
    /// Per kernel feature: loaded or not, and why (for the page's probe chips).
    pub probe_status: Vec<crate::probes::ProbeStatus>,
}

pub struct Ui {
    pub timeline: Arc<Timeline>,
    args: UiArgs,
    started: Instant,
    otlp: Option<(SocketAddr, SocketAddr)>,
    forwarding: bool,
    sources: Mutex<SourceState>,
}

fn now_unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Ui {
    pub fn new(args: &UiArgs, correlation: Option<&Correlation>, forwarding: bool) -> Arc<Self> {
        Arc::new(Self {
            timeline: Arc::new(Timeline::new(
                args.timeline_seconds,
                EphemeralPorts::from_sysctl(),
            )),
            args: args.clone(),
            started: Instant::now(),
            otlp: correlation.map(|c| (c.grpc_addr, c.http_addr)),
            forwarding,
            sources: Mutex::default(),
        })
    }

    fn sources(&self) -> SourceState {
        self.sources.lock().expect("ui lock").clone()
    }
}

/// Builds the page's state and starts its one-second sampler.
pub fn start(
    args: &UiArgs,
    probes: Option<Arc<AsyncMutex<Probes>>>,
    correlation: Option<&Correlation>,
    forwarding: bool,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Arc<Ui>> {
    args.validate()?;
    let ui = Ui::new(args, correlation, forwarding);
    let spans = correlation.map(|c| c.intake.metrics().clone());
    tokio::spawn(sampler(ui.clone(), probes, spans, metrics));
    Ok(ui)
}

async fn sampler(
    ui: Arc<Ui>,
    probes: Option<Arc<AsyncMutex<Probes>>>,
    spans: Option<CorrelationMetrics>,
    metrics: Arc<Metrics>,
) {
    let pool_url = ui
        .args
        .pool_metrics_url
        .as_deref()
        .and_then(|u| HttpUrl::parse(u).ok());
    let mut runq = RunqDelta::default();
    let mut pools = PoolDelta::default();
    let mut last_counters: Option<[u64; COUNTER_MAX as usize]> = None;
    let mut last_spans: Option<(u64, u64)> = None;
    // Tick just after each wall-clock second, so a sample covers one second of events.
    let into_second = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let first = tokio::time::Instant::now()
        + Duration::from_nanos(u64::from(1_000_000_000 - into_second) + 5_000_000);
    let mut tick = tokio::time::interval_at(first, Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let t = now_unix_s().saturating_sub(1);
        let mut sample = Sample {
            t,
            ..Default::default()
        };
        let mut probes_error = None;
        let mut probe_status = Vec::new();
        if let Some(p) = &probes {
            let p = p.lock().await;
            probe_status = p.status().to_vec();
            match p.runq_histograms() {
                Ok(h) => {
                    let point = runq.step(h);
                    sample.runq = (point.processes > 0).then_some(point);
                }
                Err(e) => probes_error = Some(format!("reading run-queue histograms: {e}")),
            }
            match p.counters() {
                Ok(now) => {
                    if let Some(last) = last_counters {
                        let d = |c: Counter| now[c as usize].saturating_sub(last[c as usize]);
                        sample.kernel_lost = d(Counter::TcpEventsLost) + d(Counter::RunqEventsLost);
                    }
                    last_counters = Some(now);
                }
                Err(e) => probes_error = Some(format!("reading kernel counters: {e}")),
            }
        }
        if let Some(m) = &spans {
            let received: u64 = ["grpc", "http"]
                .iter()
                .map(|t| m.spans_received.with_label_values(&[t]).get())
                .sum();
            let joined: u64 = ["runq", "tcp"]
                .iter()
                .map(|j| m.spans_joined.with_label_values(&[j]).get())
                .sum();
            let (r0, j0) = last_spans.unwrap_or((received, joined));
            sample.spans = Some(received.saturating_sub(r0));
            sample.spans_enriched = joined.saturating_sub(j0);
            last_spans = Some((received, joined));
        }
        let mut pool_result = None;
        if let Some(url) = &pool_url {
            pool_result = Some(match scrape(url).await {
                Ok(text) => {
                    sample.pools = Some(pools.step(parse_pool_metrics(&text)));
                    Ok(())
                }
                Err(e) => Err(format!("{e:#}")),
            });
        }
        let had_kernel = ui.timeline.events_this_second() > 0
            || sample.runq.as_ref().is_some_and(|r| r.count > 0);
        {
            let mut s = ui.sources.lock().expect("ui lock");
            if had_kernel {
                s.last_kernel_event_unix_s = Some(t);
            }
            if sample.spans.unwrap_or(0) > 0 {
                s.last_span_unix_s = Some(t);
            }
            s.spans_total = last_spans.map_or(0, |(r, _)| r);
            s.watched_processes = metrics.runq_watched.get();
            s.probes_error = probes_error;
            s.probe_status = probe_status;
            match pool_result {
                Some(Ok(())) => {
                    s.pool_metrics_ok = Some(true);
                    s.pool_metrics_error = None;
                }
                Some(Err(e)) => {
                    s.pool_metrics_ok = Some(false);
                    s.pool_metrics_error = Some(e);
                }
                None => {}
            }
        }
        ui.timeline.close_second(sample);
    }
}

/// One GET of a small Prometheus exposition (HTTP/1.0, so the body ends at EOF).
async fn scrape(url: &HttpUrl) -> anyhow::Result<String> {
    const MAX: u64 = 8 << 20;
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(&url.host_port)
            .await
            .with_context(|| format!("connecting to {}", url.host_port))?;
        let req = format!(
            "GET {} HTTP/1.0\r\nHost: {}\r\nAccept: text/plain\r\n\r\n",
            url.path, url.host_port
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        (&mut s).take(MAX).read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header")?;
        let status = head.split_whitespace().nth(1).unwrap_or("");
        if status != "200" {
            bail!("HTTP {status} from {}{}", url.host_port, url.path);
        }
        Ok(body.to_owned())
    };
    tokio::time::timeout(Duration::from_millis(800), fut)
        .await
        .context("timed out after 800 ms")?
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
    let src = ui.map(|u| u.sources()).unwrap_or_default();
    let now = now_unix_s();
    let ago = |t: Option<u64>| t.map(|t| now.saturating_sub(t + 1));
    let (open, total) = match &st.incidents {
        Some(b) => {
            let b = b.lock().expect("board lock");
            (
                b.incidents()
                    .filter(|i| i.state == crate::detect::incident::IncidentState::Open)
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
            "loaded": st.probes.is_some(),
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
            "pool_metrics_url": ui.and_then(|u| u.args.pool_metrics_url.clone()),
            "ok": src.pool_metrics_ok,
            "error": src.pool_metrics_error,
        },
        "incidents": { "open": open, "kept": total },
        "trace_url_template": ui.and_then(|u| u.args.trace_url_template.clone()),
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
    point: &'a super::timeline::RunqPoint,
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
                    p50_us: quantile_us(&r.slots, 0.5),
                    p90_us: quantile_us(&r.slots, 0.9),
                    p99_us: quantile_us(&r.slots, 0.99),
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
    let affected: Vec<&super::incidents::SpanSummary> = inc
        .links
        .iter()
        .filter_map(|l| b.span(&l.trace_id, &l.span_id))
        .collect();
    v["affected_spans"] = serde_json::to_value(&affected).unwrap_or_default();
    v["links_missing"] = serde_json::json!(inc.links.len() - affected.len());
    // Until the incident closes its links are not gathered: show the enriched spans that touched
    // the subject inside the incident's window so far.
    let mut related = Vec::new();
    if inc.links.is_empty() {
        let listing = b.listing(&ListQuery {
            limit: Some(0),
            spans: Some(usize::MAX),
            ..Default::default()
        });
        let (lo, hi) = (
            inc.start_unix_ns.saturating_sub(2_000_000_000),
            inc.end_unix_ns + 2_000_000_000,
        );
        if let Some(spans) = listing["recent_enriched_spans"].as_array() {
            related = spans
                .iter()
                .filter(|s| {
                    let start = s["start_unix_ns"].as_u64().unwrap_or(0);
                    let end = s["end_unix_ns"].as_u64().unwrap_or(0);
                    start <= hi
                        && end >= lo
                        && s["attributes"]
                            .as_object()
                            .is_some_and(|a| touches(&inc.subject, a))
                })
                .take(50)
                .cloned()
                .collect();
        }
    }
    v["related_spans"] = serde_json::Value::Array(related);
    drop(b);
    if let Some(ui) = &st.ui {
        v["trace_url_template"] = serde_json::json!(ui.args.trace_url_template);
        v["forwarding"] = serde_json::json!(ui.forwarding);
    }
    no_store(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_templates_are_checked() {
        assert_eq!(
            HttpUrl::parse("http://127.0.0.1:7000/metrics").unwrap(),
            HttpUrl {
                host_port: "127.0.0.1:7000".into(),
                path: "/metrics".into()
            }
        );
        assert_eq!(
            HttpUrl::parse("http://game").unwrap(),
            HttpUrl {
                host_port: "game:80".into(),
                path: "/metrics".into()
            }
        );
        assert!(HttpUrl::parse("https://x/metrics").is_err());
        let ok = UiArgs {
            trace_url_template: Some("http://localhost:16686/trace/{trace_id}".into()),
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        for bad in [
            "javascript:alert({trace_id})",
            "http://jaeger/trace/",
            "//x/{trace_id}",
        ] {
            assert!(
                UiArgs {
                    trace_url_template: Some(bad.into()),
                    ..Default::default()
                }
                .validate()
                .is_err(),
                "{bad}"
            );
        }
    }

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
            probes: None,
            incidents: None,
            ui: None,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, super::super::http::router(state)).await });
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
