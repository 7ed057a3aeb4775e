//! `servicelog-bench`: the benchmarks behind `make bench`, on the real components.
//!
//! - `operator-scale`: N ServiceLogs exist before the operator starts (a cold start);
//!   time until every config znode is published and every status says so; the operator's
//!   peak RSS.
//! - `webhook`: AdmissionReviews for an annotated pod at a fixed rate over loopback TLS;
//!   latency percentiles and the operator's RSS while serving.
//! - `fleet`: 100 sidecar processes on one ServiceLog; rule change → `applied 100/100`,
//!   sent by `kubectl patch` and by a kube client.
//!
//! Results are appended to `target/bench/results.json` (one object per section) and
//! printed as a table. Run through `make bench` (release build).
#![forbid(unsafe_code)]

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures::StreamExt;
use kube::{Api, api::PostParams};
use servicelog_api::v1alpha1::ServiceLog;
use servicelog_e2e::{
    TestEnv,
    run::{Operator, OperatorOptions},
    unique_name, workspace_dir,
};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let only = |name: &str| args.is_empty() || args.iter().any(|a| a == name);
    let scale_n: usize = std::env::var("BENCH_SCALE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let env: &'static TestEnv = Box::leak(Box::new(
        tokio::task::spawn_blocking(TestEnv::start).await??,
    ));
    env.install_crds()?;
    // `Operator::start` builds the workspace binaries on first use (a no-op when fresh);
    // inside a timed section, a stale tree made the operator-scale figure mostly a
    // `cargo build --release`. Build before any clock starts.
    let built = Instant::now();
    tokio::task::spawn_blocking(servicelog_e2e::run::bin_dir).await??;
    eprintln!(
        "binaries up to date after {:.1}s",
        built.elapsed().as_secs_f64()
    );
    let mut results = BTreeMap::new();
    if only("operator-scale") {
        results.insert("operator_scale", operator_scale(env, scale_n).await?);
    }
    if only("webhook") {
        results.insert("webhook", webhook(env, 200, Duration::from_secs(10)).await?);
    }
    if only("fleet") {
        results.insert("fleet", fleet(env, 100, 20).await?);
    }
    let out = workspace_dir().join("target/bench");
    std::fs::create_dir_all(&out)?;
    let path = out.join("results.json");
    let mut all: serde_json::Map<String, serde_json::Value> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    for (k, v) in results {
        all.insert(k.into(), v);
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&all)?)?;
    println!("results: {}", path.display());
    Ok(())
}

/// A rule change → `applied N/N` across `size` sidecar processes, over `patches` changes
/// sent with `kubectl patch` (issue #9's measure, which includes starting kubectl) and as
/// many sent by a connected kube client (what the operator and sidecars take), interleaved.
async fn fleet(
    env: &'static TestEnv,
    size: usize,
    patches: usize,
) -> anyhow::Result<serde_json::Value> {
    use servicelog_e2e::fleet::Via;
    eprintln!("fleet: starting {size} pods and sidecars");
    let mut fleet = servicelog_e2e::fleet::Fleet::start(env, size).await?;
    let mut kubectl = Vec::new();
    let mut client = Vec::new();
    for _ in 0..patches {
        for (via, times) in [(Via::Kubectl, &mut kubectl), (Via::Client, &mut client)] {
            times.push(fleet.patch_and_wait_via(via).await?);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let pct = |times: &mut Vec<Duration>, p: f64| {
        times.sort();
        let i = ((times.len() as f64 - 1.0) * p).round() as usize;
        times
            .get(i)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(f64::NAN)
    };
    let rss: Vec<f64> = fleet
        .sidecars
        .iter()
        .filter_map(|s| s.proc.pid())
        .map(|p| rss_mib(p).1)
        .collect();
    let mean_rss = rss.iter().sum::<f64>() / rss.len().max(1) as f64;
    println!(
        "fleet           kubectl patch → applied {size}/{size}: p50 {:.0} ms, p99 {:.0} ms; client patch → applied: p50 {:.0} ms, p99 {:.0} ms; {patches} changes each; sidecar RSS mean {:.1} MiB",
        pct(&mut kubectl, 0.5),
        pct(&mut kubectl, 0.99),
        pct(&mut client, 0.5),
        pct(&mut client, 0.99),
        mean_rss
    );
    Ok(serde_json::json!({
        "sidecars": size,
        "changes": patches,
        "patch_to_applied_p50_ms": pct(&mut kubectl, 0.5),
        "patch_to_applied_p99_ms": pct(&mut kubectl, 0.99),
        "patch_to_applied_max_ms": pct(&mut kubectl, 1.0),
        "client_patch_to_applied_p50_ms": pct(&mut client, 0.5),
        "client_patch_to_applied_p99_ms": pct(&mut client, 0.99),
        "client_patch_to_applied_max_ms": pct(&mut client, 1.0),
        "sidecar_mean_rss_mib": mean_rss,
    }))
}

fn example() -> anyhow::Result<ServiceLog> {
    let text = std::fs::read_to_string(workspace_dir().join("examples/checkout.yaml"))?;
    Ok(serde_yaml::from_str(&text)?)
}

/// Peak and current RSS of a process, in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .unwrap_or(0.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

async fn operator_scale(env: &TestEnv, n: usize) -> anyhow::Result<serde_json::Value> {
    let ns = env.create_namespace("bench-scale").await?;
    let client = env.client().await?;
    let api: Api<ServiceLog> = Api::namespaced(client.clone(), &ns);
    let template = example()?;
    eprintln!("operator-scale: creating {n} ServiceLogs in {ns}");
    let created = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            let mut s = template.clone();
            s.metadata.name = Some(format!("svc-{i}"));
            s.metadata.namespace = Some(ns.clone());
            async move {
                api.create(&PostParams::default(), &s)
                    .await
                    .map(|_| ())
                    .context("create")
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for r in results {
        r?;
    }
    eprintln!(
        "operator-scale: created in {:.1}s; starting the operator",
        created.elapsed().as_secs_f64()
    );

    let root = format!("/{}", unique_name("bench"));
    let options = OperatorOptions {
        namespace: ns.clone(),
        zk_connect: env.zk_connect(),
        zk_root: root.clone(),
        identity: "bench".into(),
        leader_election: false,
        webhook: false,
        extra_args: vec![],
    };
    // Every config znode created under the root, counted from a persistent recursive
    // watch set before the operator starts: exact, and no listing of 10,000 children.
    let zk = servicelog_e2e::zookeeper::connect(&env.zk_connect()).await?;
    let mut znodes = zk
        .watch(&root, zookeeper_client::AddWatchMode::PersistentRecursive)
        .await
        .context("watching the bench root")?;
    let (configs_tx, mut configs_rx) = tokio::sync::watch::channel(0usize);
    let counter = tokio::spawn(async move {
        let mut seen = std::collections::HashSet::new();
        loop {
            let event = znodes.changed().await;
            if event.event_type == zookeeper_client::EventType::NodeCreated
                && event.path.ends_with("/config")
            {
                seen.insert(event.path);
                configs_tx.send_replace(seen.len());
            }
            if event.event_type == zookeeper_client::EventType::Session {
                break;
            }
        }
    });
    let started = Instant::now();
    let operator = tokio::task::block_in_place(|| Operator::start(env, &options))?;
    let pid = operator.pid().context("operator pid")?;
    // Statuses are followed with a watch, not by listing all N objects every tick: a list
    // of 10,000 ServiceLogs every 500 ms is tens of MB for the API server to serialise,
    // on the same two cores as the operator being measured.
    let (published_tx, mut published_rx) = tokio::sync::watch::channel(0usize);
    let follower = tokio::spawn(count_published(api.clone(), published_tx));
    let mut published_at = None;
    let mut peak = 0.0f64;
    let deadline = Duration::from_secs(1800);
    let mut progress = Instant::now();
    let mut timeline = Vec::new();
    loop {
        let rss = rss_mib(pid).1;
        peak = peak.max(rss_mib(pid).0);
        if progress.elapsed() >= Duration::from_secs(2) {
            progress = Instant::now();
            let point = (
                started.elapsed().as_secs_f64(),
                *configs_rx.borrow(),
                *published_rx.borrow(),
                rss,
            );
            eprintln!(
                "operator-scale: {:>6.1}s  {} config znodes, {} statuses, RSS {:.1} MiB",
                point.0, point.1, point.2, point.3
            );
            timeline.push(point);
        }
        if published_at.is_none() && *configs_rx.borrow_and_update() >= n {
            published_at = Some(started.elapsed());
            eprintln!(
                "operator-scale: {n} config znodes after {:.1}s",
                started.elapsed().as_secs_f64()
            );
        }
        if published_at.is_some() && *published_rx.borrow_and_update() >= n {
            break;
        }
        if started.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {n} ServiceLogs to be published");
        }
        tokio::select! {
            _ = published_rx.changed() => {}
            _ = configs_rx.changed(), if published_at.is_none() => {}
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    follower.abort();
    counter.abort();
    let total = started.elapsed();
    let znodes = published_at.unwrap_or(total);
    let (hwm, rss) = rss_mib(pid);
    let result = serde_json::json!({
        "servicelogs": n,
        "znodes_published_s": znodes.as_secs_f64(),
        "statuses_published_s": total.as_secs_f64(),
        "servicelogs_per_s_to_zookeeper": n as f64 / znodes.as_secs_f64(),
        "servicelogs_per_s_end_to_end": n as f64 / total.as_secs_f64(),
        "operator_peak_rss_mib": hwm.max(peak),
        "operator_rss_mib_after": rss,
        "timeline": timeline
            .iter()
            .map(|(t, configs, statuses, rss)| serde_json::json!({
                "s": t, "config_znodes": configs, "statuses": statuses, "rss_mib": rss,
            }))
            .collect::<Vec<_>>(),
    });
    println!(
        "operator-scale  {n} ServiceLogs: znodes in {:.1}s ({:.0}/s), statuses in {:.1}s ({:.0}/s), operator peak RSS {:.1} MiB",
        znodes.as_secs_f64(),
        n as f64 / znodes.as_secs_f64(),
        total.as_secs_f64(),
        n as f64 / total.as_secs_f64(),
        hwm.max(peak)
    );
    drop(operator);
    Ok(result)
}

/// Counts the ServiceLogs whose status says `Published=True`, from a watch.
async fn count_published(api: Api<ServiceLog>, count: tokio::sync::watch::Sender<usize>) {
    use kube::runtime::{WatchStreamExt, watcher};
    let mut published = std::collections::HashSet::new();
    let events = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .applied_objects();
    futures::pin_mut!(events);
    while let Some(Ok(s)) = events.next().await {
        let name = s.metadata.name.clone().unwrap_or_default();
        let ok = s.status.as_ref().is_some_and(|st| {
            st.conditions
                .iter()
                .any(|c| c.r#type == "Published" && c.status == "True")
        });
        if ok {
            published.insert(name);
        } else {
            published.remove(&name);
        }
        count.send_replace(published.len());
    }
}

async fn webhook(
    env: &TestEnv,
    rate: u32,
    duration: Duration,
) -> anyhow::Result<serde_json::Value> {
    let ns = env.create_namespace("bench-webhook").await?;
    let client = env.client().await?;
    let mut slog = example()?;
    slog.metadata.namespace = Some(ns.clone());
    Api::<ServiceLog>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &slog)
        .await?;
    let options = OperatorOptions {
        namespace: ns.clone(),
        zk_connect: env.zk_connect(),
        zk_root: format!("/{}", unique_name("bench")),
        identity: "bench".into(),
        leader_election: false,
        // Registered at its loopback URL, so its certificate names 127.0.0.1.
        webhook: true,
        extra_args: vec![],
    };
    let operator = tokio::task::block_in_place(|| Operator::start(env, &options))?;
    let pid = operator.pid().context("operator pid")?;
    let port = operator.webhook_port();
    let secret: k8s_openapi::api::core::v1::Secret = Api::namespaced(client.clone(), &ns)
        .get("servicelog-webhook-tls")
        .await?;
    let ca = secret
        .data
        .and_then(|d| d.get("ca.crt").map(|b| b.0.clone()))
        .context("the webhook Secret has no ca.crt")?;
    let connector = tls_connector(&ca)?;
    let body = Arc::new(review(&ns)?);

    // Four keep-alive connections, requests paced to `rate` per second in total.
    let connections = 4u32;
    let per_connection = Duration::from_secs_f64(f64::from(connections) / f64::from(rate));
    let total = (f64::from(rate) * duration.as_secs_f64()) as usize / connections as usize;
    let (hwm_before, _) = rss_mib(pid);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let connector = connector.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            drive(connector, port, body, total, per_connection).await
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    latencies.sort();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies
            .get(i)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(f64::NAN)
    };
    let (hwm, rss) = rss_mib(pid);
    println!(
        "webhook         {} reviews at {rate}/s over TLS: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; operator RSS {:.1} MiB (peak {:.1})",
        latencies.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0),
        rss,
        hwm
    );
    drop(operator);
    Ok(serde_json::json!({
        "requests": latencies.len(),
        "rate_per_s": rate,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "operator_rss_mib": rss,
        "operator_peak_rss_mib": hwm,
        "operator_peak_rss_before_mib": hwm_before,
    }))
}

fn review(ns: &str) -> anyhow::Result<Vec<u8>> {
    Ok(serde_json::to_vec(&serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "00000000-0000-0000-0000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": ns,
            "userInfo": {},
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "web", "namespace": ns, "labels": {"app": "checkout"}, "annotations": {"servicelog.io/inject": "checkout"}},
                "spec": {"containers": [{"name": "app", "image": "busybox"}]},
            },
        }
    }))?)
}

fn tls_connector(ca_pem: &[u8]) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn drive(
    connector: tokio_rustls::TlsConnector,
    port: u16,
    body: Arc<Vec<u8>>,
    count: usize,
    every: Duration,
) -> anyhow::Result<Vec<Duration>> {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?.to_owned();
    let tls = connector.connect(name, tcp).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let mut latencies = Vec::with_capacity(count);
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for _ in 0..count {
        ticker.tick().await;
        let req = hyper::Request::post("/mutate-pods")
            .header("content-type", "application/json")
            .header("host", "127.0.0.1")
            .body(Full::new(Bytes::from(body.as_ref().clone())))?;
        let start = Instant::now();
        let response = sender.send_request(req).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        latencies.push(start.elapsed());
        if !status.is_success() || !bytes.windows(5).any(|w| w == b"patch") {
            bail!(
                "webhook answered {status} without a patch: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }
    Ok(latencies)
}
