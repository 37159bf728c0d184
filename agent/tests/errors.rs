//! Missing privileges and bad options give one clear error line, not a panic. (Missing kernel
//! features turn off one feature each: see degrade.rs.)
mod common;

use std::process::{Command, Output};

use common::require_root;

fn agent(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kernelsight-agent"));
    c.args(["--http-addr", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "off");
    c
}

fn one_error_line(out: &Output) -> String {
    assert!(!out.status.success(), "the agent should have failed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one line on stderr, got:\n{stderr}"
    );
    assert!(
        lines[0].starts_with("kernelsight-agent: error: "),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    lines[0].to_owned()
}

#[test]
fn without_capabilities_it_names_them() {
    require_root();
    // Drop to nobody with no capabilities at all (util-linux setpriv).
    let exe = env!("CARGO_BIN_EXE_kernelsight-agent");
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ])
        .arg(exe)
        .args(["--http-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "off")
        .output()
        .expect("setpriv (util-linux) must be installed; `cargo xtask setup` installs it");
    let line = one_error_line(&out);
    assert!(
        line.contains("missing privileges")
            && line.contains("CAP_BPF")
            && line.contains("CAP_PERFMON"),
        "{line}"
    );
}

#[test]
fn a_bad_ring_size_is_rejected_before_loading() {
    require_root();
    let line = one_error_line(&agent(&["--tcp-ring-bytes", "5000"]).output().unwrap());
    assert!(line.contains("power of two"), "{line}");
}
