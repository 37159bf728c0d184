//! Agent → the outside world: Prometheus metrics and the HTTP listener.
pub mod http;
pub mod incidents;
pub mod metrics;
pub mod otlp;
pub mod timeline;
pub mod ui;
