//! kernelsight's game server: the workload the kernel agent watches.
//! See README.md (layout, flags, telemetry, persistence) and PROTOCOL.md (the wire protocol).

pub mod background;
pub mod batch;
pub mod bots;
pub mod cache;
pub mod config;
pub mod directory;
pub mod gateway;
pub mod metrics;
pub mod outbox;
pub mod persistence;
pub mod protocol;
pub mod redis_client;
pub mod room;
pub mod server;
pub mod session;
pub mod telemetry;
pub mod token;
