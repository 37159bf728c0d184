//! Builds `agent-ebpf` for bpfel-unknown-none (nightly, `-Z build-std=core`, bpf-linker) and leaves
//! the object in OUT_DIR, where `probes::load` embeds it with `include_bytes_aligned!`.
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
    // The machine's nightly is named "nightly"; rustup must not try to fetch another.
    aya_build::build_ebpf([package], Toolchain::Custom("nightly"))
        .context("building agent-ebpf failed; `cargo xtask setup` installs what it needs (nightly rust-src, bpf-linker)")
}
