//! The Dockerfiles: hadolint, and every COPY and build step names what exists.
use super::*;

pub(crate) struct Instruction {
    pub(crate) line: usize,
    pub(crate) keyword: String,
    pub(crate) args: String,
}

/// Dockerfile instructions, continuation lines joined, comments dropped.
pub(crate) fn dockerfile(path: &Path) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, raw) in read(path).lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_none()) {
            continue;
        }
        let (start, mut text) = current.take().unwrap_or((n + 1, String::new()));
        let (body, continues) = match line.strip_suffix('\\') {
            Some(b) => (b, true),
            None => (line, false),
        };
        text.push_str(body);
        text.push(' ');
        if continues {
            current = Some((start, text));
        } else if !text.trim().is_empty() {
            let text = text.trim().to_owned();
            let (kw, args) = text.split_once(char::is_whitespace).unwrap_or((&text, ""));
            out.push(Instruction {
                line: start,
                keyword: kw.to_ascii_uppercase(),
                args: args.trim().to_owned(),
            });
        }
    }
    out
}

pub(crate) fn workspace_members() -> Vec<String> {
    let manifest = read(root().join("Cargo.toml"));
    let members = manifest
        .split("members = [")
        .nth(1)
        .and_then(|s| s.split(']').next())
        .expect("workspace members");
    members
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_owned())
        .filter(|m| !m.is_empty())
        .collect()
}

#[test]
pub(crate) fn dockerfiles_pass_hadolint_and_copy_only_paths_that_exist() {
    let images = root().join("deploy/images");
    let files = files_under(&images, &["Dockerfile"]);
    assert_eq!(
        files.len(),
        2,
        "agent.Dockerfile and game-server.Dockerfile"
    );
    let hadolint = venv_tool("hadolint");
    let setup = read(root().join("xtask/src/setup.rs"));
    for f in &files {
        run(Command::new(&hadolint)
            .arg("--failure-threshold")
            .arg("info")
            .arg(f));
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let ignore_file = images.join(format!("{name}.dockerignore"));
        let ignore = read(&ignore_file);
        let allowed: Vec<_> = ignore
            .lines()
            .filter_map(|l| l.trim().strip_prefix('!'))
            .map(|l| l.trim_end_matches('/'))
            .collect();
        assert!(
            ignore.lines().any(|l| l.trim() == "*"),
            "{}: an allowlist (`*` then `!path`)",
            ignore_file.display()
        );
        let instructions = dockerfile(f);
        let mut copied = BTreeSet::new();
        let mut stages = BTreeSet::new();
        let mut args = BTreeMap::new();
        for ins in &instructions {
            let at = format!("{name}:{}", ins.line);
            match ins.keyword.as_str() {
                "ARG" => {
                    if let Some((k, v)) = ins.args.split_once('=') {
                        args.insert(k.to_owned(), v.to_owned());
                    }
                }
                "FROM" => {
                    let words: Vec<_> = ins.args.split_whitespace().collect();
                    let image = words[0];
                    let resolved = match image.strip_prefix("${").and_then(|s| s.strip_suffix('}'))
                    {
                        Some(arg) => args
                            .get(arg)
                            .cloned()
                            .unwrap_or_else(|| panic!("{at}: FROM ${{{arg}}} has no default")),
                        None => image.to_owned(),
                    };
                    assert!(
                        stages.contains(&resolved)
                            || resolved
                                .rsplit_once(':')
                                .is_some_and(|(_, t)| t != "latest" && !t.contains('/')),
                        "{at}: base image {resolved} must be pinned to a tag"
                    );
                    if let Some(i) = words.iter().position(|w| w.eq_ignore_ascii_case("AS")) {
                        stages.insert(words[i + 1].to_owned());
                    }
                }
                "COPY" | "ADD" => {
                    let words: Vec<_> = ins.args.split_whitespace().collect();
                    if words.iter().any(|w| w.starts_with("--from=")) {
                        continue;
                    }
                    let sources: Vec<_> = words
                        .iter()
                        .filter(|w| !w.starts_with("--"))
                        .copied()
                        .collect();
                    assert!(
                        sources.len() >= 2,
                        "{at}: COPY needs a source and a destination"
                    );
                    for src in &sources[..sources.len() - 1] {
                        let p = src.trim_end_matches('/');
                        assert!(
                            root().join(p).exists(),
                            "{at}: COPY source {src} does not exist in the repository"
                        );
                        assert!(
                            allowed.contains(&p),
                            "{at}: {src} is excluded by {}",
                            ignore_file.display()
                        );
                        copied.insert(p.to_owned());
                    }
                }
                "RUN" => {
                    // `cargo build -p <package> --bin <bin>` names real packages and binaries.
                    for cmd in ins.args.split("&&").filter(|c| c.contains("cargo build")) {
                        let words: Vec<_> = cmd.split_whitespace().collect();
                        for w in words.windows(2) {
                            if w[0] == "-p" {
                                let pkg = w[1];
                                let manifest = workspace_members()
                                    .into_iter()
                                    .map(|m| read(root().join(m).join("Cargo.toml")))
                                    .find(|t| t.contains(&format!("name = \"{pkg}\"")));
                                assert!(manifest.is_some(), "{at}: no workspace package {pkg}");
                            }
                            if w[0] == "--bin" {
                                let bin = w[1];
                                let declared = workspace_members().into_iter().any(|m| {
                                    let t = read(root().join(&m).join("Cargo.toml"));
                                    t.contains(&format!("name = \"{bin}\""))
                                });
                                assert!(declared, "{at}: no binary {bin} in the workspace");
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        // The workspace loads only if every member is there.
        for m in workspace_members() {
            let top = m.split('/').next().unwrap().to_owned();
            assert!(
                copied.contains(&top),
                "{name}: workspace member {m} is not copied"
            );
        }
        assert!(
            copied.contains("Cargo.lock"),
            "{name}: builds --locked from Cargo.lock"
        );
        assert!(
            instructions.iter().any(|i| i.keyword == "USER"),
            "{name}: says which user it runs as"
        );
    }
    // The agent's builder installs bpf-linker exactly as xtask setup does.
    let agent = read(images.join("agent.Dockerfile"));
    for (constant, arg) in [
        ("BPF_LINKER_VERSION", "BPF_LINKER_VERSION"),
        ("LLVM_FEATURE", "LLVM_FEATURE"),
    ] {
        let value = setup
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(&format!("const {constant}: &str = \""))
            })
            .and_then(|l| l.split('"').next())
            .unwrap_or_else(|| panic!("xtask/src/setup.rs has no {constant}"));
        assert!(
            agent.contains(&format!("ARG {arg}={value}\n")),
            "agent.Dockerfile: {arg} must be {value}, as in xtask setup"
        );
    }
    // The game server image runs as non-root (numeric, so runAsNonRoot can verify it).
    let server = dockerfile(&images.join("game-server.Dockerfile"));
    let user = server.iter().rev().find(|i| i.keyword == "USER").unwrap();
    assert!(
        user.args
            .split(':')
            .next()
            .unwrap()
            .parse::<u32>()
            .is_ok_and(|u| u != 0),
        "game server USER {}",
        user.args
    );
}
