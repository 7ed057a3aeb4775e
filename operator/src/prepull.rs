//! Sidecar images pulled ahead of the pods that need them.
//!
//! The sidecar is a native sidecar (an init container that keeps running): the kubelet
//! starts the app only once it has started, so a sidecar image that cannot be pulled — a
//! typo, a registry down, a pull secret missing — would hold every injected pod in
//! `Init:ImagePullBackOff`, and servicelog would block the deploy it was only meant to
//! observe. So the chart runs the sidecar image, idle (`servicelog-sidecar --hold`), in a
//! DaemonSet on every node, and the webhook injects an image only once a container of a
//! pre-pull pod runs it ([`Gate`]): proof that the reference exists and that the nodes can
//! pull it. Until then the pod is admitted without the sidecar, with a warning and an
//! Event, like every other skip. Running (rather than pulling and exiting) also keeps the
//! image in use, out of the kubelet's image garbage collection.
//!
//! Images set per ServiceLog (`spec.sidecar.image`) get the same treatment from a second
//! DaemonSet the leader keeps ([`keep`]): the chart's pod template with one container per
//! such image, owned by the chart's DaemonSet so `helm uninstall` removes both.

use std::{collections::BTreeSet, time::Duration};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, DaemonSetSpec},
        core::v1::{Container, Pod},
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};

use crate::cache::CachedServiceLog;

/// The label every pre-pull pod carries, valued with the chart's DaemonSet name.
pub const LABEL: &str = "servicelog.io/prepull";
/// The label selecting the leader's DaemonSet's pods (and not the chart's).
const SET_LABEL: &str = "servicelog.io/prepull-set";
/// Most per-ServiceLog images pre-pulled; past them an image is not injected (a warning
/// says why) rather than growing one pod per node without bound.
pub const MAX_EXTRA_IMAGES: usize = 16;
/// How long an admission waits for the first listing of the pre-pull pods (an operator
/// just started).
const LISTING_WAIT: Duration = Duration::from_secs(2);
/// How often the leader compares the images in use with its DaemonSet.
const KEEP_INTERVAL: Duration = Duration::from_secs(5);
const FIELD_MANAGER: &str = "servicelog-operator";

/// Which sidecar images the nodes run, from the pre-pull pods' container statuses.
#[derive(Clone)]
pub struct Gate {
    pods: Store<Pod>,
    name: String,
}

impl Gate {
    /// Watches the pre-pull pods of the DaemonSet `name` in `namespace`.
    pub fn start(client: Client, namespace: &str, name: &str) -> Self {
        let config = watcher::Config::default().labels(&format!("{LABEL}={name}"));
        let (pods, writer) = reflector::store();
        let stream = watcher(Api::<Pod>::namespaced(client, namespace), config)
            .default_backoff()
            .modify(|pod| pod.managed_fields_mut().clear())
            .reflect(writer)
            .applied_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                if let Err(e) = event {
                    tracing::warn!(error = %e, "watching the sidecar pre-pull pods");
                }
            }
        });
        Self {
            pods,
            name: name.to_owned(),
        }
    }

    /// `Ok` once a pre-pull pod runs `image`; otherwise why not, for the warning.
    pub async fn check(&self, image: &str) -> Result<(), String> {
        if tokio::time::timeout(LISTING_WAIT, self.pods.wait_until_ready())
            .await
            .is_err()
        {
            return Err(format!(
                "the pre-pull pods ({LABEL}={}) were not listed within {LISTING_WAIT:?}, so whether the nodes have sidecar image {image} is unknown",
                self.name
            ));
        }
        let pods = self.pods.state();
        evaluate(pods.iter().map(AsRef::as_ref), image, &self.name)
    }
}

/// Whether a container running `image` is ready in one of `pods`, else the first pull
/// problem seen for it (the kubelet's reason and message), else that none runs it.
fn evaluate<'a>(
    pods: impl Iterator<Item = &'a Pod>,
    image: &str,
    name: &str,
) -> Result<(), String> {
    let mut problem = None;
    for pod in pods {
        let Some(spec) = &pod.spec else { continue };
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_deref())
            .unwrap_or_default();
        for container in spec
            .containers
            .iter()
            .filter(|c| c.image.as_deref() == Some(image))
        {
            let Some(status) = statuses.iter().find(|s| s.name == container.name) else {
                continue;
            };
            if status.ready {
                return Ok(());
            }
            if problem.is_none()
                && let Some(waiting) = status.state.as_ref().and_then(|s| s.waiting.as_ref())
            {
                problem = Some(format!(
                    "pre-pull pod {} on node {}: {}{}",
                    pod.name_any(),
                    spec.node_name.as_deref().unwrap_or("?"),
                    waiting.reason.as_deref().unwrap_or("waiting"),
                    waiting
                        .message
                        .as_deref()
                        .map(|m| format!(": {}", m.chars().take(300).collect::<String>()))
                        .unwrap_or_default()
                ));
            }
        }
    }
    let cause = problem
        .unwrap_or_else(|| format!("no pod of the pre-pull DaemonSets {name}[-extra] runs it yet"));
    Err(format!(
        "sidecar image {image} is not running on any node ({cause}); the pod runs without the servicelog sidecar, so that an image that cannot be pulled never holds it in Init — re-create it once the image is pulled"
    ))
}

/// The per-ServiceLog images, sorted, without the default one, at most
/// [`MAX_EXTRA_IMAGES`] (the first in sort order).
fn extra_images(servicelogs: &Store<CachedServiceLog>, default_image: &str) -> BTreeSet<String> {
    let mut images: BTreeSet<String> = servicelogs
        .state()
        .iter()
        .filter_map(|slog| slog.sidecar_image())
        .filter(|image| image != default_image)
        .collect();
    while images.len() > MAX_EXTRA_IMAGES {
        images.pop_last();
    }
    images
}

/// The leader's DaemonSet for `images`: the chart DaemonSet's pod template with one
/// container per image, its own selector, owned by the chart's DaemonSet.
fn extra_daemonset(chart: &DaemonSet, images: &BTreeSet<String>) -> Option<DaemonSet> {
    let name = format!("{}-extra", chart.name_any());
    let chart_spec = chart.spec.as_ref()?;
    let mut template = chart_spec.template.clone();
    let mut pod = template.spec.take()?;
    let model: Container = pod.containers.first()?.clone();
    pod.containers = images
        .iter()
        .enumerate()
        .map(|(i, image)| Container {
            name: format!("sidecar-{i}"),
            image: Some(image.clone()),
            ..model.clone()
        })
        .collect();
    template.spec = Some(pod);
    let chart_name = chart.name_any();
    let labels = [
        (LABEL.to_owned(), chart_name.clone()),
        (SET_LABEL.to_owned(), name.clone()),
    ];
    template.metadata = Some(ObjectMeta {
        labels: Some(labels.clone().into_iter().collect()),
        ..Default::default()
    });
    let owner = OwnerReference {
        api_version: "apps/v1".into(),
        kind: "DaemonSet".into(),
        name: chart_name,
        uid: chart.uid()?,
        controller: Some(false),
        block_owner_deletion: None,
    };
    Some(DaemonSet {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: chart.namespace(),
            labels: Some(labels.into_iter().collect()),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some([(SET_LABEL.to_owned(), name)].into_iter().collect()),
                match_expressions: None,
            },
            template,
            update_strategy: chart_spec.update_strategy.clone(),
            ..Default::default()
        }),
        status: None,
    })
}

/// On the leader: keeps `<name>-extra` running every per-ServiceLog sidecar image, or
/// absent when there is none. Failures are logged and retried at the next interval.
pub async fn keep(
    client: Client,
    namespace: String,
    name: String,
    default_image: String,
    servicelogs: Store<CachedServiceLog>,
) {
    let api = Api::<DaemonSet>::namespaced(client, &namespace);
    let extra = format!("{name}-extra");
    let mut applied: Option<BTreeSet<String>> = None;
    loop {
        let images = extra_images(&servicelogs, &default_image);
        if applied.as_ref() != Some(&images) {
            match apply(&api, &name, &extra, &images).await {
                Ok(()) => {
                    tracing::info!(daemonset = %extra, images = ?images, "sidecar pre-pull images kept");
                    applied = Some(images);
                }
                Err(e) => {
                    tracing::warn!(daemonset = %extra, error = %e, "cannot keep the per-ServiceLog sidecar images pre-pulled")
                }
            }
        }
        tokio::time::sleep(KEEP_INTERVAL).await;
    }
}

async fn apply(
    api: &Api<DaemonSet>,
    name: &str,
    extra: &str,
    images: &BTreeSet<String>,
) -> Result<(), String> {
    if images.is_empty() {
        return match api.delete(extra, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(format!("deleting DaemonSet {extra}: {e}")),
        };
    }
    let chart = api
        .get(name)
        .await
        .map_err(|e| format!("reading the chart's DaemonSet {name}: {e}"))?;
    let daemonset = extra_daemonset(&chart, images).ok_or_else(|| {
        format!("DaemonSet {name} has no pod template with a container and uid to copy")
    })?;
    let mut value = serde_json::to_value(&daemonset).map_err(|e| e.to_string())?;
    if let Some(object) = value.as_object_mut() {
        object.insert("apiVersion".into(), DaemonSet::api_version(&()).into());
        object.insert("kind".into(), DaemonSet::kind(&()).into());
    }
    api.patch(
        extra,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(value),
    )
    .await
    .map(drop)
    .map_err(|e| format!("applying DaemonSet {extra}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).expect("a pod")
    }

    const RUNNING: &str = r#"
metadata: {name: pre-a, labels: {servicelog.io/prepull: slog-sidecar-prepull}}
spec:
  nodeName: node-1
  containers: [{name: sidecar, image: "ghcr.io/x/sidecar:1"}]
status:
  containerStatuses:
  - {name: sidecar, image: "ghcr.io/x/sidecar:1", imageID: "", ready: true, restartCount: 0, state: {running: {}}}
"#;

    const BACKOFF: &str = r#"
metadata: {name: pre-b}
spec:
  nodeName: node-2
  containers: [{name: sidecar-0, image: "ghcr.io/x/typo:1"}]
status:
  containerStatuses:
  - name: sidecar-0
    image: "ghcr.io/x/typo:1"
    imageID: ""
    ready: false
    restartCount: 0
    state: {waiting: {reason: ImagePullBackOff, message: "Back-off pulling image \"ghcr.io/x/typo:1\""}}
"#;

    #[test]
    fn given_a_ready_prepull_container_with_the_image_then_it_may_be_injected() {
        let pods = [pod(RUNNING), pod(BACKOFF)];
        assert_eq!(evaluate(pods.iter(), "ghcr.io/x/sidecar:1", "slog"), Ok(()));
    }

    #[test]
    fn given_an_image_in_pull_backoff_then_the_reason_names_the_node_and_the_kubelets_message() {
        let pods = [pod(RUNNING), pod(BACKOFF)];
        let why = evaluate(pods.iter(), "ghcr.io/x/typo:1", "slog").unwrap_err();
        assert!(
            why.contains("sidecar image ghcr.io/x/typo:1 is not running on any node"),
            "{why}"
        );
        assert!(
            why.contains("pre-b on node node-2: ImagePullBackOff: Back-off pulling"),
            "{why}"
        );
        assert!(why.contains("runs without the servicelog sidecar"), "{why}");
    }

    #[test]
    fn given_no_prepull_pod_with_the_image_then_it_is_not_injected() {
        let pods = [pod(RUNNING)];
        let why = evaluate(pods.iter(), "ghcr.io/x/other:2", "slog").unwrap_err();
        assert!(
            why.contains("no pod of the pre-pull DaemonSets slog[-extra] runs it yet"),
            "{why}"
        );
    }

    #[test]
    fn given_the_charts_daemonset_then_the_extra_one_copies_its_template_with_a_container_per_image()
     {
        let chart: DaemonSet = serde_yaml::from_str(
            r#"
metadata: {name: slog-sidecar-prepull, namespace: servicelog, uid: "1234"}
spec:
  selector: {matchLabels: {app.kubernetes.io/component: sidecar-prepull}}
  updateStrategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}
  template:
    metadata: {labels: {app.kubernetes.io/component: sidecar-prepull, servicelog.io/prepull: slog-sidecar-prepull}}
    spec:
      automountServiceAccountToken: false
      tolerations: [{operator: Exists}]
      containers: [{name: sidecar, image: "ghcr.io/x/sidecar:1", args: [--hold]}]
"#,
        )
        .expect("a DaemonSet");
        let images: BTreeSet<String> = ["a:1".to_owned(), "b:2".to_owned()].into();
        let extra = extra_daemonset(&chart, &images).expect("built");
        assert_eq!(extra.name_any(), "slog-sidecar-prepull-extra");
        assert_eq!(extra.owner_references()[0].uid, "1234");
        let spec = extra.spec.expect("spec");
        let labels = spec
            .template
            .metadata
            .and_then(|m| m.labels)
            .expect("labels");
        assert_eq!(labels[LABEL], "slog-sidecar-prepull");
        assert!(
            !labels.contains_key("app.kubernetes.io/component"),
            "the chart DaemonSet's selector would match: {labels:?}"
        );
        let pod = spec.template.spec.expect("pod spec");
        let containers: Vec<_> = pod
            .containers
            .iter()
            .map(|c| (c.name.as_str(), c.image.as_deref(), c.args.clone()))
            .collect();
        assert_eq!(
            containers,
            [
                ("sidecar-0", Some("a:1"), Some(vec!["--hold".to_owned()])),
                ("sidecar-1", Some("b:2"), Some(vec!["--hold".to_owned()])),
            ]
        );
        assert_eq!(pod.tolerations.map(|t| t.len()), Some(1));
        assert_eq!(
            spec.selector.match_labels.expect("selector")[SET_LABEL],
            "slog-sidecar-prepull-extra"
        );
    }
}
