//! Sidecar images pulled ahead of the pods that need them.
//!
//! The sidecar is a native sidecar (an init container that keeps running): the kubelet
//! starts the app only once it has started, so a sidecar image that cannot be pulled — a
//! typo, a registry down, a pull secret missing — would hold every injected pod in
//! `Init:ImagePullBackOff`, and servicelog would block the deploy it was only meant to
//! observe. So the chart runs the sidecar image, idle (`servicelog-sidecar --hold`), in a
//! DaemonSet on every node, and the webhook injects an image only once a pre-pull pod has
//! pulled it ([`Gate`]): proof that the reference exists and that nodes can pull it. Until
//! then the pod is admitted without the sidecar, with a warning and an Event, like every
//! other skip. Running (rather than pulling and exiting) also keeps the image in use, out
//! of the kubelet's image garbage collection. A proof is remembered — a DaemonSet rollout
//! replacing its pods does not close the gate — until a pre-pull pod reports that it cannot
//! pull the image.
//!
//! Images set per ServiceLog (`spec.sidecar.image`) get the same treatment from a second
//! DaemonSet the leader keeps ([`keep`]): the chart's pod template with one container per
//! such image, owned by the chart's DaemonSet so `helm uninstall` removes both. Those pods
//! run in the operator's namespace on every node, so only images the operator allows
//! ([`Allowed`], `--sidecar-allowed-images`; by default the default image's repository)
//! are pre-pulled or injected: a namespace's editor cannot make every node run an image of
//! their choosing.

use std::{
    collections::{BTreeSet, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet},
        core::v1::{Container, Pod},
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
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
/// How often the leader applies its DaemonSet even when nothing seems to have changed.
const REPAIR_INTERVAL: Duration = Duration::from_secs(60);
const FIELD_MANAGER: &str = "servicelog-operator";

/// Which sidecar images the nodes have pulled, from the pre-pull pods' container statuses.
#[derive(Clone)]
pub struct Gate {
    pods: Store<Pod>,
    name: String,
    /// Images a pre-pull pod has pulled since this process started.
    proven: Arc<Mutex<HashSet<String>>>,
}

/// The sidecar images the operator injects and pre-pulls: those starting with one of its
/// prefixes.
#[derive(Clone, Debug)]
pub struct Allowed {
    prefixes: Vec<String>,
}

impl Allowed {
    /// `prefixes`, or when there are none the repository of `default_image` (any tag or
    /// digest of it).
    pub fn new(prefixes: &[String], default_image: &str) -> Self {
        let prefixes: Vec<String> = prefixes
            .iter()
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect();
        if !prefixes.is_empty() {
            return Self { prefixes };
        }
        let repository = default_image
            .split_once('@')
            .map_or(default_image, |(repo, _)| repo);
        // A tag is what follows the last ':' after the last '/' (a registry may have a port).
        let repository = match repository.rfind(':') {
            Some(colon) if colon > repository.rfind('/').unwrap_or(0) => &repository[..colon],
            _ => repository,
        };
        Self {
            prefixes: vec![format!("{repository}:"), format!("{repository}@")],
        }
    }

    /// `Ok` if `image` may be injected; else why not, naming the flag.
    pub fn check(&self, image: &str) -> Result<(), String> {
        if self.prefixes.iter().any(|p| image.starts_with(p.as_str())) {
            Ok(())
        } else {
            Err(format!(
                "sidecar image {image} is not one the operator allows (--sidecar-allowed-images, chart operator.sidecar.allowedImages: {}); the pod runs without the servicelog sidecar",
                self.prefixes.join(", ")
            ))
        }
    }
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
            proven: Arc::default(),
        }
    }

    /// `Ok` once a pre-pull pod has pulled `image`; otherwise why not, for the warning.
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
        let mut proven = self
            .proven
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match evaluate(pods.iter().map(AsRef::as_ref), image) {
            Evidence::Pulled => {
                proven.insert(image.to_owned());
                Ok(())
            }
            Evidence::None if proven.contains(image) => Ok(()),
            evidence => {
                proven.remove(image);
                Err(refusal(image, &self.name, evidence))
            }
        }
    }
}

/// What the pre-pull pods say of an image.
#[derive(Debug, PartialEq, Eq)]
enum Evidence {
    /// A container with it has an image ID: some node pulled it.
    Pulled,
    /// None has pulled it; the first pull problem reported (the kubelet's reason and
    /// message).
    Failing(String),
    /// No pre-pull pod has a container status for it.
    None,
}

fn refusal(image: &str, name: &str, evidence: Evidence) -> String {
    let cause = match evidence {
        Evidence::Failing(problem) => problem,
        _ => format!(
            "no pod of the pre-pull DaemonSets {name}[-extra] has pulled it yet; at most {MAX_EXTRA_IMAGES} images set per ServiceLog are pre-pulled"
        ),
    };
    format!(
        "sidecar image {image} is not pulled on any node ({cause}); the pod runs without the servicelog sidecar, so that an image that cannot be pulled never holds it in Init — re-create it once the image is pulled"
    )
}

/// What `pods` say of `image`: pulled by one of them (its container has an image ID, even
/// if it is not running), else the first pull problem one reports, else nothing.
fn evaluate<'a>(pods: impl Iterator<Item = &'a Pod>, image: &str) -> Evidence {
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
            if !status.image_id.is_empty() {
                return Evidence::Pulled;
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
    problem.map_or(Evidence::None, Evidence::Failing)
}

/// The per-ServiceLog images the operator allows, sorted, without the default one, at
/// most [`MAX_EXTRA_IMAGES`] (the first in sort order).
fn extra_images(
    servicelogs: &Store<CachedServiceLog>,
    default_image: &str,
    allowed: &Allowed,
) -> BTreeSet<String> {
    let mut images: BTreeSet<String> = servicelogs
        .state()
        .iter()
        .filter_map(|slog| slog.sidecar_image())
        .filter(|image| image != default_image && allowed.check(image).is_ok())
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
            // Every pod replaced at once: with the chart's surge, a pod holding an image
            // that cannot be pulled never became Ready and stalled every later change on
            // its first node. Proofs are remembered, so the brief gap closes no gate.
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_surge: Some(IntOrString::Int(0)),
                    max_unavailable: Some(IntOrString::String("100%".into())),
                }),
            }),
            ..Default::default()
        }),
        status: None,
    })
}

/// On the leader: keeps `<name>-extra` running every allowed per-ServiceLog sidecar
/// image, or absent when there is none — after the first full listing of ServiceLogs (an
/// empty cache would delete it), on every change, and every [`REPAIR_INTERVAL`] in any case
/// (a deleted `-extra`, or a chart DaemonSet re-created or changed by `helm upgrade`).
/// Failures are logged and retried at the next interval.
pub async fn keep(
    client: Client,
    namespace: String,
    name: String,
    default_image: String,
    allowed: Allowed,
    servicelogs: Store<CachedServiceLog>,
) {
    if servicelogs.wait_until_ready().await.is_err() {
        tracing::warn!(
            "the ServiceLog cache ended; the per-ServiceLog sidecar images are not pre-pulled"
        );
        return;
    }
    let api = Api::<DaemonSet>::namespaced(client, &namespace);
    let extra = format!("{name}-extra");
    let mut applied: Option<(BTreeSet<String>, tokio::time::Instant)> = None;
    loop {
        let images = extra_images(&servicelogs, &default_image, &allowed);
        let due = applied
            .as_ref()
            .is_none_or(|(done, at)| *done != images || at.elapsed() >= REPAIR_INTERVAL);
        if due {
            match apply(&api, &name, &extra, &images).await {
                Ok(()) => {
                    if applied.as_ref().is_none_or(|(done, _)| *done != images) {
                        tracing::info!(daemonset = %extra, images = ?images, "sidecar pre-pull images kept");
                    }
                    applied = Some((images, tokio::time::Instant::now()));
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

    // Pulled and crash-looping (an image without `--hold`, say): pulled is what counts.
    const PULLED: &str = r#"
metadata: {name: pre-a, labels: {servicelog.io/prepull: slog-sidecar-prepull}}
spec:
  nodeName: node-1
  containers: [{name: sidecar, image: "ghcr.io/x/sidecar:1"}]
status:
  containerStatuses:
  - {name: sidecar, image: "ghcr.io/x/sidecar:1", imageID: "ghcr.io/x/sidecar@sha256:0123", ready: false, restartCount: 3, state: {waiting: {reason: CrashLoopBackOff}}}
"#;

    const BACKOFF: &str = r#"
metadata: {name: pre-b, labels: {servicelog.io/prepull: slog-sidecar-prepull}}
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
    fn given_a_prepull_container_that_pulled_the_image_then_it_may_be_injected() {
        let pods = [pod(PULLED), pod(BACKOFF)];
        assert_eq!(
            evaluate(pods.iter(), "ghcr.io/x/sidecar:1"),
            Evidence::Pulled
        );
    }

    #[test]
    fn given_an_image_in_pull_backoff_then_the_reason_names_the_node_and_the_kubelets_message() {
        let pods = [pod(PULLED), pod(BACKOFF)];
        let evidence = evaluate(pods.iter(), "ghcr.io/x/typo:1");
        let why = refusal("ghcr.io/x/typo:1", "slog", evidence);
        assert!(
            why.contains("sidecar image ghcr.io/x/typo:1 is not pulled on any node"),
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
        let pods = [pod(PULLED)];
        let evidence = evaluate(pods.iter(), "ghcr.io/x/other:2");
        assert_eq!(evidence, Evidence::None);
        let why = refusal("ghcr.io/x/other:2", "slog", evidence);
        assert!(
            why.contains("no pod of the pre-pull DaemonSets slog[-extra] has pulled it yet"),
            "{why}"
        );
    }

    #[tokio::test]
    async fn given_a_proof_when_the_pods_are_replaced_then_it_holds_until_a_pull_fails() {
        let (pods, mut writer) = reflector::store::<Pod>();
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(pod(PULLED)));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let gate = Gate {
            pods,
            name: "slog".into(),
            proven: Arc::default(),
        };
        assert_eq!(gate.check("ghcr.io/x/sidecar:1").await, Ok(()));
        // A rollout: the pod goes, its successor has no status yet.
        writer.apply_watcher_event(&watcher::Event::Delete(pod(PULLED)));
        assert_eq!(gate.check("ghcr.io/x/sidecar:1").await, Ok(()));
        // A successor that cannot pull it any more revokes the proof.
        let failing = PULLED
            .replace(
                "imageID: \"ghcr.io/x/sidecar@sha256:0123\"",
                "imageID: \"\"",
            )
            .replace(
                "{reason: CrashLoopBackOff}",
                "{reason: ErrImagePull, message: gone}",
            );
        writer.apply_watcher_event(&watcher::Event::Apply(pod(&failing)));
        let why = gate.check("ghcr.io/x/sidecar:1").await.unwrap_err();
        assert!(why.contains("ErrImagePull: gone"), "{why}");
    }

    #[test]
    fn given_no_allowed_images_then_only_the_default_repository_is() {
        let allowed = Allowed::new(&[], "registry:5000/servicelog/sidecar:0.1.0");
        assert_eq!(
            allowed.check("registry:5000/servicelog/sidecar:0.2.0"),
            Ok(())
        );
        assert_eq!(
            allowed.check("registry:5000/servicelog/sidecar@sha256:abcd"),
            Ok(())
        );
        let why = allowed
            .check("registry:5000/servicelog/sidecar-evil:1")
            .unwrap_err();
        assert!(why.contains("--sidecar-allowed-images"), "{why}");
        assert!(allowed.check("docker.io/miner:1").is_err());
        let listed = Allowed::new(&["mirror.example/".into()], "ghcr.io/x/sidecar:1");
        assert_eq!(listed.check("mirror.example/team/sidecar:1"), Ok(()));
        assert!(listed.check("ghcr.io/x/sidecar:1").is_err());
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
