//! `servicelog-agent`: the node agent (a DaemonSet) that routes what its node's containers
//! print by their ServiceLog rules.
#![forbid(unsafe_code)]

use std::{num::NonZeroU32, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use clap::Parser;
use servicelog_agent::{
    agent::{self, AgentOptions},
    run::Paths,
};
use servicelog_api::pod;
use servicelog_sidecar::{metrics::Metrics, sources::file::ReadRate};

#[derive(Parser)]
#[command(
    name = "servicelog-agent",
    version,
    about = "Routes containers' stdout and stderr by their ServiceLog rules, live"
)]
struct Cli {
    /// The node whose pods are served (the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// ZooKeeper connect string.
    #[arg(long, env = pod::env::ZK_CONNECT)]
    zk_connect: String,
    /// The znode under which ServiceLogs are published.
    #[arg(long, env = "SERVICELOG_ZK_ROOT", default_value = "/servicelog")]
    zk_root: String,
    /// The kubelet's pod log directory.
    #[arg(long, env = "SERVICELOG_LOG_ROOT", default_value = "/var/log/pods")]
    log_root: PathBuf,
    /// Checkpoints, last-known-good configs and buffers, one directory per pod.
    #[arg(
        long,
        env = pod::env::STATE_DIR,
        default_value = "/var/lib/servicelog-agent"
    )]
    state_dir: PathBuf,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = pod::env::METRICS_ADDR, default_value = pod::METRICS_ADDR)]
    metrics_addr: String,
    #[arg(long, env = "SERVICELOG_ZK_SESSION_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    zk_session_timeout: Duration,
    #[arg(long, env = "SERVICELOG_ZK_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    zk_connect_timeout: Duration,
    /// How long a deleted pod's files may take to be read and delivered.
    #[arg(long, env = "SERVICELOG_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// ZooKeeper ACLs are on: read each served namespace's identity (its
    /// `servicelog-zk-auth` Secret) and add it to the session.
    #[arg(long, env = "SERVICELOG_ZK_NAMESPACE_IDENTITIES")]
    zk_namespace_identities: bool,
    /// Serve `file` sinks that container logs reach, which are otherwise refused (the
    /// agent runs as root on the node and must not write where a tenant says). For
    /// benchmarks and tests outside a cluster only; the chart never sets it.
    #[arg(long, env = "SERVICELOG_ALLOW_FILE_SINKS")]
    allow_file_sinks: bool,
    /// Lines a second each pod's files are read at most (0: no limit). A pod printing
    /// faster is read behind (nothing dropped: the rest waits in its files, which the
    /// kubelet's rotation bounds) and does not slow the other pods.
    #[arg(long, env = "SERVICELOG_POD_RATE_LIMIT", default_value_t = 10_000)]
    pod_rate_limit: u32,
    /// Lines a pod may have read at once above its rate after a quiet time (default: one
    /// second's worth).
    #[arg(long, env = "SERVICELOG_POD_RATE_BURST")]
    pod_rate_burst: Option<NonZeroU32>,
    /// Upper bound on a SIGTERM shutdown.
    #[arg(long, env = "SERVICELOG_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    shutdown_timeout: Duration,
    #[arg(long, env = servicelog_api::logging::FORMAT_ENV)]
    log_format: Option<servicelog_api::logging::LogFormat>,
    #[arg(long, env = servicelog_api::logging::LEVEL_ENV)]
    log_level: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) =
        servicelog_api::logging::init(cli.log_format, cli.log_level.as_deref(), "info", false)
    {
        eprintln!("servicelog-agent: {e}");
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
    // kube's TLS takes the process's default provider, which rustls cannot choose when
    // ring and aws-lc-rs are both linked.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let opts = AgentOptions {
        node: cli.node_name,
        zk_connect: cli.zk_connect,
        zk_root: cli.zk_root,
        zk_session_timeout: cli.zk_session_timeout,
        zk_connect_timeout: cli.zk_connect_timeout,
        paths: Paths {
            log_root: cli.log_root,
            credentials_dir: cli.state_dir.join("credentials"),
            allow_file_sinks: cli.allow_file_sinks,
            state_dir: cli.state_dir,
        },
        drain_timeout: cli.drain_timeout,
        shutdown_timeout: cli.shutdown_timeout,
        namespace_identities: cli.zk_namespace_identities,
        pod_rate: NonZeroU32::new(cli.pod_rate_limit).map(|per_second| ReadRate {
            per_second,
            burst: cli.pod_rate_burst.unwrap_or(per_second),
        }),
    };
    // One thread for the control plane: each pod's reader and sinks have threads of
    // their own.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(async {
        let kube = kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API")?;
        let metrics = Metrics::new();
        let (listener, _) = servicelog_api::serve::bind(&cli.metrics_addr).await?;
        let http = tokio::spawn(servicelog_api::serve::serve(
            listener,
            Arc::new(metrics.clone()),
        ));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("listening for SIGTERM")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("shutting down: stop reading, flush sinks, checkpoint");
        };
        let result = agent::run(opts, kube, metrics, shutdown).await;
        http.abort();
        result.context("running the agent")
    })
}
