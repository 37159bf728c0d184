//! Once a second, the change of what is counted in place: the kernel's run-queue histograms and
//! lossless counters, the span counters, and the game server's pool metrics; handed on as one
//! [`Second`] of the page's timeline.
//!
//! It does a fixed, small amount of work per second whether or not anyone looks.
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use agent_common::Counter;
use prometheus::IntGauge;
use tokio::sync::mpsc;

use super::pool::{PoolDelta, Scraper, parse_pool_metrics};
use crate::shared::{
    culprit::{CulpritDeltas, CulpritStep},
    event::{KernelCounters, KernelMaps, RunqHistogram},
    sample::{Inputs, RunqPoint, Sample, Second},
    telemetry::CorrelationMetrics,
};

/// What the sampler reads.
pub struct Sampler {
    /// The kernel's aggregates (`None`: probes not loaded).
    pub kernel: Option<Arc<dyn KernelMaps>>,
    /// The span counters (`None`: correlation not running).
    pub spans: Option<CorrelationMetrics>,
    /// Processes whose run-queue latency is measured.
    pub watched: IntGauge,
    /// The game server's pool metrics.
    pub pool: Option<Scraper>,
    /// Where each second's culprit CPU time goes (who ran while watched processes waited).
    pub culprits: Option<mpsc::Sender<CulpritStep>>,
}

fn now_unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Sampler {
    /// Samples every second until `out` is closed.
    pub async fn run(self, out: mpsc::Sender<Second>) {
        let mut runq = RunqDelta::default();
        let mut pools = PoolDelta::default();
        let mut culprits = CulpritDeltas::default();
        let mut last_counters: Option<KernelCounters> = None;
        let mut last_spans: Option<(u64, u64)> = None;
        // Tick just after each wall-clock second, so a sample covers one second of events.
        let into_second = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let first = tokio::time::Instant::now()
            + Duration::from_nanos(u64::from(1_000_000_000 - into_second) + 5_000_000);
        let mut tick = tokio::time::interval_at(first, Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let t = now_unix_s().saturating_sub(1);
            let mut sample = Sample {
                t,
                ..Default::default()
            };
            let mut probes_error = None;
            let mut probe_status = Vec::new();
            if let Some(k) = &self.kernel {
                probe_status = k.probe_status();
                match k.runq_histograms() {
                    Ok(h) => {
                        let point = runq.step(h);
                        sample.runq = (point.processes > 0).then_some(point);
                    }
                    Err(e) => probes_error = Some(format!("reading run-queue histograms: {e}")),
                }
                if let Some(tx) = &self.culprits {
                    match k.runq_culprits() {
                        Ok(now) => {
                            let t_ns = SystemTime::now()
                                .duration_since(UNIX_EPOCH)
                                .map_or(0, |d| d.as_nanos() as u64);
                            let mut step = culprits.step(now, t_ns);
                            step.watched = k.watched();
                            // Full only when the reader is seconds behind: this second's
                            // step is dropped rather than the sampler blocked.
                            let _ = tx.try_send(step);
                        }
                        Err(e) => probes_error = Some(format!("reading run-queue culprits: {e}")),
                    }
                }
                match k.counters() {
                    Ok(now) => {
                        if let Some(last) = last_counters {
                            let d = |c: Counter| now[c as usize].saturating_sub(last[c as usize]);
                            sample.kernel_lost =
                                d(Counter::TcpEventsLost) + d(Counter::RunqEventsLost);
                        }
                        last_counters = Some(now);
                    }
                    Err(e) => probes_error = Some(format!("reading kernel counters: {e}")),
                }
            }
            if let Some(m) = &self.spans {
                let received: u64 = ["grpc", "http"]
                    .iter()
                    .map(|t| m.spans_received.with_label_values(&[t]).get())
                    .sum();
                let joined: u64 = ["runq", "tcp"]
                    .iter()
                    .map(|j| m.spans_joined.with_label_values(&[j]).get())
                    .sum();
                let (r0, j0) = last_spans.unwrap_or((received, joined));
                sample.spans = Some(received.saturating_sub(r0));
                sample.spans_enriched = joined.saturating_sub(j0);
                last_spans = Some((received, joined));
            }
            let mut pool = None;
            if let Some(scraper) = &self.pool {
                pool = Some(match scraper.scrape().await {
                    Ok(text) => {
                        sample.pools = Some(pools.step(parse_pool_metrics(&text)));
                        Ok(())
                    }
                    Err(e) => Err(format!("{e:#}")),
                });
            }
            let inputs = Inputs {
                spans_total: last_spans.map_or(0, |(r, _)| r),
                watched_processes: self.watched.get(),
                pool,
                probes_error,
                probe_status,
            };
            if out.send(Second { sample, inputs }).await.is_err() {
                return;
            }
        }
    }
}

/// The change of the per-process histograms since the last call, summed: a process that
/// appeared counts from zero, one whose counts went down (pid reused) counts from its new state.
#[derive(Default)]
pub struct RunqDelta {
    prev: HashMap<u32, RunqHistogram>,
}

impl RunqDelta {
    pub fn step(&mut self, now: HashMap<u32, RunqHistogram>) -> RunqPoint {
        let mut slots = vec![0u64; now.values().map(|h| h.slots.len()).max().unwrap_or(0)];
        let mut sum_ns = 0u64;
        for (pid, h) in &now {
            let prev = self.prev.get(pid);
            let reset = prev.is_some_and(|p| {
                p.slots.iter().zip(&h.slots).any(|(a, b)| b < a) || h.sum_ns < p.sum_ns
            });
            let prev = if reset { None } else { prev };
            for (i, n) in h.slots.iter().enumerate() {
                slots[i] += n - prev.and_then(|p| p.slots.get(i)).copied().unwrap_or(0);
            }
            sum_ns += h.sum_ns - prev.map_or(0, |p| p.sum_ns);
        }
        let processes = now.len();
        self.prev = now;
        while slots.last() == Some(&0) {
            slots.pop();
        }
        RunqPoint {
            count: slots.iter().sum(),
            slots: slots
                .into_iter()
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
                .collect(),
            sum_ns,
            processes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runq_delta_sums_processes_and_survives_pid_reuse() {
        let h = |slots: &[u64], sum| RunqHistogram {
            slots: slots.to_vec(),
            sum_ns: sum,
        };
        let mut d = RunqDelta::default();
        let first = d.step(HashMap::from([
            (1, h(&[1, 2, 0, 0], 100)),
            (2, h(&[0, 1, 0, 0], 50)),
        ]));
        assert_eq!(first.slots, [1, 3]);
        assert_eq!((first.count, first.sum_ns, first.processes), (4, 150, 2));
        let second = d.step(HashMap::from([
            (1, h(&[1, 2, 5, 0], 900)),
            (2, h(&[0, 0, 0, 1], 10)),
        ]));
        // pid 2 went down: a new process under an old pid, counted from zero.
        assert_eq!(second.slots, [0, 0, 5, 1]);
        assert_eq!(second.sum_ns, 800 + 10);
        assert_eq!(d.step(HashMap::new()), RunqPoint::default());
    }
}
