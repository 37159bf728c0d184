//! One guest boot under TCG (KVM fails on this machine), console to a file, hard time bound.
use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::util::Proc;

pub struct Boot {
    pub console: String,
    pub secs: f64,
    pub timed_out: bool,
}

pub fn boot(vmlinuz: &Path, initrd: &Path, console: &Path, limit: Duration) -> Result<Boot> {
    let _ = std::fs::remove_file(console);
    let child = Command::new("qemu-system-x86_64")
        // cx16 off: with Debian 12's qemu 7.2, TCG guests died at random right after SLUB's
        // cmpxchg16b (EFLAGS came back holding a pointer; double fault, or a hang at boot),
        // about one boot in three on this machine; without cx16 the kernel takes its lock
        // path and every boot since has been clean.
        .args(["-accel", "tcg", "-cpu", "qemu64,-cx16", "-smp", "1", "-m", "1024"])
        // No NIC, no display, no monitor: the guest only talks to itself on loopback.
        .args(["-nodefaults", "-display", "none", "-monitor", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=3"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting qemu-system-x86_64 (`cargo xtask setup` installs qemu-system-x86)")?;
    let mut qemu = Proc(child);
    let start = Instant::now();
    let mut timed_out = false;
    loop {
        if qemu.0.try_wait()?.is_some() {
            break;
        }
        if start.elapsed() >= limit {
            timed_out = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let secs = start.elapsed().as_secs_f64();
    drop(qemu);
    let console = String::from_utf8_lossy(&std::fs::read(console).unwrap_or_default()).into_owned();
    Ok(Boot {
        console,
        secs,
        timed_out,
    })
}
