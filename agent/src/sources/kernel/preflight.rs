//! Checks that turn "EPERM" or "ENOENT" from deep inside the loader into one sentence that names
//! what is missing and how to get it.
use anyhow::{Result, bail};

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capability set of this process, from /proc/self/status.
pub fn effective_caps() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(str::trim)
        .unwrap_or("0");
    Ok(u64::from_str_radix(hex, 16)?)
}

pub fn has_cap(caps: u64, cap: u32) -> bool {
    caps & (1u64 << cap) != 0
}

/// Loading tracing programs needs CAP_BPF + CAP_PERFMON (Linux ≥ 5.8) or CAP_SYS_ADMIN.
pub fn check_privileges() -> Result<()> {
    let caps = effective_caps()?;
    if has_cap(caps, CAP_SYS_ADMIN) || (has_cap(caps, CAP_BPF) && has_cap(caps, CAP_PERFMON)) {
        return Ok(());
    }
    let mut missing = Vec::new();
    if !has_cap(caps, CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has_cap(caps, CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    bail!(
        "missing privileges: loading eBPF programs needs {} (or root); run as root, or grant them (setcap cap_bpf,cap_perfmon+ep, or the DaemonSet's securityContext)",
        missing.join(" and ")
    )
}

/// Before 5.11 the kernel charges BPF maps and ring buffers to RLIMIT_MEMLOCK, whose default
/// there is 64 KiB: raise it as libbpf-based tools do. Later kernels account BPF memory to the
/// memory cgroup and ignore the limit. Failure is not fatal: loading then says what is wrong.
pub fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "raising RLIMIT_MEMLOCK failed");
    }
}

/// BTF-typed tracepoints need the kernel's own type information.
pub fn check_btf() -> Result<()> {
    const VMLINUX: &str = "/sys/kernel/btf/vmlinux";
    if std::path::Path::new(VMLINUX).exists() {
        Ok(())
    } else {
        bail!(
            "kernel BTF is missing ({VMLINUX}); a kernel built with CONFIG_DEBUG_INFO_BTF=y is required"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_bits() {
        let caps = (1 << CAP_BPF) | (1 << CAP_PERFMON);
        assert!(has_cap(caps, CAP_BPF));
        assert!(has_cap(caps, CAP_PERFMON));
        assert!(!has_cap(caps, CAP_SYS_ADMIN));
    }
}
