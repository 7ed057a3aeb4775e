//! `servicelog-bench`: the benchmarks behind `make bench`, on the real components.
//!
//! - `operator-scale`: N ServiceLogs exist before the operator starts (a cold start);
//!   time until every config znode is published and every status says so; the operator's
//!   peak RSS.
//! - `webhook`: AdmissionReviews for an annotated pod at a fixed rate over loopback TLS;
//!   latency percentiles and the operator's RSS while serving.
//! - `fleet`: 100 and 1,000 sidecar processes (`BENCH_FLEET_SIZES=100,1000`) on one
//!   ServiceLog; rule change → `applied N/N`, sent by `kubectl patch` and by a kube client,
//!   beside ZooKeeper's floor at the same N, with a breakdown of each change.
//! - `rollout` (only when named: `servicelog-bench rollout`, `make bench` section
//!   `rollout`): the fleet of 100 and 1,000 sidecars (`BENCH_ROLLOUT_SIZES=100,1000`) under
//!   a staged rollout; `kubectl patch` → step 1 applied on its canaries, and `kubectl patch`
//!   of a change the canaries reject → every canary back on stable, the candidate withdrawn.
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
        results.insert(
            "operator_scale".to_owned(),
            operator_scale(env, scale_n).await?,
        );
    }
    if only("webhook") {
        results.insert(
            "webhook".to_owned(),
            webhook(env, 200, Duration::from_secs(10)).await?,
        );
    }
    if only("fleet") {
        // The 100-pod run as before (20 changes a method, key `fleet`); other sizes with
        // 10 changes a method, under `fleet_<size>`.
        let sizes = std::env::var("BENCH_FLEET_SIZES").unwrap_or_else(|_| "100,1000".into());
        for size in sizes.split(',').filter(|s| !s.trim().is_empty()) {
            let size: usize = size
                .trim()
                .parse()
                .with_context(|| format!("BENCH_FLEET_SIZES: {size:?} is not a number"))?;
            let (key, changes) = if size == 100 {
                ("fleet".to_owned(), 20)
            } else {
                (format!("fleet_{size}"), 10)
            };
            results.insert(key, fleet(env, size, changes).await?);
        }
    }
    // Not in the default set: `make bench` runs it as its own section.
    if args.iter().any(|a| a == "rollout") {
        let sizes = std::env::var("BENCH_ROLLOUT_SIZES").unwrap_or_else(|_| "100,1000".into());
        let rounds: usize = match std::env::var("BENCH_ROLLOUT_ROUNDS") {
            Ok(v) => v
                .parse()
                .with_context(|| format!("BENCH_ROLLOUT_ROUNDS: {v:?} is not a number"))?,
            Err(_) => 20,
        };
        for size in sizes.split(',').filter(|s| !s.trim().is_empty()) {
            let size: usize = size
                .trim()
                .parse()
                .with_context(|| format!("BENCH_ROLLOUT_SIZES: {size:?} is not a number"))?;
            let key = if size == 100 {
                "rollout".to_owned()
            } else {
                format!("rollout_{size}")
            };
            results.insert(key, rollout(env, size, rounds).await?);
        }
    }
    let out = workspace_dir().join("target/bench");
    std::fs::create_dir_all(&out)?;
    let path = out.join("results.json");
    let mut all: serde_json::Map<String, serde_json::Value> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    for (k, v) in results {
        all.insert(k, v);
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&all)?)?;
    println!("results: {}", path.display());
    Ok(())
}

/// A rule change → `applied N/N` across `size` sidecar processes, over `patches` changes
/// sent with `kubectl patch` (issue #9's measure, which includes starting kubectl) and as
/// many sent by a connected kube client (what the operator and sidecars take), interleaved.
/// Beside them, in the same run: ZooKeeper's floor at the same N (setData → N watchers
/// re-read, from one process), ZooKeeper's RSS with and without the fleet's sessions, the
/// CPU and RSS of the operator and the sidecars' CPU during the changes, and where each
/// change's time went, from ZooKeeper's `mtime`s of the config and the instance records.
async fn fleet(
    env: &'static TestEnv,
    size: usize,
    patches: usize,
) -> anyhow::Result<serde_json::Value> {
    use servicelog_e2e::fleet::Via;
    check_limits(size)?;
    let zk_pid = env.zookeeper().pid(0).context("ZooKeeper's pid")?;
    let zk_port = env.zookeeper().client_port(0);
    let zk_rss_before = rss_mib(zk_pid).1;
    let zk_heap_before = java_live_heap_mib(zk_pid);
    let zk_connections_before = mntr(zk_port, "zk_num_alive_connections");
    eprintln!("fleet: starting {size} pods and sidecars");
    let started = Instant::now();
    let mut fleet = servicelog_e2e::fleet::Fleet::start(env, size).await?;
    let start_s = started.elapsed().as_secs_f64();
    eprintln!("fleet: {size} sidecars applied the first config after {start_s:.1}s");
    let zk_rss_fleet = rss_mib(zk_pid).1;
    let zk_heap_fleet = java_live_heap_mib(zk_pid);
    let operator_pid = fleet.operator.pid().context("operator pid")?;
    let sidecar_pids: Vec<u32> = fleet.sidecars.iter().filter_map(|s| s.proc.pid()).collect();
    // An experiment, not the figure: sidecars at a lower CPU priority than ZooKeeper, the
    // API server and the operator, as on a cluster where they run on other nodes' CPUs.
    let nice: Option<i32> = std::env::var("BENCH_FLEET_NICE")
        .ok()
        .and_then(|v| v.parse().ok());
    if let Some(nice) = nice {
        renice(&sidecar_pids, nice)?;
    }
    // What the idle sidecars take (timers, polls), so the changes' share can be told apart.
    // (After a pause: right after the start they still write their first records.)
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = Duration::from_secs(3);
    let idle_cpu: f64 = sidecar_pids.iter().map(|p| cpu_s(*p)).sum();
    tokio::time::sleep(idle).await;
    let idle_cpu_per_s =
        (sidecar_pids.iter().map(|p| cpu_s(*p)).sum::<f64>() - idle_cpu) / idle.as_secs_f64();
    let mut kubectl = Vec::new();
    let mut client = Vec::new();
    let mut stages = Vec::new();
    let operator_cpu = cpu_s(operator_pid);
    let sidecars_cpu: f64 = sidecar_pids.iter().map(|p| cpu_s(*p)).sum();
    let wall = Instant::now();
    let mut operator_peak_rss = 0.0f64;
    for _ in 0..patches {
        for (via, times) in [(Via::Kubectl, &mut kubectl), (Via::Client, &mut client)] {
            let change = fleet.patch_and_wait_via(via).await?;
            operator_peak_rss = operator_peak_rss.max(rss_mib(operator_pid).1);
            times.push(change.elapsed);
            if via == Via::Client {
                stages.push(breakdown(&fleet, &change).await?);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let wall = wall.elapsed().as_secs_f64();
    let changes = (2 * patches) as f64;
    let operator_cpu = cpu_s(operator_pid) - operator_cpu;
    let sidecars_cpu = sidecar_pids.iter().map(|p| cpu_s(*p)).sum::<f64>() - sidecars_cpu;
    // Net of what they take idle over the same wall time.
    let sidecars_change_cpu = sidecars_cpu - idle_cpu_per_s * wall;
    let (operator_hwm, operator_rss) = rss_mib(operator_pid);
    let rss: Vec<f64> = sidecar_pids.iter().map(|p| rss_mib(*p).1).collect();
    let mean_rss = rss.iter().sum::<f64>() / rss.len().max(1) as f64;

    eprintln!("fleet: ZooKeeper's floor with {size} watchers");
    let config = fleet
        .zk
        .get_data(&fleet.config_path())
        .await
        .context("reading the fleet's config znode")?
        .0;
    let floor = zk_floor(env, size, patches.max(5), &config, zk_pid).await?;
    let (floor, zk_rss_floor, zk_heap_floor, zk_connections) = floor;
    fleet.stop();

    let pct = |times: &[Duration], p: f64| {
        let mut ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        percentile(&mut ms, p)
    };
    let stage = |f: fn(&Stages) -> f64| {
        let mut v: Vec<f64> = stages.iter().map(f).filter(|v| !v.is_nan()).collect();
        percentile(&mut v, 0.5)
    };
    let floor_p50 = pct(&floor, 0.5);
    let floor_p99 = pct(&floor, 0.99);
    println!(
        "fleet {size:>5}     kubectl patch → applied {size}/{size}: p50 {:.0} ms, p99 {:.0} ms; client patch → applied: p50 {:.0} ms, p99 {:.0} ms; {patches} changes each; ZooKeeper floor (setData → {size} re-reads): p50 {floor_p50:.0} ms, p99 {floor_p99:.0} ms",
        pct(&kubectl, 0.5),
        pct(&kubectl, 0.99),
        pct(&client, 0.5),
        pct(&client, 0.99),
    );
    println!(
        "fleet {size:>5}     client change, medians: patch → config written {:.0} ms → first ack {:.0} ms, median ack {:.0} ms, last ack {:.0} ms → status seen {:.0} ms after the last ack",
        stage(|s| s.published_ms),
        stage(|s| s.first_ack_ms),
        stage(|s| s.median_ack_ms),
        stage(|s| s.last_ack_ms),
        stage(|s| s.status_ms),
    );
    println!(
        "fleet {size:>5}     last ack → operator read it {:.0} ms → status patch sent {:.0} ms → patch answered {:.0} ms → bench's watch {:.0} ms (medians, from the operator's log)",
        stage(|s| s.acks_read_ms),
        stage(|s| s.reconcile_ms),
        stage(|s| s.patch_ms),
        stage(|s| s.watch_ms),
    );
    println!(
        "fleet {size:>5}     per change: sidecars' CPU {:.0} ms (all {size}; idle they take {:.0} ms/s), operator CPU {:.1} ms; operator RSS {operator_rss:.1} MiB (peak {:.1}); sidecar RSS mean {mean_rss:.1} MiB; ZooKeeper RSS {zk_rss_before:.0} → {zk_rss_fleet:.0} MiB with {size} sessions ({:.0} with the floor's too)",
        sidecars_change_cpu * 1000.0 / changes,
        idle_cpu_per_s * 1000.0,
        operator_cpu * 1000.0 / changes,
        operator_hwm.max(operator_peak_rss),
        zk_rss_floor,
    );
    println!(
        "fleet {size:>5}     ZooKeeper live heap (after a full GC): {zk_heap_before:.1} MiB before, {zk_heap_fleet:.1} with the fleet's {size} sessions, {zk_heap_floor:.1} with the floor's {size} more",
    );
    Ok(serde_json::json!({
        "sidecars": size,
        "sidecars_nice": nice,
        "changes": patches,
        "start_s": start_s,
        "patch_to_applied_p50_ms": pct(&kubectl, 0.5),
        "patch_to_applied_p99_ms": pct(&kubectl, 0.99),
        "patch_to_applied_max_ms": pct(&kubectl, 1.0),
        "client_patch_to_applied_p50_ms": pct(&client, 0.5),
        "client_patch_to_applied_p99_ms": pct(&client, 0.99),
        "client_patch_to_applied_max_ms": pct(&client, 1.0),
        "zookeeper_floor_p50_ms": floor_p50,
        "zookeeper_floor_p99_ms": floor_p99,
        "client_change_median_ms": {
            "patch_to_config_written": stage(|s| s.published_ms),
            "config_to_first_ack": stage(|s| s.first_ack_ms),
            "config_to_median_ack": stage(|s| s.median_ack_ms),
            "config_to_p99_ack": stage(|s| s.p99_ack_ms),
            "config_to_last_ack": stage(|s| s.last_ack_ms),
            "last_ack_to_status_seen": stage(|s| s.status_ms),
            "last_ack_to_operator_read": stage(|s| s.acks_read_ms),
            "operator_read_to_status_patch": stage(|s| s.reconcile_ms),
            "status_patch": stage(|s| s.patch_ms),
            "status_patch_to_watch": stage(|s| s.watch_ms),
        },
        "sidecars_cpu_ms_per_change": sidecars_change_cpu * 1000.0 / changes,
        "sidecars_idle_cpu_ms_per_s": idle_cpu_per_s * 1000.0,
        "operator_cpu_ms_per_change": operator_cpu * 1000.0 / changes,
        "operator_cpu_cores_during_changes": operator_cpu / wall,
        "operator_rss_mib": operator_rss,
        "operator_peak_rss_mib": operator_hwm.max(operator_peak_rss),
        "sidecar_mean_rss_mib": mean_rss,
        "zookeeper_rss_mib_before": zk_rss_before,
        "zookeeper_rss_mib_with_fleet": zk_rss_fleet,
        "zookeeper_rss_mib_with_fleet_and_floor": zk_rss_floor,
        "zookeeper_live_heap_mib_before": zk_heap_before,
        "zookeeper_live_heap_mib_with_fleet": zk_heap_fleet,
        "zookeeper_live_heap_mib_with_fleet_and_floor": zk_heap_floor,
        "zookeeper_connections_before": zk_connections_before,
        "zookeeper_connections_with_fleet_and_floor": zk_connections,
    }))
}

/// A staged rollout on a fleet of `size` sidecars (steps 10 % held an hour, then 100 %),
/// `rounds` times (fewer when the rounds pass 5 minutes, at least 10): a good change by
/// `kubectl patch` (a sink added) → its step-1 canaries run the candidate, read from
/// their instance records; then a change the canaries reject (a file sink under a file)
/// → every canary of that candidate back on the stable hash and the candidate znode gone.
/// Both clocks start just before `kubectl` starts. Beside them: ZooKeeper's RSS with and
/// without the fleet's sessions, the operator's CPU and RSS during the rounds.
async fn rollout(
    env: &'static TestEnv,
    size: usize,
    rounds: usize,
) -> anyhow::Result<serde_json::Value> {
    use servicelog_api::{
        rollout::is_member,
        wire::{Candidate, Instance},
    };
    check_limits(size)?;
    const BUDGET: Duration = Duration::from_secs(300);
    const WAIT: Duration = Duration::from_secs(60);
    let zk_pid = env.zookeeper().pid(0).context("ZooKeeper's pid")?;
    let zk_rss_before = rss_mib(zk_pid).1;
    let zk_heap_before = java_live_heap_mib(zk_pid);
    eprintln!("rollout: starting {size} pods and sidecars");
    let started = Instant::now();
    let servicelog = format!(
        "{}  rollout:\n    steps: [{{percent: 10, pause: 1h}}, {{percent: 100}}]\n",
        servicelog_e2e::fleet::SERVICELOG
    );
    let fleet = servicelog_e2e::fleet::Fleet::start_with(env, size, &servicelog).await?;
    let start_s = started.elapsed().as_secs_f64();
    eprintln!("rollout: {size} sidecars applied the first config after {start_s:.1}s");
    let zk_rss_fleet = rss_mib(zk_pid).1;
    let zk_heap_fleet = java_live_heap_mib(zk_pid);
    let operator_pid = fleet.operator.pid().context("operator pid")?;
    let pods = fleet.pod_names();
    let zk = &fleet.zk;
    let candidate_path = fleet.candidate_path();
    let instances = fleet.instances_path();
    let stable = servicelog_api::wire::Envelope::from_slice(
        &zk.get_data(&fleet.config_path())
            .await
            .context("reading the fleet's config znode")?
            .0,
    )?
    .hash;
    let candidate = async || -> anyhow::Result<Option<Candidate>> {
        match zk.get_data(&candidate_path).await {
            Ok((data, _)) => Ok(Some(Candidate::from_slice(&data)?)),
            Err(zookeeper_client::Error::NoNode) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {candidate_path}")),
        }
    };
    // How many of `pods` have an instance record routing with `hash` (read at once).
    let on = async |pods: &[String], hash: &str| -> anyhow::Result<usize> {
        let reads = pods
            .iter()
            .map(|p| zk.get_data(&format!("{instances}/{p}")));
        let records = futures::future::try_join_all(reads)
            .await
            .context("reading the canaries' instance records")?;
        Ok(records
            .iter()
            .filter(|(data, _)| Instance::from_slice(data).is_ok_and(|r| r.hash == hash))
            .count())
    };
    // Polls `check` every 5 ms until it holds, failing after WAIT with `what`.
    async fn until<T>(
        what: &str,
        mut check: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(found) = check().await? {
                return Ok(found);
            }
            if Instant::now() > deadline {
                bail!("timed out after {WAIT:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let patch = |sinks: serde_json::Value| -> anyhow::Result<()> {
        let body = serde_json::json!({"spec": {"sinks": sinks}}).to_string();
        let out = env
            .kubectl()
            .args(["-n", &fleet.namespace, "patch", "servicelog", "fleet"])
            .args(["--type=merge", "-p", &body])
            .output()
            .context("running kubectl patch")?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl patch: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    let sink = |name: &str| serde_json::json!({"name": name, "file": {"path": format!("/var/log/servicelog/{name}.log")}});
    let (mut to_step, mut to_back) = (Vec::new(), Vec::new());
    // Canaries per round, min and max (a step's share of the pods varies with the hash).
    let (mut step_canaries, mut back_canaries) = ((usize::MAX, 0), (usize::MAX, 0));
    let span = |(lo, hi): (usize, usize), n: usize| (lo.min(n), hi.max(n));
    let operator_cpu = cpu_s(operator_pid);
    let mut operator_peak_rss = 0.0f64;
    let wall = Instant::now();
    for round in 0..rounds {
        if round >= 10 && wall.elapsed() > BUDGET {
            break;
        }
        let t0 = Instant::now();
        patch(serde_json::json!([
            sink("out"),
            sink(&format!("spare{round}"))
        ]))?;
        let good = until("the good change's candidate", async || {
            Ok(candidate()
                .await?
                .filter(|c| c.stable_hash == stable && !c.preview))
        })
        .await?;
        let members: Vec<String> = pods
            .iter()
            .filter(|p| is_member(&good.hash, &fleet.namespace, p, 10))
            .cloned()
            .collect();
        until(
            &format!("step 1 applied on its {} canaries", members.len()),
            async || Ok((on(&members, &good.hash).await? == members.len()).then_some(())),
        )
        .await?;
        to_step.push(t0.elapsed());
        step_canaries = span(step_canaries, members.len());

        let t0 = Instant::now();
        patch(serde_json::json!([
            sink("out"),
            sink(&format!("spare{round}")),
            {"name": "broken", "file": {"path": "/var/log/servicelog/out.log/broken.log"}},
        ]))?;
        let bad = until("the rejected change's candidate", async || {
            Ok(candidate().await?.filter(|c| c.hash != good.hash))
        })
        .await?;
        let canaries: Vec<String> = pods
            .iter()
            .filter(|p| is_member(&bad.hash, &fleet.namespace, p, 10))
            .cloned()
            .collect();
        until(
            &format!(
                "all {} canaries back on stable, the candidate withdrawn",
                canaries.len()
            ),
            async || {
                let back = on(&canaries, &stable).await? == canaries.len();
                Ok((back && candidate().await?.is_none()).then_some(()))
            },
        )
        .await?;
        to_back.push(t0.elapsed());
        back_canaries = span(back_canaries, canaries.len());
        operator_peak_rss = operator_peak_rss.max(rss_mib(operator_pid).1);
        eprintln!(
            "rollout {size}: round {round}: step 1 on {} canaries in {:?}; rolled back on {} in {:?}",
            members.len(),
            to_step[round],
            canaries.len(),
            to_back[round]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let wall = wall.elapsed().as_secs_f64();
    let operator_cpu = cpu_s(operator_pid) - operator_cpu;
    let (operator_hwm, operator_rss) = rss_mib(operator_pid);
    let zk_rss_end = rss_mib(zk_pid).1;
    fleet.stop();
    let pct = |times: &[Duration], p: f64| {
        let mut ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        percentile(&mut ms, p)
    };
    let changes = (to_step.len() + to_back.len()) as f64;
    let rounds = to_step.len();
    println!(
        "rollout {size:>4}   kubectl patch → step 1 applied on its {}–{} canaries: p50 {:.0} ms, p99 {:.0} ms; kubectl patch → rejected change rolled back on all {}–{} canaries: p50 {:.0} ms, p99 {:.0} ms; {rounds} changes each",
        step_canaries.0,
        step_canaries.1,
        pct(&to_step, 0.5),
        pct(&to_step, 0.99),
        back_canaries.0,
        back_canaries.1,
        pct(&to_back, 0.5),
        pct(&to_back, 0.99),
    );
    println!(
        "rollout {size:>4}   operator CPU {:.1} ms per change ({:.2} cores over the rounds), RSS {operator_rss:.1} MiB (peak {:.1}); ZooKeeper RSS {zk_rss_before:.0} → {zk_rss_fleet:.0} MiB with {size} sessions ({zk_rss_end:.0} after the rounds), live heap {zk_heap_before:.1} → {zk_heap_fleet:.1} MiB",
        operator_cpu * 1000.0 / changes,
        operator_cpu / wall,
        operator_hwm.max(operator_peak_rss),
    );
    Ok(serde_json::json!({
        "sidecars": size,
        "rounds": rounds,
        "start_s": start_s,
        "step_canaries_min": step_canaries.0,
        "step_canaries_max": step_canaries.1,
        "rollback_canaries_min": back_canaries.0,
        "rollback_canaries_max": back_canaries.1,
        "patch_to_step1_applied_p50_ms": pct(&to_step, 0.5),
        "patch_to_step1_applied_p99_ms": pct(&to_step, 0.99),
        "patch_to_step1_applied_max_ms": pct(&to_step, 1.0),
        "patch_to_rolled_back_p50_ms": pct(&to_back, 0.5),
        "patch_to_rolled_back_p99_ms": pct(&to_back, 0.99),
        "patch_to_rolled_back_max_ms": pct(&to_back, 1.0),
        "operator_cpu_ms_per_change": operator_cpu * 1000.0 / changes,
        "operator_cpu_cores_during_rounds": operator_cpu / wall,
        "operator_rss_mib": operator_rss,
        "operator_peak_rss_mib": operator_hwm.max(operator_peak_rss),
        "zookeeper_rss_mib_before": zk_rss_before,
        "zookeeper_rss_mib_with_fleet": zk_rss_fleet,
        "zookeeper_rss_mib_after_rounds": zk_rss_end,
        "zookeeper_live_heap_mib_before": zk_heap_before,
        "zookeeper_live_heap_mib_with_fleet": zk_heap_fleet,
    }))
}

/// Where one change's time went, in ms, from ZooKeeper's `mtime`s (server clock, ms) and
/// the bench's wall clock, which are the same clock here.
struct Stages {
    /// Patch sent → config znode written (API server, operator's watch, setData).
    published_ms: f64,
    /// Config written → the first, median, 99th-percentile and last instance record
    /// acking it (each sidecar's wake, read, parse, compile, setData).
    first_ack_ms: f64,
    median_ack_ms: f64,
    p99_ack_ms: f64,
    last_ack_ms: f64,
    /// Last ack → the status saying `applied N/N` seen by the bench's watch (the
    /// operator reading the acks, its status write, the API server's watch).
    status_ms: f64,
    /// That last stretch from the operator's log (NaN when the lines are not there):
    /// last ack → the operator has read it; → its status patch is sent; the patch; the
    /// patch answered → the bench's watch sees it.
    acks_read_ms: f64,
    reconcile_ms: f64,
    patch_ms: f64,
    watch_ms: f64,
}

/// From the operator's debug log: when it read its last batch of instance records before
/// the status write saying `applied size/size`, and that write's start and end (ms since
/// the epoch).
fn operator_timeline(log: &str, size: usize) -> Option<(f64, f64, f64)> {
    let ms = |v: &serde_json::Value| -> Option<f64> {
        let t: k8s_openapi::jiff::Timestamp = v["timestamp"].as_str()?.parse().ok()?;
        Some(t.as_microsecond() as f64 / 1000.0)
    };
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let done = lines
        .iter()
        .rev()
        .find(|l| l["message"] == "status written" && l["applied"].as_u64() == Some(size as u64))?;
    let end = ms(done)?;
    let start = end - done["patch_ms"].as_f64()?;
    let read = lines
        .iter()
        .filter(|l| l["message"] == "instance records read")
        .filter_map(ms)
        .filter(|t| *t <= start)
        .fold(f64::NAN, f64::max);
    Some((read, start, end))
}

async fn breakdown(
    fleet: &servicelog_e2e::fleet::Fleet,
    change: &servicelog_e2e::fleet::Change,
) -> anyhow::Result<Stages> {
    use servicelog_api::wire::{Envelope, Instance};
    let epoch_ms = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    let (data, stat) = fleet.zk.get_data(&fleet.config_path()).await?;
    let hash = Envelope::from_slice(&data)?.hash;
    let config_ms = stat.mtime as f64;
    let path = fleet.instances_path();
    let (children, _) = fleet.zk.get_children(&path).await?;
    let reads = children
        .iter()
        .map(|pod| fleet.zk.get_data(&format!("{path}/{pod}")));
    let mut acks = Vec::new();
    for (data, stat) in futures::future::try_join_all(reads).await? {
        let record = Instance::from_slice(&data)?;
        if record.hash == hash {
            acks.push(stat.mtime as f64 - config_ms);
        }
    }
    anyhow::ensure!(!acks.is_empty(), "no instance record acks {hash}");
    let last = percentile(&mut acks, 1.0);
    let last_ack = config_ms + last;
    let seen = epoch_ms(change.seen_at);
    let (read, start, end) = operator_timeline(&fleet.operator.log_tail(2000), acks.len())
        .unwrap_or((f64::NAN, f64::NAN, f64::NAN));
    Ok(Stages {
        acks_read_ms: read - last_ack,
        reconcile_ms: start - read,
        patch_ms: end - start,
        watch_ms: seen - end,
        published_ms: config_ms - epoch_ms(change.sent_at),
        first_ack_ms: percentile(&mut acks, 0.0),
        median_ack_ms: percentile(&mut acks, 0.5),
        p99_ack_ms: percentile(&mut acks, 0.99),
        last_ack_ms: last,
        status_ms: seen - last_ack,
    })
}

/// ZooKeeper's own floor at `n` watchers: `n` sessions of this process each hold a data
/// watch on a znode holding `data`; one setData; the time until every session has
/// re-read it, per change. Also ZooKeeper's RSS, live heap and connections with these
/// sessions open.
async fn zk_floor(
    env: &TestEnv,
    n: usize,
    changes: usize,
    data: &[u8],
    zk_pid: u32,
) -> anyhow::Result<(Vec<Duration>, f64, f64, f64)> {
    use zookeeper_client::{Acls, CreateMode};
    let connect = env.zk_connect();
    let writer = servicelog_e2e::zookeeper::connect(&connect).await?;
    let path = format!("/{}", unique_name("floor"));
    writer
        .create(
            &path,
            data,
            &CreateMode::Persistent.with_acls(Acls::anyone_all()),
        )
        .await
        .context("creating the floor's znode")?;
    let readers: Vec<zookeeper_client::Client> = futures::stream::iter(0..n)
        .map(|_| servicelog_e2e::zookeeper::connect(&connect))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let rss = rss_mib(zk_pid).1;
    let heap = java_live_heap_mib(zk_pid);
    let port = env.zookeeper().client_port(0);
    let connections = mntr(port, "zk_num_alive_connections");
    let mut times = Vec::new();
    for i in 0..changes {
        let watches =
            futures::future::try_join_all(readers.iter().map(|r| r.get_and_watch_data(&path)))
                .await
                .context("watching the floor's znode")?;
        let mut bytes = data.to_vec();
        bytes.extend_from_slice(format!(" {i}").as_bytes());
        let started = Instant::now();
        writer.set_data(&path, &bytes, None).await?;
        let rereads = readers.iter().zip(watches).map(|(r, (_, _, watch))| {
            let path = path.clone();
            async move {
                watch.changed().await;
                r.get_data(&path).await.map(|_| ())
            }
        });
        tokio::time::timeout(
            Duration::from_secs(60),
            futures::future::try_join_all(rereads),
        )
        .await
        .with_context(|| format!("{n} watchers re-reading the floor's znode, change {i}"))??;
        times.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    writer.delete(&path, None).await?;
    Ok((times, rss, heap, connections))
}

/// The `p` quantile (nearest rank) of `values`, sorted in place; NaN when empty.
fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let i = ((values.len() as f64 - 1.0) * p).round() as usize;
    values.get(i).copied().unwrap_or(f64::NAN)
}

/// A JVM's live heap: `jcmd PID GC.run`, then the generations' `used` of
/// `GC.heap_info` (ZooKeeper runs with the serial collector). NaN when jcmd is missing or
/// the JVM does not answer.
fn java_live_heap_mib(pid: u32) -> f64 {
    let jcmd = |what: &str| {
        std::process::Command::new("jcmd")
            .args([&pid.to_string(), what])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    if jcmd("GC.run").is_none() {
        return f64::NAN;
    }
    let Some(info) = jcmd("GC.heap_info") else {
        return f64::NAN;
    };
    let kib: f64 = info
        .lines()
        .filter(|l| l.contains("generation"))
        .filter_map(|l| {
            let used = l.split("used ").nth(1)?;
            used.split('K').next()?.trim().parse::<f64>().ok()
        })
        .sum();
    if kib > 0.0 { kib / 1024.0 } else { f64::NAN }
}

/// Fails early, naming the limit, when this process may not open the fleet's files and
/// sockets (the floor's `size` sessions among them) or start its `size` sidecars' threads
/// (about 10 each).
fn check_limits(size: usize) -> anyhow::Result<()> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = |name: &str| -> Option<u64> {
        let line = limits.lines().find(|l| l.starts_with(name))?;
        let value = line[name.len()..].split_whitespace().next()?;
        if value == "unlimited" {
            Some(u64::MAX)
        } else {
            value.parse().ok()
        }
    };
    let need_files = 2 * size as u64 + 512;
    if let Some(files) = soft("Max open files")
        && files < need_files
    {
        bail!(
            "the fleet of {size} needs about {need_files} open files, and `ulimit -n` is {files}: raise it (scripts/bench.sh raises the soft limit to the hard one)"
        );
    }
    let need_threads = 12 * size as u64;
    if let Some(procs) = soft("Max processes")
        && procs < need_threads
    {
        bail!(
            "the fleet of {size} needs about {need_threads} processes and threads, and `ulimit -u` is {procs}: raise it"
        );
    }
    Ok(())
}

/// Sets the nice value of every thread of `pids` (Linux keeps it per thread).
fn renice(pids: &[u32], nice: i32) -> anyhow::Result<()> {
    let tids: Vec<String> = pids
        .iter()
        .flat_map(|p| {
            std::fs::read_dir(format!("/proc/{p}/task"))
                .into_iter()
                .flatten()
        })
        .filter_map(|t| Some(t.ok()?.file_name().to_string_lossy().into_owned()))
        .collect();
    for chunk in tids.chunks(500) {
        let status = std::process::Command::new("renice")
            .args(["-n", &nice.to_string(), "-p"])
            .args(chunk)
            .stdout(std::process::Stdio::null())
            .status()
            .context("running renice")?;
        anyhow::ensure!(status.success(), "renice -n {nice} failed: {status}");
    }
    Ok(())
}

/// One figure of ZooKeeper's `mntr`, or NaN.
fn mntr(port: u16, key: &str) -> f64 {
    servicelog_e2e::zookeeper::four_letter(port, "mntr")
        .ok()
        .and_then(|r| {
            r.lines()
                .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
        })
        .unwrap_or(f64::NAN)
}

/// CPU seconds (user + system) a process has used so far; 0 when it is gone.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is the first, utime
    // the 12th and stime the 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / clock_ticks()
}

/// `getconf CLK_TCK` (100 on Linux unless told otherwise).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    })
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
