//! Running the project's own binaries in tests: the operator (and later the sidecar) as
//! real processes against the test environment, with their logs kept for failure
//! messages and their metrics endpoint on a free loopback port.

use std::{
    path::PathBuf,
    process::Command,
    sync::OnceLock,
    time::{Duration, Instant},
};

use crate::{
    EnvError, TestEnv,
    procs::{Proc, free_port},
};

/// Builds the workspace binaries once per test process (a no-op when fresh) and returns
/// the directory they are in. Tests of the `e2e` crate cannot name other packages'
/// binaries through Cargo, so they are built here with the same profile and target dir.
pub fn bin_dir() -> Result<PathBuf, EnvError> {
    static BUILT: OnceLock<Result<PathBuf, EnvError>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe =
                std::env::current_exe().map_err(|e| EnvError::io("locating the test binary", e))?;
            // target/<profile>/deps/<test> or target/<profile>/<bin> → target/<profile>
            let dir = exe
                .parent()
                .and_then(|dir| {
                    if dir.ends_with("deps") {
                        dir.parent()
                    } else {
                        Some(dir)
                    }
                })
                .map(PathBuf::from)
                .ok_or_else(|| EnvError::Failed {
                    what: "the target directory".into(),
                    detail: format!("cannot derive it from {}", exe.display()),
                })?;
            let release = dir.file_name().is_some_and(|n| n == "release");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.current_dir(crate::workspace_dir()).args([
                "build",
                "-q",
                "-p",
                "servicelog-operator",
                "-p",
                "servicelog-sidecar",
                "--bins",
            ]);
            if release {
                cmd.arg("--release");
            }
            let out = cmd.output().map_err(|e| EnvError::Spawn {
                what: "cargo build of the servicelog binaries".into(),
                reason: e.to_string(),
            })?;
            if !out.status.success() {
                return Err(EnvError::Failed {
                    what: "cargo build of the servicelog binaries".into(),
                    detail: String::from_utf8_lossy(&out.stderr).into_owned(),
                });
            }
            Ok(dir)
        })
        .clone()
}

/// A `servicelog-operator run` process.
#[derive(Debug)]
pub struct Operator {
    proc: Proc,
    metrics_port: u16,
    webhook_port: u16,
}

/// How to run an operator in a test.
#[derive(Clone, Debug)]
pub struct OperatorOptions {
    /// Namespace it watches and keeps its Lease in.
    pub namespace: String,
    pub zk_connect: String,
    pub zk_root: String,
    pub identity: String,
    pub leader_election: bool,
    /// Serve the webhooks and register them (for this namespace only) at their loopback
    /// URL.
    pub webhook: bool,
    pub extra_args: Vec<String>,
}

impl Operator {
    /// Starts the operator and waits for its `/healthz`; a metrics port taken between
    /// choosing and binding is retried with another.
    pub fn start(env: &TestEnv, options: &OperatorOptions) -> Result<Self, EnvError> {
        Self::start_with_kubeconfig(env, options, env.kubeconfig())
    }

    /// [`Operator::start`] reaching the API server through `kubeconfig` (e.g. one whose
    /// server is a proxy the test can cut).
    pub fn start_with_kubeconfig(
        env: &TestEnv,
        options: &OperatorOptions,
        kubeconfig: &std::path::Path,
    ) -> Result<Self, EnvError> {
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start(env, options, kubeconfig) {
                Ok(op) => return Ok(op),
                Err(e) if e.is_port_clash() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(EnvError::Failed {
            what: "operator".into(),
            detail: "could not start".into(),
        }))
    }

    fn try_start(
        env: &TestEnv,
        options: &OperatorOptions,
        kubeconfig: &std::path::Path,
    ) -> Result<Self, EnvError> {
        let bin = bin_dir()?.join("servicelog-operator");
        let metrics_port = free_port()?;
        let webhook_port = free_port()?;
        let mut cmd = Command::new(&bin);
        cmd.env("KUBECONFIG", kubeconfig)
            .env(
                "RUST_LOG",
                "info,servicelog_operator=debug,kube_runtime=warn",
            )
            .arg("run")
            .arg(format!("--zk-connect={}", options.zk_connect))
            .arg(format!("--zk-root={}", options.zk_root))
            .arg(format!("--namespace={}", options.namespace))
            .arg(format!("--watch-namespace={}", options.namespace))
            .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
            .arg(format!("--identity={}", options.identity))
            .arg(format!("--leader-election={}", options.leader_election))
            .arg(format!("--webhook-addr=127.0.0.1:{webhook_port}"))
            .arg(format!(
                "--webhook-configuration=servicelog-{}",
                options.namespace
            ));
        if options.webhook {
            cmd.arg(format!("--webhook-url=https://127.0.0.1:{webhook_port}"));
        }
        cmd.args(&options.extra_args);
        let name = format!(
            "operator-{}-{}-{metrics_port}",
            options.namespace, options.identity
        );
        let mut proc = Proc::spawn(&name, cmd, env.env_dir())?;
        let what = format!(
            "operator {} /healthz on 127.0.0.1:{metrics_port}",
            options.identity
        );
        let start = Instant::now();
        loop {
            if let Some(how) = proc.exited() {
                return Err(EnvError::Failed { what, detail: how }
                    .with_log(proc.name(), &proc.log_tail(30)));
            }
            if http_get(metrics_port, "/healthz").is_ok_and(|b| b.contains("ok")) {
                return Ok(Self {
                    proc,
                    metrics_port,
                    webhook_port,
                });
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err(EnvError::Timeout {
                    what,
                    waited: Duration::from_secs(30),
                    detail: String::new(),
                }
                .with_log(proc.name(), &proc.log_tail(30)));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The Prometheus text of `/metrics`.
    pub fn metrics(&self) -> String {
        http_get(self.metrics_port, "/metrics").unwrap_or_default()
    }

    /// The `/metrics` port on 127.0.0.1 (for a Prometheus to scrape).
    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    /// The webhook's HTTPS port on 127.0.0.1.
    pub fn webhook_port(&self) -> u16 {
        self.webhook_port
    }

    /// Whether the process is alive.
    pub fn is_running(&mut self) -> bool {
        self.proc.exited().is_none()
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.proc.log_tail(lines)
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }
}

/// A plain-HTTP GET on loopback returning the body.
pub fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default())
}
