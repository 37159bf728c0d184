//! Draining BPF ring buffers into the agent without blocking the runtime. The kernel side wakes
//! the reader only once a fair share of the ring is waiting (wake-ups are batched to spare the
//! traced workload), so the reader also drains on a short timer.
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc};

use crate::shared::{event::KernelEvent, telemetry::RingStats};

/// The longest an event waits in the ring when the kernel did not wake the reader.
pub const DRAIN_EVERY: Duration = Duration::from_millis(100);

/// Reads `ring` until the receiver is gone, decoding each record with `decode`.
pub async fn run(
    ring: RingBuf<MapData>,
    mut decode: impl FnMut(&[u8]) -> Option<KernelEvent>,
    tx: mpsc::Sender<KernelEvent>,
    stats: RingStats,
) -> anyhow::Result<()> {
    // SAFETY: the ring owns its fd, and AsyncFd owns the ring until this function returns, so
    // the fd stays open for as long as it is registered.
    let mut fd = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("registering the ring fd: {e}"))?;
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                // Cleared before draining: a wake-up that lands during the drain re-arms it.
                guard?.clear_ready();
            }
            _ = tick.tick() => {}
        }
        let ring = fd.get_mut();
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
    }
}
