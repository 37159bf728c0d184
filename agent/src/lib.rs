//! kernelsight agent. The data path reads top to bottom:
//! `probes` (kernel → agent) → `attribution` (pid → cgroup/pod) → `export` (Prometheus, HTTP).
pub mod attribution;
pub mod config;
pub mod correlator;
pub mod detect;
pub mod export;
pub mod probes;
pub mod receiver;
