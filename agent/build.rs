//! Builds `agent-ebpf` for bpfel-unknown-none (nightly, `-Z build-std=core`, bpf-linker) and leaves
//! the object in OUT_DIR, where `sources::kernel` embeds it with `include_bytes_aligned!`.
//!
//! aya-build passes every line of the inner cargo's output on as a `cargo:warning`, and cargo
//! replays a build script's warnings on every later build, even a no-op one: 41 lines of
//! "Compiling …" each time. So its output is captured and only what matters is passed on:
//! everything when the build fails, otherwise all but cargo's progress lines (a real compiler
//! warning in the eBPF crate still shows).
use std::{
    fs::File,
    io::Write as _,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "agent-ebpf")
        .ok_or_else(|| anyhow!("agent-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    let package = aya_build::Package {
        name: ebpf.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    let out = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    share_ebpf_target_dir(&out)?;
    quietly(&out.join("aya-build.stdout"), || {
        // The machine's nightly is named "nightly"; rustup must not try to fetch another.
        aya_build::build_ebpf([package], Toolchain::Custom("nightly"))
    })
    .context("building agent-ebpf failed; `cargo xtask setup` installs what it needs (nightly rust-src, bpf-linker)")
}

/// Each build of the agent (clippy's check, debug, release, the fuzz build) runs this script
/// with its own OUT_DIR, and aya-build builds the eBPF crate, and `core` for the BPF target,
/// under OUT_DIR: the same release build of the same sources, once per profile (about a minute
/// of CPU each on a cold CI machine). Its target dir is made a link to one shared directory, so
/// cargo's own fingerprints make every build after the first a no-op (and cargo's lock on that
/// directory serialises builds that run at once).
fn share_ebpf_target_dir(out: &Path) -> anyhow::Result<()> {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(&std::env::var("CARGO_MANIFEST_DIR")?).join("../target"),
    };
    let shared = target.join("ebpf");
    std::fs::create_dir_all(&shared).with_context(|| format!("creating {}", shared.display()))?;
    // Where aya-build 0.2 puts its inner cargo's target dir (`--target-dir`).
    let inner = out.join("aya-build/target/agent-ebpf");
    std::fs::create_dir_all(inner.parent().context("aya-build dir")?)?;
    match std::fs::symlink_metadata(&inner) {
        Ok(m) if m.file_type().is_symlink() => return Ok(()),
        Ok(_) => std::fs::remove_dir_all(&inner)?,
        Err(_) => {}
    }
    std::os::unix::fs::symlink(&shared, &inner)
        .with_context(|| format!("linking {} to {}", inner.display(), shared.display()))
}

/// Runs `f` with this process's stdout (what cargo reads from a build script) sent to `capture`,
/// then passes the captured lines on: all of them if `f` failed, else all but the inner cargo's
/// progress lines.
fn quietly(capture: &Path, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let file = File::create(capture).with_context(|| format!("creating {}", capture.display()))?;
    std::io::stdout().flush()?;
    // SAFETY: plain descriptor calls on fds this process owns; fd 1 is restored below before
    // anything else writes to stdout.
    let saved = unsafe { libc::dup(1) };
    // SAFETY: as above; `file` outlives the redirection.
    if saved < 0 || unsafe { libc::dup2(file.as_raw_fd(), 1) } < 0 {
        return Err(std::io::Error::last_os_error()).context("redirecting stdout");
    }
    let result = f();
    let flushed = std::io::stdout().flush();
    // SAFETY: `saved` is the original fd 1, duplicated above.
    unsafe {
        libc::dup2(saved, 1);
        libc::close(saved);
    }
    flushed?;
    let text = std::fs::read_to_string(capture)?;
    for line in text.lines() {
        let progress = line
            .strip_prefix("cargo:warning=")
            .is_some_and(is_cargo_progress);
        if result.is_err() || !progress {
            println!("{line}");
        }
    }
    result
}

/// cargo's own status lines ("   Compiling x v1", "    Finished `release` …").
fn is_cargo_progress(line: &str) -> bool {
    const VERBS: [&str; 10] = [
        "Compiling",
        "Finished",
        "Fresh",
        "Checking",
        "Blocking",
        "Updating",
        "Downloading",
        "Downloaded",
        "Locking",
        "Adding",
    ];
    let first = line.split_whitespace().next().unwrap_or("");
    line.is_empty() || VERBS.contains(&first)
}
