//! Helpers for the sidecar's integration tests: the real binary as a child process, a real
//! ZooKeeper (Debian's package, started by `servicelog-e2e`), files of sequence-numbered
//! lines and bounded waits that say what they waited for.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use servicelog_api::{ServiceLogSpec, wire::Envelope};
#[allow(unused_imports)] // not every test target uses the receiver
pub use servicelog_e2e::receiver::{Receiver, TestCa};
use servicelog_e2e::{
    procs::{self, EnvDir},
    zookeeper::ZooKeeper,
};
use zookeeper_client::{Acls, Client, CreateMode};

pub const BIN: &str = env!("CARGO_BIN_EXE_servicelog-sidecar");

/// A test's scratch directory: the application's logs, the sinks' files, the state dir.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("sidecar-test-")
                .tempdir()
                .expect("creating a temporary directory"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn logs(&self) -> PathBuf {
        let p = self.path("logs");
        fs::create_dir_all(&p).expect("creating the logs dir");
        p
    }

    pub fn state(&self) -> PathBuf {
        self.path("state")
    }
}

/// A running `servicelog-sidecar`, killed on drop.
pub struct Sidecar {
    child: Option<Child>,
    pub log: PathBuf,
    pub stdout: PathBuf,
    pub metrics_port: u16,
}

impl Sidecar {
    /// Starts the binary with `args` and `envs` (plus a free metrics port and the state
    /// dir), its stderr in `<scratch>/sidecar-<n>.log`, its stdout in `…-<n>.out`.
    pub fn start(scratch: &Scratch, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let port = procs::free_port().expect("a free port");
        let n = (0..)
            .find(|n| !scratch.path(&format!("sidecar-{n}.log")).exists())
            .unwrap_or(0);
        let log = scratch.path(&format!("sidecar-{n}.log"));
        let stdout = scratch.path(&format!("sidecar-{n}.out"));
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--state-dir")
            .arg(scratch.state())
            .env_remove("SERVICELOG_ZK_CONNECT")
            .env_remove("SERVICELOG_CONFIG_ZNODE")
            .env("RUST_LOG", "info,servicelog_sidecar=debug")
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("creating the stdout file"))
            .stderr(File::create(&log).expect("creating the log file"));
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("starting servicelog-sidecar");
        Self {
            child: Some(child),
            log,
            stdout,
            metrics_port: port,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("the sidecar was stopped")
    }

    pub fn log_tail(&self) -> String {
        procs::log_tail(&self.log, 40)
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill {sig} failed");
    }

    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// SIGTERM, and waits for the exit; returns how long it took and the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> (Duration, std::process::ExitStatus) {
        self.signal("-TERM");
        let start = Instant::now();
        let mut child = self.child.take().expect("the sidecar was stopped");
        loop {
            if let Some(status) = child.try_wait().expect("waiting for the sidecar") {
                return (start.elapsed(), status);
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the sidecar did not exit within {timeout:?} of SIGTERM\n{}",
                    procs::log_tail(&self.log, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Panics (with the sidecar's log) if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!("the sidecar exited with {status}\n{}", self.log_tail());
        }
    }

    /// `GET path` on the metrics address: (status code, body).
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let code = resp.split_whitespace().nth(1)?.parse().ok()?;
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Some((code, body))
    }

    /// The value of one metric sample, e.g. `servicelog_events_in_total{source="app"}`.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let (_, body) = self.http_get("/metrics")?;
        body.lines()
            .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `check` every 50 ms until it holds; panics after `timeout` naming `what` and
/// showing `context()` (e.g. the sidecar's log).
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let start = Instant::now();
    while !check() {
        if start.elapsed() > timeout {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A JSON log line carrying a sequence number.
pub fn line(seq: u64, level: &str) -> String {
    format!(
        r#"{{"ts":"2026-11-24T10:00:00.000000Z","level":"{level}","seq":{seq},"msg":"request served","path":"/api/v1/cart"}}"#
    )
}

/// Appends `lines` to `path` (creating it) in one write.
pub fn append(path: &Path, lines: &[String]) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("opening the application log");
    let mut buf = String::new();
    for l in lines {
        buf.push_str(l);
        buf.push('\n');
    }
    f.write_all(buf.as_bytes())
        .expect("writing the application log");
}

/// The lines of a file (none if it does not exist).
pub fn read_lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

pub fn count_lines(path: &Path) -> usize {
    fs::read(path).map(|b| memchr_count(&b)).unwrap_or(0)
}

fn memchr_count(b: &[u8]) -> usize {
    b.iter().filter(|&&c| c == b'\n').count()
}

/// The `seq` of every line of `path`, in file order.
pub fn seqs(path: &Path) -> Vec<u64> {
    read_lines(path)
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| {
                panic!(
                    "{} holds a line that is not JSON ({e}): {l:?}",
                    path.display()
                )
            });
            v["seq"]
                .as_u64()
                .unwrap_or_else(|| panic!("{} holds a line without seq: {l:?}", path.display()))
        })
        .collect()
}

/// How often each seq appears across `paths`.
pub fn seq_counts(paths: &[&Path]) -> BTreeMap<u64, usize> {
    let mut counts = BTreeMap::new();
    for p in paths {
        for s in seqs(p) {
            *counts.entry(s).or_insert(0) += 1;
        }
    }
    counts
}

/// Asserts every seq in `0..n` appears exactly once across `paths`.
pub fn assert_exactly_once(paths: &[&Path], n: u64) {
    let counts = seq_counts(paths);
    let missing: Vec<u64> = (0..n).filter(|s| !counts.contains_key(s)).collect();
    let dups: Vec<(u64, usize)> = counts
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(s, c)| (*s, *c))
        .collect();
    let extra: Vec<u64> = counts.keys().copied().filter(|s| *s >= n).collect();
    assert!(
        missing.is_empty() && dups.is_empty() && extra.is_empty(),
        "expected every line 0..{n} exactly once: {} missing (first {:?}), {} duplicated (first {:?}), {} unexpected",
        missing.len(),
        &missing[..missing.len().min(10)],
        dups.len(),
        &dups[..dups.len().min(10)],
        extra.len()
    );
}

/// A ServiceLog manifest for `--config-file`.
pub fn manifest(spec_yaml: &str) -> String {
    let indented: String = spec_yaml.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "apiVersion: servicelog.io/v1alpha1\nkind: ServiceLog\nmetadata: {{name: test, namespace: shop}}\nspec:\n{indented}"
    )
}

/// Writes `content` to `path` atomically (like a ConfigMap update or `kubectl`'s editors).
pub fn write_config(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, content).expect("writing the config");
    fs::rename(&tmp, path).expect("renaming the config into place");
}

pub fn spec(yaml: &str) -> ServiceLogSpec {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("test spec does not parse: {e}\n{yaml}"))
}

/// An envelope with the right hash, whether or not its spec validates.
pub fn envelope(generation: i64, yaml: &str) -> Envelope {
    Envelope::new("test-uid", generation, spec(yaml)).expect("building the envelope")
}

/// A standalone ZooKeeper of the test's own, stopped on drop (and by a watchdog if the
/// test process dies). It does not need the Kubernetes tools `TestEnv` needs.
pub struct TestZk {
    pub zk: ZooKeeper,
    _watchdog: Child,
    _dir: EnvDir,
}

impl TestZk {
    pub fn start(label: &str) -> Self {
        let base = servicelog_e2e::base_dir();
        procs::reap_stale(&base);
        let dir =
            EnvDir::create(base.join(servicelog_e2e::unique_name(&format!("sidecar-{label}"))))
                .expect("creating the ZooKeeper environment dir");
        let watchdog = dir.spawn_watchdog().expect("starting the watchdog");
        let zk =
            ZooKeeper::start(&dir, label, 1).unwrap_or_else(|e| panic!("starting ZooKeeper: {e}"));
        Self {
            zk,
            _watchdog: watchdog,
            _dir: dir,
        }
    }

    pub fn connect_string(&self) -> String {
        self.zk.connect_string()
    }
}

impl Drop for TestZk {
    fn drop(&mut self) {
        self.zk.stop(0);
        let _ = self._watchdog.kill();
        let _ = self._watchdog.wait();
    }
}

/// A ZooKeeper client for the test itself.
pub async fn zk_client(connect: &str) -> Client {
    servicelog_e2e::zookeeper::connect(connect)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Creates or overwrites the config znode (and its parents).
pub async fn publish(client: &Client, path: &str, config: &Envelope) {
    let data = config.to_bytes().expect("encoding the envelope");
    publish_bytes(client, path, &data).await;
}

/// Creates or overwrites the config znode (and its parents) with data as given.
pub async fn publish_bytes(client: &Client, path: &str, data: &[u8]) {
    let persistent = CreateMode::Persistent.with_acls(Acls::anyone_all());
    if let Some((parent, _)) = path.rsplit_once('/') {
        client
            .mkdir(parent, &persistent)
            .await
            .expect("creating the config znode's parents");
    }
    match client.create(path, data, &persistent).await {
        Ok(_) => {}
        Err(zookeeper_client::Error::NodeExists) => {
            client
                .set_data(path, data, None)
                .await
                .expect("setting the config znode");
        }
        Err(e) => panic!("creating the config znode: {e}"),
    }
}

/// The instance record at `path` and its ephemeral owner, if the znode exists.
pub async fn instance(
    client: &Client,
    path: &str,
) -> Option<(servicelog_api::wire::Instance, i64)> {
    let (data, stat) = client.get_data(path).await.ok()?;
    let record = servicelog_api::wire::Instance::from_slice(&data).ok()?;
    Some((record, stat.ephemeral_owner))
}

/// Polls an async condition; panics naming `what` after `timeout`.
pub async fn eventually<F, Fut>(
    what: &str,
    timeout: Duration,
    mut check: F,
    context: impl Fn() -> String,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        if start.elapsed() > timeout {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                context()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The resident set size of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
