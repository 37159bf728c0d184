//! Where the agent's output goes: Prometheus metrics, OTLP forwarding, the incident board and the
//! page's timeline. Each hands out a read handle for the HTTP routes.
pub mod board;
pub mod forward;
pub mod prometheus;
pub mod timeline;
