//! `cargo xtask scenario --pod`: the game server (and its Redis) run like a container,
//! the agent on the host with only the DaemonSet's capabilities.
//!
//! The "pod": its own network namespace (a veth pair to the host, addresses this run assigns),
//! its own cgroup under a parent this run owns, named the way kubelet names them
//! (`pod<uid>/<container id>`); the game server in it also gets new pid, mount and cgroup
//! namespaces (`unshare --pid --fork --mount-proc --cgroup`), so its spans carry pid 1 and
//! namespace-local tids, like any container's. Redis (a real redis-server, started with
//! `ip netns exec`) listens on the pod's own 127.0.0.1, as a sidecar container would, and on the
//! pod's address for the fault injector on the host. The bots reach the game port through
//! the veth; the server sends spans to the agent's OTLP receiver on the host side of the veth.
//!
//! The agent runs through `capsh --drop=<every capability but BPF, PERFMON, SYS_RESOURCE>`,
//! selecting the pod's processes by `--cgroup`.
//!
//! Everything is undone on drop, also when a run fails: the cgroup subtree (its processes
//! killed), the network namespace (and with it its nft tables and the veth pair).
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::util::{Proc, http, run as run_cmd};

/// The capabilities the agent's DaemonSet grants (deploy/k8s/base/agent-daemonset.yaml).
pub const DAEMONSET_CAPS: [&str; 3] = ["cap_bpf", "cap_perfmon", "cap_sys_resource"];
/// The game port inside the pod (the pod has its own network namespace: no collisions).
pub const GAME_PORT: u16 = 7000;
pub const NAMESPACE: &str = "ks-scenario";
pub const POD_NAME: &str = "game-server-0";

pub struct Pod {
    pub netns: String,
    host_if: String,
    pub host_ip: Ipv4Addr,
    pub pod_ip: Ipv4Addr,
    /// The cgroup parent this run owns, and the game server's container cgroup in it.
    pub cgroup_parent: PathBuf,
    pub container_cgroup: PathBuf,
    pub pod_uid: String,
    pub container_id: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a
/// hybrid system).
pub(super) fn cgroup2_root() -> PathBuf {
    std::fs::read_to_string("/proc/self/mounts")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
            })
        })
        .unwrap_or_else(|| "/sys/fs/cgroup".into())
}

impl Pod {
    /// Creates the pod's network namespace, veth pair and cgroups. `n` keeps concurrent runs
    /// (and a run's leftovers) apart.
    pub fn create(n: u32) -> Result<Self> {
        let id = std::process::id();
        let subnet = (id % 200) as u8 + 20;
        let pod = Pod {
            netns: format!("ks-pod-{id}-{n}"),
            host_if: format!("ksh{}", id % 100_000),
            host_ip: Ipv4Addr::new(10, 213, subnet, 1),
            pod_ip: Ipv4Addr::new(10, 213, subnet, 2),
            cgroup_parent: cgroup2_root().join(format!("ks-scenario-{id}-{n}")),
            container_cgroup: PathBuf::new(),
            pod_uid: format!("{id:08x}-{n:04x}-4000-8000-00000000beef"),
            container_id: format!("{id:08x}{n:08x}c0ffee00c0ffee00c0ffee00"),
        };
        // From here on, drop undoes whatever was made.
        let mut pod = pod;
        let pod_if = format!("ksp{}", id % 100_000);
        ip(&["netns", "add", &pod.netns])?;
        ip(&[
            "link",
            "add",
            &pod.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &pod_if,
        ])?;
        ip(&["link", "set", &pod_if, "netns", &pod.netns])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", pod.host_ip),
            "dev",
            &pod.host_if,
        ])?;
        ip(&["link", "set", &pod.host_if, "up"])?;
        let n_ = pod.netns.clone();
        ip(&[
            "-n",
            &n_,
            "addr",
            "add",
            &format!("{}/30", pod.pod_ip),
            "dev",
            &pod_if,
        ])?;
        ip(&["-n", &n_, "link", "set", &pod_if, "up"])?;
        ip(&["-n", &n_, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &n_,
            "route",
            "add",
            "default",
            "via",
            &pod.host_ip.to_string(),
        ])?;
        pod.container_cgroup = pod
            .cgroup_parent
            .join(format!("pod{}", pod.pod_uid))
            .join(&pod.container_id);
        std::fs::create_dir_all(&pod.container_cgroup)
            .with_context(|| format!("creating {}", pod.container_cgroup.display()))?;
        Ok(pod)
    }

    pub fn game_addr(&self) -> SocketAddr {
        SocketAddr::new(self.pod_ip.into(), GAME_PORT)
    }

    /// `program args…` as the pod's container: joins the container cgroup first (so that the
    /// new cgroup namespace is rooted there), then the network namespace, then new pid, mount
    /// and cgroup namespaces.
    pub fn container_command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec ip netns exec {} unshare --pid --fork --mount-proc --cgroup \"$0\" \"$@\"",
                self.container_cgroup.display(),
                self.netns
            ))
            .arg(program);
        cmd
    }

    /// The OTel resource a pod's game server gets from the downward API.
    pub fn resource_attributes(&self) -> String {
        format!(
            "k8s.pod.uid={},k8s.pod.name={POD_NAME},k8s.namespace.name={NAMESPACE},k8s.container.name=game-server,container.id={}",
            self.pod_uid, self.container_id
        )
    }

    /// `nft -f -` inside the pod's network namespace (its tables go with the namespace).
    pub fn nft(&self, script: &str) -> Result<()> {
        use std::io::Write as _;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.netns, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .context("nft (nftables)")?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(script.as_bytes())?;
        if !child.wait()?.success() {
            bail!("nft in {} failed on:\n{script}", self.netns);
        }
        Ok(())
    }

    /// Host pid of the pod's process named `comm`.
    pub fn host_pid(&self, comm: &str) -> Option<u32> {
        let procs = std::fs::read_to_string(self.container_cgroup.join("cgroup.procs")).ok()?;
        procs
            .lines()
            .filter_map(|l| l.parse().ok())
            .find(|p: &u32| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim_end() == comm)
            })
    }

    /// Waits until the game server listens in the pod (read from its namespace's
    /// /proc/<pid>/net/tcp: a connect attempt would draw an RST) and answers /readyz.
    pub fn wait_ready(&self, child: &mut Proc) -> Result<u32> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let want = format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(self.pod_ip.octets()),
            GAME_PORT
        );
        while Instant::now() < deadline {
            if let Some(pid) = self.host_pid("game-server") {
                let listening =
                    std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).is_ok_and(|t| {
                        t.lines().skip(1).any(|l| {
                            let f: Vec<_> = l.split_whitespace().collect();
                            f.len() > 3 && f[1] == want && f[3] == "0A"
                        })
                    });
                if listening && let Ok((200, _)) = http(self.game_addr(), "GET", "/readyz", None) {
                    return Ok(pid);
                }
            }
            if let Some(status) = child.0.try_wait()? {
                bail!("the game server's container exited before it was ready ({status})");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("the game server in the pod was not ready within 60 s")
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // cgroup.kill (5.14+) ends every process of the subtree, however deep.
        let _ = std::fs::write(self.cgroup_parent.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline
            && std::fs::read_to_string(self.cgroup_parent.join("cgroup.events"))
                .is_ok_and(|e| e.contains("populated 1"))
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !self.container_cgroup.as_os_str().is_empty() {
            let _ = std::fs::remove_dir(&self.container_cgroup);
            if let Some(p) = self.container_cgroup.parent() {
                let _ = std::fs::remove_dir(p);
            }
        }
        let _ = std::fs::remove_dir(&self.cgroup_parent);
        // Deleting the namespace removes its end of the veth (and so the pair) and its nft
        // tables; the host end is deleted too in case the namespace was never made.
        let _ = run_cmd(Command::new("ip").args(["netns", "del", &self.netns]));
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// `agent args…` with exactly the DaemonSet's capabilities: capsh drops every other one from
/// the bounding set, so the exec'd agent (uid 0) is permitted only those three.
pub fn daemonset_caps_command(agent: &Path) -> Result<Command> {
    let print = Command::new("capsh")
        .arg("--print")
        .output()
        .context("capsh (libcap2-bin)")?;
    let text = String::from_utf8_lossy(&print.stdout);
    let bounding = text
        .lines()
        .find_map(|l| l.strip_prefix("Bounding set ="))
        .context("capsh --print: no bounding set")?;
    let drop: Vec<&str> = bounding
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty() && !DAEMONSET_CAPS.contains(c))
        .collect();
    let mut cmd = Command::new("capsh");
    cmd.arg(format!("--drop={}", drop.join(",")))
        .args(["--", "-c", "exec \"$0\" \"$@\""])
        .arg(agent);
    Ok(cmd)
}

/// Spans received and joined, from the agent's /metrics.
pub fn span_counts(agent: SocketAddr) -> serde_json::Value {
    let Ok((200, text)) = http(agent, "GET", "/metrics", None) else {
        return serde_json::Value::Null;
    };
    let sum = |name: &str, label: Option<&str>| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && label.is_none_or(|lb| l.contains(lb)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    serde_json::json!({
        "received": sum("kernelsight_spans_received_total", None),
        "joined_runq": sum("kernelsight_spans_joined_total", Some("join=\"runq\"")),
        "joined_tcp": sum("kernelsight_spans_joined_total", Some("join=\"tcp\"")),
        "ids_unresolved": sum("kernelsight_span_ids_unresolved_total", None),
        // Mean lateness of the evidence reaching the correlator (ms): kernel events (ring
        // drain, attribution) and spans (the exporter's batch delay, export).
        "kernel_lag_ms": 1e3 * sum("kernelsight_detect_input_lag_seconds_sum", Some("input=\"kernel\""))
            / sum("kernelsight_detect_input_lag_seconds_count", Some("input=\"kernel\"")).max(1.0),
        "span_lag_ms": 1e3 * sum("kernelsight_detect_input_lag_seconds_sum", Some("input=\"span\""))
            / sum("kernelsight_detect_input_lag_seconds_count", Some("input=\"span\"")).max(1.0),
    })
}
