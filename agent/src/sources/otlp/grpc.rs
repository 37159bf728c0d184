//! OTLP/gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use tonic::{
    Request, Response, Status, codec::CompressionEncoding, transport::server::TcpIncoming,
};

use std::sync::Arc;

use crate::shared::span::SpanIntake;

struct Receiver {
    intake: Arc<dyn SpanIntake>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.intake.submit(req.into_inner(), "grpc");
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    intake: Arc<dyn SpanIntake>,
    max_bytes: usize,
) -> anyhow::Result<()> {
    let svc = TraceServiceServer::new(Receiver { intake })
        .max_decoding_message_size(max_bytes)
        .accept_compressed(CompressionEncoding::Gzip);
    tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_incoming(TcpIncoming::from(listener))
        .await?;
    Ok(())
}
