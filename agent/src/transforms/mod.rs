//! What the agent adds: who a pid is (attribution), kernel evidence joined to spans (correlate),
//! and incidents judged against baselines (detect, run by correlate on every joined span); pod
//! (pod mode: namespace-local ids and network namespaces to host terms, pods from the API) is
//! the half of attribution that spans and connection keys need.
pub mod attribution;
pub mod correlate;
pub mod detect;
pub mod pod;
