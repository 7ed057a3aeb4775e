//! What the node agent costs (issue #22), beside the sidecar in the same run:
//!
//! - **CPU per line.** The real `servicelog-agent` reading one pod's CRI log file
//!   (`<time> stdout F <line>`, as containerd writes it) against the real
//!   `servicelog-sidecar` reading the same lines from a plain file, both with the transforms
//!   benchmark's workload and rules (seeded JSON lines of about 200 bytes, debug dropped,
//!   warn and error to `alerts`, info to `info`, file sinks). Each process is started
//!   pinned to one core (`taskset`), warmed with one line, then the lines are appended at
//!   once and its CPU time (`/proc/<pid>/stat`, user + system) is read when its sinks hold
//!   every expected line: the same method for both, startup excluded. Runs are
//!   interleaved (agent, sidecar, agent, …); the figure is the median of the runs.
//! - **Memory with 100 pods.** The agent serving 100 pods of its node (pods in the real API
//!   server, a directory per pod under a temporary `/var/log/pods`, one ServiceLog), each
//!   with 100 lines delivered and its record acked; its RSS then, beside the agent with one
//!   pod and the sidecar (one per pod) after its warm-up.
//!
//! The agent runs against the e2e `TestEnv` (real kube-apiserver and ZooKeeper).
//! `cargo bench -p servicelog-agent --bench agent` runs it in full (1,000,000 lines, 3 runs
//! each); under `cargo test` it is a smoke test (20,000 lines, one run each, 10 pods). The
//! sidecar binary is the release build beside this bench (`cargo build --release -p
//! servicelog-sidecar`; `make bench` builds it) or `BENCH_SIDECAR_BIN`. Environment:
//! `BENCH_LINES`, `BENCH_RUNS`, `BENCH_PODS`, `BENCH_DIR` (`target/bench/agent`),
//! `BENCH_CPU` (the core; default the last one; `none` to not pin). Prints one JSON
//! document on stdout, progress on stderr.

#[path = "../../sidecar/benches/support/mod.rs"]
mod support;

use std::{
    fs::{self, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::PostParams};
use serde_json::json;
use servicelog_api::wire::{Envelope, Layout};
use servicelog_e2e::{TestEnv, unique_name};
use servicelog_sidecar::sources::cri::PodLogs;
use support::{Rng, SEED, clock_ticks, count_lines, env_num, median, pin, tally, workload_line};
use zookeeper_client::{Acls, Client, CreateMode};

const AGENT: &str = env!("CARGO_BIN_EXE_servicelog-agent");
const NODE: &str = "bench-node";

/// The workload as plain lines and as CRI lines; the lines expected in (alerts, info).
struct Workload {
    plain: Vec<u8>,
    cri: Vec<u8>,
    want: (u64, u64),
}

fn generate(lines: u64) -> Workload {
    let mut rng = Rng(SEED);
    let (mut plain, mut cri) = (Vec::new(), Vec::new());
    let mut want = (0, 0);
    for i in 0..lines {
        let (level, line) = workload_line(&mut rng, i);
        tally(&mut want, level);
        writeln!(plain, "{line}").expect("writing to memory");
        writeln!(cri, "2026-12-07T17:27:32.123456789Z stdout F {line}").expect("writing to memory");
    }
    Workload { plain, cri, want }
}

/// The one warm-up line, an error: it lands in `alerts`.
const WARM_UP: &str = r#"{"level":"error","msg":"warm-up"}"#;

/// The rules of both contenders; `source` is the `sources` entry.
fn spec(source: serde_json::Value, out: &Path) -> serde_json::Value {
    json!({
        "sources": [source],
        "sinks": [
            {"name": "alerts", "file": {"path": out.join("alerts.log")}},
            {"name": "info", "file": {"path": out.join("info.log")}},
        ],
        "rules": [
            {"name": "drop-debug", "when": {"level": {"below": "info"}}, "action": "drop"},
            {"name": "alerts", "when": {"level": {"atLeast": "warn"}}, "to": ["alerts"]},
            {"name": "info", "when": {"level": {"in": ["info"]}}, "to": ["info"]},
        ],
        "defaultTo": [],
    })
}

fn command(bin: &Path, cpu: Option<&str>) -> Command {
    match cpu {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", c]).arg(bin);
            cmd
        }
        None => Command::new(bin),
    }
}

/// User + system CPU seconds of a running process (`taskset` execs the binary: same pid).
fn cpu_s(pid: u32, ticks: f64) -> Result<f64, String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // Fields after the command's closing parenthesis: state is the 3rd, utime the 14th.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<f64, String> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| format!("/proc/{pid}/stat has no field {n}: {stat}"))
    };
    Ok((field(14)? + field(15)?) / ticks)
}

/// VmRSS and VmHWM in KiB, and the thread count.
fn memory(pid: u32) -> Result<(u64, u64, u64), String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let field = |name: &str| -> Result<u64, String> {
        status
            .lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .ok_or_else(|| format!("/proc/{pid}/status has no {name}"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?, field("Threads:")?))
}

fn append(path: &Path, bytes: &[u8]) {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .unwrap_or_else(|e| panic!("appending to {}: {e}", path.display()));
}

/// Waits until the sinks under `out` hold `want` (alerts, info) lines, the process living.
fn wait_sinks(
    child: &mut Child,
    out: &Path,
    want: (u64, u64),
    timeout: Duration,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let got = (
            count_lines(&out.join("alerts.log")),
            count_lines(&out.join("info.log")),
        );
        if got == want {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the process exited ({status}) with sinks at {got:?}"
            ));
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "timed out after {timeout:?} waiting for {want:?} lines in (alerts, info), have {got:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM, then wait.
fn stop(mut child: Child) {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// What one measured run found.
struct Measured {
    cpu_s: f64,
    wall_s: f64,
    /// RSS after the warm-up line, KiB.
    warm_rss_kib: u64,
}

/// The ZooKeeper tree and the API server, shared by the agent's runs.
struct Cluster {
    env: TestEnv,
    rt: tokio::runtime::Runtime,
    zk: Client,
    pods: Api<Pod>,
    ns: String,
    layout: Layout,
    root: String,
}

impl Cluster {
    fn start() -> Self {
        let env = TestEnv::start().unwrap_or_else(|e| panic!("the test environment: {e}"));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let (zk, pods, ns) = rt.block_on(async {
            let kube = env.client().await.expect("a kube client");
            let ns = env.create_namespace("bench").await.expect("a namespace");
            let zk = servicelog_e2e::zookeeper::connect(&env.zk_connect())
                .await
                .expect("a ZooKeeper client");
            (zk, Api::namespaced(kube, &ns), ns)
        });
        let root = format!("/{}", unique_name("bench-agent"));
        let layout = Layout::new(&root).expect("a layout");
        let cluster = Self {
            env,
            rt,
            zk,
            pods,
            ns,
            layout,
            root,
        };
        for dir in [
            cluster.root.clone(),
            cluster.layout.namespaces(),
            format!("{}/{}", cluster.layout.namespaces(), cluster.ns),
        ] {
            cluster.create(&dir, &[]);
        }
        cluster
    }

    fn create(&self, path: &str, data: &[u8]) {
        self.rt
            .block_on(self.zk.create(
                path,
                data,
                &CreateMode::Persistent.with_acls(Acls::anyone_all()),
            ))
            .unwrap_or_else(|e| panic!("creating {path}: {e}"));
    }

    /// Publishes ServiceLog `name` with `spec`.
    fn publish(&self, name: &str, spec: serde_json::Value) {
        let spec = servicelog_api::validate::parse_spec(&spec)
            .unwrap_or_else(|e| panic!("the bench's spec does not parse: {e}"));
        let envelope = Envelope::new(format!("uid-{name}"), 1, spec).expect("an envelope");
        self.create(&self.layout.resource(&self.ns, name).expect("a path"), &[]);
        self.create(&self.layout.instances(&self.ns, name).expect("a path"), &[]);
        self.create(
            &self.layout.config(&self.ns, name).expect("a path"),
            &envelope.to_bytes().expect("encoding"),
        );
    }

    /// A pod of the agent's node naming ServiceLog `servicelog`; its uid.
    fn pod(&self, name: &str, servicelog: &str) -> String {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": {"servicelog.io/inject": servicelog}},
            "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "busybox"}]},
        }))
        .expect("a pod");
        self.rt
            .block_on(self.pods.create(&PostParams::default(), &pod))
            .unwrap_or_else(|e| panic!("creating pod {name}: {e}"))
            .metadata
            .uid
            .expect("a uid")
    }

    fn records(&self, servicelog: &str) -> usize {
        let path = self.layout.instances(&self.ns, servicelog).expect("a path");
        self.rt
            .block_on(self.zk.list_children(&path))
            .map(|c| c.len())
            .unwrap_or(0)
    }

    fn agent(&self, log_root: &Path, state: &Path, cpu: Option<&str>) -> Child {
        command(Path::new(AGENT), cpu)
            .args(["--node-name", NODE, "--zk-connect", &self.env.zk_connect()])
            .args(["--zk-root", &self.root, "--metrics-addr", "127.0.0.1:0"])
            .arg("--log-root")
            .arg(log_root)
            // The bench writes to file sinks, like the sidecar it is measured against.
            .arg("--allow-file-sinks")
            // Throughput is measured: no per-pod read rate limit.
            .args(["--pod-rate-limit", "0"])
            .arg("--state-dir")
            .arg(state)
            .env("KUBECONFIG", self.env.kubeconfig())
            .env("SERVICELOG_LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {AGENT}: {e}"))
    }
}

fn fresh(dir: &Path) -> PathBuf {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir.to_owned()
}

fn agent_run(
    cluster: &Cluster,
    dir: &Path,
    run: u64,
    work: &Workload,
    cpu: Option<&str>,
    ticks: f64,
) -> Result<Measured, String> {
    let run_dir = fresh(&dir.join(format!("runs/agent-{run}")));
    let out = fresh(&run_dir.join("out"));
    let name = format!("cpu-{run}");
    cluster.publish(
        &name,
        spec(
            json!({"name": "app", "containerLogs": {"format": "json"}}),
            &out,
        ),
    );
    let uid = cluster.pod(&name, &name);
    let log_root = run_dir.join("pods");
    let file = PodLogs::dir(&log_root, &cluster.ns, &name, &uid)
        .join("app")
        .join("0.log");
    fs::create_dir_all(file.parent().expect("a dir")).expect("the pod's log dir");
    append(
        &file,
        format!("2026-12-07T17:27:32.000000000Z stdout F {WARM_UP}\n").as_bytes(),
    );
    let mut child = cluster.agent(&log_root, &run_dir.join("state"), cpu);
    let result = measure(&mut child, &out, &file, &work.cri, work.want, ticks);
    stop(child);
    result
}

fn sidecar_run(
    sidecar: &Path,
    dir: &Path,
    run: u64,
    work: &Workload,
    cpu: Option<&str>,
    ticks: f64,
) -> Result<Measured, String> {
    let run_dir = fresh(&dir.join(format!("runs/sidecar-{run}")));
    let out = fresh(&run_dir.join("out"));
    let input = run_dir.join("app.log");
    append(&input, format!("{WARM_UP}\n").as_bytes());
    let spec = spec(
        json!({"name": "app", "file": {"paths": [input], "format": "json"}}),
        &out,
    );
    let conf = run_dir.join("servicelog.json");
    let envelope = json!({"apiVersion": "servicelog.io/v1alpha1", "kind": "ServiceLog",
        "metadata": {"name": "bench"}, "spec": spec});
    fs::write(&conf, envelope.to_string()).expect("writing the config");
    let mut child = command(sidecar, cpu)
        .arg("--config-file")
        .arg(&conf)
        .arg("--state-dir")
        .arg(run_dir.join("state"))
        .args(["--metrics-addr", "127.0.0.1:0"])
        .env("SERVICELOG_LOG_LEVEL", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", sidecar.display()))?;
    let result = measure(&mut child, &out, &input, &work.plain, work.want, ticks);
    stop(child);
    result
}

/// Waits for the warm-up line, appends the workload, and takes the CPU it cost.
fn measure(
    child: &mut Child,
    out: &Path,
    input: &Path,
    bytes: &[u8],
    want: (u64, u64),
    ticks: f64,
) -> Result<Measured, String> {
    wait_sinks(child, out, (1, 0), Duration::from_secs(60)).map_err(|e| format!("warm-up: {e}"))?;
    let pid = child.id();
    let warm_rss_kib = memory(pid)?.0;
    let before = cpu_s(pid, ticks)?;
    let start = Instant::now();
    append(input, bytes);
    wait_sinks(child, out, (want.0 + 1, want.1), Duration::from_secs(600))?;
    Ok(Measured {
        cpu_s: cpu_s(pid, ticks)? - before,
        wall_s: start.elapsed().as_secs_f64(),
        warm_rss_kib,
    })
}

/// The agent serving `pods` pods of one ServiceLog, 100 lines each: its memory once every
/// line is delivered and every pod acked.
fn pods_run(cluster: &Cluster, dir: &Path, pods: u64) -> Result<serde_json::Value, String> {
    let run_dir = fresh(&dir.join("runs/pods"));
    let out = fresh(&run_dir.join("out"));
    let name = "many";
    cluster.publish(
        name,
        spec(
            json!({"name": "app", "containerLogs": {"format": "json"}}),
            &out,
        ),
    );
    let log_root = run_dir.join("pods");
    let lines: String = (0..100)
        .map(|i| {
            let level = if i % 2 == 0 { "info" } else { "error" };
            format!(
                "2026-12-07T17:27:32.000000000Z stdout F {{\"level\":\"{level}\",\"msg\":\"line {i}\"}}\n"
            )
        })
        .collect();
    for p in 0..pods {
        let pod = format!("many-{p:03}");
        let uid = cluster.pod(&pod, name);
        let file = PodLogs::dir(&log_root, &cluster.ns, &pod, &uid)
            .join("app")
            .join("0.log");
        fs::create_dir_all(file.parent().expect("a dir")).expect("the pod's log dir");
        append(&file, lines.as_bytes());
    }
    let started = Instant::now();
    let mut child = cluster.agent(&log_root, &run_dir.join("state"), None);
    let result = (|| {
        wait_sinks(
            &mut child,
            &out,
            (pods * 50, pods * 50),
            Duration::from_secs(300),
        )?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while cluster.records(name) < pods as usize {
            if Instant::now() > deadline {
                return Err(format!(
                    "{} of {pods} records after 120 s",
                    cluster.records(name)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let served_s = started.elapsed().as_secs_f64();
        // Settled: the readers parked on their poll.
        std::thread::sleep(Duration::from_secs(3));
        let (rss, hwm, threads) = memory(child.id())?;
        Ok(json!({
            "pods": pods,
            "lines_per_pod": 100,
            "rss_mib": rss as f64 / 1024.0,
            "peak_rss_mib": hwm as f64 / 1024.0,
            "threads": threads,
            "all_served_s": served_s,
        }))
    })();
    stop(child);
    result
}

fn sidecar_bin() -> PathBuf {
    std::env::var_os("BENCH_SIDECAR_BIN").map_or_else(
        || {
            // target/<profile>/deps/agent-<hash> → target/<profile>/servicelog-sidecar
            std::env::current_exe()
                .ok()
                .and_then(|e| Some(e.parent()?.parent()?.join("servicelog-sidecar")))
                .unwrap_or_default()
        },
        PathBuf::from,
    )
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let lines = env_num("BENCH_LINES", if full { 1_000_000 } else { 20_000 });
    let runs = env_num("BENCH_RUNS", if full { 3 } else { 1 }).max(1);
    let pods = env_num("BENCH_PODS", if full { 100 } else { 10 });
    let dir = std::env::var_os("BENCH_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench/agent"),
        PathBuf::from,
    );
    fs::create_dir_all(&dir).expect("creating the bench dir");
    // Specs take normalised paths only.
    let dir = fs::canonicalize(&dir).expect("resolving the bench dir");
    let sidecar = sidecar_bin();
    assert!(
        sidecar.is_file(),
        "{} is missing: `cargo build --release -p servicelog-sidecar` (make bench does), or set BENCH_SIDECAR_BIN",
        sidecar.display()
    );
    let work = generate(lines);
    let cpu = pin();
    let ticks = clock_ticks();
    let cluster = Cluster::start();
    let start = Instant::now();
    let (mut agent, mut side): (Vec<Measured>, Vec<Measured>) = (Vec::new(), Vec::new());
    let mut errors = Vec::new();
    for r in 0..runs {
        eprintln!("bench: agent: run {}/{runs}, agent (CRI)", r + 1);
        match agent_run(&cluster, &dir, r, &work, cpu.as_deref(), ticks) {
            Ok(m) => agent.push(m),
            Err(e) => errors.push(format!("agent run {r}: {e}")),
        }
        eprintln!("bench: agent: run {}/{runs}, sidecar (plain file)", r + 1);
        match sidecar_run(&sidecar, &dir, r, &work, cpu.as_deref(), ticks) {
            Ok(m) => side.push(m),
            Err(e) => errors.push(format!("sidecar run {r}: {e}")),
        }
    }
    eprintln!("bench: agent: {pods} pods");
    let many = pods_run(&cluster, &dir, pods).unwrap_or_else(|e| {
        errors.push(format!("{pods} pods: {e}"));
        serde_json::Value::Null
    });
    for e in &errors {
        eprintln!("bench: {e}");
    }
    let summary = |runs: &[Measured]| {
        let cpu = median(runs.iter().map(|m| m.cpu_s).collect());
        let wall = median(runs.iter().map(|m| m.wall_s).collect());
        json!({
            "runs_cpu_s": runs.iter().map(|m| m.cpu_s).collect::<Vec<_>>(),
            "median": cpu.map(|c| json!({
                "cpu_s": c,
                "lines_per_cpu_s": lines as f64 / c,
                "lines_per_s": wall.map(|w| lines as f64 / w),
            })),
            "warm_rss_mib": median(runs.iter().map(|m| m.warm_rss_kib as f64 / 1024.0).collect()),
        })
    };
    let ratio = match (
        median(agent.iter().map(|m| m.cpu_s).collect()),
        median(side.iter().map(|m| m.cpu_s).collect()),
    ) {
        (Some(a), Some(s)) if a > 0.0 => Some(s / a),
        _ => None,
    };
    let doc = json!({
        "status": if errors.is_empty() { "ok" } else { "failed" },
        "errors": errors,
        "lines": lines,
        "runs": runs,
        "pinned_cpu": cpu,
        "agent_cri": summary(&agent),
        "sidecar_file": summary(&side),
        "agent_vs_sidecar_lines_per_cpu_s": ratio,
        "pods": many,
        "elapsed_s": start.elapsed().as_secs_f64(),
    });
    println!("{doc:#}");
    drop(cluster);
    if !doc["errors"].as_array().is_some_and(Vec::is_empty) {
        std::process::exit(1);
    }
}
