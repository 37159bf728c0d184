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

/// Boots `vmlinuz` with `initrd`; with `disk`, that raw file is the guest's /dev/vda and the
/// kernel command line carries `ks.dump` (see the initramfs's init).
pub fn boot(
    vmlinuz: &Path,
    initrd: &Path,
    console: &Path,
    limit: Duration,
    disk: Option<&Path>,
) -> Result<Boot> {
    let _ = std::fs::remove_file(console);
    let mut append = "console=ttyS0 panic=-1 quiet loglevel=3".to_owned();
    let mut cmd = Command::new("qemu-system-x86_64");
    if let Some(disk) = disk {
        cmd.arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", disk.display()));
        append.push_str(" ks.dump");
    }
    let child = cmd
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
        .arg("-append")
        .arg(&append)
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
