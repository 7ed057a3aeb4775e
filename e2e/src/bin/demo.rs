//! `make demo`: the servicelog story, narrated, on a machine with no cluster — a real
//! kube-apiserver and ZooKeeper on loopback, the operator as a local process, the injected
//! sidecar run with the pod's own env and mounts, logs routed, a rule changed live.
#![forbid(unsafe_code)]

use std::{
    fs::OpenOptions,
    io::Write,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use servicelog_api::v1alpha1::ServiceLog;
use servicelog_e2e::{
    TestEnv, pod,
    run::{Operator, OperatorOptions, bin_dir},
    workspace_dir,
};

fn say(text: &str) {
    println!("\n\x1b[1m== {text}\x1b[0m");
}

fn note(text: &str) {
    println!("   {text}");
}

/// Runs a command, echoing it like a shell session, and fails on a non-zero exit.
fn shell(env: &TestEnv, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    println!("\x1b[36m$ {}\x1b[0m", args.join(" "));
    let mut cmd = match args[0] {
        "kubectl" => env.kubectl(),
        "helm" => env.helm(),
        other => Command::new(other),
    };
    cmd.args(&args[1..])
        .current_dir(workspace_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {}", args[0]))?;
    if let Some(mut s) = child.stdin.take() {
        s.write_all(stdin.unwrap_or_default().as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{text}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("`{}` failed with {}", args.join(" "), out.status);
    }
    Ok(text)
}

async fn wait<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

fn write_app_lines(dir: &Path, lines: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("app.log"))?;
    for (level, msg) in lines {
        let latency = if *msg == "slow request" { 2500 } else { 12 };
        writeln!(
            f,
            "{{\"level\":\"{level}\",\"msg\":\"{msg}\",\"latency_ms\":{latency}}}"
        )?;
        println!("   app> {{\"level\":\"{level}\",\"msg\":\"{msg}\",\"latency_ms\":{latency}}}");
    }
    Ok(())
}

fn show_file(label: &str, path: &Path) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    println!("   {label} ({} lines):", text.lines().count());
    for line in text.lines() {
        println!("     {line}");
    }
}

async fn hash(client: &kube::Client) -> Option<String> {
    Api::<ServiceLog>::namespaced(client.clone(), "shop")
        .get("checkout")
        .await
        .ok()
        .and_then(|s| s.status)
        .and_then(|s| s.config_hash)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    say("Starting a local control plane: etcd + kube-apiserver (no nodes) and ZooKeeper");
    let env = tokio::task::spawn_blocking(TestEnv::start).await??;
    note(&format!(
        "ready in {:.1}s — API server {}, ZooKeeper {}",
        env.started_in().as_secs_f64(),
        env.server(),
        env.zk_connect()
    ));

    say("Installing the CRD, as on a real cluster");
    shell(
        &env,
        &["kubectl", "apply", "--server-side", "-f", "crds/"],
        None,
    )?;
    shell(
        &env,
        &[
            "kubectl",
            "wait",
            "--for=condition=established",
            "crd/servicelogs.servicelog.io",
            "--timeout=30s",
        ],
        None,
    )?;
    shell(
        &env,
        &["kubectl", "apply", "-f", "examples/namespace.yaml"],
        None,
    )?;

    say("Running the operator (a local process here; `helm install` runs it in a cluster)");
    let operator = tokio::task::block_in_place(|| {
        Operator::start(
            &env,
            &OperatorOptions {
                namespace: "shop".into(),
                zk_connect: env.zk_connect(),
                zk_root: "/servicelog".into(),
                identity: "demo".into(),
                leader_election: true,
                webhook: true,
                extra_args: vec![],
            },
        )
    })?;
    note(&format!(
        "operator pid {}, webhooks registered at https://127.0.0.1:{}",
        operator.pid().unwrap_or(0),
        operator.webhook_port()
    ));
    let client = env.client().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    say("A bad ServiceLog is refused at apply, every problem with its field");
    let example = std::fs::read_to_string(workspace_dir().join("examples/checkout.yaml"))?;
    let bad = example.replace(
        "greaterThan: 1000}]",
        "greaterThan: 1000}, {name: path, regex: '[a-'}]",
    );
    let _ = shell(&env, &["kubectl", "apply", "-f", "-"], Some(&bad));

    say(
        "Applying examples/checkout.yaml: debug dropped, warn+ to alerts, slow requests sampled, rest to stdout",
    );
    shell(
        &env,
        &["kubectl", "apply", "-f", "examples/checkout.yaml"],
        None,
    )?;
    wait(
        "the ServiceLog to be published",
        Duration::from_secs(30),
        || async { hash(&client).await.is_some() },
    )
    .await?;
    shell(&env, &["kubectl", "get", "slog", "-n", "shop"], None)?;
    let zk = zookeeper_client::Client::connect(&env.zk_connect()).await?;
    let (data, stat) = zk
        .get_data("/servicelog/namespaces/shop/checkout/config")
        .await?;
    let envelope: serde_json::Value = serde_json::from_slice(&data)?;
    note(&format!(
        "znode /servicelog/namespaces/shop/checkout/config (version {}): generation {}, {}",
        stat.version, envelope["generation"], envelope["hash"]
    ));

    say("Creating the annotated pod examples/pod.yaml; the webhook injects the sidecar");
    shell(&env, &["kubectl", "apply", "-f", "examples/pod.yaml"], None)?;
    let p: Pod = Api::namespaced(client.clone(), "shop")
        .get("checkout-0")
        .await?;
    shell(
        &env,
        &[
            "kubectl",
            "get",
            "pod",
            "checkout-0",
            "-n",
            "shop",
            "-o",
            "jsonpath={range .spec.initContainers[*]}{.name}{\"  restartPolicy=\"}{.restartPolicy}{\"\\n\"}{end}",
        ],
        None,
    )?;
    let sidecar = pod::container(&p, "servicelog-sidecar")
        .context("the pod was not injected")?
        .clone();
    let app = pod::container(&p, "app")
        .context("no app container")?
        .clone();

    say(
        "Starting the injected sidecar with exactly the pod's env and mounts (we play the kubelet)",
    );
    let binary = bin_dir()?.join("servicelog-sidecar");
    let running = pod::run(env.env_dir(), &p, &sidecar, &binary)?;
    let app_dir = running
        .dirs
        .path_in(&app, "/var/log/app")
        .context("app log dir")?;
    let out_dir = running
        .dirs
        .path_in(&sidecar, "/var/log/servicelog")
        .context("sink dir")?;
    let first = hash(&client).await.unwrap_or_default();
    wait(
        "the sidecar to apply the config (status applied 1/1)",
        Duration::from_secs(30),
        || async {
            let s = Api::<ServiceLog>::namespaced(client.clone(), "shop")
                .get("checkout")
                .await
                .ok()
                .and_then(|s| s.status);
            s.and_then(|s| s.pods).is_some_and(|p| p.applied == 1)
        },
    )
    .await?;
    shell(&env, &["kubectl", "get", "slog", "-n", "shop"], None)?;

    say("The app logs; the sidecar routes each line by the rules");
    write_app_lines(
        &app_dir,
        &[
            ("debug", "cache lookup"),
            ("info", "request served"),
            ("warn", "upstream slow"),
            ("error", "payment declined"),
            ("info", "request served"),
        ],
    )?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    show_file(
        "alerts sink /var/log/servicelog/alerts.log",
        &out_dir.join("alerts.log"),
    );
    show_file(
        "console sink (the sidecar's stdout)",
        &running.proc.stdout_path(),
    );

    say("Changing a rule live: only errors alert from now on");
    shell(
        &env,
        &[
            "kubectl",
            "patch",
            "slog",
            "checkout",
            "-n",
            "shop",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/rules/1/when/level/atLeast","value":"error"}]"#,
        ],
        None,
    )?;
    let started = Instant::now();
    wait(
        "the sidecar to ack the new config",
        Duration::from_secs(30),
        || async {
            let s = Api::<ServiceLog>::namespaced(client.clone(), "shop")
                .get("checkout")
                .await
                .ok()
                .and_then(|s| s.status);
            s.is_some_and(|s| {
                s.config_hash.as_deref() != Some(first.as_str())
                    && s.pods.is_some_and(|p| p.applied == 1)
            })
        },
    )
    .await?;
    note(&format!(
        "kubectl patch → applied 1/1 in {} ms, no restart",
        started.elapsed().as_millis()
    ));
    shell(&env, &["kubectl", "get", "slog", "-n", "shop"], None)?;
    write_app_lines(
        &app_dir,
        &[
            ("warn", "upstream slow again"),
            ("error", "payment declined again"),
        ],
    )?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    show_file("alerts sink now", &out_dir.join("alerts.log"));
    shell(
        &env,
        &[
            "kubectl",
            "get",
            "slog",
            "checkout",
            "-n",
            "shop",
            "-o",
            "jsonpath={range .status.conditions[*]}{.type}={.status} ({.reason}): {.message}{\"\\n\"}{end}",
        ],
        None,
    )?;

    say("What to try next");
    note("make testenv && source target/testenv/env   # the same control plane, in the background");
    note("servicelog-operator validate examples/*.yaml   # check manifests offline, for CI");
    note(
        "servicelog-sidecar --config-file examples/checkout.yaml   # the sidecar without ZooKeeper",
    );
    note("make bench   # throughput against rsyslog and syslog-ng, propagation, operator scale");
    note(
        "On a cluster: kubectl apply -f crds/ && helm install servicelog charts/servicelog -n servicelog-system --create-namespace",
    );
    drop(running);
    drop(operator);
    Ok(())
}
