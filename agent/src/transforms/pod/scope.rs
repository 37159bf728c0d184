//! The processes a span's ids are looked up among, chosen from its [`Origin`].
use crate::shared::origin::Origin;

/// The processes a span's ids are to be looked up among.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Processes whose cgroup path names this container id (a container has one pid namespace).
    Container(String),
    /// Processes in this pod's cgroups (the pod's containers may each have their own pid
    /// namespace: an id present in two of them is ambiguous and joins nothing).
    Pod(String),
}

impl Scope {
    /// The narrowest scope known: the container id if the span or `container_of` (the pod
    /// directory: pod uid + container name → container id) gives one, else the pod.
    pub fn of(
        origin: &Origin,
        container_of: impl Fn(&str, &str) -> Option<String>,
    ) -> Option<Scope> {
        if let Some(id) = &origin.container_id {
            return Some(Scope::Container(id.clone()));
        }
        let uid = origin.pod_uid.as_ref()?;
        if let Some(id) = origin
            .container_name
            .as_deref()
            .and_then(|name| container_of(uid, name))
        {
            return Some(Scope::Container(id));
        }
        Some(Scope::Pod(uid.clone()))
    }

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
                crate::shared::origin::pod_uid_from_cgroup_path(cgroup_path).as_deref()
                    == Some(uid.as_str())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::origin::{CONTAINER_ID, CONTAINER_NAME, POD_UID};
    use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value};

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
        assert_eq!(Scope::of(&o, |_, _| None), Some(Scope::Pod(UID.into())));
        let by_api = Scope::of(&o, |uid, name| {
            (uid == UID && name == "game-server").then(|| CID.to_owned())
        });
        assert_eq!(by_api, Some(Scope::Container(CID.into())));
        let o = Origin::read(&[kv(CONTAINER_ID, &format!("containerd://{CID}"))]).unwrap();
        assert_eq!(
            Scope::of(&o, |_, _| None),
            Some(Scope::Container(CID.into()))
        );
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
        let other = "ffffffffffff".to_owned();
        assert!(!Scope::Container(other).matches(&cgroupfs));
        assert!(!Scope::Pod("0f8c2a54-6a7e-4d3b-9a1e-2b3c4d5e6f71".into()).matches(&systemd));
        assert!(!Scope::Pod(UID.into()).matches("/user.slice/user-0.slice/session-1.scope"));
    }
}
