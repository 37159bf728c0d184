//! The guest's initramfs: busybox, the agent under test, the test driver (this very xtask
//! binary), nft and bpftool with their shared libraries, and the kernel package's own modules for
//! nf_tables. Written as an uncompressed newc cpio (the kernel unpacks it without a
//! decompressor, which is also the fastest path under TCG).
use std::{
    collections::{BTreeSet, HashMap},
    io::{BufWriter, Write as _},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::apt::Kernel;

/// Modules the guest loads (with their dependencies, in order): nf_tables for the input-hook
/// drop that makes real retransmits; virtio_blk for `--dump`'s output disk.
const MODULES: &[&str] = &["nf_tables", "virtio_pci", "virtio_blk"];

/// Where the pieces live inside the guest.
pub const GUEST_AGENT: &str = "/ks/kernelsight-agent";
pub const GUEST_DRIVER: &str = "/ks/driver";

/// The guest's PID 1: mounts, modules, loopback, then the driver; powers off whatever happens.
const INIT: &str = r#"#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
# Kernel messages stay in dmesg; the console carries the driver's results.
dmesg -n 1
for m in $(cat /modules/order); do
  insmod /modules/$m.ko || echo "KSINFO insmod $m failed"
done
ip link set lo up
# `--dump`: the kernel's tracepoint layouts and BTF, as a tar on the virtio disk, instead of the checks.
if grep -q ks.dump /proc/cmdline; then
  R=$(uname -r); D=/tmp/dump/$R; mkdir -p $D
  T=/sys/kernel/tracing; [ -d $T/events ] || T=/sys/kernel/debug/tracing
  for c in tcp sock sched; do
    for e in $T/events/$c/*/; do
      n=$(basename $e); mkdir -p $D/events/$c/$n; cp $e/format $D/events/$c/$n/format
    done
  done
  cp /sys/kernel/btf/vmlinux $D/vmlinux.btf
  cat /proc/version > $D/version
  (cd /tmp/dump && tar cf /dev/vda $R) && echo "KSINFO dump written"
  poweroff -f
fi
/ks/driver kernel-guest --agent /ks/kernelsight-agent
echo "KSINFO driver exited with $?"
dmesg | tail -n 40 | sed 's/^/KSDMESG /'
poweroff -f
"#;

/// A newc ("070701") cpio archive writer.
struct Cpio {
    out: BufWriter<std::fs::File>,
    ino: u32,
    dirs: BTreeSet<String>,
    files: BTreeSet<String>,
}

impl Cpio {
    fn create(path: &Path) -> Result<Self> {
        Ok(Self {
            out: BufWriter::new(
                std::fs::File::create(path).with_context(|| format!("{}", path.display()))?,
            ),
            ino: 1,
            dirs: BTreeSet::new(),
            files: BTreeSet::new(),
        })
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> Result<()> {
        let name = name.trim_start_matches('/');
        self.ino += 1;
        let header = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        pad(&mut self.out, header.len() + name.len() + 1)?;
        self.out.write_all(data)?;
        pad(&mut self.out, data.len())?;
        Ok(())
    }

    fn dir(&mut self, path: &str) -> Result<()> {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return Ok(());
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        self.dirs.insert(path.to_owned());
        self.entry(path, 0o040755, &[])
    }

    fn parent(&mut self, path: &str) -> Result<()> {
        match path.trim_matches('/').rsplit_once('/') {
            Some((parent, _)) => self.dir(parent),
            None => Ok(()),
        }
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        if !self.files.insert(path.to_owned()) {
            return Ok(());
        }
        self.parent(path)?;
        self.entry(path, 0o100000 | mode, data)
    }

    fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        if !self.files.insert(path.to_owned()) {
            return Ok(());
        }
        self.parent(path)?;
        self.entry(path, 0o120777, target.as_bytes())
    }

    /// A host binary at `guest` path, plus every shared library `ldd` names, at the same paths
    /// as on the host.
    fn binary(&mut self, host: &Path, guest: &str) -> Result<()> {
        let data = std::fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        self.file(guest, 0o755, &data)?;
        for lib in shared_libraries(host)? {
            let data = std::fs::read(&lib).with_context(|| format!("reading {}", lib.display()))?;
            self.file(&lib.to_string_lossy(), 0o755, &data)?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        self.entry("TRAILER!!!", 0, &[])?;
        self.out.flush()?;
        Ok(())
    }
}

fn pad(out: &mut impl std::io::Write, len: usize) -> Result<()> {
    let n = (4 - len % 4) % 4;
    out.write_all(&[0u8; 3][..n])?;
    Ok(())
}

/// The libraries (and loader) a dynamically linked binary needs, from `ldd`; none for a
/// static one.
fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("=> not found") {
            bail!("{}: {line}", bin.display());
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// The module's bytes, decompressed if Debian ships it compressed (.ko.xz since 6.x).
fn module_bytes(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else if name.ends_with(".gz") {
        "gzip"
    } else {
        return std::fs::read(path).with_context(|| format!("reading {name}"));
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("running {tool} -dc {name}"))?;
    if !out.status.success() {
        bail!("{tool} -dc {name} failed");
    }
    Ok(out.stdout)
}

fn module_name(file: &str) -> String {
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// `depends=` from a module's .modinfo section (the package ships no modules.dep: depmod runs
/// at install time).
fn depends(ko: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(at) = ko.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let start = at + key.len();
    let end = ko[start..]
        .iter()
        .position(|&b| b == 0)
        .map_or(ko.len(), |n| start + n);
    String::from_utf8_lossy(&ko[start..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(module_name)
        .collect()
}

/// The modules to insmod, dependencies first, with their (decompressed) bytes.
fn module_closure(kernel: &Kernel, wanted: &[&str]) -> Result<Vec<(String, Vec<u8>)>> {
    let root = kernel.modules();
    let builtin: BTreeSet<String> = std::fs::read_to_string(root.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .map(module_name)
        .collect();
    let mut paths = HashMap::new();
    let mut stack = vec![root.join("kernel")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)?.flatten() {
            let p = e.path();
            if e.file_type()?.is_dir() {
                stack.push(p);
            } else if let Some(f) = p.file_name().and_then(|f| f.to_str())
                && f.contains(".ko")
            {
                paths.insert(module_name(f), p.clone());
            }
        }
    }
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        name: &str,
        paths: &HashMap<String, PathBuf>,
        builtin: &BTreeSet<String>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<(String, Vec<u8>)>,
    ) -> Result<()> {
        if builtin.contains(name) || !seen.insert(name.to_owned()) {
            return Ok(());
        }
        let path = paths
            .get(name)
            .with_context(|| format!("module {name} is neither built in nor in the package"))?;
        let bytes = module_bytes(path)?;
        for dep in depends(&bytes) {
            visit(&dep, paths, builtin, seen, order)?;
        }
        order.push((name.to_owned(), bytes));
        Ok(())
    }
    for w in wanted {
        visit(w, &paths, &builtin, &mut seen, &mut order)?;
    }
    Ok(order)
}

/// Host tools copied into the guest (with their libraries).
fn host_tool(name: &str) -> Result<PathBuf> {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("{name} is not installed (`cargo xtask setup` installs it)")
}

/// Writes the initramfs for `kernel` to `out`.
pub fn build(kernel: &Kernel, agent: &Path, driver: &Path, out: &Path) -> Result<()> {
    let mut cpio = Cpio::create(out)?;
    for d in [
        "bin", "sbin", "dev", "proc", "sys", "tmp", "run", "etc", "root", "ks", "modules",
    ] {
        cpio.dir(d)?;
    }
    let busybox = host_tool("busybox")?;
    cpio.binary(&busybox, "/bin/busybox")?;
    cpio.symlink("/bin/sh", "busybox")?;
    cpio.file("/init", 0o755, INIT.as_bytes())?;
    cpio.file("/etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")?;
    cpio.file("/etc/group", 0o644, b"root:x:0:\n")?;
    cpio.binary(agent, GUEST_AGENT)?;
    cpio.binary(driver, GUEST_DRIVER)?;
    cpio.binary(&host_tool("nft")?, "/sbin/nft")?;
    cpio.binary(&host_tool("bpftool")?, "/sbin/bpftool")?;
    let modules = module_closure(kernel, MODULES)?;
    let mut order = String::new();
    for (name, bytes) in &modules {
        cpio.file(&format!("/modules/{name}.ko"), 0o644, bytes)?;
        order.push_str(name);
        order.push('\n');
    }
    cpio.file("/modules/order", 0o644, order.as_bytes())?;
    cpio.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_depends() {
        let ko = b"\x7fELF....\0license=GPL\0depends=nfnetlink,libcrc32c\0intree=Y\0";
        assert_eq!(depends(ko), vec!["nfnetlink", "libcrc32c"]);
        assert!(depends(b"\0depends=\0").is_empty());
        assert_eq!(module_name("nf-tables.ko.xz"), "nf_tables");
    }
}
