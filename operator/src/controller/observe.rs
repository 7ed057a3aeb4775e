//! Step 3, observe: the pods the selector matches, the pods carrying this ServiceLog's
//! sidecar, and the `instances/` records acking a hash. The records come from
//! [`crate::zk::Zk`]'s watch-fed copy; while a rollout is partway and no ack came for
//! [`ROLLOUT_REFRESH_INTERVAL`], they are re-read from ZooKeeper (at most that often),
//! because watch events can be lost across a reconnect and the copy would miss those acks.

use std::{sync::Arc, time::Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    ResourceExt,
    core::{PartialObjectMeta, Selector, SelectorExt},
};
use servicelog_api::{pod::INJECTED_ANNOTATION, v1alpha1::LabelSelector};

use super::{Context, ROLLOUT_REFRESH_INTERVAL, memory::Key, status};
use crate::zk::InstanceRecord;

/// What the world looks like for one ServiceLog.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub pods: Pods,
    /// The instance records by pod, or `None` when ZooKeeper cannot be read.
    pub instances: Option<Vec<(String, InstanceRecord)>>,
    /// Fewer injected pods ack the hash than carry the sidecar: look again soon.
    pub behind: bool,
}

/// Pods of one ServiceLog's namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pods {
    /// Pods the selector matches (no selector matches none).
    pub matched: u32,
    /// Names of the pods carrying this ServiceLog's sidecar, sorted.
    pub injected: Vec<String>,
}

/// Observes the pods and instance records of `key`, the rollout measured against `hash`.
pub async fn observe(
    ctx: &Context,
    selector: Option<&LabelSelector>,
    key: &Key,
    hash: &str,
) -> Observed {
    let (namespace, name) = (key.0.as_str(), key.1.as_str());
    let pods = pods_of(&ctx.pods.state(), selector, namespace, name);
    let mut instances = ctx.zk.instances(namespace, name).ok();
    let behind = instances.as_ref().is_some_and(|instances| {
        let r = status::rollout(pods.matched, &pods.injected, instances, hash);
        r.counts.applied < r.counts.injected
    });
    if behind {
        // The safety net costs a read of every record (1,000 at 1,000 pods, on the
        // reconcile's path), so it is for a rollout that stalled: not at its start, and not
        // while the watch keeps bringing acks.
        let now = Instant::now();
        let quiet = |t: Option<Instant>| t.is_none_or(|t| t.elapsed() >= ROLLOUT_REFRESH_INTERVAL);
        match ctx.memory.rollout_refreshed(key) {
            None => ctx.memory.set_rollout_refreshed(key, Some(now)),
            Some(last)
                if quiet(Some(last))
                    && quiet(ctx.zk.instances_updated(namespace, name))
                    && ctx
                        .zk
                        .refresh_instances(&ctx.layout, namespace, name)
                        .await
                        .is_ok() =>
            {
                ctx.memory.set_rollout_refreshed(key, Some(now));
                instances = ctx.zk.instances(namespace, name).ok();
            }
            Some(_) => {}
        }
    } else {
        ctx.memory.set_rollout_refreshed(key, None);
    }
    Observed {
        pods,
        instances,
        behind,
    }
}

/// Counts the live pods of `namespace` that `selector` matches and lists those carrying
/// `name`'s sidecar.
pub fn pods_of(
    pods: &[Arc<PartialObjectMeta<Pod>>],
    selector: Option<&LabelSelector>,
    namespace: &str,
    name: &str,
) -> Pods {
    let selector: Option<Selector> = selector.and_then(|s| s.to_selector().ok());
    let mut matched = 0u32;
    let mut injected = Vec::new();
    for pod in pods {
        if pod.namespace().as_deref() != Some(namespace)
            || pod.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        if selector.as_ref().is_some_and(|s| s.matches(pod.labels())) {
            matched += 1;
        }
        if pod
            .annotations()
            .get(INJECTED_ANNOTATION)
            .map(String::as_str)
            == Some(name)
        {
            injected.push(pod.name_any());
        }
    }
    injected.sort();
    Pods { matched, injected }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Arc<PartialObjectMeta<Pod>> {
        Arc::new(serde_yaml::from_str(yaml).expect("pod metadata fixture"))
    }

    #[test]
    fn counts_matching_pods_and_lists_the_injected_ones_in_the_namespace() {
        let pods = [
            pod(
                "{apiVersion: v1, kind: Pod, metadata: {name: b, namespace: shop, labels: {app: checkout}, annotations: {servicelog.io/injected: checkout}}}",
            ),
            pod(
                "{apiVersion: v1, kind: Pod, metadata: {name: a, namespace: shop, labels: {app: checkout}, annotations: {servicelog.io/injected: checkout}}}",
            ),
            pod(
                "{apiVersion: v1, kind: Pod, metadata: {name: c, namespace: shop, labels: {app: cart}}}",
            ),
            pod(
                "{apiVersion: v1, kind: Pod, metadata: {name: d, namespace: other, labels: {app: checkout}, annotations: {servicelog.io/injected: checkout}}}",
            ),
            pod(
                "{apiVersion: v1, kind: Pod, metadata: {name: e, namespace: shop, labels: {app: checkout}, deletionTimestamp: '2026-12-01T00:00:00Z'}}",
            ),
        ];
        let selector: LabelSelector =
            serde_yaml::from_str("{matchLabels: {app: checkout}}").expect("selector");
        let seen = pods_of(&pods, Some(&selector), "shop", "checkout");
        assert_eq!(
            seen,
            Pods {
                matched: 2,
                injected: vec!["a".into(), "b".into()]
            }
        );
        assert_eq!(pods_of(&pods, None, "shop", "checkout").matched, 0);
    }
}
