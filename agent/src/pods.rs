//! Which pods of the node the agent serves: a pure function of the Pod object.
//!
//! A pod is served when it carries the webhook's `servicelog.io/inject` annotation (its
//! ServiceLog's name), has a uid (its log directory is `<ns>_<pod>_<uid>`) and is bound
//! to a node. Whether the ServiceLog has `containerLogs` sources is the config's business:
//! a pod whose ServiceLog has none gets a pipeline that reads nothing, and its sidecar
//! (not the agent) writes its instance record.

use std::{collections::HashMap, path::Path};

use k8s_openapi::api::core::v1::Pod;
use servicelog_api::pod::{INJECT_ANNOTATION, SIDECAR_CONTAINER};

/// A pod the agent serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The ServiceLog it names.
    pub service_log: String,
    /// Its app containers: what a `containerLogs` source without `containers` reads.
    pub containers: Vec<String>,
    /// Whether the webhook gave it the sidecar, which then writes its instance record.
    pub has_sidecar: bool,
}

/// The pod as the agent serves it, or `None` when it is not one to serve.
pub fn served(pod: &Pod) -> Option<ServedPod> {
    let meta = &pod.metadata;
    let service_log = meta.annotations.as_ref()?.get(INJECT_ANNOTATION)?;
    if service_log.is_empty() {
        return None;
    }
    let spec = pod.spec.as_ref()?;
    spec.node_name.as_ref()?;
    let has_sidecar = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == SIDECAR_CONTAINER);
    Some(ServedPod {
        namespace: meta.namespace.clone()?,
        name: meta.name.clone()?,
        uid: meta.uid.clone()?,
        service_log: service_log.clone(),
        containers: spec
            .containers
            .iter()
            .map(|c| c.name.clone())
            .filter(|n| n != SIDECAR_CONTAINER)
            .collect(),
        has_sidecar,
    })
}

/// The pods whose log dirs are under `root` (`<ns>_<pod>_<uid>`: namespace and pod names
/// hold no `_`), by uid, as served pods without a ServiceLog: what a pod deleted while the
/// agent was down is drained as. Its containers are its log dir's subdirs.
pub fn log_dirs(root: &Path) -> HashMap<String, ServedPod> {
    let mut found = HashMap::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let mut parts = name.splitn(3, '_');
        let (Some(namespace), Some(pod), Some(uid)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let mut containers: Vec<String> = std::fs::read_dir(entry.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|c| c.path().is_dir())
            .map(|c| c.file_name().to_string_lossy().into_owned())
            .filter(|c| c != SIDECAR_CONTAINER)
            .collect();
        containers.sort();
        found.insert(
            uid.to_owned(),
            ServedPod {
                namespace: namespace.to_owned(),
                name: pod.to_owned(),
                uid: uid.to_owned(),
                service_log: String::new(),
                containers,
                // No record to write or remove: it went with the old session.
                has_sidecar: true,
            },
        );
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: &str) -> Pod {
        serde_json::from_str(json).expect("fixture parses")
    }

    #[test]
    fn given_an_annotated_bound_pod_then_it_is_served_with_its_app_containers() {
        let p = pod(
            r#"{"metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1",
              "annotations": {"servicelog.io/inject": "checkout"}},
            "spec": {"nodeName": "node-a", "containers": [{"name": "app"}, {"name": "proxy"}],
              "initContainers": [{"name": "servicelog-sidecar"}]}}"#,
        );
        assert_eq!(
            served(&p),
            Some(ServedPod {
                namespace: "shop".into(),
                name: "web-1".into(),
                uid: "u-1".into(),
                service_log: "checkout".into(),
                containers: vec!["app".into(), "proxy".into()],
                has_sidecar: true,
            })
        );
    }

    #[test]
    fn given_a_pod_without_the_annotation_or_not_bound_then_it_is_not_served() {
        for (why, json) in [
            (
                "no annotation",
                r#"{"metadata": {"name": "a", "namespace": "n", "uid": "u"},
                   "spec": {"nodeName": "x", "containers": [{"name": "app"}]}}"#,
            ),
            (
                "empty name",
                r#"{"metadata": {"name": "a", "namespace": "n", "uid": "u",
                     "annotations": {"servicelog.io/inject": ""}},
                   "spec": {"nodeName": "x", "containers": [{"name": "app"}]}}"#,
            ),
            (
                "not bound",
                r#"{"metadata": {"name": "a", "namespace": "n", "uid": "u",
                     "annotations": {"servicelog.io/inject": "s"}},
                   "spec": {"containers": [{"name": "app"}]}}"#,
            ),
        ] {
            assert_eq!(served(&pod(json)), None, "{why}");
        }
    }
}
