//! OTLP trace receivers: gRPC (`TraceService/Export`) and HTTP (`POST /v1/traces`, protobuf or
//! JSON, optionally gzip). Both decode, hand the request to a [`SpanIntake`] without waiting, and
//! answer success: when the agent cannot keep up, spans go on unenriched (and counted), never
//! back to the sender as an error.
//!
//! [`SpanIntake`]: crate::shared::span::SpanIntake
pub mod grpc;
pub mod http;

use std::net::SocketAddr;

use anyhow::Context as _;
use tokio::net::TcpListener;

/// Both receivers' listeners, bound at start-up so that a taken port is reported at once.
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
}

impl Listeners {
    pub async fn bind(grpc: SocketAddr, http: SocketAddr) -> anyhow::Result<Self> {
        let grpc_l = TcpListener::bind(grpc)
            .await
            .with_context(|| format!("cannot listen for OTLP/gRPC on {grpc}"))?;
        let http_l = TcpListener::bind(http)
            .await
            .with_context(|| format!("cannot listen for OTLP/HTTP on {http}"))?;
        let l = Self {
            grpc: grpc_l,
            http: http_l,
        };
        let (g, h) = l.addrs()?;
        tracing::info!(grpc = %g, http = %h, "OTLP trace receivers listening");
        Ok(l)
    }

    /// (gRPC, HTTP) addresses as bound.
    pub fn addrs(&self) -> std::io::Result<(SocketAddr, SocketAddr)> {
        Ok((self.grpc.local_addr()?, self.http.local_addr()?))
    }
}
