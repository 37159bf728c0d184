//! `cargo xtask kernels`: the agent on the kernels users' nodes run. Debian's own cloud kernel
//! packages (5.10, 6.1, 6.12), each booted under qemu (TCG) to a busybox initramfs holding the
//! agent under test and a test driver (this binary, `kernel-guest`), which provokes real events
//! and checks the agent's counts against the guest kernel's. Prints a kernel × check matrix and
//! writes it into the README between markers.
mod apt;
pub mod guest;
mod initramfs;
mod qemu;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{
    setup::Env,
    util::{run as run_cmd, step},
};

/// One cell's verdict. `Degraded` is a feature the agent itself reports unavailable on that
/// kernel, with its reason; only `Fail` fails the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pass,
    Degraded,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Degraded => "degraded",
            Status::Fail => "fail",
        }
    }
    fn parse(s: &str) -> Self {
        match s {
            "pass" => Status::Pass,
            "degraded" => Status::Degraded,
            _ => Status::Fail,
        }
    }
    fn mark(self) -> &'static str {
        match self {
            Status::Pass => "✅",
            Status::Degraded => "⚠️",
            Status::Fail => "❌",
        }
    }
}

/// The matrix's columns, in order: (result key, column title).
const CHECKS: &[(&str, &str)] = &[
    ("agent", "agent starts"),
    ("programs", "programs loaded + attached"),
    ("resets", "RSTs 127.0.0.1 + ::1 vs /proc/net/snmp"),
    ("retransmits", "retransmits (nft input drop) vs RetransSegs"),
    ("runq", "run-queue histogram, watch set"),
    ("no_btf", "BTF hidden"),
];

/// Features that may be off in a cell: (kernel line, check, probe, the kernel fact that makes it
/// so). A degraded cell is accepted only when every feature it reports off is listed for its
/// kernel and check; otherwise it is red.
const MAY_BE_OFF: &[(&str, &str, &str, &str)] = &[
    ("5.10", "programs", "tcp_rst_sent_no_socket", NO_SOCKET_RST),
    ("5.10", "resets", "tcp_rst_sent_no_socket", NO_SOCKET_RST),
    ("5.10", "no_btf", "tcp_rst_sent_no_socket", NO_SOCKET_RST),
    ("6.1", "programs", "tcp_rst_sent_no_socket", NO_SOCKET_RST),
    ("6.1", "resets", "tcp_rst_sent_no_socket", NO_SOCKET_RST),
    ("6.1", "no_btf", "tcp_rst_sent_no_socket", NO_SOCKET_RST),
];
/// Seen in the guests: ftrace's own tcp:tcp_send_reset count is 6 for 14 OutRsts on 5.10 and
/// 6.1 (the 8 answers to SYNs on closed ports are missing), 14 for 14 on 6.12. Before v6.10
/// ("trace: tcp: fully support trace_tcp_send_reset"), tcp_v4_send_reset() and
/// tcp_v6_send_reset() fire the tracepoint only inside `if (sk) … if (sk_fullsock(sk))`.
const NO_SOCKET_RST: &str =
    "tcp:tcp_send_reset fires only for full sockets before v6.10 (no-socket and TIME_WAIT RSTs)";

const README_BEGIN: &str = "<!-- kernels:begin (written by `cargo xtask kernels`; do not edit) -->";
const README_END: &str = "<!-- kernels:end -->";

#[derive(Args, Clone)]
pub struct KernelsArgs {
    /// Agent binary to test (default: the release agent built from this tree).
    #[arg(long, env = "KS_KERNELS_AGENT")]
    pub agent: Option<PathBuf>,
    /// Kernel lines to run (default all): 5.10, 6.1, 6.12.
    #[arg(long = "kernel", value_delimiter = ',')]
    pub kernels: Vec<String>,
    /// Refresh the package lists even if they are less than a day old.
    #[arg(long)]
    pub refresh: bool,
    /// Write the matrix into README.md even for an --agent from elsewhere (by default only the
    /// tree's own release agent's matrix is written there).
    #[arg(long, conflicts_with = "no_readme")]
    pub readme: bool,
    /// Do not touch README.md.
    #[arg(long)]
    pub no_readme: bool,
    /// Instead of the checks: copy each kernel's tcp/sock/sched tracepoint formats, its BTF
    /// (/sys/kernel/btf/vmlinux) and its config into DIR/<uname -r>/.
    #[arg(long, value_name = "DIR")]
    pub dump: Option<PathBuf>,
    /// Bound per kernel, boot to power-off, in seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

impl KernelsArgs {
    /// What `cargo xtask test` runs: every line, the tree's release agent, README untouched.
    pub fn ci() -> Self {
        Self {
            agent: None,
            kernels: Vec::new(),
            refresh: false,
            readme: false,
            no_readme: true,
            dump: None,
            timeout: 120,
        }
    }
}

/// One kernel's row.
struct Row {
    kernel: apt::Kernel,
    cells: BTreeMap<String, (Status, String)>,
    secs: f64,
}

pub fn run(env: &Env, args: KernelsArgs) -> Result<()> {
    let started = Instant::now();
    let own_agent = args.agent.is_none();
    let agent = match &args.agent {
        Some(p) => p
            .canonicalize()
            .with_context(|| format!("--agent {}", p.display()))?,
        None => {
            // The same package set as every other release build: building the agent alone
            // unifies its dependencies' features differently and rebuilds them all.
            crate::tasks::build(env)?;
            env.root.join("target/release/kernelsight-agent")
        }
    };
    let lines: Vec<apt::Line> = if args.kernels.is_empty() {
        apt::LINES.to_vec()
    } else {
        args.kernels
            .iter()
            .map(|k| {
                apt::LINES
                    .iter()
                    .find(|l| l.label == k)
                    .copied()
                    .with_context(|| {
                        let known: Vec<_> = apt::LINES.iter().map(|l| l.label).collect();
                        format!("unknown kernel {k}; known: {}", known.join(", "))
                    })
            })
            .collect::<Result<_>>()?
    };
    let _one_at_a_time = lock(&env.root.join(".tools/kernels/run.lock"))?;
    let kernels = apt::kernels(&env.root.join(".tools"), &lines, args.refresh)?;
    let out = env.root.join("target/kernels");
    // A copy of this running binary: its path may name a deleted file by now (see `self_exe`),
    // and ldd, which the initramfs builder runs on it, needs a path of its own.
    std::fs::create_dir_all(&out)?;
    let driver = out.join("driver");
    std::fs::copy(crate::util::self_exe(), &driver)
        .context("copying the xtask binary (the guest driver)")?;
    if let Some(dir) = &args.dump {
        for kernel in &kernels {
            dump(kernel, &agent, &driver, &out, dir, args.timeout)?;
        }
        return Ok(());
    }
    let mut rows = Vec::new();
    for kernel in kernels {
        rows.push(one_kernel(&kernel, &agent, &driver, &out, args.timeout)?);
    }
    let table = matrix(&rows);
    let section = readme_section(&rows, &table, &agent, own_agent);
    std::fs::write(out.join("matrix.md"), &section)?;
    println!("\n{table}");
    step(format!(
        "kernels: agent {}; {} kernel(s) in {:.0} s; consoles and matrix in {}",
        agent.display(),
        rows.len(),
        started.elapsed().as_secs_f64(),
        out.display()
    ));
    if args.readme || (own_agent && !args.no_readme) {
        write_readme(&env.root.join("README.md"), &section)?;
        step("kernels: README.md matrix section rewritten");
    }
    let red: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            r.cells
                .iter()
                .filter(|(_, (s, _))| *s == Status::Fail)
                .map(move |(c, (_, t))| format!("{} {c}: {t}", r.kernel.label))
        })
        .collect();
    if !red.is_empty() {
        bail!(
            "{} red cell(s) in the kernel matrix:\n  {}",
            red.len(),
            red.join("\n  ")
        );
    }
    Ok(())
}

/// One matrix run at a time per tree (qemu TCG takes a whole core; the apt state and the
/// initramfs files are shared): an exclusive flock, held until the returned file is dropped.
fn lock(path: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd as _;
    std::fs::create_dir_all(path.parent().expect("lock file has a parent"))?;
    let f = std::fs::File::create(path)?;
    // SAFETY: an open file's fd, for the life of `f`.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        step(format!(
            "kernels: another `cargo xtask kernels` runs in this tree; waiting for {}",
            path.display()
        ));
        // SAFETY: as above.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!(
                "flock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(f)
}

fn one_kernel(
    kernel: &apt::Kernel,
    agent: &Path,
    driver: &Path,
    out: &Path,
    timeout: u64,
) -> Result<Row> {
    let dir = out.join(&kernel.release);
    std::fs::create_dir_all(&dir)?;
    let initrd = dir.join("initrd.cpio");
    initramfs::build(kernel, agent, driver, &initrd)
        .with_context(|| format!("building the initramfs for {}", kernel.release))?;
    let _ = std::fs::remove_file(dir.join("dump.img"));
    step(format!(
        "kernels: booting {} ({} {}) under qemu TCG, at most {timeout} s",
        kernel.release, kernel.package, kernel.version
    ));
    let console = dir.join("console.log");
    let boot = qemu::boot(
        &kernel.vmlinuz(),
        &initrd,
        &console,
        Duration::from_secs(timeout),
        None,
    )?;
    let mut cells = BTreeMap::new();
    for line in boot.console.lines() {
        let Some(json) = line
            .find("KSRESULT ")
            .map(|at| &line[at + "KSRESULT ".len()..])
        else {
            continue;
        };
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(json.trim()) {
            let check = v["check"].as_str().unwrap_or("?").to_owned();
            let mut status = Status::parse(v["status"].as_str().unwrap_or(""));
            let mut text = v["text"].as_str().unwrap_or("").to_owned();
            if status == Status::Degraded {
                let unexpected: Vec<&str> = v["data"]["down"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.as_str())
                    .filter(|p| {
                        !MAY_BE_OFF
                            .iter()
                            .any(|(l, c, q, _)| *l == kernel.label && *c == check && q == p)
                    })
                    .collect();
                if !unexpected.is_empty() {
                    status = Status::Fail;
                    text = format!(
                        "not expected off on {}: {}; {text}",
                        kernel.label,
                        unexpected.join(", ")
                    );
                }
            }
            cells.insert(check, (status, text));
        }
    }
    // A check that never reported is red, with what the console last said.
    let tail: Vec<&str> = boot
        .console
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("KSRESULT"))
        .collect();
    let last = tail
        .iter()
        .rev()
        .take(3)
        .rev()
        .copied()
        .collect::<Vec<_>>()
        .join(" / ");
    for (check, _) in CHECKS {
        cells.entry((*check).to_owned()).or_insert_with(|| {
            let why = if boot.timed_out {
                format!("no result within {timeout} s (console: {last})")
            } else {
                format!("no result; guest stopped (console: {last})")
            };
            (Status::Fail, why)
        });
    }
    for (check, _) in CHECKS {
        let (s, t) = &cells[*check];
        step(format!(
            "kernels: {} {check}: {} {t}",
            kernel.label,
            s.as_str()
        ));
    }
    Ok(Row {
        kernel: kernel.clone(),
        cells,
        secs: boot.secs,
    })
}

/// `--dump`: boots the kernel with an output disk; the guest writes a tar of its tracepoint
/// formats and BTF there, which lands in `dest/<uname -r>/` with the package's config beside it.
fn dump(
    kernel: &apt::Kernel,
    agent: &Path,
    driver: &Path,
    out: &Path,
    dest: &Path,
    timeout: u64,
) -> Result<()> {
    let dir = out.join(&kernel.release);
    std::fs::create_dir_all(&dir)?;
    let initrd = dir.join("initrd.cpio");
    initramfs::build(kernel, agent, driver, &initrd)?;
    let disk = dir.join("dump.img");
    let f = std::fs::File::create(&disk)?;
    f.set_len(64 << 20)?;
    drop(f);
    let console = dir.join("console.log");
    let boot = qemu::boot(
        &kernel.vmlinuz(),
        &initrd,
        &console,
        Duration::from_secs(timeout),
        Some(&disk),
    )?;
    if !boot.console.contains("KSINFO dump written") {
        bail!(
            "{}: the guest wrote no dump (console in {})",
            kernel.release,
            console.display()
        );
    }
    std::fs::create_dir_all(dest)?;
    run_cmd(
        std::process::Command::new("tar")
            .arg("-xf")
            .arg(&disk)
            .arg("-C")
            .arg(dest),
    )?;
    let target = dest.join(&kernel.release);
    std::fs::copy(
        kernel.tree.join(format!("boot/config-{}", kernel.release)),
        target.join("config"),
    )?;
    let _ = std::fs::remove_file(&disk);
    step(format!(
        "kernels: {} formats, BTF and config in {}",
        kernel.label,
        target.display()
    ));
    Ok(())
}

fn cell_text(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn matrix(rows: &[Row]) -> String {
    let mut t = String::from("| kernel (Debian package) |");
    for (_, title) in CHECKS {
        t.push_str(&format!(" {title} |"));
    }
    t.push_str(" guest time |\n|---|");
    for _ in CHECKS {
        t.push_str("---|");
    }
    t.push_str("---|\n");
    for r in rows {
        t.push_str(&format!(
            "| {} `{}` ({}) |",
            r.kernel.label, r.kernel.release, r.kernel.version
        ));
        for (check, _) in CHECKS {
            let (s, text) = &r.cells[*check];
            t.push_str(&format!(" {} {} |", s.mark(), cell_text(text)));
        }
        t.push_str(&format!(" {:.0} s |\n", r.secs));
    }
    t
}

fn readme_section(rows: &[Row], table: &str, agent: &Path, own_agent: bool) -> String {
    let what = if own_agent {
        "the release agent built from this tree".to_owned()
    } else {
        format!("`{}`", agent.display())
    };
    let kernels: Vec<_> = rows.iter().map(|r| r.kernel.label).collect();
    // The ⚠️ this run accepted, each with the kernel fact behind it.
    let mut accepted: Vec<String> = Vec::new();
    for (line, check, probe, why) in MAY_BE_OFF {
        let seen = rows.iter().any(|r| {
            r.kernel.label == *line
                && r.cells
                    .get(*check)
                    .is_some_and(|(s, t)| *s == Status::Degraded && t.contains(probe))
        });
        let note = format!("- ⚠️ `{probe}` on {line}: {why}.");
        if seen
            && !accepted
                .iter()
                .any(|a| a.starts_with(&format!("- ⚠️ `{probe}` on {line}:")))
        {
            accepted.push(note);
        }
    }
    let accepted = if accepted.is_empty() {
        String::new()
    } else {
        format!("\n{}\n", accepted.join("\n"))
    };
    format!(
        "{README_BEGIN}\nReproduce: `cargo xtask kernels` (part of `cargo xtask test`). Agent: {what}; \
         kernels: {}, newest cloud-amd64 package of each suite at run time, booted under \
         `qemu-system-x86_64 -accel tcg`, 1 vCPU. ✅ counted exactly / works, ⚠️ unavailable on \
         that kernel (the agent's own reason), ❌ wrong or missing (the agent's error).\n\n{table}{accepted}\n{README_END}\n",
        kernels.join(", ")
    )
}

fn write_readme(path: &Path, section: &str) -> Result<()> {
    let text = std::fs::read_to_string(path)?;
    let new = match (text.find(README_BEGIN), text.find(README_END)) {
        (Some(b), Some(e)) if b < e => {
            format!(
                "{}{section}{}",
                &text[..b],
                &text[e + README_END.len() + 1..]
            )
        }
        _ => bail!(
            "{} has no kernel matrix markers ({README_BEGIN} … {README_END})",
            path.display()
        ),
    };
    std::fs::write(path, new)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_section_is_replaced_between_markers_only() {
        let dir = std::env::temp_dir().join(format!("ks-readme-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("README.md");
        std::fs::write(
            &path,
            format!("# t\nbefore\n{README_BEGIN}\nold table\n{README_END}\nafter\n"),
        )
        .unwrap();
        write_readme(&path, &format!("{README_BEGIN}\nnew\n{README_END}\n")).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("# t\nbefore\n{README_BEGIN}\nnew\n{README_END}\nafter\n")
        );
        std::fs::write(&path, "no markers\n").unwrap();
        assert!(write_readme(&path, "x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
