//! Logging (`tracing` + RUST_LOG) and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set,
//! OTLP span export over HTTP (`http/protobuf` by default, `http/json` if
//! `OTEL_EXPORTER_OTLP_PROTOCOL` says so). Without the variable nothing is exported.

use std::io::IsTerminal as _;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// Keeps the exporter alive; `shutdown` flushes buffered spans.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes queued spans, giving up after `timeout`: an OTLP endpoint that vanished must not
    /// hold the process past its shutdown grace (the spans still queued are lost, and said so).
    pub fn shutdown(self, timeout: std::time::Duration) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown_with_timeout(timeout)
        {
            eprintln!("otlp shutdown: spans still queued are dropped: {e}");
        }
    }

    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

fn otlp_protocol() -> anyhow::Result<Protocol> {
    let p = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|_| "http/protobuf".into());
    match p.as_str() {
        "http/protobuf" => Ok(Protocol::HttpBinary),
        "http/json" => Ok(Protocol::HttpJson),
        other => anyhow::bail!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={other} is not supported (use http/protobuf or http/json)"
        ),
    }
}

/// Logs to stderr in `format` (text is coloured only on a terminal, and without NO_COLOR: a
/// log collector would store the escape sequences), plus span export as above.
pub fn init(service_name: &'static str, format: LogFormat) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .boxed(),
        LogFormat::Json => fmt.json().boxed(),
    }
    .with_filter(filter);

    let endpoint_set = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
    if !endpoint_set {
        tracing_subscriber::registry().with(fmt).init();
        return Ok(Telemetry { provider: None });
    }

    // The exporter reads the endpoint from the standard env vars and appends /v1/traces.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(otlp_protocol()?)
        .build()?;
    let resource = Resource::builder()
        .with_service_name(service_name)
        .with_attribute(KeyValue::new("process.pid", std::process::id() as i64))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer(service_name);
    // Spans go to OTLP at info and above regardless of RUST_LOG, so the agent always
    // sees connection and task spans even when the console log is quiet.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        // The layer's own `thread.id` is a Rust thread counter; ours (the Linux tid the kernel
        // reports) is set on the spans that need it and must not be shadowed.
        .with_threads(false)
        .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    tracing_subscriber::registry().with(fmt).with(otel).init();
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// Linux thread id, the key the kernel agent uses for run-queue delay.
pub fn gettid() -> i64 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as i64 }
}
