#![no_std]
// The library target exists so that the agent can name this crate as a build-dependency (cache
// invalidation); the programs live in the binary target.
