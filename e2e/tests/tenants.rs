//! What the people of a namespace may do with ServiceLogs: the chart's aggregated
//! ClusterRoles folded into the default `edit` and `view` roles by a real
//! kube-controller-manager (the cluster of `make cluster`; the control plane alone has no
//! controller to aggregate them).

use std::time::{Duration, Instant};

use servicelog_e2e::{TestEnv, chart::ok, unique_name, workspace_dir};

const AGGREGATION_TIMEOUT: Duration = Duration::from_secs(60);

fn env() -> &'static TestEnv {
    TestEnv::shared_cluster().unwrap_or_else(|e| panic!("the cluster did not start: {e}"))
}

/// `kubectl auth can-i VERB RESOURCE -n NS --as USER`: `yes` or `no`. A resource written
/// `kind/sub` asks about the subresource (`--subresource`).
fn can(env: &TestEnv, user: &str, verb: &str, resource: &str, ns: &str) -> bool {
    let mut cmd = env.kubectl();
    cmd.args(["auth", "can-i", verb, "-n", ns, "--as", user]);
    match resource.split_once('/') {
        Some((kind, sub)) => cmd.args([kind, "--subresource", sub]),
        None => cmd.arg(resource),
    };
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("kubectl auth can-i: {e}"));
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

#[test]
fn given_the_chart_roles_then_namespace_editors_manage_servicelogs_and_viewers_only_read_them() {
    let env = env();
    // kubectl resolves the resource through discovery: the CRD must be served.
    env.install_crds().unwrap_or_else(|e| panic!("{e}"));
    let release = unique_name("rbac");
    let rendered = ok(
        "helm template --show-only templates/rbac-tenants.yaml",
        env.helm()
            .current_dir(workspace_dir())
            .args(["template", &release, "charts/servicelog"])
            .args(["--kube-version", "v1.37.0"])
            .args(["--show-only", "templates/rbac-tenants.yaml"])
            .output(),
    );
    let manifest = env.dir().join(format!("{release}-rbac.yaml"));
    std::fs::write(&manifest, &rendered).expect("writing the rendered roles");
    ok(
        "kubectl apply the aggregated roles",
        env.kubectl().arg("apply").arg("-f").arg(&manifest).output(),
    );
    let ns = unique_name("tenant");
    ok(
        "kubectl create namespace",
        env.kubectl().args(["create", "namespace", &ns]).output(),
    );
    for (user, role) in [("alice", "edit"), ("bob", "view"), ("carol", "admin")] {
        ok(
            "kubectl create rolebinding",
            env.kubectl()
                .args(["create", "rolebinding", user, "-n", &ns])
                .args(["--clusterrole", role, "--user", user])
                .output(),
        );
    }
    let resource = "servicelogs.servicelog.io";
    let started = Instant::now();
    while !(can(env, "alice", "create", resource, &ns)
        && can(env, "carol", "delete", resource, &ns)
        && can(env, "bob", "list", resource, &ns))
    {
        assert!(
            started.elapsed() < AGGREGATION_TIMEOUT,
            "timed out after {AGGREGATION_TIMEOUT:?} waiting for the controller-manager to fold the chart's roles into edit, admin and view"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for verb in [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ] {
        assert!(
            can(env, "alice", verb, resource, &ns),
            "an editor cannot {verb} ServiceLogs"
        );
    }
    for verb in ["get", "list", "watch"] {
        assert!(
            can(env, "bob", verb, resource, &ns),
            "a viewer cannot {verb} ServiceLogs"
        );
        assert!(
            can(env, "bob", verb, "servicelogs.servicelog.io/status", &ns),
            "a viewer cannot {verb} a ServiceLog's status"
        );
    }
    for verb in ["create", "update", "patch", "delete"] {
        assert!(
            !can(env, "bob", verb, resource, &ns),
            "a viewer can {verb} ServiceLogs"
        );
    }
    assert!(
        !can(
            env,
            "alice",
            "patch",
            "servicelogs.servicelog.io/status",
            &ns
        ),
        "an editor can write a ServiceLog's status, which is the operator's"
    );
    assert!(
        !can(env, "alice", "create", resource, "kube-system"),
        "an editor of one namespace can create ServiceLogs in another"
    );
    ok(
        "kubectl delete the roles",
        env.kubectl()
            .arg("delete")
            .arg("-f")
            .arg(&manifest)
            .output(),
    );
    ok(
        "kubectl delete namespace",
        env.kubectl()
            .args(["delete", "namespace", &ns, "--wait=false"])
            .output(),
    );
}
