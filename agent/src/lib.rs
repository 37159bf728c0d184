//! kernelsight agent. The data path, and the only direction imports may run (see README.md,
//! "Architecture"):
//!
//! ```text
//! sources ──► transforms ──► sinks ◄── http
//!   kernel (eBPF rings, watch set)   attribution (pid → cgroup, pod; one /proc cache)
//!   otlp (gRPC 4317, HTTP 4318)      correlate (clock, evidence windows, joins) → detect
//!   sampler (once a second)          sinks: prometheus, forward (OTLP), board, timeline
//! ```
//!
//! Every stage imports only [`shared`] types (and, inside a stage, its own parts); [`topology`]
//! is the one place that creates the channels, spawns the tasks and orders shutdown.
pub mod config;
pub mod http;
pub mod shared;
pub mod sinks;
pub mod sources;
pub mod topology;
pub mod transforms;
