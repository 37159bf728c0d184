//! Run-queue latency against a real peer: libbpf-tools `runqlat -P -p PID` watches the same
//! victim over the same window while busy hogs oversubscribe the machine's cores.
mod common;

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use agent::{
    shared::event::{KernelEvent, RunqHistogram},
    sources::kernel::{ProbeConfig, Probes},
};
use common::{drain, require_root};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn python(code: &str) -> Kill {
    Kill(
        Command::new("python3")
            .args(["-c", code])
            .spawn()
            .expect("python3"),
    )
}

/// Parses runqlat's "low -> high : count" lines into log2 slots (slot k starts at 2^k µs; the
/// first line, 0 -> 1, is slot 0).
fn parse_runqlat(out: &str) -> Vec<u64> {
    let mut slots = vec![0u64; 27];
    for line in out.lines() {
        let Some((range, rest)) = line.split_once(':') else {
            continue;
        };
        let Some((low, _)) = range.split_once("->") else {
            continue;
        };
        let (Ok(low), Some(Ok(count))) = (
            low.trim().parse::<u64>(),
            rest.split_whitespace().next().map(str::parse::<u64>),
        ) else {
            continue;
        };
        let slot = if low == 0 { 0 } else { low.ilog2() as usize };
        slots[slot.min(26)] += count;
    }
    slots
}

fn delta(a: &RunqHistogram, b: &RunqHistogram) -> Vec<u64> {
    b.slots.iter().zip(&a.slots).map(|(b, a)| b - a).collect()
}

#[test]
fn histogram_agrees_with_runqlat_and_slow_events_name_the_victims_threads() {
    require_root();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    // Hogs: one more busy process than cores, so runnable threads queue.
    let _hogs: Vec<_> = (0..=cores).map(|_| python("while True: pass")).collect();
    // Victim: threads that sleep briefly and compute briefly, so they wake up often.
    let victim = python(
        "import threading, time\n\
         def work():\n\
         \x20   while True:\n\
         \x20       time.sleep(0.002)\n\
         \x20       x = sum(range(2000))\n\
         for _ in range(4): threading.Thread(target=work, daemon=True).start()\n\
         time.sleep(3600)\n",
    );
    let pid = victim.0.id();
    std::thread::sleep(Duration::from_millis(300)); // threads started

    let cfg = ProbeConfig {
        runq_event_threshold_ns: 1_000_000,
        ..ProbeConfig::default()
    };
    let mut probes = Probes::load(&cfg).unwrap();
    let mut ring = probes.take_runq_ring().unwrap();
    probes.watch(pid).unwrap();

    let mut runqlat = Kill(
        // Line-buffered, so its "Tracing" line arrives when it is printed, not at exit.
        Command::new("stdbuf")
            .args(["-oL", "runqlat", "-P", "-p", &pid.to_string(), "3", "1"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("runqlat (libbpf-tools) must be installed; `cargo xtask setup` installs it"),
    );
    let mut lines = BufReader::new(runqlat.0.stdout.take().unwrap()).lines();
    // runqlat prints this once its programs are attached: our window starts there too.
    loop {
        let line = lines.next().expect("runqlat output").unwrap();
        if line.starts_with("Tracing run queue latency") {
            break;
        }
    }
    let start = probes
        .runq_histograms()
        .unwrap()
        .remove(&pid)
        .unwrap_or_default();
    let start = if start.slots.is_empty() {
        RunqHistogram {
            slots: vec![0; 27],
            sum_ns: 0,
        }
    } else {
        start
    };
    let mut theirs_text = String::new();
    for line in lines {
        theirs_text.push_str(&line.unwrap());
        theirs_text.push('\n');
    }
    // runqlat has printed its interval and is exiting: our window ends here.
    let end = probes
        .runq_histograms()
        .unwrap()
        .remove(&pid)
        .expect("histogram for the victim");
    let ours = delta(&start, &end);
    let theirs = parse_runqlat(&theirs_text);

    let (n_ours, n_theirs) = (
        ours.iter().sum::<u64>() as f64,
        theirs.iter().sum::<u64>() as f64,
    );
    eprintln!("ours   {ours:?} (n={n_ours})\ntheirs {theirs:?} (n={n_theirs})\n{theirs_text}");
    assert!(
        n_theirs > 100.0,
        "the workload must produce run-queue waits"
    );
    // Both programs fire on the same tracepoint hits, so per-event delays are identical; the
    // windows differ only at their edges (runqlat's attach/print vs our two map reads, a few ms
    // of a 3 s window). 10% on the count and 0.1 total-variation distance on the shape leave
    // room for those edges on a noisy 2-core VM and still catch a wrong slot mapping or a
    // missed wakeup path, which would move far more mass.
    assert!(
        (n_ours - n_theirs).abs() / n_theirs < 0.10,
        "counts differ: ours {n_ours}, runqlat {n_theirs}"
    );
    let tv: f64 = ours
        .iter()
        .zip(&theirs)
        .map(|(&a, &b)| (a as f64 / n_ours - b as f64 / n_theirs).abs())
        .sum::<f64>()
        / 2.0;
    assert!(
        tv < 0.10,
        "histogram shapes differ: total variation distance {tv:.3}"
    );

    // The slow-event stream (≥ 1 ms) names the victim's own threads.
    let tids: BTreeSet<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let slow: Vec<_> = drain(&mut ring, KernelEvent::decode_runq)
        .into_iter()
        .filter_map(|e| match e {
            KernelEvent::Runq(r) => Some(r),
            _ => None,
        })
        .collect();
    assert!(
        !slow.is_empty(),
        "oversubscribed cores must produce ≥ 1 ms waits"
    );
    for r in &slow {
        assert_eq!(r.pid, pid, "{r:?}");
        assert!(
            tids.contains(&r.tid),
            "tid {} is not a thread of the victim {tids:?}",
            r.tid
        );
        assert!(r.delay_ns >= 1_000_000);
        assert_eq!(r.comm, "python3");
    }
    let distinct: BTreeSet<u32> = slow.iter().map(|r| r.tid).collect();
    assert!(
        distinct.len() > 1,
        "several victim threads waited: {distinct:?}"
    );
}
