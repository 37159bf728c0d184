//! cgroup path (from /proc/<pid>/cgroup) → Kubernetes pod UID. Structured so that most inputs
//! look like kubelet's paths (cgroupfs and systemd drivers) and reach the UID check.
#![no_main]
use agent::transforms::attribution::pod_uid_from_cgroup_path;
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Part {
    Raw(String),
    /// `pod<uid>` (cgroupfs driver) or `kubepods-<qos>-pod<uid>.slice` (systemd driver).
    Pod {
        systemd: bool,
        qos: String,
        uid: [u8; 16],
        garble: Option<(u8, char)>,
    },
}

fn uid_text(b: &[u8; 16], sep: char) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    [&h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]].join(&sep.to_string())
}

fuzz_target!(|input: (Vec<Part>, Option<String>)| {
    let (parts, raw) = input;
    if let Some(raw) = raw {
        check(&raw);
    }
    let path: Vec<String> = parts
        .into_iter()
        .map(|p| match p {
            Part::Raw(s) => s,
            Part::Pod {
                systemd,
                qos,
                uid,
                garble,
            } => {
                let mut u = uid_text(&uid, if systemd { '_' } else { '-' });
                if let Some((at, c)) = garble {
                    let at = at as usize % u.len();
                    if u.is_char_boundary(at) {
                        u.insert(at, c);
                    }
                }
                if systemd {
                    format!("kubepods-{qos}-pod{u}.slice")
                } else {
                    format!("pod{u}")
                }
            }
        })
        .collect();
    check(&path.join("/"));
});

fn check(path: &str) {
    if let Some(uid) = pod_uid_from_cgroup_path(path) {
        assert_eq!(uid.len(), 36, "{path:?} -> {uid:?}");
        assert!(uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-'));
    }
}
