//! kernelsight agent. Data flows one way, and imports may only follow it (agent/README.md,
//! "Architecture", has the whole picture; `tests/architecture.rs` checks it):
//!
//! ```text
//! sources ──► transforms ──────────────────► sinks ◄── http
//!   kernel      attribution (pid → cgroup, pod)   prometheus, timeline
//!   otlp        correlate (joins) → detect        forward (OTLP), board (incidents)
//!   sampler ──────────────────────────────────►  timeline
//! ```
//!
//! Every stage imports only [`shared`] types (and its own parts); [`topology`] is the one place
//! that creates the channels, spawns the tasks and orders shutdown.
pub mod config;
pub mod http;
pub mod shared;
pub mod sinks;
pub mod sources;
pub mod topology;
pub mod transforms;
