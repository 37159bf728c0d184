//! CLOCK_MONOTONIC (what `bpf_ktime_get_ns` returns) → Unix time (what spans carry).
//!
//! The two clocks tick at the same rate (NTP slews both), but their difference changes whenever
//! the wall clock is stepped. We measure the difference by reading monotonic, realtime,
//! monotonic back to back; the realtime reading happened somewhere inside the monotonic
//! bracket, so the midpoint is off by at most half its width. Of several samples we keep the
//! tightest (an interrupt or preemption between the reads only widens a bracket, it cannot
//! make one look tighter than it is). The offset is re-measured periodically and every kernel
//! event is converted once, when the agent ingests it.
use std::sync::{
    Arc,
    atomic::{AtomicI64, AtomicU64, Ordering},
};

/// One offset measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offset {
    /// realtime − monotonic, in nanoseconds.
    pub offset_ns: i64,
    /// Half the width of the tightest bracket: the conversion is exact to within this.
    pub uncertainty_ns: u64,
}

/// Reads a clock in nanoseconds.
pub trait ClockSource {
    fn monotonic_ns(&mut self) -> u64;
    fn realtime_ns(&mut self) -> u64;
}

/// The kernel's clocks (vDSO `clock_gettime`, tens of nanoseconds per read).
pub struct SystemClocks;

fn clock_ns(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out-pointer.
    let rc = unsafe { libc::clock_gettime(id, &mut ts) };
    debug_assert_eq!(rc, 0);
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

impl ClockSource for SystemClocks {
    fn monotonic_ns(&mut self) -> u64 {
        clock_ns(libc::CLOCK_MONOTONIC)
    }
    fn realtime_ns(&mut self) -> u64 {
        clock_ns(libc::CLOCK_REALTIME)
    }
}

/// Samples per measurement. Each costs three vDSO reads; 16 is enough that at least one sample
/// normally escapes interrupts and preemption, and costs about a microsecond in all.
pub const SAMPLES: usize = 16;

/// Measures realtime − monotonic with `samples` back-to-back readings, keeping the tightest.
pub fn measure(src: &mut impl ClockSource, samples: usize) -> Offset {
    let mut best: Option<Offset> = None;
    for _ in 0..samples.max(1) {
        let m1 = src.monotonic_ns();
        let r = src.realtime_ns();
        let m2 = src.monotonic_ns();
        let width = m2.saturating_sub(m1);
        let mid = m1 + width / 2;
        let sample = Offset {
            offset_ns: r as i64 - mid as i64,
            uncertainty_ns: width.div_ceil(2),
        };
        if best.is_none_or(|b| sample.uncertainty_ns < b.uncertainty_ns) {
            best = Some(sample);
        }
    }
    best.expect("at least one sample")
}

/// The current offset, shared between the task that re-measures it and everyone converting.
#[derive(Clone, Debug)]
pub struct Clock {
    inner: Arc<(AtomicI64, AtomicU64)>,
}

impl Clock {
    /// Measures once, now.
    pub fn new() -> Self {
        Self::with_offset(measure(&mut SystemClocks, SAMPLES))
    }

    pub fn with_offset(o: Offset) -> Self {
        Self {
            inner: Arc::new((
                AtomicI64::new(o.offset_ns),
                AtomicU64::new(o.uncertainty_ns),
            )),
        }
    }

    pub fn offset(&self) -> Offset {
        Offset {
            offset_ns: self.inner.0.load(Ordering::Relaxed),
            uncertainty_ns: self.inner.1.load(Ordering::Relaxed),
        }
    }

    pub fn set(&self, o: Offset) {
        self.inner.0.store(o.offset_ns, Ordering::Relaxed);
        self.inner.1.store(o.uncertainty_ns, Ordering::Relaxed);
    }

    /// Re-measures with the system clocks and stores the result.
    pub fn remeasure(&self) -> Offset {
        let o = measure(&mut SystemClocks, SAMPLES);
        self.set(o);
        o
    }

    /// A CLOCK_MONOTONIC timestamp as Unix nanoseconds.
    pub fn to_unix_ns(&self, monotonic_ns: u64) -> u64 {
        monotonic_ns.saturating_add_signed(self.inner.0.load(Ordering::Relaxed))
    }

    /// Unix time now, in nanoseconds.
    pub fn now_unix_ns() -> u64 {
        clock_ns(libc::CLOCK_REALTIME)
    }

    /// Monotonic time now, in nanoseconds.
    pub fn now_monotonic_ns() -> u64 {
        clock_ns(libc::CLOCK_MONOTONIC)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scripted pair of clocks: realtime = monotonic + `offset`, and each read advances the
    /// monotonic clock by the next entry of `gaps` (a "preemption" is a big gap).
    struct Scripted {
        mono: u64,
        offset: i64,
        gaps: Vec<u64>,
        i: usize,
    }

    impl Scripted {
        fn tick(&mut self) {
            self.mono += self.gaps[self.i % self.gaps.len()];
            self.i += 1;
        }
    }

    impl ClockSource for Scripted {
        fn monotonic_ns(&mut self) -> u64 {
            self.tick();
            self.mono
        }
        fn realtime_ns(&mut self) -> u64 {
            self.tick();
            (self.mono as i64 + self.offset) as u64
        }
    }

    #[test]
    fn tightest_sample_wins_over_preempted_ones() {
        let offset = 1_700_000_000_000_000_000i64 - 5_000_000_000;
        // Reads 40 ns apart, except one sample where the realtime read was delayed by 1 ms.
        let mut gaps = vec![40; 3 * SAMPLES];
        gaps[1] = 1_000_000;
        let mut src = Scripted {
            mono: 5_000_000_000,
            offset,
            gaps,
            i: 0,
        };
        let o = measure(&mut src, SAMPLES);
        // A clean bracket is two 40 ns gaps wide: ±40 ns.
        assert_eq!(o.uncertainty_ns, 40);
        assert!(
            (o.offset_ns - offset).abs() <= 40,
            "{} vs {offset}",
            o.offset_ns
        );
    }

    #[test]
    fn a_single_preempted_sample_reports_its_uncertainty_honestly() {
        let offset = 42_000;
        let mut src = Scripted {
            mono: 0,
            offset,
            gaps: vec![10, 1_000_000, 10],
            i: 0,
        };
        let o = measure(&mut src, 1);
        // The bracket is 1 ms + 10 ns wide: the error bound says so, and the true offset lies
        // inside it.
        assert_eq!(o.uncertainty_ns, 500_005);
        assert!((o.offset_ns - offset).unsigned_abs() <= o.uncertainty_ns);
    }

    #[test]
    fn converts_with_the_measured_offset_and_follows_a_step() {
        let c = Clock::with_offset(Offset {
            offset_ns: 1_000,
            uncertainty_ns: 1,
        });
        assert_eq!(c.to_unix_ns(5), 1_005);
        // The wall clock is stepped back: the next measurement moves every later conversion.
        c.set(Offset {
            offset_ns: -3,
            uncertainty_ns: 1,
        });
        assert_eq!(c.to_unix_ns(5), 2);
        assert_eq!(c.to_unix_ns(2), 0, "saturates instead of wrapping");
    }

    #[test]
    fn system_clocks_agree_with_std_system_time() {
        let c = Clock::new();
        assert!(c.offset().uncertainty_ns < 1_000_000, "{:?}", c.offset());
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let converted = c.to_unix_ns(Clock::now_monotonic_ns());
        let after = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let slack = c.offset().uncertainty_ns;
        assert!(
            before <= converted + slack && converted <= after + slack,
            "{before} ≤ {converted} ≤ {after} (±{slack})"
        );
    }
}
