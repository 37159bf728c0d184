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
}

/// A container id as it appears in cgroup paths: the runtime prefix of a Kubernetes
/// `containerID` (`containerd://`, `cri-o://`, `docker://`) removed, lower-case hex. Ids shorter
/// than 12 characters are refused: they would match unrelated path components.
pub fn normalise_container_id(id: &str) -> Option<String> {
    let id = id.rsplit("://").next().unwrap_or(id).trim();
    (id.len() >= 12 && id.chars().all(|c| c.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

/// The Kubernetes pod a cgroup path belongs to, as the pod's UID: kubelet names pod cgroups
/// `pod<uid>` (cgroupfs driver, `/kubepods/burstable/pod<uid>/<container>`) or
/// `kubepods-<qos>-pod<uid_with_underscores>.slice` (systemd driver).
pub fn pod_uid_from_cgroup_path(path: &str) -> Option<String> {
    path.split('/').find_map(|part| {
        let part = part.strip_suffix(".slice").unwrap_or(part);
        let (_, uid) = part.rsplit_once("pod")?;
        let uid = uid.replace('_', "-");
        // A UID is 36 characters of hex and dashes; anything else is not a pod directory.
        (uid.len() == 36 && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-')).then_some(uid)
    })
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

    #[test]
    fn origin_from_resource() {
        assert_eq!(Origin::read(&[kv("service.name", "game")]), None);
        let cid = "4c1f0e9a7b3d2c1f0e9a7b3d";
        let o = Origin::read(&[
            kv(POD_UID, "0F8C2A54-6A7E-4D3B-9A1E-2B3C4D5E6F70"),
            kv(CONTAINER_NAME, "game-server"),
        ])
        .unwrap();
        assert_eq!(
            o.pod_uid.as_deref(),
            Some("0f8c2a54-6a7e-4d3b-9a1e-2b3c4d5e6f70")
        );
        assert_eq!(o.container_name.as_deref(), Some("game-server"));
        let o = Origin::read(&[kv(CONTAINER_ID, &format!("containerd://{cid}"))]).unwrap();
        assert_eq!(o.container_id.as_deref(), Some(cid));
        // Junk container ids are ignored, not matched against anything.
        assert_eq!(Origin::read(&[kv(CONTAINER_ID, "abc")]), None);
    }
}
