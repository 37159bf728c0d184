//! kernelsight agent. The data path reads top to bottom:
//! `probes` (kernel → agent) → `export` (Prometheus, HTTP).
pub mod config;
pub mod export;
pub mod probes;
