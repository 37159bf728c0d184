//! Where data enters the agent: the kernel (eBPF rings, the watch set), OTLP span receivers, and
//! the once-a-second sampler of what is counted in place. A source hands what it reads to the
//! output it is given and imports no other stage.
pub mod kernel;
pub mod otlp;
pub mod pool;
pub mod sampler;
