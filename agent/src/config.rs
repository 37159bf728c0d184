//! Command line and environment, and what each stage is told from them.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use clap::Parser;

use crate::{
    sinks::forward::ForwardConfig,
    sources::{
        kernel::{ProbeConfig, watch::Selectors},
        pool::HttpUrl,
    },
    transforms::{
        correlate::{CorrelateConfig, join::JoinConfig},
        detect::DetectConfig,
    },
};

#[derive(Debug, Parser)]
#[command(
    name = "kernelsight-agent",
    version,
    about = "Watches a game server from the kernel with eBPF and joins what it sees to the server's spans."
)]
pub struct Config {
    /// Address of the HTTP listener (/metrics, /healthz, /readyz).
    #[arg(long, env = "KERNELSIGHT_HTTP_ADDR", default_value = "127.0.0.1:9464")]
    pub http_addr: SocketAddr,

    /// Log lines on stderr as text (coloured only on a terminal) or as one JSON object per
    /// line, for a log pipeline. RUST_LOG sets the level (default info).
    #[arg(
        long,
        env = "KERNELSIGHT_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,

    /// Size of the TCP event ring buffer in bytes (power of two, ≥ 4096).
    #[arg(long, env = "KERNELSIGHT_TCP_RING_BYTES", default_value_t = 256 * 1024)]
    pub tcp_ring_bytes: u32,

    /// Size of the run-queue event ring buffer in bytes (power of two, ≥ 4096).
    #[arg(long, env = "KERNELSIGHT_RUNQ_RING_BYTES", default_value_t = 256 * 1024)]
    pub runq_ring_bytes: u32,

    /// Watch the run-queue latency of these processes (repeatable).
    #[arg(long = "pid", env = "KERNELSIGHT_PIDS", value_delimiter = ',')]
    pub pids: Vec<u32>,

    /// Watch processes with this command name, e.g. `game-server` (repeatable).
    #[arg(long = "comm", env = "KERNELSIGHT_COMMS", value_delimiter = ',')]
    pub comms: Vec<String>,

    /// Watch processes in this cgroup v2 subtree (absolute or under /sys/fs/cgroup; repeatable).
    #[arg(long = "cgroup", env = "KERNELSIGHT_CGROUPS", value_delimiter = ',')]
    pub cgroups: Vec<PathBuf>,

    /// Measure run-queue latency for every task on the node (costs more per context switch).
    #[arg(long, env = "KERNELSIGHT_WATCH_ALL")]
    pub watch_all: bool,

    /// Report each run-queue delay at or above this many microseconds as an event (below it,
    /// delays still count in the histograms and per-thread totals).
    #[arg(
        long,
        env = "KERNELSIGHT_RUNQ_EVENT_THRESHOLD_US",
        default_value_t = 50
    )]
    pub runq_event_threshold_us: u64,

    /// Capacity of the socket → owner table.
    #[arg(long, env = "KERNELSIGHT_SOCK_OWNER_ENTRIES", default_value_t = 65536)]
    pub sock_owner_entries: u32,

    /// tracefs mount point (default: /sys/kernel/tracing, then /sys/kernel/debug/tracing).
    #[arg(long, env = "KERNELSIGHT_TRACEFS")]
    pub tracefs: Option<PathBuf>,

    /// OTLP receivers, joins, detection and forwarding.
    #[command(flatten)]
    pub correlation: CorrelationArgs,

    /// The page at / (timeline, incidents, trace links).
    #[command(flatten)]
    pub ui: UiArgs,

    /// Pod identity from the Kubernetes API (a watch of this node's pods).
    #[command(flatten)]
    pub k8s: crate::transforms::pod::k8s::K8sArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// Installs the log subscriber: stderr, RUST_LOG (default info), in `--log-format`. Colour
    /// only when stderr is a terminal (and NO_COLOR is unset): a node's log collector would
    /// store the escape sequences.
    pub fn init_logs(&self) {
        use std::io::IsTerminal as _;
        let logs = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info".into()),
            )
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Text => logs
                .with_ansi(
                    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
                )
                .init(),
            LogFormat::Json => logs.json().init(),
        }
    }

    pub fn selectors(&self) -> Selectors {
        Selectors {
            pids: self.pids.clone(),
            comms: self.comms.clone(),
            cgroups: self.cgroups.clone(),
        }
    }

    pub fn probe_config(&self) -> ProbeConfig {
        ProbeConfig {
            tcp_ring_bytes: self.tcp_ring_bytes,
            runq_ring_bytes: self.runq_ring_bytes,
            runq_watch_all: self.watch_all,
            runq_event_threshold_ns: self.runq_event_threshold_us.saturating_mul(1000),
            sock_owner_entries: self.sock_owner_entries,
            tracefs: self.tracefs.clone(),
        }
    }
}

/// Command-line options of the correlation half (flattened into the agent's [`Config`]).
#[derive(Clone, Debug, clap::Args)]
pub struct CorrelationArgs {
    /// OTLP/gRPC trace receiver address.
    #[arg(
        long,
        env = "KERNELSIGHT_OTLP_GRPC_ADDR",
        default_value = "127.0.0.1:4317"
    )]
    pub otlp_grpc_addr: SocketAddr,

    /// OTLP/HTTP trace receiver address (POST /v1/traces, protobuf or JSON).
    #[arg(
        long,
        env = "KERNELSIGHT_OTLP_HTTP_ADDR",
        default_value = "127.0.0.1:4318"
    )]
    pub otlp_http_addr: SocketAddr,

    /// Forward spans (enriched, passed-through and incident spans) to this OTLP/gRPC endpoint,
    /// e.g. http://jaeger:4317. Without it the agent keeps the last incidents and enriched spans
    /// in memory for /incidents.
    #[arg(long, env = "KERNELSIGHT_OTLP_FORWARD")]
    pub otlp_forward: Option<String>,

    /// Spans the forwarder's retry queue holds before it drops the oldest.
    #[arg(long, env = "KERNELSIGHT_FORWARD_QUEUE_SPANS", default_value_t = 65536)]
    pub forward_queue_spans: usize,

    /// Heap bytes of spans (decoded size) the forwarder's retry queue holds before it drops
    /// the oldest.
    #[arg(long, env = "KERNELSIGHT_FORWARD_QUEUE_BYTES", default_value_t = 8 << 20)]
    pub forward_queue_bytes: usize,

    /// Spans held for joining at most (queued plus waiting); beyond it spans pass unenriched.
    #[arg(long, env = "KERNELSIGHT_SPAN_STORE_CAP", default_value_t = 65536)]
    pub span_store_cap: usize,

    /// Heap bytes of spans (decoded size, approximate) held for joining at most; beyond it
    /// spans pass unenriched. This, not the span count, bounds the store's memory.
    #[arg(long, env = "KERNELSIGHT_SPAN_STORE_BYTES", default_value_t = 8 << 20)]
    pub span_store_bytes: usize,

    /// How long after a span ends the agent waits for kernel evidence before joining (also the
    /// tail of a connection span's window).
    #[arg(long, env = "KERNELSIGHT_SPAN_WAIT_MS", default_value_t = 1000)]
    pub span_wait_ms: u64,

    /// Largest OTLP request accepted, in bytes.
    #[arg(long, env = "KERNELSIGHT_OTLP_MAX_REQUEST_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub otlp_max_request_bytes: usize,

    /// Re-measure the monotonic → Unix clock offset this often (seconds).
    #[arg(long, env = "KERNELSIGHT_CLOCK_RESYNC_SECS", default_value_t = 10)]
    pub clock_resync_secs: u64,

    /// Run-queue waits at least this long (µs) become span events on the task spans.
    #[arg(long, env = "KERNELSIGHT_SLOW_WAKEUP_US", default_value_t = 1000)]
    pub slow_wakeup_us: u64,

    /// Incidents kept for /incidents.
    #[arg(long, env = "KERNELSIGHT_INCIDENTS_KEEP", default_value_t = 200)]
    pub incidents_keep: usize,

    /// Enriched spans kept in memory for /incidents.
    #[arg(long, env = "KERNELSIGHT_ENRICHED_SPANS_KEEP", default_value_t = 1000)]
    pub enriched_spans_keep: usize,

    /// Span links per incident span (the rest are counted).
    #[arg(long, env = "KERNELSIGHT_INCIDENT_MAX_LINKS", default_value_t = 32)]
    pub incident_max_links: usize,

    /// connection_fault: fewest connections reset toward one endpoint in a second.
    #[arg(long, env = "KERNELSIGHT_FAULT_MIN_RESETS", default_value_t = 5.0)]
    pub fault_min_resets: f64,

    /// task_surge: fewest task arrivals per second in a pool.
    #[arg(long, env = "KERNELSIGHT_SURGE_MIN_RATE", default_value_t = 20.0)]
    pub surge_min_rate: f64,

    /// cpu_contention: least run-queue delay (ms per second) in a process.
    #[arg(long, env = "KERNELSIGHT_CONTENTION_MIN_MS", default_value_t = 50.0)]
    pub contention_min_ms: f64,

    /// Seconds of history (one-second buckets) before a task or CPU baseline is trusted and
    /// its series can raise an incident.
    #[arg(long, env = "KERNELSIGHT_DETECT_WARMUP_BUCKETS", default_value_t = 30)]
    pub detect_warmup_buckets: u64,
}

impl CorrelationArgs {
    pub fn join_config(&self) -> JoinConfig {
        JoinConfig {
            conn_tail_ns: self.span_wait_ms * 1_000_000,
            slow_wakeup_ns: self.slow_wakeup_us * 1_000,
            ..JoinConfig::default()
        }
    }

    pub fn correlate_config(&self) -> CorrelateConfig {
        CorrelateConfig {
            join: self.join_config(),
            detect: self.detect_config(),
            span_wait_ms: self.span_wait_ms,
            clock_resync: Duration::from_secs(self.clock_resync_secs.max(1)),
        }
    }

    /// `None` without `--otlp-forward`.
    pub fn forward_config(&self) -> Option<ForwardConfig> {
        self.otlp_forward.as_ref().map(|endpoint| ForwardConfig {
            endpoint: endpoint.clone(),
            queue_spans: self.forward_queue_spans,
            queue_bytes: self.forward_queue_bytes,
            timeout: Duration::from_secs(10),
            max_attempts: 10,
        })
    }

    pub fn detect_config(&self) -> DetectConfig {
        DetectConfig {
            // Joined spans reach the detector `span_wait` after they end; half a second more
            // covers the ring-buffer latency and the correlator's tick.
            settle_min_ns: (self.span_wait_ms + 500) * 1_000_000,
            max_links: self.incident_max_links,
            fault_min_resets: self.fault_min_resets,
            surge_min_rate: self.surge_min_rate,
            contention_min_ms: self.contention_min_ms,
            warmup_buckets: self.detect_warmup_buckets,
            ..DetectConfig::default()
        }
    }
}

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
        self.pool_url()?;
        Ok(())
    }

    /// The pool metrics URL, checked.
    pub fn pool_url(&self) -> anyhow::Result<Option<HttpUrl>> {
        self.pool_metrics_url
            .as_deref()
            .map(|u| HttpUrl::parse(u).with_context(|| format!("--pool-metrics-url {u:?}")))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_checked() {
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
}
