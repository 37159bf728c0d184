//! Debian's cloud kernels, fetched with a project-local apt configuration under
//! `.tools/kernels/apt` (own sources list, state and cache): the machine's own apt sources are
//! read, never changed. The mirror is the one the machine already uses, read at run time.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, bail};

use crate::util::{describe, run as run_cmd, step};

/// A kernel line of the matrix: a label and the apt suites whose newest cloud kernel it is.
#[derive(Clone, Copy, Debug)]
pub struct Line {
    pub label: &'static str,
    pub suites: &'static [&'static str],
}

/// The kernels users' nodes run (the host kernel is covered by the normal tests).
pub const LINES: &[Line] = &[
    Line {
        label: "5.10",
        suites: &["bullseye", "bullseye-security"],
    },
    Line {
        label: "6.1",
        suites: &["bookworm", "bookworm-security"],
    },
    Line {
        label: "6.12",
        suites: &["bookworm-backports"],
    },
];

/// The metapackage that always depends on a suite's current cloud kernel image.
const META: &str = "linux-image-cloud-amd64";
/// Package lists older than this are refreshed; younger ones are reused (a warm run never
/// touches the network).
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// One downloaded and unpacked kernel package.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub label: &'static str,
    pub package: String,
    pub version: String,
    /// `uname -r` of the kernel (its directory under lib/modules).
    pub release: String,
    /// The unpacked package (boot/, lib/modules/).
    pub tree: PathBuf,
}

impl Kernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.tree.join(format!("boot/vmlinuz-{}", self.release))
    }
    pub fn modules(&self) -> PathBuf {
        self.tree.join(format!("lib/modules/{}", self.release))
    }
}

/// The Debian archive and security mirrors, from the machine's own apt sources (or the
/// `KS_DEBIAN_MIRROR` / `KS_DEBIAN_SECURITY_MIRROR` environment variables).
#[derive(Debug)]
struct Mirrors {
    archive: String,
    security: Option<String>,
}

fn mirrors() -> Result<Mirrors> {
    let mut entries: Vec<(String, Vec<String>)> = Vec::new();
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<_> = dir.filter_map(|e| Some(e.ok()?.path())).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        match f.extension().and_then(|e| e.to_str()) {
            Some("list") => entries.extend(one_line_entries(&text)),
            Some("sources") => entries.extend(deb822_entries(&text)),
            _ => {}
        }
    }
    let find = |security: bool| {
        entries
            .iter()
            .find(|(uri, suites)| {
                let tail = uri.trim_end_matches('/');
                suites.iter().any(|s| s.ends_with("-security") == security)
                    && if security {
                        tail.ends_with("/debian-security")
                    } else {
                        tail.ends_with("/debian")
                    }
            })
            .map(|(uri, _)| uri.trim_end_matches('/').to_owned())
    };
    let archive = std::env::var("KS_DEBIAN_MIRROR").ok().or_else(|| find(false)).context(
        "no Debian archive mirror found in /etc/apt/sources.list{,.d}; set KS_DEBIAN_MIRROR to one (…/debian)",
    )?;
    let security = std::env::var("KS_DEBIAN_SECURITY_MIRROR")
        .ok()
        .or_else(|| find(true));
    Ok(Mirrors { archive, security })
}

/// `deb [opts] URI SUITE COMPONENT…` lines.
fn one_line_entries(text: &str) -> Vec<(String, Vec<String>)> {
    text.lines()
        .filter_map(|l| {
            let l = l.split('#').next()?.trim();
            let rest = l.strip_prefix("deb ")?.trim();
            let rest = match rest.strip_prefix('[') {
                Some(r) => r.split_once(']')?.1.trim(),
                None => rest,
            };
            let mut it = rest.split_whitespace();
            Some((it.next()?.to_owned(), vec![it.next()?.to_owned()]))
        })
        .collect()
}

/// deb822 stanzas with `Types: deb`, `URIs:` and `Suites:`.
fn deb822_entries(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().to_owned())
            })
        };
        if !field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb")) {
            continue;
        }
        if field("Enabled").is_some_and(|e| e.eq_ignore_ascii_case("no")) {
            continue;
        }
        let (Some(uris), Some(suites)) = (field("URIs"), field("Suites")) else {
            continue;
        };
        let suites: Vec<String> = suites.split_whitespace().map(str::to_owned).collect();
        for uri in uris.split_whitespace() {
            out.push((uri.to_owned(), suites.clone()));
        }
    }
    out
}

/// apt-get/apt-cache pointed at the project's own sources, state and cache.
struct Apt {
    dir: PathBuf,
}

impl Apt {
    fn cmd(&self, program: &str) -> Command {
        let d = &self.dir;
        let mut cmd = Command::new(program);
        let opt = |k: &str, v: &Path| format!("{k}={}", v.display());
        cmd.arg("-o")
            .arg(opt("Dir::Etc::SourceList", &d.join("sources.list")))
            .arg("-o")
            .arg(opt("Dir::Etc::SourceParts", &d.join("sources.list.d")))
            .arg("-o")
            .arg(opt("Dir::Etc::Preferences", &d.join("preferences")))
            .arg("-o")
            .arg(opt("Dir::Etc::PreferencesParts", &d.join("preferences.d")))
            .arg("-o")
            .arg(opt("Dir::State", &d.join("state")))
            .arg("-o")
            .arg(opt("Dir::State::status", &d.join("state/status")))
            .arg("-o")
            .arg(opt("Dir::Cache", &d.join("cache")))
            // Our own state directory: the machine's apt lock is not ours to take.
            .args(["-o", "Debug::NoLocking=1"])
            .args(["-o", "Acquire::Languages=none", "-o", "Acquire::PDiffs=false"])
            .env("DEBIAN_FRONTEND", "noninteractive");
        // Files land in .tools (owned by whoever runs this); as root, apt would otherwise drop
        // to _apt, which cannot write there.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            cmd.args(["-o", "APT::Sandbox::User=root"]);
        }
        // Only Packages indexes: the machine's apt.conf.d may enable AppStream metadata.
        for target in [
            "DEP-11",
            "DEP-11-icons",
            "DEP-11-icons-small",
            "DEP-11-icons-hidpi",
            "DEP-11-icons-large",
            "DEP-11-icons-large-hidpi",
            "Contents-deb",
        ] {
            cmd.args([
                "-o",
                &format!("Acquire::IndexTargets::deb::{target}::DefaultEnabled=false"),
            ]);
        }
        cmd
    }

    fn output(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut cmd = self.cmd(program);
        cmd.args(args);
        let out = cmd
            .output()
            .with_context(|| format!("cannot run {program}"))?;
        if !out.status.success() {
            bail!(
                "`{}` failed: {}",
                describe(&cmd),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Writes the project's sources list and refreshes the package lists when they are missing,
/// stale, or for other sources.
fn prepare(tools: &Path, refresh: bool) -> Result<Apt> {
    let dir = tools.join("kernels/apt");
    for d in [
        "sources.list.d",
        "preferences.d",
        "state/lists/partial",
        "cache/archives/partial",
    ] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    let status = dir.join("state/status");
    if !status.exists() {
        std::fs::write(&status, "")?;
    }
    let m = mirrors()?;
    let mut sources = String::from(
        "# Written by `cargo xtask kernels`; only the kernel packages come from here.\n",
    );
    let mut suites: Vec<&str> = LINES
        .iter()
        .flat_map(|l| l.suites.iter().copied())
        .collect();
    suites.dedup();
    for suite in suites {
        let uri = if suite.ends_with("-security") {
            match &m.security {
                Some(s) => s,
                None => continue,
            }
        } else {
            &m.archive
        };
        sources.push_str(&format!("deb [signed-by={KEYRING}] {uri} {suite} main\n"));
    }
    let list = dir.join("sources.list");
    let stamp = dir.join("state/lists/.kernelsight-sources");
    let same_sources = std::fs::read_to_string(&stamp).ok().as_deref() == Some(sources.as_str());
    let fresh = std::fs::metadata(&stamp)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age < LISTS_MAX_AGE);
    let apt = Apt { dir: dir.clone() };
    if refresh || !same_sources || !fresh {
        std::fs::write(&list, &sources)?;
        step(format!(
            "kernels: refreshing package lists ({} suites, project-local apt state in {})",
            sources.lines().count() - 1,
            dir.display()
        ));
        let mut cmd = apt.cmd("apt-get");
        cmd.args(["-q", "update"]);
        run_cmd(&mut cmd).context("apt-get update with the project's sources failed")?;
        std::fs::write(&stamp, &sources)?;
    } else {
        step("kernels: package lists are less than a day old (pass --refresh to update)");
    }
    Ok(apt)
}

/// The newest cloud kernel of a line: the metapackage's highest version across the line's
/// suites, and the image package it depends on.
fn resolve(apt: &Apt, line: &Line) -> Result<(String, String)> {
    let madison = apt.output("apt-cache", &["madison", META])?;
    // "linux-image-cloud-amd64 | 6.1.176-1 | http://… bookworm/main amd64 Packages"; apt lists
    // the highest version first.
    let version = madison
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split('|').map(str::trim).collect();
            let suite = cols.get(2)?.split_whitespace().nth(1)?.split('/').next()?;
            line.suites.contains(&suite).then(|| cols[1].to_owned())
        })
        .next()
        .with_context(|| {
            format!(
                "no {META} in {} (apt-cache madison said:\n{madison})",
                line.suites.join(", ")
            )
        })?;
    let show = apt.output("apt-cache", &["show", &format!("{META}={version}")])?;
    let image = show
        .lines()
        .find_map(|l| l.strip_prefix("Depends:"))
        .and_then(|deps| {
            deps.split(',')
                .map(|d| d.split_whitespace().next().unwrap_or(""))
                .find(|d| d.starts_with("linux-image-") && *d != META)
        })
        .with_context(|| format!("{META}={version} depends on no linux-image package"))?
        .to_owned();
    Ok((image, version))
}

/// Resolves, downloads (unless cached) and unpacks each line's kernel.
pub fn kernels(tools: &Path, lines: &[Line], refresh: bool) -> Result<Vec<Kernel>> {
    let apt = prepare(tools, refresh)?;
    let debs = tools.join("kernels/debs");
    let trees = tools.join("kernels/trees");
    std::fs::create_dir_all(&debs)?;
    std::fs::create_dir_all(&trees)?;
    let mut out = Vec::new();
    for line in lines {
        let (package, version) = resolve(&apt, line)?;
        let deb = debs.join(format!(
            "{package}_{}_amd64.deb",
            version.replace(':', "%3a")
        ));
        if deb.exists() {
            step(format!(
                "kernels: {} {package} {version}: cached",
                line.label
            ));
        } else {
            let mut cmd = apt.cmd("apt-get");
            cmd.args(["-q", "download", &format!("{package}={version}")])
                .current_dir(&debs);
            run_cmd(&mut cmd).with_context(|| format!("downloading {package}"))?;
            if !deb.exists() {
                bail!("apt-get download did not leave {} behind", deb.display());
            }
        }
        let tree = trees.join(format!("{package}_{version}"));
        if !tree.join("boot").is_dir() {
            let tmp = trees.join(format!(".{package}_{version}.tmp"));
            let _ = std::fs::remove_dir_all(&tmp);
            run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
            std::fs::rename(&tmp, &tree)?;
        }
        let release = std::fs::read_dir(tree.join("lib/modules"))
            .with_context(|| format!("{package} has no lib/modules"))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .next()
            .with_context(|| format!("{package} has an empty lib/modules"))?;
        out.push(Kernel {
            label: line.label,
            package,
            version,
            release,
            tree,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_source_formats() {
        let one = "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main\ndeb-src http://x/debian bookworm main\n";
        assert_eq!(
            one_line_entries(one),
            vec![(
                "http://m.example/debian".to_owned(),
                vec!["bookworm".to_owned()]
            )]
        );
        let deb822 = "Types: deb\nURIs: http://m.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://m.example/debian-security\nSuites: bookworm-security\nEnabled: no\n";
        assert_eq!(
            deb822_entries(deb822),
            vec![(
                "http://m.example/debian".to_owned(),
                vec!["bookworm".to_owned(), "bookworm-updates".to_owned()]
            )]
        );
    }
}
