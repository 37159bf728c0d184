//! OTLP trace receivers: gRPC (`TraceService/Export`) and HTTP (`POST /v1/traces`, protobuf or
//! JSON, optionally gzip). Both decode, hand the request to the correlator's [`Intake`] without
//! waiting, and answer success: when the agent cannot keep up, spans go on unenriched (and
//! counted), never back to the sender as an error.
pub mod grpc;
pub mod http;

use std::net::SocketAddr;

use anyhow::Context as _;

use crate::correlator::{CorrelationArgs, Intake};

/// Binds both listeners (so a taken port is reported at startup) and serves them.
pub async fn start(
    args: &CorrelationArgs,
    intake: Intake,
) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let grpc = tokio::net::TcpListener::bind(args.otlp_grpc_addr)
        .await
        .with_context(|| format!("cannot listen for OTLP/gRPC on {}", args.otlp_grpc_addr))?;
    let http = tokio::net::TcpListener::bind(args.otlp_http_addr)
        .await
        .with_context(|| format!("cannot listen for OTLP/HTTP on {}", args.otlp_http_addr))?;
    let (grpc_addr, http_addr) = (grpc.local_addr()?, http.local_addr()?);
    tracing::info!(grpc = %grpc_addr, http = %http_addr, "OTLP trace receivers listening");
    let max = args.otlp_max_request_bytes;
    let i = intake.clone();
    tokio::spawn(async move {
        if let Err(e) = grpc::serve(grpc, i, max).await {
            tracing::error!(error = %e, "OTLP/gRPC receiver stopped");
        }
    });
    tokio::spawn(async move {
        if let Err(e) = http::serve(http, intake, max).await {
            tracing::error!(error = %e, "OTLP/HTTP receiver stopped");
        }
    });
    Ok((grpc_addr, http_addr))
}
