//! One pod's pipeline: the sidecar's topology (router, sinks, buffers) and file reader
//! over the pod's container log files, with a state dir of its own.
//!
//! Each pod has its own reader thread, sink threads and buffers, so a sink that blocks or
//! fails holds back only that pod's files, and a config rejected for one ServiceLog leaves
//! the others' pods alone. State (checkpoints, last-known-good config, disk buffers) lives
//! in `<state>/pods/<uid>/`: an agent restart resumes each pod where it was, and starts it
//! on its last good rules before ZooKeeper answers.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{Sender, channel},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use servicelog_api::wire::{Candidate, Envelope, Health, Instance};
use servicelog_sidecar::{
    config::{health::Tracker, last_good::LastGood},
    metrics::Metrics,
    pipeline::{Origin, shadow},
    sources::{
        checkpoint::Checkpoints,
        cri::PodLogs,
        file::{ReadRate, Tailer, TailerLinks, TailerOptions},
    },
    topology::{ApplyError, Topology},
};

use crate::pods::ServedPod;

/// Where the agent reads and keeps things.
#[derive(Clone, Debug)]
pub struct Paths {
    /// The kubelet's pod log directory, `/var/log/pods`.
    pub log_root: PathBuf,
    /// The agent's state; each pod's is `pods/<uid>` below it.
    pub state_dir: PathBuf,
    /// Where sinks' credentials would be mounted (none in this increment).
    pub credentials_dir: PathBuf,
    /// Serve file sinks reached by container logs (see [`PodLogs::allow_file_sinks`]):
    /// benchmarks and tests only.
    pub allow_file_sinks: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting the file reader of {pod}: {source}")]
    Reader { pod: String, source: std::io::Error },
}

/// A served pod's running pipeline.
pub struct PodRun {
    pub pod: ServedPod,
    topology: Topology,
    /// Counts what the config in force does, in the pod's own pipeline (the agent's
    /// metrics sum all its pods), for a canary's or a preview's record.
    health: Option<Tracker>,
    /// The record last written for it (none for a pod with a sidecar, which writes its
    /// own).
    pub record: Option<Instance>,
    last_good: LastGood,
    stop: Arc<AtomicBool>,
    /// Lifts the read rate: see [`PodRun::unthrottle`].
    unthrottled: Arc<AtomicBool>,
    wake: Sender<()>,
    reader: Option<JoinHandle<()>>,
    state_dir: PathBuf,
    log_dir: PathBuf,
}

impl PodRun {
    /// Starts reading `pod`'s files, on its last good config if it has one, at most at
    /// `rate` lines a second.
    pub fn start(
        pod: ServedPod,
        paths: &Paths,
        rate: Option<ReadRate>,
        metrics: &Metrics,
    ) -> Result<Self, RunError> {
        let state_dir = paths.state_dir.join("pods").join(&pod.uid);
        fs::create_dir_all(&state_dir).map_err(|source| RunError::StateDir {
            path: state_dir.clone(),
            source,
        })?;
        let log_dir = PodLogs::dir(&paths.log_root, &pod.namespace, &pod.name, &pod.uid);
        let (wake, wake_rx) = channel();
        let origin = Origin {
            pod: pod.name.clone(),
            namespace: pod.namespace.clone(),
            container: match pod.containers.as_slice() {
                [one] => Some(one.clone()),
                _ => None,
            },
            ..Origin::default()
        };
        let topology = Topology::new(
            metrics.clone(),
            &state_dir,
            &paths.credentials_dir,
            origin,
            wake.clone(),
        )
        .with_pod_logs(PodLogs {
            dir: log_dir.clone(),
            containers: pod.containers.clone(),
            allow_file_sinks: paths.allow_file_sinks,
        });
        let last_good = LastGood::new(&state_dir);
        match last_good.load() {
            Ok(Some(config)) => {
                if let Err(e) = topology.apply(&config) {
                    tracing::warn!(pod = %pod.name, error = %e, "the last good config does not apply");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(pod = %pod.name, error = %e, "reading the last good config"),
        }
        let stop = Arc::new(AtomicBool::new(false));
        let unthrottled = Arc::new(AtomicBool::new(false));
        let tailer = Tailer::new(
            TailerOptions {
                rate,
                ..TailerOptions::new(state_dir.clone())
            },
            TailerLinks {
                current: topology.files(),
                stop: stop.clone(),
                wake: wake_rx,
                waker: wake.clone(),
                eof: None,
                unthrottled: unthrottled.clone(),
            },
        );
        let reader = std::thread::Builder::new()
            .name(format!("reader-{}", pod.name))
            .spawn(move || tailer.run())
            .map_err(|source| RunError::Reader {
                pod: pod.name.clone(),
                source,
            })?;
        tracing::info!(namespace = %pod.namespace, pod = %pod.name, dir = %log_dir.display(), "serving pod");
        Ok(Self {
            pod,
            topology,
            health: None,
            record: None,
            last_good,
            stop,
            unthrottled,
            wake,
            reader: Some(reader),
            state_dir,
            log_dir,
        })
    }

    /// Puts `config` in force (false: it already is); kept as last good when it applies.
    pub fn apply(&self, config: &Envelope) -> Result<bool, ApplyError> {
        let applied = self.topology.apply(config)?;
        if applied {
            self.last_good.save(config);
        }
        Ok(applied)
    }

    /// After a config was chosen: counts from the swap on for a config newly in force,
    /// and runs `candidate` in shadow while it previews the config in force (`stable`,
    /// the config znode's hash), as a sidecar does.
    pub fn follow(&mut self, stable: &str, candidate: Option<&Candidate>) {
        let Some(running) = self.topology.running() else {
            return;
        };
        if self
            .health
            .as_ref()
            .is_none_or(|t| t.hash() != running.hash)
        {
            self.health = Some(Tracker::start_in_pipeline(&running, self.health.as_ref()));
        }
        shadow::sync(&running.pipeline, &running.hash, stable, candidate);
    }

    /// The health the pod's record routing with `hash` carries: on a canary, or while a
    /// preview runs in shadow; else none.
    pub fn health(&self, metrics: &Metrics, hash: &str, canary: bool) -> Option<Health> {
        let running = self.topology.running()?;
        self.health
            .as_ref()?
            .report(metrics, &running, hash, canary)
    }

    /// Reads the pod's files at full speed from now on: a deleted pod's backlog is drained
    /// within the drain timeout rather than at the per-pod rate (which would leave most of
    /// a noisy pod's backlog to be dropped when the timeout ends).
    pub fn unthrottle(&self) {
        self.unthrottled.store(true, Ordering::Relaxed);
        let _ = self.wake.send(());
    }

    /// Hash of the config in force.
    pub fn hash(&self) -> Option<String> {
        self.topology.hash()
    }

    /// Whether everything the pod's files hold is read and acknowledged by the sinks: each
    /// file's checkpoint is at its end. The kubelet's compressed files are not counted.
    pub fn drained(&self) -> bool {
        let checkpoints = Checkpoints::load(&self.state_dir);
        let Ok(containers) = fs::read_dir(&self.log_dir) else {
            return true; // the kubelet removed it: nothing left to read
        };
        for container in containers.flatten() {
            let Ok(files) = fs::read_dir(container.path()) else {
                continue;
            };
            for file in files.flatten() {
                let name = file.file_name();
                let name = name.to_string_lossy();
                if name.ends_with(".gz") || name.ends_with(".tmp") {
                    continue;
                }
                let Ok(meta) = file.metadata() else { continue };
                if meta.len() == 0 {
                    continue;
                }
                let at = checkpoints
                    .get((meta.dev(), meta.ino()))
                    .map_or(0, |e| e.offset);
                if at < meta.len() {
                    return false;
                }
            }
        }
        true
    }

    /// Stops reading and lets the sinks write what was read (as at SIGTERM), within
    /// `timeout`. The checkpoints stay.
    pub async fn stop(mut self, timeout: Duration) -> PathBuf {
        let deadline = Instant::now() + timeout;
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.wake.send(());
        if let Some(reader) = self.reader.take() {
            while !reader.is_finished() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if reader.is_finished() {
                let _ = reader.join();
            } else {
                tracing::warn!(pod = %self.pod.name, "the file reader did not stop in time");
            }
        }
        self.topology.clear();
        while !self.topology.sinks_running().is_empty() {
            if Instant::now() >= deadline {
                tracing::warn!(pod = %self.pod.name, "sinks did not finish in time");
                self.topology.abandon_sinks();
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.state_dir.clone()
    }

    /// The pod's state dir.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }
}

impl Drop for PodRun {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.wake.send(());
    }
}
