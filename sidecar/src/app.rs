//! Wires the parts together and runs them until SIGTERM/SIGINT (or, for benchmarks, the
//! end of the input), then shuts down in order: stop reading (files, and syslog sockets
//! close), let the sinks write and ack what was read, write the checkpoints, exit — all
//! within the shutdown timeout.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use servicelog_api::{
    serve::{self, ServeError},
    wire::{Layout, WireError},
};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    config::{
        self, ConfigError,
        last_good::LastGood,
        zk::{ZkConfig, ZkOptions},
        zk_thread::ZkThread,
    },
    metrics::Metrics,
    pipeline::{
        Origin,
        podinfo::{self, PodLabels},
    },
    sources::{
        file::{Tailer, TailerLinks, TailerOptions},
        syslog::{Syslog, SyslogLinks},
    },
    topology::{ApplyError, Topology},
};

/// What follows the config source.
enum ConfigTask {
    File(tokio::task::JoinHandle<()>),
    ZooKeeper(ZkThread),
}

/// Where the config comes from.
#[derive(Clone, Debug)]
pub enum ConfigSource {
    File(PathBuf),
    ZooKeeper { connect: String, znode: String },
}

#[derive(Clone, Debug)]
pub struct AppOptions {
    pub config: ConfigSource,
    pub pod: String,
    pub namespace: String,
    /// The downward API's labels file, for `_servicelog.labels`.
    pub pod_labels_file: Option<PathBuf>,
    /// The app containers the sidecar was injected for.
    pub containers: Vec<String>,
    pub state_dir: PathBuf,
    /// Where http sinks' credentials Secrets are mounted (`<dir>/<sink>/`).
    pub credentials_dir: PathBuf,
    /// The namespace's ZooKeeper identity, one `digest:user:password` line.
    pub zk_auth_file: Option<PathBuf>,
    /// TLS to ZooKeeper, when configured.
    pub zk_tls: Option<servicelog_api::zktls::ZkTls>,
    pub metrics_addr: String,
    pub zk_session_timeout: Duration,
    pub zk_connect_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub exit_on_eof: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Http(#[from] ServeError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{path}: {source}")]
    Apply { path: PathBuf, source: ApplyError },
    #[error(transparent)]
    ZkPath(#[from] WireError),
    #[error("creating the state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

/// Runs the sidecar on the current (tokio) runtime until it is told to stop.
pub async fn run(opts: AppOptions) -> Result<(), AppError> {
    std::fs::create_dir_all(&opts.state_dir).map_err(|source| AppError::StateDir {
        path: opts.state_dir.clone(),
        source,
    })?;
    let metrics = Metrics::new();
    let (wake_tx, wake_rx) = std::sync::mpsc::channel();
    let labels = PodLabels::new(opts.pod_labels_file.clone());
    labels.watch(podinfo::POLL);
    let origin = Origin {
        pod: opts.pod.clone(),
        namespace: opts.namespace.clone(),
        container: match opts.containers.as_slice() {
            [one] if !one.is_empty() => Some(one.clone()),
            _ => None,
        },
        labels,
    };
    let topology = Topology::new(
        metrics.clone(),
        &opts.state_dir,
        &opts.credentials_dir,
        origin,
        wake_tx.clone(),
    );
    let last_good = LastGood::new(&opts.state_dir);

    let (listener, _) = serve::bind(&opts.metrics_addr).await?;
    let http_task = tokio::spawn(serve::serve(listener, Arc::new(metrics.clone())));

    let config_task = match &opts.config {
        ConfigSource::File(path) => {
            let signature = config::file::signature(path);
            let config = config::load_file(path)?;
            config::apply(&topology, &last_good, &config).map_err(|source| AppError::Apply {
                path: path.clone(),
                source,
            })?;
            ConfigTask::File(tokio::spawn(config::file::watch(
                path.clone(),
                topology.clone(),
                last_good,
                signature,
            )))
        }
        ConfigSource::ZooKeeper { connect, znode } => {
            let zk_opts = ZkOptions {
                connect: connect.clone(),
                config_path: znode.clone(),
                candidate_path: Layout::candidate_for_config(znode)?,
                instance_path: Layout::instance_for_config(znode, &opts.pod)?,
                pod: opts.pod.clone(),
                namespace: opts.namespace.clone(),
                session_timeout: opts.zk_session_timeout,
                connect_timeout: opts.zk_connect_timeout,
                auth_file: opts.zk_auth_file.clone(),
                tls: opts.zk_tls.clone(),
            };
            let config = ZkConfig::new(zk_opts, topology.clone(), last_good);
            let thread =
                ZkThread::start(config, tokio::runtime::Handle::current()).map_err(|source| {
                    AppError::Io {
                        what: "starting the ZooKeeper thread",
                        source,
                    }
                })?;
            ConfigTask::ZooKeeper(thread)
        }
    };

    let stop = Arc::new(AtomicBool::new(false));
    let (eof_tx, mut eof_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tailer_opts = TailerOptions::new(opts.state_dir.clone());
    tailer_opts.exit_on_eof = opts.exit_on_eof;
    tailer_opts.drain_timeout = opts.shutdown_timeout.mul_f32(0.8);
    let tailer = Tailer::new(
        tailer_opts,
        TailerLinks {
            current: topology.files(),
            stop: stop.clone(),
            wake: wake_rx,
            waker: wake_tx.clone(),
            eof: Some(eof_tx),
            unthrottled: Arc::default(),
        },
    );
    let reader = std::thread::Builder::new()
        .name("file-reader".into())
        .spawn(move || tailer.run())
        .map_err(|source| AppError::Io {
            what: "starting the file reader",
            source,
        })?;
    let syslog = Syslog::start(SyslogLinks {
        current: topology.syslog(),
        changes: topology.changes(),
        metrics: metrics.clone(),
    })
    .map_err(|source| AppError::Io {
        what: "starting the syslog listeners",
        source,
    })?;

    let io = |source| AppError::Io {
        what: "installing signal handlers",
        source,
    };
    let mut sigterm = signal(SignalKind::terminate()).map_err(io)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(io)?;
    let why = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
        Some(()) = eof_rx.recv() => "end of input (--exit-on-eof)",
    };
    let deadline = Instant::now() + opts.shutdown_timeout;
    tracing::info!(reason = why, timeout = ?opts.shutdown_timeout, "shutting down: stop reading, flush sinks, checkpoint");
    metrics.set_ready(false);

    // No config change during shutdown; dropping the ZooKeeper client closes the session,
    // which removes the instance znode (while the rest shuts down).
    let zookeeper = match config_task {
        ConfigTask::File(task) => {
            task.abort();
            let _ = task.await;
            None
        }
        ConfigTask::ZooKeeper(thread) => Some(thread.stop().await),
    };

    stop.store(true, Ordering::Relaxed);
    let _ = wake_tx.send(());
    // Closing the syslog sockets first tells senders at once; what was received is still
    // routed before the router thread ends.
    let syslog_threads = syslog.stop();
    if !join_until(reader, deadline).await {
        tracing::warn!("the file reader did not stop in time");
    }
    for thread in syslog_threads {
        if !join_until(thread, deadline).await {
            tracing::warn!("the syslog listeners did not stop in time");
        }
    }
    topology.clear();
    loop {
        let running = topology.sinks_running();
        if running.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(sinks = ?running, "sinks did not finish in time; exiting anyway");
            topology.abandon_sinks();
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if let Some(thread) = zookeeper
        && !join_until(thread, deadline).await
    {
        tracing::warn!("the ZooKeeper session did not close in time");
    }
    http_task.abort();
    tracing::info!("stopped");
    Ok(())
}

async fn join_until(thread: JoinHandle<()>, deadline: Instant) -> bool {
    while !thread.is_finished() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    thread.join().is_ok()
}
