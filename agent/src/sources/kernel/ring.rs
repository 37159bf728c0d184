//! Draining BPF ring buffers into the agent without blocking the runtime: a ring's fd becomes
//! readable when the kernel submits, and we decode everything that is there.
use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc};

use crate::shared::{event::KernelEvent, telemetry::RingStats};

/// Reads `ring` until the receiver is gone, decoding each record with `decode`.
pub async fn run(
    ring: RingBuf<MapData>,
    decode: impl Fn(&[u8]) -> Option<KernelEvent>,
    tx: mpsc::Sender<KernelEvent>,
    stats: RingStats,
) -> anyhow::Result<()> {
    // SAFETY: the ring owns its fd, and AsyncFd owns the ring until this function returns, so
    // the fd stays open for as long as it is registered.
    let mut fd = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("registering the ring fd: {e}"))?;
    loop {
        let mut guard = fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            let Some(ev) = decode(&item) else {
                stats.malformed.inc();
                continue;
            };
            stats.decoded.inc();
            match tx.try_send(ev) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => stats.pipeline_full.inc(),
                Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
            }
        }
        guard.clear_ready();
    }
}
