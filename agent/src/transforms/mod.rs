//! What the agent adds: who a pid is (attribution), kernel evidence joined to spans (correlate),
//! and incidents judged against baselines (detect, run by correlate on every joined span).
pub mod attribution;
pub mod correlate;
pub mod detect;
