//! The Helm chart, `charts/servicelog`, as users meet it: `helm lint`, what `helm template`
//! renders for each values variant (golden files), the values schema refusing a typo, and
//! `helm install` / `helm uninstall` against the real API server of the test environment.
//!
//! The variants are the chart-testing files `charts/servicelog/ci/*-values.yaml`; each
//! renders to `e2e/tests/golden/<variant>.yaml`. After an intended change to the chart,
//! regenerate them with `UPDATE_GOLDEN=1 cargo test -p servicelog-e2e --test chart` and
//! review the diff.

use std::{collections::BTreeSet, path::PathBuf, process::Output};

use serde::Deserialize;
use servicelog_e2e::{TestEnv, chart::ok, unique_name, workspace_dir};

/// Kubernetes version `helm template` assumes: the helm built for the tests defaults to
/// v1.20, older than the chart's `kubeVersion`.
const KUBE_VERSION: &str = "v1.31.0";
const RELEASE: &str = "servicelog";
const NAMESPACE: &str = "servicelog-system";
/// Kinds without a namespace: their names must differ between releases.
const CLUSTER_SCOPED: [&str; 4] = [
    "ClusterRole",
    "ClusterRoleBinding",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
];
/// Kinds whose CRDs the test control plane does not have (cert-manager, Prometheus Operator).
const FOREIGN_KINDS: [&str; 5] = [
    "Issuer",
    "Certificate",
    "ServiceMonitor",
    "PodMonitor",
    "PrometheusRule",
];

fn env() -> &'static TestEnv {
    TestEnv::shared().unwrap_or_else(|e| panic!("the test environment did not start: {e}"))
}

fn chart_dir() -> PathBuf {
    workspace_dir().join("charts/servicelog")
}

fn golden_dir() -> PathBuf {
    workspace_dir().join("e2e/tests/golden")
}

/// Runs a command that must fail and returns its stderr.
fn fails(what: &str, out: std::io::Result<Output>) -> String {
    let out = out.unwrap_or_else(|e| panic!("{what}: could not run: {e}"));
    assert!(
        !out.status.success(),
        "{what} succeeded but should have failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `(variant, values file)` for every `ci/<variant>-values.yaml`, sorted by name.
fn variants() -> Vec<(String, PathBuf)> {
    let dir = chart_dir().join("ci");
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let name = path.file_name()?.to_str()?;
            let variant = name.strip_suffix("-values.yaml")?.to_owned();
            Some((variant, path))
        })
        .collect();
    found.sort();
    assert!(
        found.iter().any(|(v, _)| v == "default"),
        "{} has no default-values.yaml",
        dir.display()
    );
    found
}

/// `helm template` of the chart as release `release` with the given extra arguments.
fn template(env: &TestEnv, release: &str, args: &[&str]) -> std::io::Result<Output> {
    env.helm()
        .current_dir(workspace_dir())
        .args(["template", release, "charts/servicelog"])
        .args(["--namespace", NAMESPACE, "--kube-version", KUBE_VERSION])
        .args(args)
        .output()
}

/// The render with the generated ZooKeeper identity's password (random at every
/// `helm template`: there is no release to keep it from) replaced by a placeholder.
fn without_random_passwords(rendered: &str) -> String {
    let mut in_zk_auth = false;
    rendered
        .lines()
        .map(|line| {
            if line.starts_with("# Source: ") {
                in_zk_auth = line.ends_with("/zookeeper-auth.yaml");
            }
            if in_zk_auth && line.starts_with("  auth: ") {
                // base64 of `digest:servicelog-operator:generated-at-install`
                "  auth: ZGlnZXN0OnNlcnZpY2Vsb2ctb3BlcmF0b3I6Z2VuZXJhdGVkLWF0LWluc3RhbGw="
                    .to_owned()
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + if rendered.ends_with('\n') { "\n" } else { "" }
}

/// One rendered object, as far as these tests look at it.
#[derive(Debug, Deserialize)]
struct Object {
    kind: String,
    metadata: Metadata,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    name: String,
}

/// The non-empty documents of a multi-document YAML stream.
fn documents(yaml: &str) -> Vec<serde_yaml::Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| serde_yaml::Value::deserialize(doc).expect("helm renders valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn objects(yaml: &str) -> Vec<Object> {
    documents(yaml)
        .into_iter()
        .map(|v| serde_yaml::from_value(v).expect("every rendered document has kind and name"))
        .collect()
}

/// Where the golden render and the fresh one first differ, with a few lines of context.
fn first_difference(golden: &str, rendered: &str) -> String {
    let (g, r): (Vec<&str>, Vec<&str>) = (golden.lines().collect(), rendered.lines().collect());
    let at = g
        .iter()
        .zip(&r)
        .position(|(a, b)| a != b)
        .unwrap_or(g.len().min(r.len()));
    let window = |lines: &[&str]| {
        let from = at.saturating_sub(3);
        lines[from.min(lines.len())..(at + 4).min(lines.len())]
            .iter()
            .enumerate()
            .map(|(i, l)| format!("{:>5} | {l}", from + i + 1))
            .collect::<Vec<_>>()
            .join("\n")
    };
    format!(
        "first difference at line {} (golden {} lines, rendered {} lines)\n--- golden ---\n{}\n--- rendered ---\n{}",
        at + 1,
        g.len(),
        r.len(),
        window(&g),
        window(&r)
    )
}

#[test]
fn given_each_values_variant_when_linted_then_helm_lint_strict_passes() {
    let env = env();
    let mut failures = Vec::new();
    for (variant, values) in variants() {
        let out = env
            .helm()
            .args(["lint", "--strict", "--kube-version", KUBE_VERSION])
            .arg(chart_dir())
            .arg("-f")
            .arg(&values)
            .output()
            .unwrap_or_else(|e| panic!("helm lint: could not run: {e}"));
        if !out.status.success() {
            failures.push(format!(
                "{variant}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "helm lint --strict failed for {} variant(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn given_each_values_variant_when_rendered_then_it_matches_its_golden_file() {
    let env = env();
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| !v.is_empty() && v != "0");
    let mut drifted = Vec::new();
    for (variant, values) in variants() {
        let relative = values
            .strip_prefix(workspace_dir())
            .unwrap_or(&values)
            .display()
            .to_string();
        let rendered = ok(
            &format!("helm template -f {relative}"),
            template(env, RELEASE, &["-f", &relative]),
        );
        let rendered = format!(
            "# helm template {RELEASE} charts/servicelog --namespace {NAMESPACE} --kube-version {KUBE_VERSION} -f {relative}\n\
             # Generated: UPDATE_GOLDEN=1 cargo test -p servicelog-e2e --test chart\n{}",
            without_random_passwords(&rendered)
        );
        let golden_path = golden_dir().join(format!("{variant}.yaml"));
        if update {
            std::fs::create_dir_all(golden_dir()).expect("creating e2e/tests/golden");
            std::fs::write(&golden_path, &rendered)
                .unwrap_or_else(|e| panic!("writing {}: {e}", golden_path.display()));
            continue;
        }
        match std::fs::read_to_string(&golden_path) {
            Ok(golden) if golden == rendered => {}
            Ok(golden) => drifted.push(format!(
                "{variant} ({}): {}",
                golden_path.display(),
                first_difference(&golden, &rendered)
            )),
            Err(e) => drifted.push(format!(
                "{variant}: no golden file {} ({e})",
                golden_path.display()
            )),
        }
    }
    assert!(
        drifted.is_empty(),
        "the chart renders differently from its golden files; if the change is intended, run \
         `UPDATE_GOLDEN=1 cargo test -p servicelog-e2e --test chart` and review the diff.\n\n{}",
        drifted.join("\n\n")
    );
}

#[test]
fn given_every_golden_render_when_dry_run_on_the_api_server_then_each_object_is_accepted() {
    let env = env();
    // The namespaces the golden files name (servicelog-system, a watched namespace) only
    // have to exist for the dry run.
    let mut namespaces = BTreeSet::from([NAMESPACE.to_owned()]);
    for (variant, _) in variants() {
        let text = std::fs::read_to_string(golden_dir().join(format!("{variant}.yaml")))
            .unwrap_or_default();
        namespaces.extend(
            documents(&text).iter().filter_map(|doc| {
                Some(doc.get("metadata")?.get("namespace")?.as_str()?.to_owned())
            }),
        );
    }
    for namespace in &namespaces {
        let out = env
            .kubectl()
            .args(["create", "namespace", namespace])
            .output()
            .expect("kubectl create namespace");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || stderr.contains("AlreadyExists"),
            "creating namespace {namespace}: {stderr}"
        );
    }
    for (variant, _) in variants() {
        let path = golden_dir().join(format!("{variant}.yaml"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{}: {e} (generate it with UPDATE_GOLDEN=1)", path.display())
        });
        // cert-manager's and the Prometheus Operator's kinds are not served here.
        let docs: Vec<String> = documents(&text)
            .into_iter()
            .filter(|doc| {
                let kind = doc.get("kind").and_then(|k| k.as_str()).unwrap_or("");
                !FOREIGN_KINDS.contains(&kind)
            })
            .map(|doc| serde_yaml::to_string(&doc).expect("re-serialising a document"))
            .collect();
        let file = env.dir().join(format!("chart-dry-run-{variant}.yaml"));
        std::fs::write(&file, docs.join("---\n")).expect("writing the dry-run manifest");
        let created = ok(
            &format!("kubectl create --dry-run=server -f <{variant} golden>"),
            env.kubectl()
                .args(["create", "--dry-run=server", "-o", "name", "-f"])
                .arg(&file)
                .output(),
        );
        assert_eq!(
            created.lines().count(),
            docs.len(),
            "{variant}: the API server accepted {} of {} objects:\n{created}",
            created.lines().count(),
            docs.len()
        );
    }
}

#[test]
fn given_a_misspelt_value_when_rendered_then_the_schema_rejects_it_by_name() {
    let env = env();
    let cases = [
        ("operator.replicaz=2", "replicaz"),
        ("operator.image.tg=1.0", "tg"),
        ("zookeeper.embeded.enabled=false", "embeded"),
        ("webhook.certManager.enable=true", "enable"),
        ("webhook.failurePolicy=Block", "failurePolicy"),
        ("zookeeper.embedded.replicas=2", "replicas"),
        ("webhook.url=http://127.0.0.1:8443", "url"),
    ];
    for (set, named) in cases {
        let stderr = fails(
            &format!("helm template --set {set}"),
            template(env, RELEASE, &["--set", set]),
        );
        assert!(
            stderr.contains("schema") && stderr.contains(named),
            "helm template --set {set}: expected a schema error naming {named:?}, got:\n{stderr}"
        );
    }
}

#[test]
fn given_settings_that_exclude_each_other_when_rendered_then_the_chart_says_what_to_change() {
    let env = env();
    let cases: [(&[&str], &str); 8] = [
        (
            &["--set", "operator.leaderElection.enabled=false"],
            "operator.replicas > 1 needs operator.leaderElection.enabled",
        ),
        (
            &["--set", "zookeeper.embedded.image.tag="],
            "zookeeper.embedded.image needs a tag or a digest",
        ),
        (
            &["--set", "zookeeper.connect=zk:2181"],
            "set zookeeper.embedded.enabled=false",
        ),
        (
            &["--set", "zookeeper.embedded.enabled=false"],
            "zookeeper.connect is required",
        ),
        (
            &["--set", "operator.enabled=false"],
            "webhook.url is required",
        ),
        (
            &[
                "--set",
                "webhook.certManager.enabled=true",
                "--set",
                "webhook.url=https://127.0.0.1:8443",
            ],
            "exclude each other",
        ),
        (
            &["--set", "zookeeper.tls.enabled=true"],
            "the embedded ZooKeeper serves plain TCP only",
        ),
        (
            &[
                "--set",
                "zookeeper.embedded.enabled=false",
                "--set",
                "zookeeper.connect=zk:2281",
                "--set",
                "zookeeper.tls.enabled=true",
            ],
            "zookeeper.tls.caSecret is required",
        ),
    ];
    for (args, says) in cases {
        let stderr = fails(
            &format!("helm template {}", args.join(" ")),
            template(env, RELEASE, args),
        );
        assert!(
            stderr.contains(says),
            "helm template {}: expected the error to say {says:?}, got:\n{stderr}",
            args.join(" ")
        );
    }
}

#[test]
fn given_two_releases_when_rendered_then_their_cluster_scoped_objects_have_distinct_names() {
    let env = env();
    let names = |release: &str| -> BTreeSet<(String, String)> {
        let rendered = ok("helm template", template(env, release, &[]));
        let scoped: BTreeSet<(String, String)> = objects(&rendered)
            .into_iter()
            .filter(|o| CLUSTER_SCOPED.contains(&o.kind.as_str()))
            .map(|o| (o.kind, o.metadata.name))
            .collect();
        for (kind, name) in &scoped {
            assert!(
                name.contains(release),
                "{kind} {name} does not carry the release name {release}"
            );
        }
        scoped
    };
    let (a, b) = (names("logs-a"), names("logs-b"));
    let kinds: BTreeSet<&str> = a.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(
        kinds,
        CLUSTER_SCOPED.into_iter().collect::<BTreeSet<_>>(),
        "expected objects of each cluster-scoped kind, got {a:?}"
    );
    assert!(
        a.is_disjoint(&b),
        "two releases would share cluster-scoped objects: {:?}",
        a.intersection(&b).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_the_control_plane_when_the_chart_is_installed_and_uninstalled_then_every_object_comes_and_goes()
 {
    let env = env();
    // Other tests apply the CRD too; Helm would skip an existing one, but racing them is
    // pointless: the chart's crds/ copy is byte-identical (checked elsewhere).
    env.install_crds().unwrap_or_else(|e| panic!("{e}"));
    let ns = env.create_namespace("chart").await.expect("namespace");
    let release = unique_name("slc");
    let fullname = format!("{release}-servicelog");

    // Given an operator that would run outside the cluster (nothing runs here): the
    // webhooks are reached by URL and the Deployment has no replicas.
    ok(
        "helm install",
        env.helm()
            .args(["install", &release])
            .arg(chart_dir())
            .args(["--namespace", &ns, "--skip-crds", "--timeout", "60s"])
            .args(["--set", "webhook.url=https://127.0.0.1:9443"])
            .args(["--set", "operator.replicas=0"])
            .output(),
    );
    let manifest = ok(
        "helm get manifest",
        env.helm()
            .args(["get", "manifest", &release, "--namespace", &ns])
            .output(),
    );
    let expected = objects(&manifest);
    for kind in [
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "Role",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "StatefulSet",
        "PodDisruptionBudget",
        "NetworkPolicy",
    ] {
        assert!(
            expected.iter().any(|o| o.kind == kind),
            "the installed release has no {kind}: {expected:?}"
        );
    }
    let file = env.dir().join(format!("chart-{release}.yaml"));
    std::fs::write(&file, &manifest).expect("writing the release manifest");

    // Then the API server holds every object of the release.
    let live = ok(
        "kubectl get -f <release manifest>",
        env.kubectl()
            .args(["get", "--namespace", &ns, "-o", "name", "-f"])
            .arg(&file)
            .output(),
    );
    assert_eq!(
        live.lines().count(),
        expected.len(),
        "expected all {} objects of the release, the API server has:\n{live}",
        expected.len()
    );
    let webhook = ok(
        "kubectl get mutatingwebhookconfiguration",
        env.kubectl()
            .args([
                "get",
                "mutatingwebhookconfiguration",
                &fullname,
                "-o",
                "jsonpath={.webhooks[0].clientConfig.url}",
            ])
            .output(),
    );
    assert_eq!(webhook, "https://127.0.0.1:9443/mutate-pods");

    // When the release is uninstalled, then nothing of it is left but the operator's
    // ZooKeeper identity, kept on purpose (`helm.sh/resource-policy: keep`): every znode's
    // ACL derives from it, and a reinstall must find it.
    ok(
        "helm uninstall",
        env.helm()
            .args(["uninstall", &release, "--namespace", &ns, "--wait"])
            .args(["--timeout", "60s"])
            .output(),
    );
    let left = ok(
        "kubectl get -f <release manifest> after uninstall",
        env.kubectl()
            .args([
                "get",
                "--namespace",
                &ns,
                "--ignore-not-found",
                "-o",
                "name",
                "-f",
            ])
            .arg(&file)
            .output(),
    );
    let kept = format!("secret/{fullname}-zk-auth");
    let left: Vec<&str> = left.lines().filter(|l| l.trim() != kept).collect();
    assert!(
        left.is_empty(),
        "helm uninstall left objects behind:\n{}",
        left.join("\n")
    );
    for (kind, name) in [
        ("deployment", format!("{fullname}-operator")),
        ("serviceaccount", format!("{fullname}-operator")),
        ("clusterrole", format!("{fullname}-operator")),
    ] {
        let gone = ok(
            &format!("kubectl get {kind} {name}"),
            env.kubectl()
                .args([
                    "get",
                    "--namespace",
                    &ns,
                    "--ignore-not-found",
                    "-o",
                    "name",
                ])
                .args([kind, &name])
                .output(),
        );
        assert!(gone.trim().is_empty(), "{kind} {name} is still there");
    }
}

/// The opt-in templated CRD, by the documented path for a cluster whose CRD came from
/// crds/: adopt it (label and annotate), then `helm install --skip-crds` with
/// `crds.templated=true` owns it, `helm upgrade` rewrites it, `helm uninstall` keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_crds_templated_when_the_release_adopts_upgrades_and_uninstalls_then_the_crd_follows_and_stays()
 {
    let env = env();
    env.install_crds().unwrap_or_else(|e| panic!("{e}"));
    let ns = env.create_namespace("chartcrd").await.expect("namespace");
    let release = unique_name("slcrd");
    let crd = "crd/servicelogs.servicelog.io";
    ok(
        "kubectl label crd",
        env.kubectl()
            .args([
                "label",
                "--overwrite",
                crd,
                "app.kubernetes.io/managed-by=Helm",
            ])
            .output(),
    );
    ok(
        "kubectl annotate crd",
        env.kubectl()
            .args(["annotate", "--overwrite", crd])
            .arg(format!("meta.helm.sh/release-name={release}"))
            .arg(format!("meta.helm.sh/release-namespace={ns}"))
            .output(),
    );
    let install = |verb: &str, extra: &[&str]| {
        ok(
            &format!("helm {verb}"),
            env.helm()
                .args([verb, &release])
                .arg(chart_dir())
                .args(["--namespace", &ns, "--skip-crds", "--timeout", "60s"])
                .args(["--set", "webhook.url=https://127.0.0.1:9443"])
                .args(["--set", "operator.replicas=0"])
                .args(["--set", "crds.templated=true"])
                .args(extra)
                .output(),
        )
    };
    install("install", &[]);
    let manifest = ok(
        "helm get manifest",
        env.helm()
            .args(["get", "manifest", &release, "--namespace", &ns])
            .output(),
    );
    assert!(
        objects(&manifest)
            .iter()
            .any(|o| o.kind == "CustomResourceDefinition"),
        "the release does not hold the CRD"
    );
    let get = |path: &str| {
        ok(
            "kubectl get crd",
            env.kubectl()
                .args(["get", crd, "-o"])
                .arg(format!("jsonpath={path}"))
                .output(),
        )
    };
    assert_eq!(
        get("{.metadata.annotations.helm\\.sh/resource-policy}"),
        "keep"
    );
    // helm upgrade writes the CRD: a label the release sets shows up on it.
    install("upgrade", &["--set", "commonLabels.upgraded=yes"]);
    assert_eq!(
        get("{.metadata.labels.upgraded}"),
        "yes",
        "helm upgrade did not update the CRD"
    );
    ok(
        "helm uninstall",
        env.helm()
            .args([
                "uninstall",
                &release,
                "--namespace",
                &ns,
                "--wait",
                "--timeout",
                "60s",
            ])
            .output(),
    );
    assert_eq!(
        get("{.metadata.name}"),
        "servicelogs.servicelog.io",
        "helm uninstall deleted the CRD"
    );
}
