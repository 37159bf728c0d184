//! The vocabulary every stage shares: what flows between them and the handles they are given.
//! Nothing here imports a stage.
pub mod clock;
pub mod culprit;
pub mod event;
pub mod evidence;
pub mod incident;
pub mod netkey;
pub mod origin;
pub mod sample;
pub mod span;
pub mod telemetry;
