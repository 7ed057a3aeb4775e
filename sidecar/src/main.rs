//! `servicelog-sidecar`: reads a service's logs, routes them by its ServiceLog's rules and
//! swaps the rules live when the config znode changes.
#![forbid(unsafe_code)]

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, bail};
use clap::Parser;
use servicelog_api::pod;
use servicelog_sidecar::app::{self, AppOptions, ConfigSource};

#[derive(Parser)]
#[command(
    name = "servicelog-sidecar",
    version,
    about = "Routes a service's logs by its ServiceLog rules, live"
)]
struct Cli {
    /// Run without ZooKeeper from a ServiceLog YAML or a config znode's JSON, re-read when
    /// it changes.
    #[arg(long, conflicts_with_all = ["zk_connect", "config_znode"])]
    config_file: Option<PathBuf>,
    /// ZooKeeper connect string.
    #[arg(long, env = pod::env::ZK_CONNECT)]
    zk_connect: Option<String>,
    /// The config znode to watch, `<root>/namespaces/<ns>/<name>/config`.
    #[arg(long, env = pod::env::CONFIG_ZNODE)]
    config_znode: Option<String>,
    /// This pod's name, used for the instance znode.
    #[arg(long, env = pod::env::POD_NAME, default_value = "local")]
    pod_name: String,
    #[arg(long, env = pod::env::POD_NAMESPACE, default_value = "default")]
    pod_namespace: String,
    /// The pod's labels as the downward API writes them (`key="value"` lines), for
    /// `_servicelog.labels`; re-read when it changes.
    #[arg(long, env = pod::env::POD_LABELS_FILE)]
    pod_labels_file: Option<PathBuf>,
    /// The app containers the sidecar serves, comma-separated; with exactly one, it is
    /// `_servicelog.container`.
    #[arg(long, env = pod::env::CONTAINERS, value_delimiter = ',')]
    containers: Vec<String>,
    /// Checkpoints and the last-known-good config.
    #[arg(long, env = pod::env::STATE_DIR, default_value = pod::STATE_DIR)]
    state_dir: PathBuf,
    /// File holding the namespace's ZooKeeper identity, one `digest:user:password` line
    /// (the webhook mounts it when the operator uses ZooKeeper ACLs).
    #[arg(long, env = pod::env::ZK_AUTH_FILE)]
    zk_auth_file: Option<PathBuf>,
    /// PEM CA that verifies the ZooKeeper servers: with it every server of the connect
    /// string is reached over TLS unless written `tcp://host:port`.
    #[arg(long, env = pod::env::ZK_TLS_CA_FILE)]
    zk_tls_ca_file: Option<PathBuf>,
    /// PEM client certificate and key for mutual TLS to ZooKeeper.
    #[arg(long, env = pod::env::ZK_TLS_CERT_FILE)]
    zk_tls_cert_file: Option<PathBuf>,
    #[arg(long, env = pod::env::ZK_TLS_KEY_FILE)]
    zk_tls_key_file: Option<PathBuf>,
    /// Where http sinks' credentials Secrets are mounted, one directory per sink.
    #[arg(long, env = pod::env::CREDENTIALS_DIR, default_value = pod::CREDENTIALS_DIR)]
    credentials_dir: PathBuf,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = pod::env::METRICS_ADDR, default_value = pod::METRICS_ADDR)]
    metrics_addr: String,
    /// ZooKeeper session timeout.
    #[arg(long, env = "SERVICELOG_ZK_SESSION_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    zk_session_timeout: Duration,
    /// How long to wait for ZooKeeper at start (and per reconnect attempt) before routing
    /// with the last-known-good config.
    #[arg(long, env = "SERVICELOG_ZK_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    zk_connect_timeout: Duration,
    /// Upper bound on a SIGTERM shutdown (flush sinks, checkpoint).
    #[arg(long, env = "SERVICELOG_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    shutdown_timeout: Duration,
    /// `text` (the default) or `json`.
    #[arg(long, env = servicelog_api::logging::FORMAT_ENV)]
    log_format: Option<servicelog_api::logging::LogFormat>,
    /// A tracing filter: `info`, `debug`, `info,servicelog_sidecar::sinks=debug` (default:
    /// RUST_LOG, else `info`). A ServiceLog's `spec.sidecar.logLevel` overrides it while
    /// that config is in force.
    #[arg(long, env = servicelog_api::logging::LEVEL_ENV)]
    log_level: Option<String>,
    /// Exit once every file has been read to its end and written (benchmarks).
    #[arg(long, hide = true)]
    exit_on_eof: bool,
    /// Do nothing until SIGTERM. The chart's pre-pull DaemonSet runs the image this way,
    /// so every node has it pulled (and kept from image garbage collection) before the
    /// webhook injects it.
    #[arg(long, exclusive = true)]
    hold: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Text by default, colours only for a person at a terminal: in a pod, `kubectl logs`
    // would show the escape codes.
    if let Err(e) =
        servicelog_api::logging::init(cli.log_format, cli.log_level.as_deref(), "info", false)
    {
        eprintln!("servicelog-sidecar: {e}");
        return ExitCode::FAILURE;
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.hold {
        return hold();
    }
    let config = match (cli.config_file, cli.zk_connect, cli.config_znode) {
        (Some(path), _, _) => ConfigSource::File(path),
        (None, Some(connect), Some(znode)) => ConfigSource::ZooKeeper { connect, znode },
        _ => bail!(
            "no config source: pass --config-file FILE, or set {} and {}",
            pod::env::ZK_CONNECT,
            pod::env::CONFIG_ZNODE
        ),
    };
    let zk_tls = match &config {
        ConfigSource::ZooKeeper { connect, .. } => servicelog_api::zktls::ZkTls::from_settings(
            connect,
            cli.zk_tls_ca_file,
            cli.zk_tls_cert_file,
            cli.zk_tls_key_file,
        )?,
        ConfigSource::File(_) => None,
    };
    let opts = AppOptions {
        config,
        zk_tls,
        pod: cli.pod_name,
        namespace: cli.pod_namespace,
        pod_labels_file: cli.pod_labels_file,
        containers: cli.containers,
        state_dir: cli.state_dir,
        credentials_dir: cli.credentials_dir,
        zk_auth_file: cli.zk_auth_file,
        metrics_addr: cli.metrics_addr,
        zk_session_timeout: cli.zk_session_timeout,
        zk_connect_timeout: cli.zk_connect_timeout,
        shutdown_timeout: cli.shutdown_timeout,
        exit_on_eof: cli.exit_on_eof,
    };
    // One thread for the control plane: the hot path has threads of its own.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(app::run(opts))?;
    Ok(())
}

/// Waits for SIGTERM or SIGINT, using no more than the runtime's one thread.
fn hold() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("listening for SIGTERM")?;
        tokio::select! {
            _ = term.recv() => {}
            r = tokio::signal::ctrl_c() => r.context("listening for SIGINT")?,
        }
        Ok(())
    })
}
