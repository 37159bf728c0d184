//! Where a span comes from, as its resource says: the namespace its `process.pid` and
//! `thread.id` are numbers in.
//!
//! A pod sets these from the downward API (`OTEL_RESOURCE_ATTRIBUTES=k8s.pod.uid=$(POD_UID),
//! k8s.container.name=...`, see deploy/k8s); SDKs with a container detector set `container.id`.
//! A span with none of them is taken to come from the agent's own (the host's) pid namespace.
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value};

/// The OTel resource attributes we read.
pub const CONTAINER_ID: &str = "container.id";
pub const POD_UID: &str = "k8s.pod.uid";
pub const CONTAINER_NAME: &str = "k8s.container.name";

/// What a span's resource says about its origin.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Origin {
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
    pub container_name: Option<String>,
}

/// The processes a span's ids are to be looked up among.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Processes whose cgroup path names this container id (a container has one pid namespace).
    Container(String),
    /// Processes in this pod's cgroups (the pod's containers may each have their own pid
    /// namespace: an id present in two of them is ambiguous and joins nothing).
    Pod(String),
}

fn last_str<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    // The last value wins, as with the OpenTelemetry API's set_attribute.
    attrs
        .iter()
        .rev()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.trim()),
            _ => None,
        })
        .filter(|s| !s.is_empty())
}

impl Origin {
    /// Reads the origin from a span's resource; `None` when it names none (a host process).
    pub fn read(resource: &[KeyValue]) -> Option<Self> {
        let o = Self {
            container_id: last_str(resource, CONTAINER_ID).and_then(normalise_container_id),
            pod_uid: last_str(resource, POD_UID).map(str::to_ascii_lowercase),
            container_name: last_str(resource, CONTAINER_NAME).map(str::to_owned),
        };
        (o.container_id.is_some() || o.pod_uid.is_some()).then_some(o)
    }

    /// The narrowest scope known: the container id if the span or `container_of` (the pod
    /// directory: pod uid + container name → container id) gives one, else the pod.
    pub fn scope(&self, container_of: impl Fn(&str, &str) -> Option<String>) -> Option<Scope> {
        if let Some(id) = &self.container_id {
            return Some(Scope::Container(id.clone()));
        }
        let uid = self.pod_uid.as_ref()?;
        if let Some(id) = self
            .container_name
            .as_deref()
            .and_then(|name| container_of(uid, name))
        {
            return Some(Scope::Container(id));
        }
        Some(Scope::Pod(uid.clone()))
    }
}

/// A container id as it appears in cgroup paths: the runtime prefix of a Kubernetes
/// `containerID` (`containerd://`, `cri-o://`, `docker://`) removed, lower-case hex. Ids shorter
/// than 12 characters are refused: they would match unrelated path components.
pub fn normalise_container_id(id: &str) -> Option<String> {
    let id = id.rsplit("://").next().unwrap_or(id).trim();
    (id.len() >= 12 && id.chars().all(|c| c.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

impl Scope {
    /// Whether a process with this cgroup path is in the scope.
    pub fn matches(&self, cgroup_path: &str) -> bool {
        match self {
            // Runtimes name the container's cgroup `<id>`, `cri-containerd-<id>.scope`,
            // `crio-<id>.scope` or `docker-<id>.scope`.
            Scope::Container(id) => cgroup_path.split('/').any(|part| {
                let part = part.strip_suffix(".scope").unwrap_or(part);
                part.rsplit('-').next() == Some(id.as_str())
            }),
            Scope::Pod(uid) => {
                crate::transforms::attribution::pod_uid_from_cgroup_path(cgroup_path).as_deref()
                    == Some(uid.as_str())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                value: Some(Value::StringValue(v.into())),
            }),
        }
    }

    const UID: &str = "0f8c2a54-6a7e-4d3b-9a1e-2b3c4d5e6f70";
    const CID: &str = "4c1f0e9a7b3d2c1f0e9a7b3d2c1f0e9a7b3d2c1f0e9a7b3d2c1f0e9a7b3d2c1f";

    #[test]
    fn origin_from_resource_and_its_scope() {
        assert_eq!(Origin::read(&[kv("service.name", "game")]), None);
        let o = Origin::read(&[kv(POD_UID, UID), kv(CONTAINER_NAME, "game-server")]).unwrap();
        assert_eq!(o.scope(|_, _| None), Some(Scope::Pod(UID.into())));
        let by_api =
            o.scope(|uid, name| (uid == UID && name == "game-server").then(|| CID.to_owned()));
        assert_eq!(by_api, Some(Scope::Container(CID.into())));
        let o = Origin::read(&[kv(CONTAINER_ID, &format!("containerd://{CID}"))]).unwrap();
        assert_eq!(o.scope(|_, _| None), Some(Scope::Container(CID.into())));
        // Junk container ids are ignored, not matched against anything.
        assert_eq!(Origin::read(&[kv(CONTAINER_ID, "abc")]), None);
    }

    #[test]
    fn scopes_match_kubelet_cgroup_paths() {
        let cgroupfs = format!("/kubepods/burstable/pod{UID}/{CID}");
        let systemd = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{CID}.scope",
            UID.replace('-', "_")
        );
        for path in [&cgroupfs, &systemd] {
            assert!(Scope::Container(CID.into()).matches(path), "{path}");
            assert!(Scope::Pod(UID.into()).matches(path), "{path}");
        }
        let other = "ffffffffffff".repeat(1);
        assert!(!Scope::Container(other).matches(&cgroupfs));
        assert!(!Scope::Pod("0f8c2a54-6a7e-4d3b-9a1e-2b3c4d5e6f71".into()).matches(&systemd));
        assert!(!Scope::Pod(UID.into()).matches("/user.slice/user-0.slice/session-1.scope"));
    }
}
