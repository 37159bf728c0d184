//! Idempotent set-up for a fresh machine: nightly + rust-src (for `-Z build-std=core`), bpf-linker
//! built from crates.io against nightly's own libLLVM into `.tools/`, the Debian packages the
//! tests use, a Python venv with the third-party test peers, and a mounted tracefs. Each step
//! checks first and does nothing when already done.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::util::{output, run as run_cmd, step, workspace_root};

/// The nightly this machine has (RUSTUP_AUTO_INSTALL=0: we never ask rustup to fetch another).
pub const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_FEATURE: &str = "llvm-22";
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Debian packages the test suite and scenarios use, with what for.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("nftables", "packet-loss tests drop segments on loopback"),
    ("iproute2", "network namespaces, ss"),
    (
        "libbpf-tools",
        "runqlat/tcplife: real peers to check our numbers against",
    ),
    ("bpftool", "inspecting loaded programs, bpf_stats"),
    (
        "util-linux",
        "setpriv: running the agent without privileges in tests",
    ),
    (
        "prometheus",
        "promtool: checking the Prometheus config and both binaries' /metrics",
    ),
    ("chromium", "headless browser for the incident page test"),
    (
        "redis-server",
        "the game server's Redis (tests, scenarios and `xtask run` start private instances)",
    ),
    (
        "qemu-system-x86",
        "kernel matrix: boots Debian's 5.10/6.1/6.12 kernels (TCG)",
    ),
    ("busybox-static", "kernel matrix: the guests' userland"),
    ("xz-utils", "kernel matrix: 6.12's modules ship as .ko.xz"),
];

/// What later steps need to know about the set-up.
pub struct Env {
    pub root: PathBuf,
    pub tools_bin: PathBuf,
    pub python: PathBuf,
    /// When set-up began (xtask test reports time per phase).
    pub started: std::time::Instant,
}

impl Env {
    /// The environment as set up earlier, without checking anything.
    pub fn here() -> Self {
        let root = workspace_root();
        Self {
            tools_bin: root.join(".tools/bin"),
            python: root.join(".tools/venv/bin/python3"),
            root,
            started: std::time::Instant::now(),
        }
    }

    /// PATH with the project's tools first.
    pub fn path(&self) -> String {
        let old = std::env::var("PATH").unwrap_or_default();
        format!("{}:{old}", self.tools_bin.display())
    }

    pub fn cargo(&self) -> Command {
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(&self.root)
            .env("PATH", self.path())
            .env("KS_PYTHON", &self.python);
        cmd
    }
}

pub fn run() -> Result<Env> {
    let started = std::time::Instant::now();
    let root = workspace_root();
    let tools = root.join(".tools");
    std::fs::create_dir_all(&tools)?;
    nightly_with_rust_src()?;
    stable_components()?;
    let tools_bin = bpf_linker(&tools)?;
    cargo_fuzz(&tools)?;
    debian_packages()?;
    let python = python_venv(&root, &tools)?;
    ui_test_node_modules(&root)?;
    colyseus_peer(&root, &tools)?;
    tracefs()?;
    Ok(Env {
        root,
        tools_bin,
        python,
        started,
    })
}

fn nightly_with_rust_src() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).context(
        "rustup is required (it manages the nightly toolchain that builds the eBPF programs)",
    )?;
    if !toolchains.lines().any(|l| l.starts_with(NIGHTLY)) {
        bail!(
            "the `{NIGHTLY}` toolchain is missing; the eBPF programs need nightly for -Z build-std (install it with `rustup toolchain install nightly`)"
        );
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        step("nightly + rust-src: present");
        return Ok(());
    }
    run_cmd(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
        .context("installing rust-src for nightly failed")
}

/// rustfmt and clippy on the default toolchain: `cargo xtask test` checks formatting and lints.
fn stable_components() -> Result<()> {
    let installed = output(Command::new("rustup").args(["component", "list", "--installed"]))
        .unwrap_or_default();
    let missing: Vec<&str> = ["rustfmt", "clippy"]
        .into_iter()
        .filter(|c| !installed.lines().any(|l| l.starts_with(c)))
        .collect();
    if missing.is_empty() {
        step("rustfmt + clippy: present");
        return Ok(());
    }
    run_cmd(
        Command::new("rustup")
            .args(["component", "add"])
            .args(&missing),
    )
    .context("installing rustfmt and clippy failed")
}

/// bpf-linker, built once against nightly's libLLVM (no system LLVM needed) and kept in
/// `.tools/bin`.
fn bpf_linker(tools: &Path) -> Result<PathBuf> {
    let bin = tools.join("bin");
    let linker = bin.join("bpf-linker");
    let sysroot =
        output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))
            .context("cannot ask nightly rustc for its sysroot")?;
    let sysroot_lib = Path::new(sysroot.trim()).join("lib");
    // The linker loads nightly's libLLVM at run time (aya-build runs it under `rustup run`,
    // which puts the toolchain's lib/ on the library path); ask it the same way.
    if let Some(v) = output(
        Command::new(&linker)
            .arg("--version")
            .env("LD_LIBRARY_PATH", &sysroot_lib),
    ) && v.contains(BPF_LINKER_VERSION)
    {
        step(format!(
            "bpf-linker {BPF_LINKER_VERSION}: present in {}",
            bin.display()
        ));
        return Ok(bin);
    }
    // libLLVM-22-rust-*.so is a linker script; the real library is libLLVM.so.22.1-rust-*.
    let real = std::fs::read_dir(&sysroot_lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .with_context(|| format!("nightly ships no libLLVM.so.* in {}", sysroot_lib.display()))?;
    let prefix = tools.join("llvm");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&real, &link)?;
    step(format!(
        "building bpf-linker {BPF_LINKER_VERSION} against {} (a few minutes, once)",
        real.display()
    ));
    run_cmd(
        Command::new("cargo")
            .args([
                &format!("+{NIGHTLY}"),
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args([
                "--no-default-features",
                "--features",
                LLVM_FEATURE,
                "--root",
            ])
            .arg(tools)
            .env("LLVM_PREFIX", &prefix)
            .env("LD_LIBRARY_PATH", prefix.join("lib")),
    )
    .context("building bpf-linker failed")?;
    Ok(bin)
}

/// cargo-fuzz (libFuzzer driver for fuzz/), built with the default stable toolchain into
/// `.tools/bin`; the fuzz targets themselves build with nightly (`cargo +nightly fuzz`).
fn cargo_fuzz(tools: &Path) -> Result<()> {
    let bin = tools.join("bin/cargo-fuzz");
    if let Some(v) = output(Command::new(&bin).arg("--version"))
        && v.contains(CARGO_FUZZ_VERSION)
    {
        step(format!("cargo-fuzz {CARGO_FUZZ_VERSION}: present"));
        return Ok(());
    }
    step(format!(
        "installing cargo-fuzz {CARGO_FUZZ_VERSION} into {} (a minute, once)",
        tools.display()
    ));
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
                "cargo-fuzz",
                "--locked",
                "--version",
                CARGO_FUZZ_VERSION,
            ])
            .arg("--root")
            .arg(tools),
    )
    .context("installing cargo-fuzz failed")
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        step("Debian packages: present");
        return Ok(());
    }
    for (p, why) in DEBIAN_PACKAGES.iter().filter(|(p, _)| missing.contains(p)) {
        step(format!("installing {p}: {why}"));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!(
            "Debian packages missing ({}); install them as root: apt-get install {}",
            missing.join(", "),
            missing.join(" ")
        );
    }
    run_cmd(
        Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// A venv with the third-party Python peers (xtask/python-requirements.txt), rebuilt only when
/// that file changes.
fn python_venv(root: &Path, tools: &Path) -> Result<PathBuf> {
    let venv = tools.join("venv");
    let python = venv.join("bin/python3");
    let req = root.join("xtask/python-requirements.txt");
    let wanted =
        std::fs::read_to_string(&req).with_context(|| format!("reading {}", req.display()))?;
    let stamp = venv.join(".requirements");
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        step("python venv: present");
        return Ok(python);
    }
    if !python.exists() {
        run_cmd(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("python3 -m venv failed")?;
    }
    run_cmd(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&req),
    )?;
    std::fs::write(&stamp, wanted)?;
    Ok(python)
}

/// playwright-core for the incident page's browser test (agent/tests/ui), test-only; `npm ci` only
/// when node_modules is missing or the lock file changed. It drives Debian's chromium: no
/// browser is ever downloaded.
fn ui_test_node_modules(root: &Path) -> Result<()> {
    let dir = root.join("agent/tests/ui");
    let lock = std::fs::read_to_string(dir.join("package-lock.json"))
        .context("reading agent/tests/ui/package-lock.json")?;
    let stamp = dir.join("node_modules/.kernelsight-lock");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(lock.as_str()) {
        step("ui test node_modules: present");
        return Ok(());
    }
    run_cmd(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1"),
    )
    .context("npm ci in agent/tests/ui failed (Node.js 20 and npm are needed)")?;
    std::fs::write(&stamp, lock)?;
    Ok(())
}

/// The Colyseus peer of `cargo xtask bench peer` (bench-only): game-server/peer/colyseus's
/// locked packages, `npm ci` into `.tools/colyseus-peer` (the scripts stay in the repo and
/// find them through NODE_PATH); only when missing or the lock file changed.
fn colyseus_peer(root: &Path, tools: &Path) -> Result<()> {
    let src = root.join("game-server/peer/colyseus");
    let dir = tools.join("colyseus-peer");
    let lock = std::fs::read_to_string(src.join("package-lock.json"))
        .context("reading game-server/peer/colyseus/package-lock.json")?;
    let stamp = dir.join("node_modules/.kernelsight-lock");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(lock.as_str()) {
        step("colyseus peer node_modules: present");
        return Ok(());
    }
    std::fs::create_dir_all(&dir)?;
    for f in ["package.json", "package-lock.json"] {
        std::fs::copy(src.join(f), dir.join(f))?;
    }
    run_cmd(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
            .current_dir(&dir),
    )
    .context("npm ci for the Colyseus peer failed (Node.js 20 and npm are needed)")?;
    std::fs::write(&stamp, lock)?;
    Ok(())
}

fn tracefs() -> Result<()> {
    if Path::new("/sys/kernel/tracing/events").is_dir()
        || Path::new("/sys/kernel/debug/tracing/events").is_dir()
    {
        step("tracefs: mounted");
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        step("tracefs: not mounted and not root; the agent will say so");
        return Ok(());
    }
    run_cmd(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))
}
