//! tracefs: where the kernel describes its tracepoints. We read record layouts from the `format`
//! files at load time instead of compiling offsets in, so one eBPF object fits kernels whose
//! tracepoint records differ (e.g. `tcp_send_reset` changed shape in 6.10).
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

#[derive(Clone, Debug)]
pub struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    /// Finds a mounted tracefs; when none is mounted and we may mount, mounts it at the standard
    /// place (what `mount -t tracefs nodev /sys/kernel/tracing` does).
    pub fn locate(explicit: Option<&Path>) -> Result<Self> {
        if let Some(root) = explicit {
            if root.join("events").is_dir() {
                return Ok(Self {
                    root: root.to_owned(),
                });
            }
            bail!(
                "tracefs not found at {} (no events/ directory); mount it with `mount -t tracefs nodev {}`",
                root.display(),
                root.display()
            );
        }
        for c in CANDIDATES {
            if Path::new(c).join("events").is_dir() {
                return Ok(Self { root: c.into() });
            }
        }
        if try_mount(CANDIDATES[0]).is_ok() && Path::new(CANDIDATES[0]).join("events").is_dir() {
            tracing::info!(path = CANDIDATES[0], "mounted tracefs");
            return Ok(Self {
                root: CANDIDATES[0].into(),
            });
        }
        bail!(
            "tracefs is not mounted and could not be mounted; run `mount -t tracefs nodev /sys/kernel/tracing` (in Kubernetes, mount the host's /sys/kernel/tracing)"
        )
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The record layout of `category:name`, or an error naming the missing tracepoint.
    pub fn format(&self, category: &str, name: &str) -> Result<Format> {
        let path = self
            .root
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "kernel lacks tracepoint {category}:{name} ({} unreadable)",
                path.display()
            )
        })?;
        Format::parse(&text).with_context(|| format!("cannot parse {}", path.display()))
    }
}

fn try_mount(target: &str) -> std::io::Result<()> {
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (src, tgt, fs) = (c("nodev"), c(target), c("tracefs"));
    // SAFETY: valid NUL-terminated strings, no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u16,
    pub size: u16,
}

/// A parsed tracepoint `format` file.
#[derive(Clone, Debug, Default)]
pub struct Format {
    pub fields: Vec<Field>,
}

impl Format {
    pub fn parse(text: &str) -> Result<Self> {
        let mut fields = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            // "field:__u8 saddr[4];\toffset:22;\tsize:4;\tsigned:0;"
            let mut decl = None;
            let mut offset = None;
            let mut size = None;
            for part in rest.split(';').map(str::trim) {
                if let Some(v) = part.strip_prefix("offset:") {
                    offset = Some(v.parse::<u16>()?);
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = Some(v.parse::<u16>()?);
                } else if decl.is_none() && !part.is_empty() {
                    decl = Some(part);
                }
            }
            let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) else {
                bail!("malformed field line: {line}");
            };
            let ident = decl.rsplit([' ', '*']).next().unwrap_or(decl);
            let name = ident.split('[').next().unwrap_or(ident).to_owned();
            fields.push(Field { name, offset, size });
        }
        if fields.is_empty() {
            bail!("no fields");
        }
        Ok(Self { fields })
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    pub fn offset(&self, name: &str) -> Option<u16> {
        self.field(name).map(|f| f.offset)
    }

    /// Offset of a field we cannot work without.
    pub fn require(&self, tp: &str, name: &str) -> Result<u16> {
        self.offset(name).with_context(|| {
            format!("tracepoint {tp} has no field `{name}`; this kernel's layout is not supported")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEND_RESET: &str = "name: tcp_send_reset\nID: 1\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;\n\tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;\n\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;\n\nprint fmt: \"x\"\n";

    #[test]
    fn parses_pointer_enum_and_array_fields() {
        let f = Format::parse(SEND_RESET).unwrap();
        assert_eq!(
            f.field("skaddr"),
            Some(&Field {
                name: "skaddr".into(),
                offset: 16,
                size: 8
            })
        );
        assert_eq!(f.offset("reason"), Some(28));
        assert_eq!(f.field("saddr").unwrap().size, 28);
        assert_eq!(f.offset("common_type"), Some(0));
        assert!(f.offset("daddr").is_none());
    }

    #[test]
    fn rejects_garbage() {
        assert!(Format::parse("hello").is_err());
        assert!(Format::parse("field:int x;\toffset:zz;\tsize:4;").is_err());
    }
}
